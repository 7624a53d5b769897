"""Time and peak memory of one training step, and of evaluation, at the paper's KV shapes.

Each measurement runs in a fresh process (CPU peak memory = peak RSS above the RSS before the
first step; CUDA: torch.cuda.max_memory_allocated). Ratios are to full_context measured by the
same invocation. Training steps go through the trainer's path (`harness.pipeline.training_loss`:
full context in one pass over [C; Q; Y]); the `plain LM` row is one forward/backward (and AdamW
step) of the same LlamaForCausalLM over [C; Q; Y] with the usual 2D padding mask and the loss on
the target tokens, and a line after the table gives the full-context step over it (issue 11:
at most 1.2x). Matmul FLOPs per step (torch's FlopCounterMode, forward and backward) give
each setting's floor: exact second order costs about 2 + 4 matmuls per write step and linear
layer against 3 for a full-context step, so no implementation of the same computation can beat
`flop_ratio` on a compute-bound device. Writes results/bench/step_cost_<device>.json and prints
a table.

    python -m bench.step_cost                       # 16 pairs, batch 32, CPU
    python -m bench.step_cost --pairs 16 32 --device cuda

With `--suite NAME --scale SCALE` it instead records the seconds per training step of every step
shape of a suite for the dry run's time estimate (bench/suite_cost.py has that mode and its
options):

    python -m bench.step_cost --suite capacity --scale gpu --device cuda

With `--trainer` it splits the trainer's step into batch, model step and host overhead
(bench/trainer_overhead.py).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import queue as queues
import resource
import sys
import time
import traceback
from pathlib import Path

PLAIN = "plain LM"   # not a method: the backbone alone over [C; Q; Y]
SETTINGS = {
    "full_context": {"name": "full_context"},
    PLAIN: {},
    "rmt": {"name": "rmt", "memory_size": 8},
    "gradmem K=1": {"name": "gradmem", "memory_size": 8, "write_steps": 1},
    "gradmem K=2": {"name": "gradmem", "memory_size": 8, "write_steps": 2},
    "gradmem K=5": {"name": "gradmem", "memory_size": 8, "write_steps": 5},
    "gradmem K=1 ckpt": {"name": "gradmem", "memory_size": 8, "write_steps": 1, "checkpoint_steps": True},
    "gradmem K=2 ckpt": {"name": "gradmem", "memory_size": 8, "write_steps": 2, "checkpoint_steps": True},
    "gradmem K=5 ckpt": {"name": "gradmem", "memory_size": 8, "write_steps": 5, "checkpoint_steps": True},
}
EVAL_SETTINGS = ("full_context", "gradmem K=1", "gradmem K=5")
EVAL_OPTIONS = {"log_write_loss": False}  # throughput: no extra forward for the logged final WRITE loss


def _rss_mib() -> float:
    import psutil
    return psutil.Process().memory_info().rss / 2**20


def measure(label: str, pairs: int, batch_size: int, repeats: int, device: str, mode: str, threads: int,
            retain: bool = True) -> dict:
    """One setting in this process: seconds per step and peak memory above the starting point."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from harness.allocator import retain_freed_memory
    from harness.backbone import build_backbone
    from harness.typed import build
    from harness.data import collate
    from harness.pipeline import training_loss, write_then_read
    from harness.registry import get_method, get_task
    torch.set_num_threads(threads)
    if retain:
        retain_freed_memory()  # as every harness run does
    torch.manual_seed(0)
    task_cls = get_task("kv_retrieval")
    task = task_cls(build(task_cls.Config, {"pairs": pairs}, "task"))
    backbone = build_backbone({"layers": 4, "hidden": 128, "heads": 4, "ffn": 512}, task.tokenizer.vocab_size)
    batches = [collate(task.examples("train", batch_size, s), task, 1).to(device) for s in range(repeats + 1)]
    if label == PLAIN:
        method = backbone.to(device)
        batches = [plain_sequences(batch) for batch in batches]
    else:
        params = dict(SETTINGS[label])
        if mode == "eval" and params["name"] == "gradmem":
            params.update(EVAL_OPTIONS)
        method_cls = get_method(params.pop("name"))
        method = method_cls(build(method_cls.Config, params, "method"), backbone).to(device)
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-4)

    def train_step(batch):
        if label == PLAIN:
            ids, mask, labels = batch
            logits = backbone.model(input_ids=ids, attention_mask=mask).logits
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        else:
            loss, _ = training_loss(method, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def eval_step(batch):
        with torch.no_grad():
            write_then_read(method, batch)

    step = train_step if mode == "train" else eval_step
    method.train(mode == "train")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = _rss_mib()
    step(batches[0])  # warm-up (allocator, optimizer state); its peak counts too
    if device == "cuda":
        torch.cuda.synchronize()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    started = time.perf_counter()
    for batch in batches[1:]:
        step(batch)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / repeats
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / repeats
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20 - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    gflop = None
    if mode == "train":  # after the peak reading: counting costs time. (Its module hooks break
        with FlopCounterMode(display=False) as counter:  # autograd.grad in a no-grad evaluation.)
            step(batches[1])
        gflop = counter.get_total_flops() / 1e9
    return {"setting": label, "mode": mode, "pairs": pairs, "batch": batch_size, "seconds": seconds,
            "peak_mib": peak, "gflop": gflop, "page_faults": faults,
            "contexts_per_second": batch_size / seconds}


def plain_sequences(batch):
    """[C; Q; Y] of each read as one right-padded row: ids, 2D mask, labels (-100 off the targets)."""
    import torch
    rows, labels = [], []
    for q, b in enumerate(batch.context_index.tolist()):
        context = batch.context_ids[b][batch.context_mask[b]]
        read = batch.read_ids[q][batch.read_mask[q]]
        target = torch.where(batch.target_mask[q][batch.read_mask[q]], read, -100)
        rows.append(torch.cat([context, read]))
        labels.append(torch.cat([torch.full_like(context, -100), target]))
    length = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long, device=rows[0].device)
    mask = torch.zeros_like(ids)
    target = torch.full_like(ids, -100)
    for i, (row, label) in enumerate(zip(rows, labels)):
        ids[i, :len(row)], mask[i, :len(row)], target[i, :len(row)] = row, 1, label
    return ids, mask, target


