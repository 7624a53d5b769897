#!/usr/bin/env bash
# GPU check, for a lent GPU machine (one call of about 9 minutes on one H100):
#   1. `capacity` at `shapes` scale (the paper's KV shapes up to 16 pairs, 4 runs; with
#      CONTROLS=1 also two control probes) trains on CUDA in the background, time-boxed to
#      TRAIN_SECONDS (default 280) from its start (resuming from RESUME_DIR when given; runs
#      finished in this checkout's results/ are copied in and skipped); finished runs keep
#      their results, unfinished ones their resume checkpoint (a later `run_all.py` resumes
#      them, on any device);
#   2. meanwhile the smoke suite on CUDA, one run at a time, stopping at the first failed run;
#   3. once training stops (the GPU idle again; skipped with STEP_COSTS=0): the step-cost
#      benchmark at the paper's shapes
#      (full context's one-pass step against one plain forward/backward of the same model) and
#      the step costs of `capacity` at gpu scale (results/step_costs/cuda-<gpu>.json), then the
#      dry run's estimate from them.
# Everything it writes goes to $OUT (default /tmp/gpu_check): gpu_check.log, shapes_train.log,
# results.tgz (step-cost record and benchmark, smoke results), runs.tgz (the shapes runs'
# results), checkpoints.tgz.part-* (resume points of the runs the time box stopped, split in
# 15 MiB pieces: `cat` them together, untar next to runs.tgz's results/ and carry that folder
# as RESUME_DIR in the next check, or pass it to run_all.py as --out DIR/results --cache DIR).
# Exit code: 0 when every part passed, else 1 (the log names each failure).
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
if ! command -v python >/dev/null; then   # images that name it python3 only
  mkdir -p /tmp/gpu_check_bin && ln -sf "$(command -v python3)" /tmp/gpu_check_bin/python
  export PATH="/tmp/gpu_check_bin:$PATH"
fi
out="${OUT:-/tmp/gpu_check}"
work=/tmp/gpu_check_work
# RESUME_DIR: a carried folder (ignored by git, named in the device tool's `carry`) holding
# results/ and checkpoints/ of shapes runs an earlier check stopped: they resume from it
runs="${RESUME_DIR:-$work/runs}"
train_seconds="${TRAIN_SECONDS:-280}"
controls="${CONTROLS:-0}"
step_costs="${STEP_COSTS:-1}"
mkdir -p "$out" "$work"
exec > >(tee "$out/gpu_check.log") 2>&1
start=$(date +%s)
status=0
stamp() { echo "[gpu_check +$(( $(date +%s) - start )) s] $*"; }
fail() { stamp "FAILED: $*"; status=1; }

python -c "import torch, transformers; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())" \
  || { echo "no CUDA device"; exit 1; }

