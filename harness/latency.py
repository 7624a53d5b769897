"""The `latency` suite: what one WRITE and one READ cost, per method, backbone, context length,
batch size and write setting, and when writing a memory once beats re-reading the context.

No training: cost does not depend on the weights, so every backbone is built from a config with
random weights. A suite YAML with `kind: latency` (harness/suites/latency.yaml) names backbone
families (one config per backbone arch, e.g. a GPT-2-shaped Llama and a Mamba-130M-shaped Mamba),
grids (family x context lengths x batch sizes) and a timing protocol; every method of the registry
(plugins included) is timed on the first backbone of a family its `archs` allow, at every value of
its write axis the suite lists (`axis_values`, keyed by the axis's config field; a method without
an axis, or with an axis the suite does not list, gets its own setting).

Two kinds of cell, each a results folder / file that resumes like any run:
- timing  `results/<suite>/<id>/{config.yaml, summary.json}`: WRITE of a batch of contexts and
  READ (greedy decoding of the target, `harness.evaluate.greedy_generate`) of one query per
  context: median, quartiles, min/max of the repeats; memory floats; peak memory.
- ratio   `results/<suite>/ratio/<id>.json`: R = (one gradient write step: forward over [M; C]
  plus the gradient of the next-token loss with respect to M, no graph kept) / (one forward over
  the same tokens without gradient): the paper's cost-model constant.

`break_even_reads` / `break_even_table` (measured) and `predicted_break_even` (the paper's
appendix-D cost model with the measured R) are pure functions over cost tables.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
import torch.nn.functional as F

from harness import registry, store
from harness.suite import check_suite_keys, deep_merge, matching, read_suite_file
from harness.typed import build, positive
from harness.schema import typed_section
from harness.data import Batch
from harness.errors import ContractError, HarnessError
from harness.ids import content_id

log = logging.getLogger(__name__)

KIND = "latency"
SUITE_KEYS = ("kind", "description", "base", "scales")
SCALE_KEYS = ("description", "base")
RATIO_FOLDER = "ratio"


# ---------------------------------------------------------------- the suite spec
@dataclass
class Protocol:
    """How a cell is timed: `warmup` untimed calls, then up to `repeats` timed ones; after
    `max_seconds` of timing a cell stops once it has `min_repeats`."""
    warmup: int = 1
    repeats: int = 5
    min_repeats: int = 3
    max_seconds: float = 60.0

    def validate(self, where):
        if self.warmup < 0:
            raise HarnessError(f"{where}.warmup = {self.warmup} must be >= 0")
        if not 1 <= self.min_repeats <= self.repeats:
            raise HarnessError(f"{where}: need 1 <= min_repeats ({self.min_repeats}) <= repeats ({self.repeats})")
        positive(where, max_seconds=self.max_seconds)


@dataclass
class Grid:
    """One family of backbones timed at every context length x batch size; `axis_values`
    overrides the suite's for this grid (e.g. fewer write steps on a large backbone)."""
    family: str
    contexts: list[int]
    batch_sizes: list[int]
    axis_values: dict | None = None

    def validate(self, where):
        for key in ("contexts", "batch_sizes"):
            values = getattr(self, key)
            if not values or any(v < 1 for v in values):
                raise HarnessError(f"{where}.{key} = {values!r} must be a non-empty list of integers >= 1")
        if self.axis_values is not None:
            check_axis_values(self.axis_values, f"{where}.axis_values")


@dataclass
class CostModel:
    """The paper's cost model: R is measured on the `arch` backbone of every family that has one,
    with `memory_size` memory vectors (null: the `method`'s own); its predicted break-even is
    reported beside the measured one of `method` (a method name of the registry, or null)."""
    method: str | None = None
    arch: str = "llama"
    memory_size: int | None = None

    def validate(self, where):
        if self.memory_size is not None and self.memory_size < 1:
            raise HarnessError(f"{where}.memory_size = {self.memory_size} must be >= 1")


