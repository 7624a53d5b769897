"""The latency suite's spec (backbone families, grids, protocol, cost model) and its cells."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import registry
from harness.errors import HarnessError
from harness.ids import content_id
from harness.schema import typed_section
from harness.suite import check_suite_keys, deep_merge, read_suite_file
from harness.typed import build, positive

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
