"""What a latency cell measures: WRITE and READ times, peak memory, and the ratio R."""
from __future__ import annotations

import contextlib
import gc
import json
import os
import statistics
import sys
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

from harness import registry
from harness.data import Batch
from harness.typed import build
from latency.spec import Cell, Protocol, method_config

def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def synthetic_batch(vocab: int, batch: int, context: int, query: int, target: int,
                    generator: torch.Generator, device: str) -> Batch:
    """B contexts of `context` random tokens and one read per context: `query` random tokens then
    `target` target tokens (ids 1..vocab-1; 0 is the pad id of the built backbones)."""
    context_ids = torch.randint(1, vocab, (batch, context), generator=generator)
    read_ids = torch.randint(1, vocab, (batch, query + target), generator=generator)
    read_mask = torch.ones_like(read_ids, dtype=torch.bool)
    target_mask = torch.zeros_like(read_mask)
    target_mask[:, query:] = True
    return Batch(context_ids=context_ids, context_mask=torch.ones_like(context_ids, dtype=torch.bool),
                 read_ids=read_ids, read_mask=read_mask, target_mask=target_mask, score_mask=target_mask.clone(),
                 context_index=torch.arange(batch), context_roles=torch.zeros_like(context_ids)).to(device)


def spread(values: list[float]) -> dict:
    """Median, quartiles, min, max and the values (seconds)."""
    ordered = sorted(values)
    quartiles = statistics.quantiles(ordered, n=4, method="inclusive") if len(ordered) > 1 else [ordered[0]] * 3
    return {"median": statistics.median(ordered), "q25": quartiles[0], "q75": quartiles[2],
            "min": ordered[0], "max": ordered[-1], "repeats": len(ordered), "seconds": values}


def repeat(step: Callable[[], tuple[float, ...]], protocol: Protocol) -> list[tuple[float, ...]]:
    """`warmup` untimed calls of `step`, then its timings (each call returns its own durations)."""
    for _ in range(protocol.warmup):
        step()
    results, started = [], time.perf_counter()
    while len(results) < protocol.repeats:
        results.append(step())
        if len(results) >= protocol.min_repeats and time.perf_counter() - started > protocol.max_seconds:
            break
    return results


def timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    """(seconds, result) of one call, the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


CPU_MEMORY_MEASURE = ("peak of live tensor bytes allocated during the call (CPU allocator events of "
                      "torch.profiler, profile_memory=True), above what was live before it")
CUDA_MEMORY_MEASURE = "torch.cuda.max_memory_allocated during the call, above torch.cuda.memory_allocated before it"


@contextlib.contextmanager
def _quiet_stderr():
    """Send the process's stderr (file descriptor 2, C++ logging included) to /dev/null for a moment."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_bytes(fn: Callable[[], Any], device: str) -> tuple[int | None, Any]:
    """(peak bytes allocated by the call above what was live before it, result); None when the
    device gives no measure."""
    if device == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        result = fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated() - before, result
    from torch.profiler import ProfilerActivity, profile
    profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr():   # kineto prints a line at every start and stop
        profiler.start()
    try:
        result = fn()
    finally:
        with _quiet_stderr():
            profiler.stop()
    try:
        events = [e for e in profiler.profiler.kineto_results.events() if e.name() == "[memory]"]
        events = [e for e in events if str(e.device_type()).endswith("CPU")]
    except AttributeError:   # a torch without kineto memory events: no honest number
        return None, result
    live, peak = 0, 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak, result


class BackboneCache:
    """The last backbone built (cells are ordered so that one backbone serves a run of cells)."""

    def __init__(self):
        self.key, self.backbone = None, None

    def get(self, config: dict, seed: int, device: str):
        from harness.backbone import build_backbone
        key = json.dumps([config, seed, device], sort_keys=True)
        if key != self.key:
            self.key, self.backbone = None, None
            gc.collect()
            torch.manual_seed(seed)
            values = {k: v for k, v in config.items() if k != "vocab"}
            self.backbone = build_backbone(values, config["vocab"]).to(device).eval()
            self.key = key
        return self.backbone


def time_method(cell: Cell, backbones: BackboneCache) -> dict:
    """WRITE and READ of one timing cell: medians, spread, memory floats, peak memory."""
    from harness.evaluate import greedy_generate
    from harness.pipeline import check_memory
    protocol = build(Protocol, cell.protocol, "protocol")
    backbone = backbones.get(cell.backbone, cell.seed, cell.device)
    cls = registry.get_method(cell.method["name"])
    torch.manual_seed(cell.seed)
    method = cls(method_config(cls, cell.method), backbone).to(cell.device).eval()
    generator = torch.Generator().manual_seed(cell.seed)
    batch = synthetic_batch(cell.backbone["vocab"], cell.batch_size, cell.context_tokens, cell.query_tokens,
                            cell.target_tokens, generator, cell.device)

    def write():
        with torch.no_grad():
            return method.write(batch.context_ids, batch.context_mask, cell.write_setting)

    def read(memory):
        return greedy_generate(method, memory.select(batch.context_index), batch)

    write_peak, memory = peak_bytes(write, cell.device)
    check_memory(method, memory, cell.batch_size)
    read_peak, _ = peak_bytes(lambda written=memory: read(written), cell.device)
    floats = memory.floats
    del memory

    def step() -> tuple[float, float]:
        write_seconds, written = timed(write, cell.device)
        read_seconds, _ = timed(lambda: read(written), cell.device)
        return write_seconds, read_seconds

    times = repeat(step, protocol)
    return {"write": spread([t[0] for t in times]), "read": spread([t[1] for t in times]),
            "memory_floats": floats,
            "peak_memory": {"write_bytes": write_peak, "read_bytes": read_peak,
                            "measure": CUDA_MEMORY_MEASURE if cell.device == "cuda" else CPU_MEMORY_MEASURE}}


def prefix_write_loss(backbone, memory: torch.Tensor, context_ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of the context given [M; C], summed over the batch (the last
    memory slot predicts the first context token): the loss of a gradient write step."""
    logits = backbone.lm_head(backbone.prefixed_hidden(memory, context_ids)).float()
    return F.cross_entropy(logits.transpose(1, 2), context_ids, reduction="none").mean(1).sum()


def time_ratio(cell: Cell, backbones: BackboneCache) -> dict:
    """R of one ratio cell: a gradient write step over [M; C] against a forward over the same tokens."""
    protocol = build(Protocol, cell.protocol, "protocol")
    backbone = backbones.get(cell.backbone, cell.seed, cell.device)
    generator = torch.Generator().manual_seed(cell.seed)
    context_ids = torch.randint(1, cell.backbone["vocab"], (cell.batch_size, cell.context_tokens),
                                generator=generator).to(cell.device)
    memory = (0.02 * torch.randn(cell.batch_size, cell.memory_size, backbone.hidden_size,
                                 generator=generator)).to(cell.device)

    def forward():
        with torch.no_grad():
            return prefix_write_loss(backbone, memory, context_ids)

    def gradient_step():
        with torch.enable_grad():
            point = memory.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(prefix_write_loss(backbone, point, context_ids), point)
        return memory - grad

    def step() -> tuple[float, float]:
        return timed(forward, cell.device)[0], timed(gradient_step, cell.device)[0]

    times = repeat(step, protocol)
    forward_times, step_times = [t[0] for t in times], [t[1] for t in times]
    return {"forward": spread(forward_times), "gradient_step": spread(step_times),
            "ratio": statistics.median(step_times) / statistics.median(forward_times)}