def _child(queue, *args):
    try:
        queue.put(measure(*args))
    except BaseException:
        queue.put({"error": traceback.format_exc()})
        raise


def run_isolated(*args) -> dict:
    """`measure(*args)` in a fresh process; its failure (or death) is raised here, never waited on."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, *args))
    process.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except queues.Empty:
            if not process.is_alive():
                raise RuntimeError(f"measuring {args[0]!r} ({args[5]}) died with exit code {process.exitcode}")
    process.join()
    if "error" in result:
        raise RuntimeError(f"measuring {args[0]!r} ({args[5]}) failed:\n{result['error']}")
    return result


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--trainer" in argv:   # where a trainer's step goes (bench/trainer_overhead.py)
        from bench.trainer_overhead import main as trainer_main
        return trainer_main(argv)
    if any(arg == "--suite" or arg.startswith("--suite=") for arg in argv):   # the suite mode
        from bench.suite_cost import main as suite_main
        return suite_main(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, nargs="+", default=[16])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS))
    parser.add_argument("--out", default="results/bench")
    parser.add_argument("--release-freed-memory", action="store_true",
                        help="keep glibc's default of returning freed blocks to the OS (for comparison)")
    args = parser.parse_args(argv)
    rows = []
    for pairs in args.pairs:
        for label in args.settings:
            rows.append(run_isolated(label, pairs, args.batch, args.repeats, args.device, "train", args.threads,
                                     not args.release_freed_memory))
            print(json.dumps(rows[-1]), flush=True)
        for label in EVAL_SETTINGS:
            rows.append(run_isolated(label, pairs, args.batch, args.repeats, args.device, "eval", args.threads,
                                     not args.release_freed_memory))
            print(json.dumps(rows[-1]), flush=True)
    for row in rows:
        reference = next(r for r in rows if r["setting"] == "full_context" and r["mode"] == row["mode"]
                         and r["pairs"] == row["pairs"])
        row["time_ratio"] = row["seconds"] / reference["seconds"]
        row["memory_ratio"] = row["peak_mib"] / max(reference["peak_mib"], 1e-9)
        row["flop_ratio"] = row["gflop"] / reference["gflop"] if row["gflop"] else None
    import pandas as pd
    import torch
    table = pd.DataFrame(rows)[["mode", "pairs", "setting", "seconds", "time_ratio", "gflop", "flop_ratio",
                                "peak_mib", "memory_ratio", "page_faults",
                                "contexts_per_second"]]
    print(table.to_markdown(index=False, floatfmt=".2f"))
    for pairs in args.pairs:
        step = {r["setting"]: r["seconds"] for r in rows if r["mode"] == "train" and r["pairs"] == pairs}
        if "full_context" in step and PLAIN in step:
            print(f"{pairs} pairs, batch {args.batch}: full-context training step {step['full_context'] * 1e3:.1f} ms, "
                  f"plain forward/backward over [C; Q; Y] {step[PLAIN] * 1e3:.1f} ms: "
                  f"{step['full_context'] / step[PLAIN]:.2f}x (target <= 1.2x)")
    machine = {"device": args.device, "threads": args.threads, "retain_freed_memory": not args.release_freed_memory,
               "platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"step_cost_{args.device}.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    (out / f"step_cost_{args.device}.md").write_text(table.to_markdown(index=False, floatfmt=".2f") + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
