"""The typed run spec: the train and eval sections, the tuning spec, and RunSpec (task + method +
backbone + train + eval sections + seed) with its id, a hash of the resolved spec. Method, task
and backbone sections are checked against their own Config dataclasses (harness.typed.build)."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Literal

from harness import registry
from harness.backbone import BackboneConfig
from harness.errors import HarnessError
from harness.typed import build, check_keys, describe_type, non_negative, type_ok
from harness.ids import content_id

SCALES = ("smoke", "cpu", "chars", "shapes", "gpu", "paper")


@dataclass
class TrainConfig:
    """Outer loop: AdamW with warmup, clipping, periodic evaluation, early stop, curriculum."""
    steps: int = 1000                 # total optimiser steps over all curriculum stages
    batch_size: int = 64              # contexts per step
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.01
    warmup_steps: int = 100
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    grad_clip: float | None = 1.0
    eval_every: int = 100
    eval_examples: int = 256          # validation contexts (one query each)
    target_em: float = 1.0            # stop when validation exact match reaches this (last stage)
    patience: int | None = None       # evaluations without improvement before a stage ends
    queries_per_context: int | Literal["all"] = "all"
    curriculum: list[dict] = field(default_factory=list)  # task overrides, one per stage
    advance_em: float = 0.95          # a stage ends when validation exact match reaches this
    stage_steps: int | list[int] | None = None  # step budget of one stage, or one per stage
                                                # (a list as long as the curriculum; None: what is left)
    warmup_stages: int = 0            # the first this many curriculum stages train (validation,
                                      # patience) but are not scored on the test split: a warm-up
                                      # the tables leave out (the paper's tables start past it)
    collapse_drop: float | None = 0.2  # a stage collapses when validation EM falls this far below
                                      # its best (None: only the loss-above-chance rule)
    precision: Literal["fp32", "bf16"] = "fp32"
    tf32: bool = True                 # CUDA, fp32 runs: TF32 matmuls (10-bit mantissa inputs, fp32
                                      # sums); false: full fp32 matmuls. No effect on a CPU
    tune: dict | None = None          # {grid: {lr: [...], warmup_steps: [...]}, steps: N, seed: 0}:
                                      # pick the grid cell with the best validation EM after N
                                      # steps of the first stage (harness.tune), then train with it

    def validate(self, where):
        non_negative(where, steps=self.steps, warmup_steps=self.warmup_steps, lr=self.lr)
        if self.tune is not None:
            check_tune(self.tune, f"{where}.tune")
        for key in ("batch_size", "eval_every", "eval_examples"):
            if getattr(self, key) < 1:
                raise HarnessError(f"{where}.{key} = {getattr(self, key)!r} must be >= 1")
        if isinstance(self.queries_per_context, int) and self.queries_per_context < 1:
            raise HarnessError(f"{where}.queries_per_context must be >= 1 or 'all'")
        if isinstance(self.stage_steps, list):
            stages = max(len(self.curriculum), 1)
            if len(self.stage_steps) != stages or any(b < 1 for b in self.stage_steps):
                raise HarnessError(f"{where}.stage_steps = {self.stage_steps} must list one budget >= 1 per "
                                   f"curriculum stage ({stages}), or be one number for every stage")
        elif self.stage_steps is not None and self.stage_steps < 1:
            raise HarnessError(f"{where}.stage_steps = {self.stage_steps} must be >= 1")
        if not 0 <= self.warmup_stages < max(len(self.curriculum), 1):
            raise HarnessError(f"{where}.warmup_stages = {self.warmup_stages} must leave at least one of the "
                               f"{max(len(self.curriculum), 1)} curriculum stages scored")


def stage_budget(train: dict, stage: int) -> int:
    """The step budget of curriculum stage `stage` (0-based) under a train section (as a dict):
    its entry of a `stage_steps` list, the one `stage_steps` number, else the run's `steps`."""
    budget = train.get("stage_steps")
    if isinstance(budget, list):
        return budget[stage]
    return budget or train["steps"]


@dataclass
class EvalConfig:
    """Final evaluation on the test split (one query per context, as the paper)."""
    examples: int = 1000
    batch_size: int = 128
    queries_per_context: int | Literal["all"] = 1
    write_settings: list[int] | None = None  # write-axis values to evaluate (GradMem: K, RMT: passes;
                                             # None: the method's own)
    generate: bool = True                    # also greedy-generation exact match

    def validate(self, where):
        if self.examples < 1 or self.batch_size < 1:
            raise HarnessError(f"{where}: examples and batch_size must be >= 1")
        for value in self.write_settings or []:
            non_negative(where, write_settings=value)


TUNE_KEYS = ("grid", "steps", "seed")


