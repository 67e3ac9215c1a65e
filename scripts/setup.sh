#!/usr/bin/env bash
# Create or update .venv from the repo's own files. Idempotent: a second run with unchanged
# pyproject.toml / constraints.txt does nothing but check.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
export PIP_CONSTRAINT="$PWD/constraints.txt" PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x .venv/bin/python ] || { echo "[setup] creating .venv with $PY"; "$PY" -m venv .venv; }
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
have=$(cat .venv/.madis-installed 2>/dev/null || true)
if [ "$want" != "$have" ]; then
  echo "[setup] installing MaDiS and its dependencies into .venv (a few minutes the first time)"
  .venv/bin/python -m pip install -q -U 'pip>=24'
  .venv/bin/python -m pip install -q -e '.[dev]'
  # The real sample corpus ships inside this package; its own requirements are heavy and unused.
  .venv/bin/python -m pip install -q --no-deps 'spoken-to-signed==0.4.0'
  echo "$want" > .venv/.madis-installed
fi
echo "[setup] .venv ready ($(.venv/bin/python -c 'import torch, ray; print("torch", torch.__version__, "ray", ray.__version__)'))"