# 1. the paper-shape subset, in the background
# the runs this checkout has finished are copied in, so they are skipped (not trained again)
for summary in results/capacity/*/summary.json; do
  dir=$(dirname "$summary")
  grep -q 'format: paper' "$dir/config.yaml" || continue
  [ -d "$runs/results/capacity/$(basename "$dir")" ] || { mkdir -p "$runs/results/capacity"; cp -r "$dir" "$runs/results/capacity/"; }
done
stamp "capacity --scale shapes on cuda ($(python run_all.py --suite capacity --scale shapes --out "$runs/results" --dry-run | grep -c ' todo ') runs to train; controls: $controls), at most ${train_seconds} s"
deadline=$(( $(date +%s) + train_seconds ))
# its own process group (setsid), so the time box stops the parallel workers too
# CONTROLS=1: beside them the controls (full context, GradMem K=2) without the overlapping
# training keys (a probe, recorded in results/probes/kv_paper_full_context/)
control=results/probes/kv_paper_full_context/plain_keys_shapes.yaml
control_cmd=""
[ "$controls" = 1 ] && control_cmd="python run_all.py --suite $control --scale shapes --device cuda --jobs 2 \
    --out '$runs/results' --cache '$runs' --quiet &"
setsid bash -c "python run_all.py --suite capacity --scale shapes --device cuda --jobs 4 \
    --out '$runs/results' --cache '$runs' --quiet & $control_cmd wait" >"$out/shapes_train.log" 2>&1 &
train_pid=$!

# 2. smoke on cuda, one run at a time (its label), the first failure stops it
python - "$work" <<'PY' || fail "smoke suite on cuda"
import sys
from harness import registry
from harness.cli import main
from harness.suite import expand_suite

registry.discover()
work = sys.argv[1]
for spec in expand_suite("smoke", "smoke"):
    label = spec.label()
    code = main(["--suite", "smoke", "--scale", "smoke", "--device", "cuda", "--match", label,
                 "--out", f"{work}/smoke", "--cache", f"{work}/smoke_cache", "--quiet"])
    if code != 0:
        sys.exit(f"smoke run failed on cuda: {label} (exit code {code})")
PY
python - "$work/smoke" <<'PY' || fail "reading the smoke results"
import sys
from harness import store
frame = store.load(sys.argv[1])
print(frame[["method", "eval_write_setting", "exact_match", "memory_floats", "train_seconds"]].to_string())
PY
stamp "smoke suite done"

while kill -0 "$train_pid" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do sleep 5; done
if kill -0 "$train_pid" 2>/dev/null; then
  stamp "time box reached: stopping the shapes runs (they resume from their checkpoints)"
  kill -TERM -- "-$train_pid" 2>/dev/null; sleep 10; kill -KILL -- "-$train_pid" 2>/dev/null
fi
wait "$train_pid"
stamp "shapes training stopped (exit code $?)"
python - "$runs/results" <<'PY' || fail "reading the shapes results"
import json, sys
from pathlib import Path
for metrics in sorted(Path(sys.argv[1]).glob("*/*/metrics.jsonl")):
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    valid = [r for r in rows if "valid_em" in r]
    summary = metrics.with_name("summary.json")
    state = json.loads(summary.read_text())["status"] if summary.exists() else "unfinished"
    print(metrics.parent.name, state, "last step", rows[-1]["step"] if rows else None,
          [(r["step"], r["task"].get("pairs"), round(r["valid_em"], 3)) for r in valid])
PY

# 3. timings on the idle GPU
if [ "$step_costs" = 1 ]; then
timeout 90 python -m bench.step_cost --device cuda --pairs 32 --batch 64 --repeats 5 \
  --settings full_context "plain LM" "gradmem K=2" --out "$work/bench" \
  || fail "bench.step_cost at the paper's shapes"
stamp "step-cost table done"
timeout 100 python -m bench.step_cost --suite capacity --scale gpu --device cuda --steps 3 --warmup 1 \
  --max-seconds 20 --out "$work" || fail "step costs of capacity at gpu scale"
mkdir -p results/step_costs && cp "$work"/step_costs/cuda-*.json results/step_costs/ 2>/dev/null
python run_all.py --suite capacity --scale gpu --dry-run --device cuda | tail -3 || fail "dry run"
stamp "step costs done"
fi

# 4. pack what comes back
tar czf "$out/results.tgz" -C "$work" bench step_costs smoke 2>/dev/null
tar czf "$out/runs.tgz" -C "$runs" results 2>/dev/null
# resume points of the stopped runs, in suite order, as many as fit 4 pieces of 15 MiB
# (what comes back from the machine: 8 files of at most 16 MiB, 64 MiB in all)
# (each compressed once to size it: 64 KiB of slack per file covers the tar headers)
keep=()
total=0
for id in $(python -c "from harness.suite import expand_suite; print(' '.join(s.run_id for name in ('capacity', '$control') for s in expand_suite(name, 'shapes')))"); do
  [ -f "$runs/checkpoints/$id/last.pt" ] || continue
  size=$(( $(gzip -1 -c "$runs/checkpoints/$id/last.pt" | wc -c) + 65536 ))
  if [ $(( total + size )) -gt $(( 60 * 1024 * 1024 )) ]; then stamp "left out the checkpoint of $id (size)"; continue; fi
  keep+=("checkpoints/$id/last.pt")
  total=$(( total + size ))
done
if [ "${#keep[@]}" -gt 0 ]; then
  (cd "$runs" && tar cf - "${keep[@]}") | gzip -1 | split -b 15M - "$out/checkpoints.tgz.part-"
fi
ls -la "$out"
stamp "total"
exit "$status"
