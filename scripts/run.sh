#!/usr/bin/env bash
# README command (1): install what is needed, then run the whole pipeline on the embedded default
# (`madis up`: local S3-compatible server and Ray cluster on 127.0.0.1, the real sample shards,
# tokenizer -> SiCLIP -> pretraining -> fine-tuning + eval fleet -> Ray Serve and one request).
# Idempotent: a second run reuses what is built. Stop everything with `.venv/bin/madis down`.
# Your own data instead of the sample: `scripts/run.sh --shards DIR`, DIR built by
# `.venv/bin/madis data build-pose INDEX --out DIR` (README "Your own .pose data").
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/madis up "$@"
