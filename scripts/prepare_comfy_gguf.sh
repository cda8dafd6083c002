#!/usr/bin/env bash
# Prepare ComfyUI-GGUF (city96, the loader many low-VRAM users load Wan with) for the GGUF tests.
#
# The unmodified node pack comes as a tarball beside the checkout (shared/hosts/ComfyUI-GGUF-795e451.tar.gz in the
# checkout's parent or grandparent folder, or $ECHO_HOSTS_DIR). Result: .cache/ComfyUI-GGUF (the tree, never edited;
# the tests symlink it into each test server's own custom_nodes, so no host tree changes) and the PyPI package
# `gguf` (its one required dependency) in each host's venv: the repo's .venv (0.3.75, also the tests' writer) and
# .cache/comfyui-0.8.0-venv when it exists. Idempotent: the tree and each venv leave their own marker.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache"
TARBALL_NAME="ComfyUI-GGUF-795e451.tar.gz"
DEST="$CACHE/ComfyUI-GGUF"
MARKER=".echo-gguf-795e451"
GGUF_PIN="gguf==0.19.0"  # ComfyUI-GGUF asks for gguf>=0.13.0; one version for both hosts

# shellcheck source=find_host_tarball.sh
source "$ROOT/scripts/find_host_tarball.sh"

if [ ! -f "$DEST/$MARKER" ]; then
    tarball="$(find_host_tarball "$TARBALL_NAME")" || {
        echo "prepare_comfy_gguf: $TARBALL_NAME not found in \$ECHO_HOSTS_DIR, ../shared/hosts," \
             "../../shared/hosts or shared/hosts (relative to $ROOT)" >&2
        exit 1
    }
    mkdir -p "$CACHE"
    # Extract beside the target and move into place: a test reading the tree never sees half of it.
    tmp="$(mktemp -d "$CACHE/extractgguf.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    tar -xzf "$tarball" -C "$tmp"
    [ -f "$tmp/ComfyUI-GGUF/nodes.py" ] || { echo "prepare_comfy_gguf: $tarball holds no ComfyUI-GGUF/nodes.py" >&2; exit 1; }
    touch "$tmp/ComfyUI-GGUF/$MARKER"
    rm -rf "$DEST"
    mv "$tmp/ComfyUI-GGUF" "$DEST"
    echo "prepare_comfy_gguf: ComfyUI-GGUF at $DEST"
fi

# `gguf` into each host venv; a marker of our own, so the venvs' other markers are left alone.
for py in "${ECHO_PYTHON:-$ROOT/.venv/bin/python}" "$CACHE/comfyui-0.8.0-venv/bin/python"; do
    [ -x "$py" ] || continue
    prefix="$("$py" -c 'import sys; print(sys.prefix)')"
    marker="$prefix/.echo-gguf-$(echo "$GGUF_PIN" | sha256sum | cut -c1-16)"
    if [ ! -f "$marker" ]; then
        echo "prepare_comfy_gguf: installing $GGUF_PIN into $prefix"
        "$py" -m pip install -q "$GGUF_PIN" 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
        "$py" -c 'import gguf.quants'
        touch "$marker"
    fi
done
echo "$DEST"