@dataclass
class LatencySpec:
    """A latency suite at one scale (strict: unknown keys and wrong types raise HarnessError)."""
    backbones: dict                    # family -> {arch: {vocab: V, **BackboneConfig}}
    grids: list[dict]                  # Grid entries
    query_tokens: int = 24             # the paper's query length
    target_tokens: int = 4             # tokens READ decodes greedily
    reference: str | None = None   # break-even is measured against this method (e.g. full_context)
    method: dict = field(default_factory=dict)    # options shared by every method that has them
    methods: dict = field(default_factory=dict)   # per method name: its options
    axis_values: dict = field(default_factory=dict)   # write-axis config field -> values to time
    cost_model: dict = field(default_factory=dict)
    protocol: dict = field(default_factory=dict)
    seed: int = 0

    def validate(self, where):
        for key in ("query_tokens", "target_tokens"):
            if getattr(self, key) < 1:
                raise HarnessError(f"{where}.{key} = {getattr(self, key)} must be >= 1")
        if not self.backbones:
            raise HarnessError(f"{where}.backbones must name at least one backbone family")
        for family, archs in self.backbones.items():
            check_family(family, archs, f"{where}.backbones.{family}")
        if not self.grids:
            raise HarnessError(f"{where}.grids must list at least one grid")
        for index, grid in enumerate(self.grids):
            grid = build(Grid, grid, f"{where}.grids[{index}]")
            if grid.family not in self.backbones:
                raise HarnessError(f"{where}.grids[{index}].family = {grid.family!r} is not a backbone family; "
                                   f"valid: {', '.join(self.backbones)}")
        check_axis_values(self.axis_values, f"{where}.axis_values")
        build(Protocol, self.protocol, f"{where}.protocol")
        cost = build(CostModel, self.cost_model, f"{where}.cost_model")
        for name in [self.reference, cost.method, *self.methods]:
            if name is not None:
                registry.get_method(name)
        for name, options in self.methods.items():
            if not isinstance(options, dict):
                raise HarnessError(f"{where}.methods.{name} must be a mapping of that method's options")
        known = {f.name for cls in registry.METHODS.values() for f in dataclasses.fields(cls.Config)}
        for key in self.method:
            if key not in known:
                raise HarnessError(f"unknown key {key!r} in {where}.method; no registered method has it")


def check_axis_values(values: Any, where: str) -> None:
    """{config field: [non-negative integers]}: the write settings timed per axis."""
    if not isinstance(values, dict):
        raise HarnessError(f"{where} must map a write-axis config field to a list of values")
    for key, settings in values.items():
        if not isinstance(settings, list) or not settings or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in settings):
            raise HarnessError(f"{where}.{key} = {settings!r} must be a non-empty list of integers >= 0")


def check_family(family: str, archs: Any, where: str) -> None:
    """A family maps backbone archs to configs built in code, each with its vocabulary size."""
    if not isinstance(archs, dict) or not archs:
        raise HarnessError(f"{where} must map backbone archs to configs, e.g. llama: {{vocab: 50257, layers: 12}}")
    for arch, config in archs.items():
        resolve_backbone(arch, config, f"{where}.{arch}")


def resolve_backbone(arch: str, config: Any, where: str) -> dict:
    """A family entry resolved: every BackboneConfig field plus `vocab`; built from a config only."""
    from harness.backbone import BackboneConfig
    if not isinstance(config, dict):
        raise HarnessError(f"{where} must be a mapping of backbone settings")
    values = dict(config)
    vocab = values.pop("vocab", None)
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 2:
        raise HarnessError(f"{where}.vocab = {vocab!r} must be an integer >= 2 (the backbone's vocabulary size)")
    if values.get("arch", arch) != arch:
        raise HarnessError(f"{where}.arch = {values['arch']!r} differs from its key {arch!r}")
    if values.get("pretrained") or values.get("gguf_file"):
        raise HarnessError(f"{where}: latency backbones are built from configs (cost does not depend on the "
                           f"weights); remove 'pretrained'")
    resolved = dataclasses.asdict(build(BackboneConfig, {**values, "arch": arch}, where))
    return {**resolved, "vocab": vocab}


