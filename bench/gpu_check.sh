#!/usr/bin/env bash
# GPU check, for a lent GPU machine: the smoke suite on CUDA, then the step-cost benchmark at the
# paper's KV shapes. Prints what it measured; about 5 minutes on one H100.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
out="${OUT:-/tmp/gpu_check}"
mkdir -p "$out"
start=$(date +%s)
python run_all.py --suite smoke --scale smoke --device cuda --out "$out/results" --cache "$out/cache" --quiet
echo "smoke suite on cuda: $(( $(date +%s) - start )) s"
python - "$out/results" <<'PY'
import sys
from harness import store
frame = store.load(sys.argv[1])
print(frame[["method", "method.write_steps", "eval_write_steps", "exact_match", "memory_floats", "train_seconds"]].to_string())
PY
python -m bench.step_cost --device cuda --pairs 16 32 --batch 32 --repeats 5 --out "$out/bench"
echo "total: $(( $(date +%s) - start )) s"
