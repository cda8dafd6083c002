#!/usr/bin/env bash
# Create/refresh the repo's .venv and the ComfyUI test hosts (0.3.75, 0.8.0). Idempotent: a finished install leaves a
# marker keyed on the pins and requirement files, and a second run only checks markers (about 1 s).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
# The ComfyUI host owns torch, so requirements.txt does not list it; this pair lies on local disk
# here and is the one pair whose torchvision imports beside it (see shared/comfy_host.md).
TORCH_PINS=("torch==2.14.1" "torchvision==0.29.1")

if [ ! -x "$PY" ]; then
    echo "setup_env: creating $VENV"
    python3 -m venv "$VENV"
fi

stamp="$( { echo "${TORCH_PINS[*]}"; cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt"; } \
          | sha256sum | cut -c1-16)"
marker="$VENV/.echo-setup-$stamp"
if [ ! -f "$marker" ]; then
    echo "setup_env: installing torch pair and requirements into $VENV"
    "$PY" -m pip install -q "${TORCH_PINS[@]}" -r "$ROOT/requirements.txt" -r "$ROOT/requirements-dev.txt" 2>&1 \
        | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
    rm -f "$VENV"/.echo-setup-*
    touch "$marker"
fi

# The demo needs no ComfyUI host; the tests do (0.3.75 in .venv, 0.8.0 with its own venv).
if [ "${ECHO_SKIP_HOST:-0}" != "1" ]; then
    bash "$ROOT/scripts/prepare_comfy_host.sh" >/dev/null
    # The 0.8.0 tree comes from shared/hosts/ beside the checkout; without it the suite still runs, and the
    # 0.8.0 tests fail under CI=true (skip elsewhere) saying why.
    if ! bash "$ROOT/scripts/prepare_comfy_host_080.sh" >/dev/null; then
        echo "setup_env: ComfyUI 0.8.0 host not prepared (see above); its tests will fail under CI=true" >&2
    fi
    # ComfyUI-GGUF beside the hosts (for the GGUF weight tests) and `gguf` in their venvs.
    if ! bash "$ROOT/scripts/prepare_comfy_gguf.sh" >/dev/null; then
        echo "setup_env: ComfyUI-GGUF not prepared (see above); the GGUF tests will fail" >&2
    fi
fi
