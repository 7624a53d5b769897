#!/usr/bin/env bash
# GPU check, for a lent GPU machine: the smoke suite on CUDA, one run at a time, then the step-cost
# benchmark at the paper's KV shapes, then the step costs of the capacity suite at gpu scale
# (results/step_costs/cuda-<gpu>.json, copied to $OUT/step_costs/) and the dry run's estimate
# from them. Prints what it measured; about 8 minutes on one H100.
# Stops at the first failed run or command (exit code non-zero), naming it; a step shape that
# fails to measure (e.g. out of memory) is recorded as skipped and the check goes on to the
# estimate, then exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
trap 'echo "gpu_check: stopped at line $LINENO (exit code $?)" >&2' ERR
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, torch.cuda.get_device_name())"
out="${OUT:-/tmp/gpu_check}"
mkdir -p "$out"
start=$(date +%s)
# each run through the command line on its own (--match its label), so the first failure stops
# the check instead of the suite going on to the next run
python - "$out" <<'PY'
import sys
from harness import registry
from harness.cli import main
from harness.config import expand_suite

registry.discover()
out = sys.argv[1]
for spec in expand_suite("smoke", "smoke"):
    label = spec.label()
    code = main(["--suite", "smoke", "--scale", "smoke", "--device", "cuda", "--match", label,
                 "--out", f"{out}/results", "--cache", f"{out}/cache", "--quiet"])
    if code != 0:
        sys.exit(f"smoke run failed on cuda: {label} (exit code {code})")
PY
echo "smoke suite on cuda: $(( $(date +%s) - start )) s"
python - "$out/results" <<'PY'
import sys
from harness import store
frame = store.load(sys.argv[1])
print(frame[["method", "method.write_steps", "eval_write_setting", "exact_match", "memory_floats", "train_seconds"]].to_string())
PY
python -m bench.step_cost --device cuda --pairs 16 32 --batch 32 --repeats 5 --out "$out/bench"
echo "step-cost table: $(( $(date +%s) - start )) s"
# seconds per training step of every step shape of capacity at gpu scale (12 settings x 4 stages,
# 1 warm-up + 3 timed steps and one evaluation batch each), for the dry run's estimate
status=0
python -m bench.step_cost --suite capacity --scale gpu --device cuda --steps 3 --warmup 1 || status=$?
mkdir -p "$out/step_costs"
cp results/step_costs/cuda-*.json "$out/step_costs/"
python run_all.py --suite capacity --scale gpu --dry-run --device cuda | tail -3
echo "total: $(( $(date +%s) - start )) s"
exit "$status"
