"""Seconds per training step of every distinct step shape of a suite, for the dry run's estimate.

For each cost key of the suite's runs (harness.step_costs: method, backbone, the task of one
curriculum stage, batch size, queries per context, precision; not seed, lr, warmup or step
counts) this builds the run as the runner does, sets up its Trainer and times `Trainer.train_step`
on that stage's task (data, forward + backward through harness.pipeline.training_loss, clipping,
AdamW and scheduler step, in train mode), after `--warmup` untimed steps; the median of `--steps`
steps is the key's seconds per step. One validation batch and one test batch (the suite's eval
settings: write steps, generation) give the seconds per evaluated context. Each key is written
as soon as it is measured to `<out>/step_costs/<device tag>.json` (atomically); keys already
there are skipped unless `--remeasure`. A key whose first step takes more than `--max-seconds`,
or that fails (e.g. out of GPU memory), is recorded as skipped with the reason.

    python -m bench.step_cost --suite capacity --scale gpu --device cuda
    OMP_NUM_THREADS=1 python -m bench.step_cost --suite capacity --scale cpu --device cpu --max-seconds 20

(`python -m bench.step_cost --suite ...` runs this module; `python -m bench.suite_cost` too.)
"""
from __future__ import annotations

import argparse
import datetime
import gc
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


def describe_device(device: str) -> str:
    import torch
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {torch.get_num_threads()} torch thread(s), {cores} core(s) allowed, of {os.cpu_count()}"


def _timed(device: str, fn) -> float:
    """Seconds of one call, the device synchronised before and after (latency.timing.timed)."""
    from latency.timing import timed
    return timed(fn, device)[0]