def is_latency_suite(name: str) -> bool:
    """Whether a suite (name or YAML path) declares `kind: latency`."""
    data = read_suite_file(name)
    return isinstance(data, dict) and data.get("kind") == KIND


def load_spec(name: str, scale: str) -> LatencySpec:
    """The latency suite `name` at `scale`: base merged with the scale's base, validated."""
    data = read_suite_file(name)
    check_suite_keys(data, SUITE_KEYS, SCALE_KEYS, name)
    scales = data.get("scales") or {}
    if scale not in scales:
        raise HarnessError(f"suite {name} has no scale {scale!r}; valid: {', '.join(scales)}")
    base = deep_merge(data.get("base") or {}, (scales[scale] or {}).get("base") or {})
    registry.discover()
    return build(LatencySpec, base, f"suite {name} scale {scale}")


# ---------------------------------------------------------------- cells
@dataclass
class Cell:
    """One thing to time. kind 'timing': a method (resolved config, write axis set to
    `write_setting`) on a backbone; kind 'ratio': R on a backbone with `memory_size` vectors."""
    kind: str
    suite: str
    scale: str
    family: str
    arch: str
    backbone: dict
    context_tokens: int
    query_tokens: int
    target_tokens: int
    batch_size: int
    protocol: dict
    seed: int
    device: str
    method: dict | None = None
    write_setting: int | None = None
    memory_size: int | None = None
    reference: str | None = None
    cost_model_method: str | None = None

    @property
    def run_id(self) -> str:
        return content_id(dataclasses.asdict(self))

    def describe(self) -> dict:
        """The method's self-description (label with this write setting, axis); timing cells only."""
        cls = registry.get_method(self.method["name"])
        return cls.describe(method_config(cls, self.method))

    def label(self) -> str:
        """What --dry-run prints and --match selects."""
        where = f"on {self.family}/{self.arch} context={self.context_tokens} batch={self.batch_size}"
        if self.kind == "ratio":
            return f"R (gradient write step / forward, m={self.memory_size}) {where}"
        return f"{self.describe()['label']} {where}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def method_config(cls: type, method: dict):
    """A method's config dataclass from a resolved method spec {"name": ..., **options}."""
    return typed_section("method", {**method, "name": cls.name}, f"method {cls.name}")


def _method_options(spec: LatencySpec, cls: type) -> dict:
    """The suite's options for a method: shared ones it has, then its own."""
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    shared = {k: v for k, v in spec.method.items() if k in fields}
    return {**shared, **(spec.methods.get(cls.name) or {})}


def write_settings(cls: type, config, axis_values: dict) -> list[int | None]:
    """The write settings to time: the suite's values for the method's write axis (by config
    field), else its own setting; [None] for a method without an axis."""
    axis = cls.write_axis(config)
    if axis is None:
        return [None]
    return list(axis_values.get(axis["field"], [axis["trained"]]))


def family_arch(cls: type, family: dict) -> str | None:
    """The first backbone arch of a family that the method works with (None: none)."""
    return next((arch for arch in cls.archs if arch in family), None)


