#!/usr/bin/env bash
# Create or update .venv from the repo's own files. Idempotent: a second run with unchanged
# pyproject.toml / constraints.txt does nothing but check. MADIS_VENV names another directory
# (scripts/gpu-check.sh puts a CUDA torch there first; the pin keeps it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
V=${MADIS_VENV:-.venv}
export PIP_CONSTRAINT="$PWD/constraints.txt" PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x "$V/bin/python" ] || { echo "[setup] creating $V with $PY"; "$PY" -m venv "$V"; }
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
have=$(cat "$V/.madis-installed" 2>/dev/null || true)
if [ "$want" != "$have" ]; then
  echo "[setup] installing MaDiS and its dependencies into $V (a few minutes the first time)"
  "$V/bin/python" -m pip install -q -U 'pip>=24'
  "$V/bin/python" -m pip install -q -e '.[dev]'
  # The real sample corpus ships inside this package; its own requirements are heavy and unused.
  "$V/bin/python" -m pip install -q --no-deps 'spoken-to-signed==0.4.0'
  echo "$want" > "$V/.madis-installed"
fi
echo "[setup] $V ready ($("$V/bin/python" -c 'import torch, ray; print("torch", torch.__version__, "ray", ray.__version__)'))"
