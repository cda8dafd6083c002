#!/usr/bin/env bash
# README's first command: set up .venv (no ComfyUI host needed) and render the bundled multi-scene demo.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ECHO_SKIP_HOST=1 bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m echo_core demo --out "${1:-out/demo.mp4}"
