#!/usr/bin/env bash
# README command (1): install what is needed, then run the main job on the embedded default
# (local S3-compatible server and, as the pipeline grows, a local Ray cluster, all on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec scripts/loopback.sh .venv/bin/madis data roundtrip "$@"