def expand(name: str, scale: str, device: str, methods: list[str] | None = None) -> tuple[list[Cell], list[str]]:
    """Every cell of the suite at a scale on a device, and a note per method skipped on a family."""
    spec = load_spec(name, scale)
    if methods:
        for method in methods:
            registry.get_method(method)
    protocol = dataclasses.asdict(build(Protocol, spec.protocol, "protocol"))
    cost = build(CostModel, spec.cost_model, "cost_model")
    suite = Path(name).stem
    cells, skipped, seen = [], [], set()
    shape = {"query_tokens": spec.query_tokens, "target_tokens": spec.target_tokens}
    for index, raw in enumerate(spec.grids):
        grid = build(Grid, raw, f"grids[{index}]")
        family = spec.backbones[grid.family]
        axis_values = {**spec.axis_values, **(grid.axis_values or {})}
        common = {"kind": "timing", "suite": suite, "scale": scale, "family": grid.family, "protocol": protocol,
                  "seed": spec.seed, "device": device, **shape}
        for method_name, cls in sorted(registry.METHODS.items()):
            if methods and method_name not in methods:
                continue
            arch = family_arch(cls, family)
            if arch is None:
                skipped.append(f"{method_name}: family {grid.family} has no backbone in {list(cls.archs)}")
                continue
            backbone = resolve_backbone(arch, family[arch], f"backbones.{grid.family}.{arch}")
            base_options = _method_options(spec, cls)
            for setting in write_settings(cls, method_config(cls, {"name": method_name, **base_options}), axis_values):
                options = dict(base_options)
                if setting is not None:
                    options[cls.write_axis(method_config(cls, {"name": method_name, **options}))["field"]] = setting
                resolved = {"name": method_name, **dataclasses.asdict(method_config(cls, {"name": method_name, **options}))}
                for context in grid.contexts:
                    for batch in grid.batch_sizes:
                        cell = Cell(**common, arch=arch, backbone=backbone, context_tokens=context, batch_size=batch,
                                    method=resolved, write_setting=setting, reference=spec.reference,
                                    cost_model_method=cost.method)
                        check_positions(cell)
                        if cell.run_id not in seen:
                            seen.add(cell.run_id)
                            cells.append(cell)
        if cost.arch in family:
            memory = cost.memory_size or _cost_model_memory(spec, cost)
            backbone = resolve_backbone(cost.arch, family[cost.arch], f"backbones.{grid.family}.{cost.arch}")
            for context in grid.contexts:
                for batch in grid.batch_sizes:
                    cell = Cell(**{**common, "kind": "ratio"}, arch=cost.arch, backbone=backbone,
                                context_tokens=context, batch_size=batch, memory_size=memory)
                    if cell.run_id not in seen:
                        seen.add(cell.run_id)
                        cells.append(cell)
    return cells, skipped


def _cost_model_memory(spec: LatencySpec, cost: CostModel) -> int:
    """Memory vectors of R's measurement: the cost-model method's memory_size."""
    if cost.method is None:
        raise HarnessError("cost_model needs a memory_size, or a method whose memory_size it takes")
    cls = registry.get_method(cost.method)
    config = method_config(cls, {"name": cost.method, **_method_options(spec, cls)})
    size = getattr(config, "memory_size", None)
    if size is None:
        raise HarnessError(f"cost_model.method {cost.method!r} has no memory_size; set cost_model.memory_size")
    return size


def check_positions(cell: Cell) -> None:
    """Raise HarnessError when the longest sequence a method may build exceeds the backbone."""
    from harness.backbone import max_positions
    limit = max_positions(cell.backbone)
    needed = registry.get_method(cell.method["name"]).sequence_length(
        cell.method, cell.context_tokens, cell.query_tokens + cell.target_tokens)
    if limit is not None and needed > limit:
        raise HarnessError(f"cell {cell.label()}: up to {needed} tokens exceed the backbone's "
                           f"max_positions={limit}; raise backbones.{cell.family}.{cell.arch}.max_positions")


# ---------------------------------------------------------------- timing
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


# ---------------------------------------------------------------- running and storing
def cell_path(out: Path, cell: Cell) -> Path:
    """summary.json of a timing cell; <id>.json under ratio/ for a ratio cell."""
    if cell.kind == "ratio":
        return Path(out) / cell.suite / RATIO_FOLDER / f"{cell.run_id}.json"
    return store.run_dir(out, cell.suite, cell.run_id) / "summary.json"


