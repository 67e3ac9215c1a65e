#!/usr/bin/env bash
# Run a command where Ray, Serve and the S3 server can only listen on loopback.
# Ray binds every interface of the machine; inside a fresh network namespace holding only `lo`
# nothing it opens is reachable from outside. Used by the tests, CI and benchmarks.
# Already isolated (only `lo` present) or MADIS_NO_NETNS=1: run the command as is.
set -euo pipefail
# /sys/class/net still lists the host's interfaces inside `unshare -n` (sysfs is not remounted): ask the kernel.
only_lo() { [ "$(ip -o link show 2>/dev/null | awk -F": " '{print $2}')" = "lo" ]; }
if [ "${MADIS_NO_NETNS:-0}" = 1 ] || only_lo; then exec "$@"; fi
if [ "$(id -u)" != 0 ] || ! command -v unshare >/dev/null; then
  echo "[loopback] cannot create a network namespace (needs root and unshare)." >&2
  echo "[loopback] Set MADIS_NO_NETNS=1 to run anyway: Ray will then listen on every interface." >&2
  exit 2
fi
exec unshare -n bash -c 'ip link set lo up && exec "$@"' _ "$@"
