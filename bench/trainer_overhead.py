"""Where a training step's time goes: the batch, the model's own step, and the trainer around them.

For each step shape (a suite's run at one curriculum stage; default: full context and GradMem K=1
of `capacity --scale gpu` at 32 pairs) it builds the run as the runner does and times, as medians
over `--steps` steps after `--warmup`, the device synchronised after each:

- batch: `Trainer.train_batch` (drawing or collating the step's batch, and moving it to the device);
- model step: `Trainer.optimise` on a batch already on the device (forward, backward, clipping,
  AdamW, schedule);
- trainer step: `Trainer.train_step`, the whole step as training runs it;
- host: trainer step minus the model step timed right before it (paired rounds), on a 1-layer,
  16-wide backbone on the same task shapes, so that compute cannot hide the host's share.

Where the trainer builds batches ahead in worker processes (`harness.prefetch`; on CUDA), the
trainer step is timed as training runs it, over consecutive steps with the workers on, and host
is that minus the median model step: the batch time is then what the workers hide.

    python -m bench.step_cost --trainer                       # this machine's CPU, one thread
    python -m bench.step_cost --trainer --device cuda

The last lines read `trainer overhead <label>: batch X ms, host Y ms, model step Z ms, trainer step
W ms`. It writes results/bench/trainer_overhead_<device>.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

TINY_BACKBONE = {"layers": 1, "hidden": 16, "heads": 2, "ffn": 64}


def _timed_ms(device: str, call) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    call()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) * 1e3


def measure(spec, stage: int, device: str, steps: int, warmup: int) -> dict:
    """Medians (ms) over `steps` rounds, after `warmup`, of `spec`'s curriculum stage `stage` on
    `device`: the batch, the model step on a ready batch, the trainer's step, and the trainer's step
    minus the model step timed beside it (paired, the order alternating, so a slow patch of the
    machine and an order effect cancel)."""
    from harness.allocator import retain_freed_memory
    from harness.builder import build_run, seed_everything
    from harness.train import Trainer
    retain_freed_memory()   # as every run does: freed blocks stay mapped, no page faults per step
    seed_everything(spec.seed)
    task, method = build_run(spec)
    method.to(device).train()
    trainer = Trainer(method, task, spec.typed("train"), spec.typed("eval"),
                      spec.seed, device, Path("/dev/null"), None, progress=False)
    stage_task = trainer.stage_task(stage)
    ready = trainer.train_batch(stage_task)
    rounds = []
    for index in range(warmup + steps):
        trainer.state.step = index   # each round draws its own batch, as training does
        batch = _timed_ms(device, lambda: trainer.train_batch(stage_task))
        if index % 2:   # alternate which of the pair runs first, so an order effect cancels
            whole = _timed_ms(device, lambda: trainer.train_step(stage_task))
            model = _timed_ms(device, lambda: trainer.optimise(ready))
        else:
            model = _timed_ms(device, lambda: trainer.optimise(ready))
            whole = _timed_ms(device, lambda: trainer.train_step(stage_task))
        if index >= warmup:
            rounds.append((batch, model, whole, whole - model))
    batch, model, whole, host = (statistics.median(column) for column in zip(*rounds))
    result = {"batch_ms": batch, "model_step_ms": model, "trainer_step_ms": whole, "host_ms": host,
              "prefetch_workers": trainer.batch_workers}
    if trainer.batch_workers:   # training on this device builds batches ahead: the step as it runs
        trainer.state.stage, trainer.state.stage_step = stage, 0
        trainer.state.step = warmup + steps   # batches the rounds above did not draw
        trainer._start_prefetch(stage_task, trainer.config.steps)
        sequence = []
        for index in range(warmup + steps):
            elapsed = _timed_ms(device, lambda: trainer.train_step(stage_task))
            trainer.state.step += 1
            if index >= warmup:
                sequence.append(elapsed)
        trainer._stop_prefetch()
        result["trainer_step_ms"] = statistics.median(sequence)
        result["host_ms"] = result["trainer_step_ms"] - model
    return result


def shapes(suite: str, scale: str, pairs: int, labels: list[str]) -> list:
    """(label, spec, stage) of seed 0 of each run whose display label (as tables print it: 'gradmem
    K=1') is in `labels`, at the curriculum stage with `pairs` pairs."""
    from harness.describe import describe_spec
    from harness.suite import expand_suite
    found = []
    for spec in expand_suite(suite, scale):
        label = describe_spec(spec.method)["label"]
        if spec.seed != 0 or label not in labels:
            continue
        stages = spec.train["curriculum"] or [{}]
        stage = next((i for i, s in enumerate(stages) if {**spec.task, **s}.get("pairs") == pairs), None)
        if stage is None:
            raise SystemExit(f"{label}: no curriculum stage with {pairs} pairs")
        found.append((label, spec, stage))
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.step_cost --trainer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainer", action="store_true", help="this mode (as `python -m bench.step_cost` reads it)")
    parser.add_argument("--suite", default="capacity")
    parser.add_argument("--scale", default="gpu")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--methods", nargs="+", default=["full_context", "gradmem K=1"],
                        help="display labels of the runs to measure (as tables print them)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10, help="rounds on the tiny backbone")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--model-steps", type=int, default=3, help="rounds on the suite's backbone")
    parser.add_argument("--out", default="results/bench")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from harness import registry
    from harness.schema import RunSpec
    registry.discover()
    rows = []
    for label, spec, stage in shapes(args.suite, args.scale, args.pairs, args.methods):
        real = measure(spec, stage, args.device, args.model_steps, 1)
        tiny_spec = RunSpec(**{**spec.__dict__, "backbone": {**spec.backbone, **TINY_BACKBONE}})
        tiny = measure(tiny_spec, stage, args.device, args.steps, args.warmup)
        row = {"label": label, "pairs": args.pairs, "batch_ms": tiny["batch_ms"],
               "model_step_ms": real["model_step_ms"], "trainer_step_ms": real["trainer_step_ms"],
               "host_ms": tiny["host_ms"], "tiny_model_step_ms": tiny["model_step_ms"],
               "tiny_trainer_step_ms": tiny["trainer_step_ms"], "host_ms_at_full_size": real["host_ms"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    machine = {"device": args.device, "threads": args.threads, "platform": platform.platform(),
               "processor": platform.processor(), "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"trainer_overhead_{args.device}.json").write_text(
        json.dumps({"machine": machine, "suite": args.suite, "scale": args.scale, "rows": rows}, indent=2) + "\n")
    for row in rows:
        print(f"trainer overhead {row['label']}: batch {row['batch_ms']:.2f} ms, host {row['host_ms']:.2f} ms, "
              f"model step {row['model_step_ms']:.1f} ms, trainer step {row['trainer_step_ms']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
