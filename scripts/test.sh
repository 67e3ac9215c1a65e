#!/usr/bin/env bash
# README command (2): install what is needed, then run the default test suite (slow tests are
# opt-in: `scripts/test.sh -m slow`). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/setup-browser.sh  # Debian chromium for the demo-page test (root only; else it skips)
exec scripts/loopback.sh .venv/bin/python -m pytest "$@"