def is_finished(out: Path, cell: Cell) -> bool:
    """Its record reads back valid (`harness.store.record_state`); a damaged one is timed again."""
    return store.record_state(cell_path(out, cell)) == "finished"


def summary_of(cell: Cell, measured: dict, seconds: float) -> dict:
    """A timing cell's summary, read by `load` below (kind, cell, measurements); `harness.store.load`
    leaves it out (it has a `kind`). The spec says what was timed, in the runs' layout."""
    from harness.runner import versions
    spec = {"suite": cell.suite, "scale": cell.scale, "seed": cell.seed, "method": cell.method,
            "backbone": cell.backbone,
            "task": {"name": "synthetic_tokens", "context_tokens": cell.context_tokens,
                     "query_tokens": cell.query_tokens, "target_tokens": cell.target_tokens,
                     "batch_size": cell.batch_size},
            "train": {}, "eval": {}}
    return {"run_id": cell.run_id, "label": cell.label(), "kind": KIND, "status": "finished",
            "describe": cell.describe(), "spec": spec, "cell": cell.to_dict(), **measured,
            "wall_seconds": seconds, "device": cell.device, "versions": versions()}


def run_cell(cell: Cell, out: Path, backbones: BackboneCache) -> float:
    """Time one cell and write its results atomically; returns its wall time."""
    started = time.time()
    if cell_path(out, cell).exists():   # here only when damaged (`is_finished`)
        store.set_aside(cell_path(out, cell))
    if cell.kind == "ratio":
        from harness.runner import versions
        measured = time_ratio(cell, backbones)
        store.write_json(cell_path(out, cell), {"run_id": cell.run_id, "label": cell.label(), "kind": "ratio",
                                                "cell": cell.to_dict(), **measured,
                                                "wall_seconds": time.time() - started, "versions": versions()})
    else:
        measured = time_method(cell, backbones)
        directory = store.run_dir(out, cell.suite, cell.run_id)
        store.write_yaml(directory / "config.yaml", cell.to_dict())
        store.write_json(directory / "summary.json", summary_of(cell, measured, time.time() - started))
    return time.time() - started


def run_cells(cells: list[Cell], out: Path, progress: bool = True):
    """Time every unfinished cell, one at a time (parallel timings would disturb each other).
    A cell that raises is reported as failed and the others go on."""
    from tqdm import tqdm
    from harness.allocator import retain_freed_memory
    from harness.runner import RunOutcome
    outcomes = [RunOutcome(c.run_id, c.label(), "skipped") for c in cells if is_finished(out, c)]
    pending = sorted((c for c in cells if not is_finished(out, c)),
                     key=lambda c: (c.family, c.arch, json.dumps(c.backbone, sort_keys=True), c.kind))
    if not pending:
        return outcomes
    retain_freed_memory()
    backbones = BackboneCache()
    for cell in tqdm(pending, desc="latency cells", disable=not progress):
        try:
            seconds = run_cell(cell, out, backbones)
            outcomes.append(RunOutcome(cell.run_id, cell.label(), "finished", seconds))
            log.info("%s: %.1f s", cell.label(), seconds)
        except ContractError as error:
            log.error("cell %s failed: %s", cell.label(), error)
            outcomes.append(RunOutcome(cell.run_id, cell.label(), "failed", error=f"ContractError: {error}"))
        except Exception as error:   # a failing method is reported; the suite goes on
            log.exception("cell %s failed", cell.label())
            outcomes.append(RunOutcome(cell.run_id, cell.label(), "failed", error=f"{type(error).__name__}: {error}"))
    return outcomes


