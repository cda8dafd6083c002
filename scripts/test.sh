#!/usr/bin/env bash
# The project's test command: environment (idempotent), lint, then the whole pytest suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not host" -x`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup_env.sh
bash scripts/install_browser.sh   # headless Chromium for the browser tests of the timeline editor
PY="$ROOT/.venv/bin/python"

echo "== ruff check ."
"$PY" -m ruff check .

echo "== pytest"
rc=0
"$PY" -m pytest -q tests "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
    echo "test.sh: pytest collected no tests; treating that as a failure" >&2
    exit 1
fi
exit "$rc"
