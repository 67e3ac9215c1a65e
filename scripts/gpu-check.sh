#!/usr/bin/env bash
# One prepared GPU check (issue 14, item 9), unattended on a fresh single-GPU machine with only
# this checkout and access to the package registries:
#   1. a venv of its own (.venv-gpu) with torch==2.13.0 as a CUDA build, then MaDiS (setup.sh);
#   2. the paper profile (Qwen3-0.6B's architecture, random init, bf16, N=100, batch 64,
#      ZeRO-2, one worker) trained for 100 steps on the sample corpus: samples/s, MFU against
#      the GPU's bf16 dense peak, peak GPU memory (benchmarks/bench_train.py --case mdlm);
#   3. decoding at the paper's shape (N=100, K=25): latency at batch 1 of UTC against the
#      KV-cached autoregressive baseline (benchmarks/bench_decode.py --profile paper);
#   4. correctness on the GPU: the bf16 precision rules, TF32 for fp32 jobs, pinned batches,
#      ZeRO-3 validation (pytest), a 20-step ZeRO-3 bf16 run of the paper profile, and the
#      fp32 matmul rate with and without TF32;
#   5. a summary: the figures, also in $OUT/summary.json.
#
#   scripts/gpu-check.sh              # about 10 minutes on an H100/H200 once installed
#   scripts/gpu-check.sh --dry-run    # the same plumbing at cpu-tiny size on the CPU (minutes)
#
# Without a usable GPU (none, or a torch that cannot use it) it says so and runs the dry run:
# its figures are CPU figures of a tiny model, printed as such. Settings: STEPS (100),
# DECODE_TRAIN_STEPS (300), OUT (gpu-check-out; everything the check writes goes there),
# MADIS_GPU_VENV (.venv-gpu), PYTHON (a Python >= 3.11), TORCH_CUDA (e.g. cu128: the PyTorch
# index to take torch from), MADIS_PYTHON (an interpreter that already has a CUDA torch 2.13.0
# and MaDiS installed: no venv, no download -- for a machine without the package registries).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-100}
DECODE_TRAIN_STEPS=${DECODE_TRAIN_STEPS:-300}
OUT=${OUT:-gpu-check-out}
VENV=${MADIS_GPU_VENV:-.venv-gpu}
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
mkdir -p "$OUT"
log() { echo "[gpu-check] $*"; }

if [ -n "${MADIS_PYTHON:-}" ]; then
  P=$MADIS_PYTHON
  log "using $P as it is (MADIS_PYTHON): nothing installed"
else
# -- a Python >= 3.11 ---------------------------------------------------------------------------
find_python() {
  for c in ${PYTHON:-} python3.13 python3.12 python3.11 python3; do
    if command -v "$c" >/dev/null && "$c" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$c"; return 0
    fi
  done
  return 1
}
PY=$(find_python || true)
if [ -z "$PY" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  log "no Python >= 3.11: installing python3.11 with apt-get"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11 python3.11-venv >/dev/null
  PY=$(find_python || true)
fi
[ -n "$PY" ] || { log "error: no Python >= 3.11 (set PYTHON=/path/to/python3.11)"; exit 2; }

# -- torch 2.13.0 as a CUDA build ---------------------------------------------------------------
export PIP_CONSTRAINT="$PWD/constraints.txt" PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x "$VENV/bin/python" ] || { log "creating $VENV with $PY"; "$PY" -m venv "$VENV"; }
"$VENV/bin/python" -m pip install -q -U 'pip>=24'
gpu_visible() { command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q GPU; }
torch_sees_gpu() { "$VENV/bin/python" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; }
driver_cuda() { nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9]*\)\.\([0-9]*\).*/\1\2/p' | head -1; }
if [ "$DRY" = 0 ] && gpu_visible; then
  if ! torch_sees_gpu; then
    # PyPI's Linux wheel is a CUDA build; a machine whose pip finds a +cpu wheel first, or a
    # driver older than that build's CUDA, gets one from the PyPI index of PyTorch instead.
    "$VENV/bin/python" -m pip install -q 'torch==2.13.0' || true
  fi
  if ! torch_sees_gpu; then
    have=$(driver_cuda); have=${have:-999}
    for tag in ${TORCH_CUDA:-cu130 cu129 cu128 cu126 cu124}; do
      [ "${tag#cu}" -le "$have" ] || continue
      log "installing torch==2.13.0 from https://download.pytorch.org/whl/$tag (driver: CUDA $have)"
      if "$VENV/bin/python" -m pip install -q --force-reinstall \
          --index-url "https://download.pytorch.org/whl/$tag" \
          --extra-index-url https://pypi.org/simple "torch==2.13.0+$tag" && torch_sees_gpu; then
        break
      fi
    done
  fi
fi
MADIS_VENV="$VENV" PYTHON="$PY" scripts/setup.sh
P="$VENV/bin/python"
fi
torch_sees_gpu() { "$P" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; }
if [ "$DRY" = 0 ] && ! torch_sees_gpu; then
  log "no usable GPU (nvidia-smi: $(gpu_visible && echo yes || echo no); torch: $("$P" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')): DRY RUN on the CPU"
  DRY=1
fi
"$P" -c 'import torch; print("[gpu-check] torch", torch.__version__, "CUDA", torch.version.cuda, "|", torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")'

