#!/usr/bin/env bash
# README command (2): install what is needed, then run the default test suite (slow tests are
# opt-in: `scripts/test.sh -m slow`). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/setup-browser.sh  # Debian chromium for the demo-page test (root only; else it skips)
# the venv first on PATH, as `madis up` and Ray jobs have it: DeepSpeed's op build then always
# runs the venv's ninja (the system's and the venv's ninja each rebuild what the other built)
export PATH="$PWD/.venv/bin:$PATH"
exec scripts/loopback.sh .venv/bin/python -m pytest "$@"
