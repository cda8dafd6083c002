#!/usr/bin/env bash
# Prepare the second test host, ComfyUI 0.8.0, with its own venv (its pins differ from 0.3.75's).
#
# No package registry ships a ComfyUI tree newer than 0.3.75, so the unmodified 0.8.0 source tree comes as a
# tarball beside the checkout: shared/hosts/comfyui-0.8.0.tar.gz in the checkout's parent or grandparent folder
# (or $ECHO_HOSTS_DIR). Result: .cache/comfyui-0.8.0 (the tree) and .cache/comfyui-0.8.0-venv (its Python).
# Idempotent: the tree and the venv each leave a marker and are skipped when it is present. Exits non-zero,
# saying why, when the tarball cannot be found; the 0.8.0 tests then fail under CI=true (and skip otherwise).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache"
HOST_VERSION="0.8.0"
HOST="$CACHE/comfyui-$HOST_VERSION"
VENV="$CACHE/comfyui-$HOST_VERSION-venv"
TARBALL_NAME="comfyui-$HOST_VERSION.tar.gz"
HOST_MARKER=".echo-host-ready"
# Same pair as scripts/setup_env.sh (the one torchvision that imports beside the CPU-capable torch here).
TORCH_PINS=("torch==2.14.1" "torchvision==0.29.1")

# shellcheck source=find_host_tarball.sh
source "$ROOT/scripts/find_host_tarball.sh"

if [ ! -f "$HOST/$HOST_MARKER" ]; then
    tarball="$(find_host_tarball "$TARBALL_NAME")" || {
        echo "prepare_comfy_host_080: $TARBALL_NAME not found in \$ECHO_HOSTS_DIR, ../shared/hosts," \
             "../../shared/hosts or shared/hosts (relative to $ROOT)" >&2
        exit 1
    }
    mkdir -p "$CACHE"
    # Extract beside the target and move into place, so an interrupted run never leaves a half host.
    tmp="$(mktemp -d "$CACHE/extract080.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    tar -xzf "$tarball" -C "$tmp"
    grep -q "__version__ = \"$HOST_VERSION\"" "$tmp/comfyui-$HOST_VERSION/comfyui_version.py" || {
        echo "prepare_comfy_host_080: $tarball is not ComfyUI $HOST_VERSION" >&2; exit 1; }
    rm -rf "$HOST"
    mv "$tmp/comfyui-$HOST_VERSION" "$HOST"
    touch "$HOST/$HOST_MARKER"
    echo "prepare_comfy_host_080: ComfyUI $HOST_VERSION at $HOST"
fi

# Its own venv; the marker is keyed on everything that goes into it.
stamp="$( { echo "${TORCH_PINS[*]}"; cat "$HOST/requirements.txt" "$ROOT/requirements.txt"; } | sha256sum | cut -c1-16)"
marker="$VENV/.echo-venv-$stamp"
if [ ! -f "$marker" ]; then
    echo "prepare_comfy_host_080: installing its venv at $VENV (torch pair, host and plugin requirements)"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    # The torch pair first: the host lists torch/torchvision/torchaudio unpinned, so the second install keeps
    # them. requests: 0.8.0 imports it but does not list it.
    pip_install() {
        "$VENV/bin/python" -m pip install -q "$@" 2>&1 \
            | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
    }
    pip_install "${TORCH_PINS[@]}"
    pip_install -r "$HOST/requirements.txt" requests -r "$ROOT/requirements.txt"
    "$VENV/bin/python" - "${TORCH_PINS[@]}" <<'PYEOF'
import sys
import torch, torchvision, aiohttp, av  # noqa: F401,E401  (what the host imports at start-up)
want = dict(p.split("==") for p in sys.argv[1:])
got = {"torch": torch.__version__.split("+")[0], "torchvision": torchvision.__version__.split("+")[0]}
if got != want:
    sys.exit(f"prepare_comfy_host_080: the venv holds {got}, expected {want}")
PYEOF
    rm -f "$VENV"/.echo-venv-*
    touch "$marker"
fi
echo "$HOST"