def check_tune(tune: dict, where: str) -> None:
    """A tuning spec: a grid over train settings, a step budget, the seed it runs with."""
    check_keys(tune, TUNE_KEYS, where)
    grid = tune.get("grid")
    if not isinstance(grid, dict) or not grid:
        raise HarnessError(f"{where}.grid must be a non-empty mapping of train settings to lists of values")
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"tune", "curriculum", "steps", "stage_steps"}
    for key, values in grid.items():
        if key not in names:
            raise HarnessError(f"{where}.grid key {key!r} is not a tunable train setting; valid: {', '.join(sorted(names))}")
        if not isinstance(values, list) or not values:
            raise HarnessError(f"{where}.grid.{key} must be a non-empty list")
        hint = typing.get_type_hints(TrainConfig)[key]
        for value in values:
            if not type_ok(value, hint):
                raise HarnessError(f"{where}.grid.{key} value {value!r} has the wrong type; expected {describe_type(hint)}")
    steps, seed = tune.get("steps"), tune.get("seed", 0)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise HarnessError(f"{where}.steps = {steps!r} must be a positive integer")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise HarnessError(f"{where}.seed = {seed!r} must be a non-negative integer")


SECTIONS = ("task", "method", "backbone", "train", "eval")


@dataclass
class RunSpec:
    """A fully resolved run."""
    suite: str
    scale: str
    task: dict
    method: dict
    backbone: dict
    train: dict
    eval: dict
    seed: int
    suite_file: str | None = None   # the suite's YAML when given as a path (not a shipped suite's name)

    def identity(self) -> dict:
        """What the run id hashes: each section's values that differ from their defaults (so an
        option added later with a default leaves existing ids alone), and the seed."""
        return {**{key: non_default(key, getattr(self, key)) for key in SECTIONS}, "seed": self.seed}

    @property
    def run_id(self) -> str:
        return content_id(self.identity())

    def typed(self, section: str):
        """The typed config of a section (TrainConfig, the method's Config, ...): see typed_section."""
        return typed_section(section, getattr(self, section))

    def label(self) -> str:
        """'rmt(memory_size=4,write_passes=1,reconstruction_weight=1.0) seed=0': the memory size, the
        method's write-compute setting and its other settings that differ from their defaults, as
        --dry-run prints and --match selects."""
        cls = registry.get_method(self.method["name"])
        axis = cls.write_axis(self.typed("method"))
        always = ["memory_size"] + ([axis["field"]] if axis else [])
        settings = {k: self.method[k] for k in always if k in self.method}
        settings.update((k, v) for k, v in non_default("method", self.method).items() if k != "name")
        inner = ",".join(f"{k}={v}" for k, v in settings.items())
        return f"{self.method['name']}({inner}) seed={self.seed}"

    def task_label(self) -> str:
        """'babi(qa=1,story_sentences=8)': the task and its settings, as --dry-run prints them."""
        settings = ",".join(f"{k}={v}" for k, v in self.task.items() if v is not None and k != "name")
        return f"{self.task['name']}({settings})"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunSpec":
        return cls(**data)


def _section_class(section: str, values: dict):
    if section == "method":
        return registry.get_method(values["name"]).Config
    if section == "task":
        return registry.get_task(values["name"]).Config
    if section == "backbone":
        return BackboneConfig
    return {"train": TrainConfig, "eval": EvalConfig}[section]


def typed_section(section: str, values: dict, where: str | None = None):
    """The one way a section's dict becomes its typed config: the dataclass of the section (the
    named method's or task's Config for those two), built and checked from `values` without its
    `name`. Run specs keep plain dicts (they hash and serialise); code that uses a section asks
    for it typed here."""
    options = {k: v for k, v in values.items() if k != "name"}
    return build(_section_class(section, values), options, where or section)


def non_default(section: str, values: dict) -> dict:
    defaults = dataclasses.asdict(_section_class(section, values)())
    return {k: v for k, v in values.items() if k == "name" or k not in defaults or v != defaults[k]}


def resolve_section(section: str, values: dict, where: str) -> dict:
    """Check one section and fill its defaults; returns a plain dict with `name` first."""
    values = dict(values or {})
    if section in ("task", "method"):
        name = values.pop("name", None)
        if name is None:
            raise HarnessError(f"{where} has no 'name'")
        cls = _section_class(section, {"name": name})
        return {"name": name, **dataclasses.asdict(build(cls, values, f"{where}[{name}]"))}
    return dataclasses.asdict(build(_section_class(section, values), values, where))


LEGACY_KEYS = {"eval": {"write_steps": "write_settings"}}
"""Spec keys renamed since results were written: {section: {old key: new key}}. `migrations.reindex` applies
them to each config.yaml before resolving it (eval.write_steps, the write-axis values to evaluate,
became eval.write_settings: GradMem's method field `write_steps` is its K and keeps its name)."""


def upgrade_spec(data: dict) -> dict:
    """A resolved spec (config.yaml, summary["spec"]) with its legacy keys (`LEGACY_KEYS`) renamed;
    a section holding both an old key and its new one keeps the new one's value."""
    data = dict(data)
    for section, renames in LEGACY_KEYS.items():
        values = data.get(section)
        if not isinstance(values, dict) or not any(old in values for old in renames):
            continue
        values = dict(values)
        for old, new in renames.items():
            if old in values:
                value = values.pop(old)
                values.setdefault(new, value)
        data[section] = values
    return data


def resolve_recorded(data: dict) -> "RunSpec":
    """A recorded spec (config.yaml, summary["spec"]) as a RunSpec resolved with the current code:
    legacy keys renamed (`LEGACY_KEYS`), new options at their defaults."""
    data = upgrade_spec(data)
    return RunSpec(**{**data, **{s: resolve_section(s, data[s], s) for s in SECTIONS}})
