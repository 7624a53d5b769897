#!/usr/bin/env bash
# GPU check, for a lent GPU machine: the smoke suite on CUDA, one run at a time, then the step-cost
# benchmark at the paper's KV shapes. Prints what it measured; about 5 minutes on one H100.
# Stops at the first failed run or command (exit code non-zero), naming it.
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
print(frame[["method", "method.write_steps", "eval_write_steps", "exact_match", "memory_floats", "train_seconds"]].to_string())
PY
python -m bench.step_cost --device cuda --pairs 16 32 --batch 32 --repeats 5 --out "$out/bench"
echo "total: $(( $(date +%s) - start )) s"
