#!/usr/bin/env bash
# GPU check for a lent GPU window (one call; about TRAIN_SECONDS + 3 minutes), in this order:
#   1. the trainer's overhead on CUDA: `python -m bench.step_cost --trainer --device cuda` (batch,
#      host, model step and trainer step at the capacity gpu shape, 32 pairs, full context and
#      GradMem K=1; its last lines are the `trainer overhead` figures);
#   2. the step costs of `capacity --scale gpu` on this GPU, then the suite's dry run from them;
#   3. `capacity --scale gpu` trained with `run_all.py --until TRAIN_SECONDS` (default 360), JOBS
#      runs (default 6) sharing the card; finished runs keep their results, the others stop at
#      their last checkpoint;
#   4. what comes back, under $OUT (default /tmp/gpu_check): gpu_check.log, results.tgz (the
#      bench and step-cost records and the run folders: unpack it at the repository root),
#      checkpoints.tgz.part-* (the resume points that fit: `cat` them together and untar into
#      the cache folder, .cache/ by default; `run_all.py --suite capacity --scale gpu` then resumes
#      them on any device).
# RESUME_DIR: a carried folder with results/ and checkpoints/ of an earlier window (the unpacked
# archives); its runs resume here. Exit code: 0 when every part passed, else 1.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
if ! command -v python >/dev/null; then   # images that name it python3 only
  mkdir -p /tmp/gpu_check_bin && ln -sf "$(command -v python3)" /tmp/gpu_check_bin/python
  export PATH="/tmp/gpu_check_bin:$PATH"
fi
out="${OUT:-/tmp/gpu_check}"
runs="${RESUME_DIR:-/tmp/gpu_check_runs}"
train_seconds="${TRAIN_SECONDS:-360}"
jobs="${JOBS:-6}"
mkdir -p "$out" "$runs/results"
exec > >(tee "$out/gpu_check.log") 2>&1
start=$(date +%s)
status=0
stamp() { echo "[gpu_check +$(( $(date +%s) - start )) s] $*"; }
fail() { stamp "FAILED: $*"; status=1; }

python -c "import torch, transformers; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())" \
  || { echo "no CUDA device"; exit 1; }

# 1. where a trainer's step goes
timeout 150 python -m bench.step_cost --trainer --device cuda --out results/bench || fail "trainer overhead"
stamp "trainer overhead done"

# 2. step costs of capacity at gpu scale, and the dry run's estimate from them
timeout 150 python -m bench.step_cost --suite capacity --scale gpu --device cuda --steps 3 --warmup 1 \
  --max-seconds 20 || fail "step costs of capacity at gpu scale"
python run_all.py --suite capacity --scale gpu --device cuda --dry-run --out "$runs/results" | tail -3 || fail "dry run"
stamp "step costs done"

# 3. train until the deadline; every run left unfinished stops at its last checkpoint
for dir in results/capacity/*/; do   # runs this checkout finished are skipped, not trained again
  [ -f "$dir/summary.json" ] && grep -q '^scale: gpu' "$dir/config.yaml" 2>/dev/null \
    && mkdir -p "$runs/results/capacity" && cp -rn "$dir" "$runs/results/capacity/"
done
python run_all.py --suite capacity --scale gpu --device cuda --jobs "$jobs" --until "$train_seconds" \
  --out "$runs/results" --cache "$runs" --quiet || fail "capacity at gpu scale"
python - "$runs/results" <<'PY' || fail "reading the runs"
import sys
from pathlib import Path
from harness import store
for curve in sorted(Path(sys.argv[1]).glob("capacity/*/metrics.jsonl")):
    rows = store.read_jsonl(curve)
    state = store.summary_state(curve.parent.parent.parent, "capacity", curve.parent.name)
    print(curve.parent.name, state, [(r["step"], r["task"].get("pairs"), round(r["valid_em"], 3)) for r in rows])
PY
stamp "training stopped"

# 4. pack what comes back (8 files of at most 16 MiB, 64 MiB in all)
tar czf "$out/results.tgz" results/bench results/step_costs -C "$runs" results/capacity 2>/dev/null
keep=()
total=0
for ckpt in "$runs"/checkpoints/*/last.pt; do
  [ -f "$ckpt" ] || continue
  size=$(( $(gzip -1 -c "$ckpt" | wc -c) + 65536 ))
  if [ $(( total + size )) -gt $(( 60 * 1024 * 1024 )) ]; then stamp "left out $ckpt (size)"; continue; fi
  keep+=("checkpoints/$(basename "$(dirname "$ckpt")")/last.pt")
  total=$(( total + size ))
done
if [ "${#keep[@]}" -gt 0 ]; then
  (cd "$runs" && tar cf - "${keep[@]}") | gzip -1 | split -b 15M - "$out/checkpoints.tgz.part-"
fi
ls -la "$out"
stamp "total"
exit "$status"