def print_plan(cells: list[Cell], skipped: list[str], out: Path) -> None:
    """--dry-run: every cell, done or to time, and a rough bound on the time."""
    todo = [c for c in cells if not is_finished(out, c)]
    for cell in cells:
        print(f"{cell.run_id}  {'done ' if is_finished(out, cell) else 'todo '} {cell.label()}")
    for note in sorted(set(skipped)):
        print(f"skipped {note}")
    calls = sum(c.protocol["warmup"] + c.protocol["repeats"] + (1 if c.kind == "timing" else 0) for c in todo)
    bound = sum(c.protocol["max_seconds"] for c in todo)
    print(f"{len(cells)} cells ({sum(c.kind == 'ratio' for c in cells)} R measurements), {len(todo)} to time: "
          f"{calls} timed calls at most; each cell stops repeating after max_seconds once it has min_repeats "
          f"(at most ~{bound / 60:.0f} minutes if every cell ran to its limit)")


# ---------------------------------------------------------------- results, break-even, cost model
def load(results: Path | str = "results") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(timing cells, R measurements) of every latency suite under `results`, one row each."""
    timings, ratios = [], []
    for _, summary in store.summaries(results):
        if summary.get("kind") == KIND:
            timings.append(timing_row(summary))
    for _, summary in store.summaries(results, f"*/{RATIO_FOLDER}/*.json"):
        if summary.get("kind") == "ratio":
            cell = summary["cell"]
            ratios.append({**_cell_keys(cell), "memory_size": cell["memory_size"], "ratio": summary["ratio"],
                           "forward": summary["forward"]["median"], "gradient_step": summary["gradient_step"]["median"]})
    return pd.DataFrame(timings), pd.DataFrame(ratios)


def _cell_keys(cell: dict) -> dict:
    return {k: cell[k] for k in ("suite", "scale", "device", "family", "arch", "context_tokens", "query_tokens",
                                 "target_tokens", "batch_size")}


def timing_row(summary: dict) -> dict:
    """One row of a timing summary: where it ran, what it is, its medians and spread (seconds)."""
    cell, peak = summary["cell"], summary.get("peak_memory") or {}
    axis = summary["describe"].get("axis") or {}
    row = {**_cell_keys(cell), "method": cell["method"]["name"], "label": summary["describe"]["label"],
           "axis": axis.get("name"), "write_setting": cell["write_setting"],
           "memory_size": cell["method"].get("memory_size"), "reference": cell["reference"],
           "cost_model_method": cell["cost_model_method"], "memory_floats": summary["memory_floats"],
           "peak_write_bytes": peak.get("write_bytes"), "peak_read_bytes": peak.get("read_bytes"),
           "threads": summary.get("versions", {}).get("threads"), "gpu": summary.get("versions", {}).get("gpu")}
    for part in ("write", "read"):
        for stat in ("median", "q25", "q75", "min", "max", "repeats"):
            row[f"{part}_{stat}"] = summary[part][stat]
    row["write"], row["read"] = row["write_median"], row["read_median"]
    return row


def break_even_reads(write_a: float, read_a: float, write_b: float, read_b: float) -> int | None:
    """The smallest N >= 1 from which WRITE_a + N READ_a <= WRITE_b + N READ_b holds for N and every
    larger count; None when a never pays off (its READ is slower, or as fast with a slower WRITE)."""
    if read_a < read_b:
        return max(1, math.ceil((write_a - write_b) / (read_b - read_a)))
    if read_a == read_b and write_a <= write_b:
        return 1
    return None


GROUP_KEYS = ["suite", "scale", "device", "family", "context_tokens", "query_tokens", "target_tokens", "batch_size"]


def break_even_table(costs: pd.DataFrame, keys: list[str] | None = None) -> pd.DataFrame:
    """`costs` (columns: `keys`, method, write, read, reference) with `break_even`: per row, the
    measured break-even reads against its `reference` method's row of the same group (the one with
    the smallest write setting when it has several), None when it never pays off; and
    `reference_found` (False: the group has no row of the reference method, break_even is None)."""
    keys = GROUP_KEYS if keys is None else keys
    out = costs.copy()
    out["break_even"] = pd.Series([None] * len(out), index=out.index, dtype=object)
    out["reference_found"] = False
    for _, group in out.groupby(keys, dropna=False):
        for reference, rows in group.groupby("reference", dropna=False):
            ref = group[group["method"] == reference]
            if ref.empty:
                continue
            if "write_setting" in ref:
                ref = ref.sort_values("write_setting", na_position="first")
            ref = ref.iloc[0]
            for index, row in rows.iterrows():
                out.at[index, "break_even"] = break_even_reads(row["write"], row["read"], ref["write"], ref["read"])
                out.at[index, "reference_found"] = True
    return out


def predicted_break_even(context: int, query: int, memory: int, steps: int, ratio: float) -> float | None:
    """The paper's appendix-D cost model: T_full ~ c^2 + c q N, T_write ~ R (c+m)^2 K + m^2 + m q N;
    writing is cheaper when N > [c^2 (RK - 1) + (1 + RK) m^2 + 2 c m R K] / [q (c - m)]. Returns that
    smallest integer N (>= 1), or None when c <= m (never)."""
    c, q, m, K, R = context, query, memory, steps, ratio
    if c <= m:
        return None
    bound = (c * c * (R * K - 1) + (1 + R * K) * m * m + 2 * c * m * R * K) / (q * (c - m))
    return max(1, math.floor(bound) + 1)


def with_predictions(timings: pd.DataFrame, ratios: pd.DataFrame) -> pd.DataFrame:
    """Timings with `ratio` (R of the same family, context, batch and device) and `predicted` (the
    cost model's break-even N with that R) on the rows of each suite's cost-model method."""
    out = timings.copy()
    out["ratio"], out["predicted"] = float("nan"), pd.Series([None] * len(out), index=out.index, dtype=object)
    if out.empty or ratios.empty:
        return out
    lookup = {tuple(r[k] for k in GROUP_KEYS): r["ratio"] for _, r in ratios.iterrows()}
    for index, row in out.iterrows():
        if row["method"] != row["cost_model_method"] or pd.isna(row["write_setting"]):
            continue
        ratio = lookup.get(tuple(row[k] for k in GROUP_KEYS))
        if ratio is None or pd.isna(row["memory_size"]):
            continue
        out.at[index, "ratio"] = ratio
        out.at[index, "predicted"] = predicted_break_even(row["context_tokens"], row["query_tokens"],
                                                          int(row["memory_size"]), int(row["write_setting"]), ratio)
    return out


# ---------------------------------------------------------------- command line
def main(args, scale: str, device: str, methods: list[str] | None, out: Path) -> int:
    """`run_all.py --suite latency`: expand, print (--dry-run) or time what is not finished."""
    if args.seeds is not None:
        raise HarnessError("--seeds does not apply to a latency suite (cost does not depend on the weights)")
    if args.jobs != 1 or args.backend != "loky":
        raise HarnessError(f"a latency suite times one cell at a time on this machine (--jobs 1, --backend loky); "
                           f"got --jobs {args.jobs} --backend {args.backend}: parallel timings disturb each other")
    cells, skipped = expand(args.suite, scale, device, methods)
    cells = matching(cells, args.match, lambda c: c.label(), f"cell of suite {args.suite} at scale {scale}")
    if args.dry_run:
        print_plan(cells, skipped, out)
        return 0
    for note in sorted(set(skipped)):
        log.info("skipped %s", note)
    log.info("latency suite %s at scale %s: %d cells on %s (%d threads)", args.suite, scale, len(cells), device,
             torch.get_num_threads())
    started = time.time()
    outcomes = run_cells(cells, out, progress=not args.quiet)
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
        if outcome.status == "failed":
            print(f"failed: {outcome.label}: {outcome.error}", file=sys.stderr)
    log.info("done in %.0f s: %s", time.time() - started, ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return 1 if counts.get("failed") else 0
