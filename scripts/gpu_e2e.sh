#!/usr/bin/env bash
# The GPU end-to-end run of issue 7, for a machine with an NVIDIA GPU and a CUDA build of torch
# (e.g. the lent H100: Python 3.12, torch+CUDA, pyarrow, psutil; bring the other wheels, see README).
# Everything lands in $OUT (default ./gpu-out): the datasets, fit reports and test-retest figures.
#   usage: scripts/gpu_e2e.sh [N_ARCHS=1000] [N_RETEST=200]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}; RETEST=${2:-200}; OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
"$PY" -m pytest -q tests/test_gpu.py -p no:cacheprovider | tee "$OUT/gpu_tests.txt"
common=(--space ofa --sampler balanced --seed 0 --devices local --runtime torch --accelerator cuda --quiet)
for bs in 1 64; do
  "$PY" -m collector.cli collect "${common[@]}" --n "$N" --batch-size "$bs" --out "$OUT/ofa-h100-bs$bs"
  "$PY" -m collector.cli collect "${common[@]}" --n "$N" --batch-size "$bs" --cuda-graphs --out "$OUT/ofa-h100-bs$bs-graphs"
  for d in "$OUT/ofa-h100-bs$bs" "$OUT/ofa-h100-bs$bs-graphs"; do
    "$PY" -m collector.cli data card "$d"
    "$PY" -m collector.cli predictor fit --data "$d" --space ofa --device local --budget 500 \
      --json "$d.fit.json" --report "$d.report" --out "$d.model"
  done
done
# test-retest: the same archs again, into a separate dataset (--force-free: another folder, same keys)
"$PY" -m collector.cli collect "${common[@]}" --n "$RETEST" --batch-size 64 --out "$OUT/retest-a"
"$PY" -m collector.cli collect "${common[@]}" --n "$RETEST" --batch-size 64 --out "$OUT/retest-b"
"$PY" - "$OUT" <<'PY'
import sys, numpy as np
from scipy.stats import spearmanr
from collector.dataset import read_latency
out = sys.argv[1]
a, b = (read_latency(f"{out}/retest-{k}").to_pandas().set_index("arch")["latency_ms"] for k in "ab")
b = b.reindex(a.index)
print(f"test-retest on {len(a)} archs: spearman {spearmanr(a, b).statistic:.4f}, "
      f"median relative difference {np.median(np.abs(a - b) / a) * 100:.2f} %")
PY