# -- the checks ---------------------------------------------------------------------------------
run() { scripts/loopback.sh "$@"; }
if [ "$DRY" = 1 ]; then
  log "DRY RUN: cpu-tiny sizes on the CPU; these are not GPU figures"
  run "$P" benchmarks/bench_train.py --case mdlm --profile cpu-tiny --device cpu \
      --steps "${DRY_STEPS:-20}" --stages pretrain --json "$OUT/train.json" | tee "$OUT/train.log"
  run "$P" benchmarks/bench_decode.py --profile cpu-tiny --device cpu --train-steps 20 \
      --ar-train-steps 20 --sentences 2 --repeats 1 --large-batch 4 \
      --only utc-plain,+masked-logits --json "$OUT/decode.json" | tee "$OUT/decode.log"
  run "$P" -m pytest -q -p no:cacheprovider tests/test_precision.py tests/test_prefetch.py \
      tests/test_zero3.py -m "not ray" 2>&1 | tee "$OUT/pytest.log" || true
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
  run "$P" benchmarks/bench_train.py --case mdlm --profile paper --device cuda \
      --steps "$STEPS" --stages pretrain --json "$OUT/train.json" | tee "$OUT/train.log"
  run "$P" benchmarks/bench_decode.py --profile paper --device cuda \
      --train-steps "$DECODE_TRAIN_STEPS" --ar-train-steps "$DECODE_TRAIN_STEPS" \
      --json "$OUT/decode.json" | tee "$OUT/decode.log"
  # correctness where it matters: bf16 rules and TF32 with CUDA tensors, pinned batches,
  # ZeRO-3 validation (its 2-worker test runs on the CPU), then ZeRO-3 + bf16 on this GPU
  run "$P" -m pytest -q -p no:cacheprovider tests/test_precision.py tests/test_prefetch.py \
      tests/test_zero3.py 2>&1 | tee "$OUT/pytest.log" || true  # failures in the summary
  run "$P" benchmarks/bench_train.py --case mdlm --profile paper --device cuda \
      --steps 20 --stages pretrain --zero-stage 3 --json "$OUT/train_zero3.json" | tee "$OUT/train_zero3.log"
  "$P" - "$OUT/tf32.json" <<'PY' | tee "$OUT/tf32.log"
import json, sys, time
import torch
n, rates = 8192, {}
a, b = (torch.randn(n, n, device="cuda") for _ in range(2))
for prec in ("highest", "high"):  # full fp32, then TF32 (train.tf32 on a GPU job)
    torch.set_float32_matmul_precision(prec)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(); t0 = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize()
    rates[prec] = 20 * 2 * n ** 3 / (time.perf_counter() - t0) / 1e12
print(f"fp32 matmul {n}x{n}: {rates['highest']:.1f} TFLOP/s full fp32, {rates['high']:.1f} with TF32 "
      f"({rates['high'] / rates['highest']:.1f}x)")
json.dump({"fp32_tflops": rates["highest"], "tf32_tflops": rates["high"]}, open(sys.argv[1], "w"))
PY
fi

# -- the summary --------------------------------------------------------------------------------
DRY=$DRY "$P" - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
train = json.load(open(f"{out}/train.json"))
decode = json.load(open(f"{out}/decode.json"))
row = train["rows"][0]
res = decode["results"]
utc = next(k for k in ("+masked-logits", "utc-plain") if k in res)  # the paper profile's switches
summary = {
    "dry_run": os.environ["DRY"] == "1", "device": train["device"], "profile": train["profile"],
    "train_steps": row["steps"], "batch": row["batch"],
    "samples_per_s": row["samples_per_s_per_worker"],
    "mfu": row.get("mfu"), "tflops": row.get("tflops"), "peak_mem_mb": row["peak_mem_mb"],
    "decode_row": utc, "utc_over_ar_latency": res[utc]["latency_ratio"],
    "utc_ms_per_sentence": 1000 * res[utc]["latency_s"],
    "ar_ms_per_sentence": 1000 * res["ar"]["latency_s"],
}
if os.path.exists(f"{out}/train_zero3.json"):
    z3 = json.load(open(f"{out}/train_zero3.json"))["rows"][0]
    summary["zero3_samples_per_s"], summary["zero3_peak_mem_mb"] = z3["samples_per_s_per_worker"], z3["peak_mem_mb"]
if os.path.exists(f"{out}/tf32.json"):
    summary.update(json.load(open(f"{out}/tf32.json")))
log = open(f"{out}/pytest.log").read().strip().splitlines() if os.path.exists(f"{out}/pytest.log") else []
summary["pytest"] = log[-1] if log else "not run"
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
tag = "DRY RUN (CPU, cpu-tiny; not GPU figures)" if summary["dry_run"] else summary["device"]
print(f"== gpu-check: {tag}")
print(f"samples/s          {summary['samples_per_s']:.2f}  ({row['steps']} steps, batch {row['batch']}, {train['profile']})")
print("MFU                " + (f"{100 * summary['mfu']:.1f}%  ({summary['tflops']:.1f} TFLOP/s against the bf16 dense peak)"
                             if summary["mfu"] is not None else "n/a (no GPU)"))
print(f"peak memory        {summary['peak_mem_mb']:.0f} MiB")
print(f"UTC/AR latency     {summary['utc_over_ar_latency']:.2f}x  ({summary['utc_ms_per_sentence']:.1f} vs "
      f"{summary['ar_ms_per_sentence']:.1f} ms per sentence at batch 1, row {utc})")
if "zero3_samples_per_s" in summary:
    print(f"ZeRO-3 bf16        {summary['zero3_samples_per_s']:.2f} samples/s, {summary['zero3_peak_mem_mb']:.0f} MiB peak (20 steps)")
if "tf32_tflops" in summary:
    print(f"TF32               {summary['tf32_tflops']:.1f} vs {summary['fp32_tflops']:.1f} TFLOP/s full fp32")
print(f"pytest             {summary['pytest']}")
PY
