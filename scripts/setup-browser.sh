#!/usr/bin/env bash
# Headless Chromium for the demo page test (tests/test_serve.py): installs Debian's `chromium`
# package when it is missing and this runs as root with apt-get; otherwise says that the test
# will skip. Idempotent: does nothing once chromium is on PATH. Never fails the caller.
set -uo pipefail
if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[setup-browser] installing Debian's chromium for the headless demo-page test"
  if apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
       apt-get install -y -qq --no-install-recommends chromium >/dev/null; then
    exit 0
  fi
  echo "[setup-browser] apt-get could not install chromium: the demo-page test will skip" >&2
else
  echo "[setup-browser] no chromium and no root apt-get to install it: the demo-page test will skip" >&2
fi
exit 0
