#!/usr/bin/env bash
# The GPU checks of the scale-out issue, in one short run (at most 7.5 minutes of timeouts):
#   1. the training throughput benchmark (engine against a DataLoader loop);
#   2. a reduced CIFAR-10 ResNet-18 relearning grid, one cell at a time on the GPU, then
#      packed 4 cells to the GPU (--gpus-per-cell 0.25), each from a cold cache;
#   3. `dormant plan configs/cifar10-paper.yaml` with the step time measured on this GPU.
# Everything lands in $OUT (default runs/device-check) as JSON and text.
#   OUT=/tmp/out DATA=../shared/datasets/cifar10-jpeg.tar.gz scripts/device_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/device-check}
DATA=${DATA:-../shared/datasets/cifar10-jpeg.tar.gz}
[ -e "$DATA" ] || DATA=shared/datasets/cifar10-jpeg.tar.gz
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1 || true

timeout 90 "$PY" benchmarks/train_throughput.py --quick > "$OUT/throughput.json" \
  2> "$OUT/throughput.log" || echo '{"error": "throughput benchmark failed"}' > "$OUT/throughput.json"

# 6 methods + the 2 references x 1 seed x k=0: 8 cells, 2,000 images, short budgets
GRID=(--set "dataset=imagefolder:$DATA" --set train_size=2000 --set test_size=1000
      --set train_steps=160 --set "seeds=[0]" --set "k=[0]" --set "relearn_sets=[retain]"
      --set "methods=[finetune,gradient_ascent,neggrad_plus,scrub,l1_sparse,salun]"
      --set unlearn_steps=100 --set "attack_steps=[40]" --set fit_target=null
      --set analysis=false)
run_grid() {  # name, executor flags...
  local name=$1; shift
  local t0=$(date +%s.%N)
  DORMANT_CACHE="$OUT/cache-$name" timeout 150 "$PY" -m dormant relearn \
    configs/cifar10-paper.yaml "${GRID[@]}" --out "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1 \
    || echo "grid $name failed" >> "$OUT/$name.log"
  echo "$(date +%s.%N) - $t0" | bc > "$OUT/$name.seconds"
}
run_grid serial --executor serial
run_grid packed --executor local --gpus-per-cell 0.25
"$PY" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
from dormant.rows import without_timings
from dormant.store import read_rows
out = Path(sys.argv[1])
res = {}
for name in ("serial", "packed"):
    rows = read_rows(out / name / "results.jsonl")
    res[name] = {"seconds": float((out / f"{name}.seconds").read_text()), "rows": len(rows),
                 "ok": sum(r["status"] == "ok" for r in rows)}
res["packed_over_serial"] = round(res["packed"]["seconds"] / res["serial"]["seconds"], 3)
(out / "grid.json").write_text(json.dumps(res, indent=1))
print(json.dumps(res))
PY

timeout 60 "$PY" -m dormant plan configs/cifar10-paper.yaml --set "dataset=imagefolder:$DATA" \
  --workers 1,8,64 > "$OUT/plan.txt" 2>&1 || echo "plan failed" >> "$OUT/plan.txt"
cat "$OUT/grid.json" "$OUT/plan.txt"