def measure_key(spec, stage: int, device: str, steps: int, warmup: int, max_seconds: float | None,
                evaluation: bool = True) -> dict:
    """Seconds per training step (median of `steps` after `warmup`) of one stage of `spec`, and
    seconds per context of one validation and one test batch."""
    from harness.schema import typed_section
    from harness.evaluate import evaluate
    from harness.builder import build_run, seed_everything
    from harness.train import TEST_SEED, Trainer
    seed_everything(spec.seed)
    task, method = build_run(spec)
    method.to(device)
    train = typed_section("train", {**spec.train, "tune": None})
    eval_config = spec.typed("eval")
    entry: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(method, task, train, eval_config, spec.seed, device, Path(tmp) / "metrics.jsonl", None,
                          label=spec.label(), progress=False, test_at_stage_end=False)
        stage_task = trainer.stage_task(stage)
        method.train()
        times = []
        for index in range(warmup + steps):
            seconds = _timed(device, lambda: trainer.train_step(stage_task))
            trainer.state.step += 1
            times.append(seconds)
            if max_seconds and seconds > max_seconds:
                return {"skipped": f"a step took {seconds:.1f} s > --max-seconds {max_seconds:g}",
                        "seconds": None, "first_step_seconds": round(seconds, 4)}
        entry["seconds"] = statistics.median(times[warmup:])
        entry["repeats"] = [round(t, 5) for t in times[warmup:]]
        entry["warmup_seconds"] = [round(t, 5) for t in times[:warmup]]
        if evaluation:
            valid = stage_task.examples("valid", min(train.eval_examples, eval_config.batch_size), seed=0)
            entry["valid_seconds_per_context"] = _timed(device, lambda: evaluate(
                method, stage_task, valid, [None], eval_config.batch_size, 1, False, device)) / len(valid)
            test = stage_task.examples("test", min(eval_config.examples, eval_config.batch_size), seed=TEST_SEED)
            write_settings = eval_config.write_settings or method.eval_write_settings()
            entry["test_seconds_per_context"] = _timed(device, lambda: evaluate(
                method, stage_task, test, write_settings, eval_config.batch_size, eval_config.queries_per_context,
                eval_config.generate, device)) / len(test)
            entry["eval_batches"] = {"valid_contexts": len(valid), "test_contexts": len(test),
                                     "test_write_settings": list(write_settings), "generate": eval_config.generate}
    return entry


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.step_cost --suite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", required=True, help="suite name (harness/suites/NAME.yaml) or a YAML path")
    parser.add_argument("--scale", default="auto", help="smoke | cpu | gpu | paper | auto (gpu on a GPU, else cpu)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per key (the median is kept)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training steps first")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="record a key as skipped when one of its steps takes longer than this")
    parser.add_argument("--remeasure", action="store_true", help="measure keys already in the record again")
    parser.add_argument("--no-eval", action="store_true", help="time training steps only")
    parser.add_argument("--methods", help="comma-separated method names to keep")
    parser.add_argument("--match", action="append", default=[], help="keep runs whose label or task contains this text (as run_all.py --match)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, e.g. from OMP_NUM_THREADS)")
    parser.add_argument("--plugin", action="append", default=[], help="import an outside module that registers methods/tasks")
    parser.add_argument("--out", default="results", help="results root; the record goes to OUT/step_costs/")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING)
    import torch
    import transformers
    transformers.logging.set_verbosity_error()
    from harness import registry, store
    from harness.allocator import retain_freed_memory
    from harness.suite import expand_suite
    from harness.errors import HarnessError
    from harness.cli import matching
    from harness.runner import resolve_device, resolve_scale
    from harness.step_costs import cost_key, device_tag, key_fields, load_record, record_path, stage_overrides
    try:
        for plugin in args.plugin:
            registry.load_plugin(plugin)
        registry.discover()
        device = resolve_device(args.device)
        scale = resolve_scale(args.scale, device, args.suite)
        methods = [m for m in (args.methods or "").split(",") if m] or None
        specs = matching(expand_suite(args.suite, scale, methods), args.match,
                         lambda s: f"{s.label()} {s.task_label()}", f"run of suite {args.suite} at scale {scale}")
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    retain_freed_memory()   # as every harness run does
    tag = device_tag(device)
    path = record_path(args.out, tag)
    record = load_record(path) or {"device_tag": tag, "entries": {}}
    record.pop("path", None)
    record.update(device=describe_device(device), torch=torch.__version__)
    shapes = {}
    for spec in specs:
        for stage in range(len(stage_overrides(spec))):
            shapes.setdefault(cost_key(spec, stage), (spec, stage))
    todo = [k for k in shapes if args.remeasure or k not in record["entries"]]
    print(f"{args.suite} at scale {scale}: {len(shapes)} step shapes, {len(shapes) - len(todo)} already in {path}; "
          f"measuring {len(todo)} on {tag} ({record['device']})", flush=True)
    started, failed = time.time(), 0
    for index, key in enumerate(todo, 1):
        spec, stage = shapes[key]
        what = {"label": spec.label(), "stage": stage, **key_fields(spec, stage)}
        try:
            entry = measure_key(spec, stage, device, args.steps, args.warmup, args.max_seconds, not args.no_eval)
        except Exception as error:   # e.g. out of GPU memory: recorded, the other keys go on
            failed += 1
            entry = {"skipped": f"failed: {type(error).__name__}: {str(error).splitlines()[0][:300]}", "seconds": None}
        finally:
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        record["entries"][key] = {**entry, "what": what, "suite": spec.suite, "scale": scale,
                                  "device": record["device"], "torch": torch.__version__, "date": now}
        record["updated"] = now
        store.write_json(path, record)   # one key at a time: an interrupted recording keeps its keys
        stage_text = ",".join(f"{k}={v}" for k, v in stage_overrides(spec)[stage].items()) or "-"
        if entry.get("skipped"):
            result = f"skipped ({entry['skipped']})"
        else:
            result = f"{entry['seconds']:.4f} s/step"
            if "valid_seconds_per_context" in entry:
                result += (f", eval {entry['valid_seconds_per_context'] * 1e3:.2f} ms/valid context, "
                           f"{entry['test_seconds_per_context'] * 1e3:.2f} ms/test context")
        print(f"[{index}/{len(todo)}] {key} {spec.label()} stage {stage} ({stage_text}): {result}", flush=True)
    print(f"recorded {len(todo)} step shapes in {time.time() - started:.0f} s ({failed} failed) -> {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
