"""Typed run specs, strict loading of suite YAML files, and run ids.

A run = task + method + backbone + train + eval sections + seed. Each section is checked
against a dataclass (unknown keys and wrong types raise HarnessError) and resolved with its
defaults; the run id is a hash of the resolved spec.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from harness import registry
from harness.errors import HarnessError

SCALES = ("smoke", "cpu", "gpu", "paper")


# ---------------------------------------------------------------- strict dataclass building
def _type_ok(value, annotation) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if origin is Literal:
        return value in typing.get_args(annotation)
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple):
        (item,) = typing.get_args(annotation)[:1] or (Any,)
        return isinstance(value, (list, tuple)) and all(_type_ok(v, item) for v in value)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _accepts_int(annotation) -> bool:
    if annotation is int or annotation is Any:
        return True
    if typing.get_origin(annotation) in (Union, types.UnionType, Literal):
        return any(a is int or (typing.get_origin(a) is None and isinstance(a, int) and not isinstance(a, bool))
                   or _accepts_int(a) for a in typing.get_args(annotation) if not isinstance(a, str))
    return False


def _describe(annotation) -> str:
    if typing.get_origin(annotation) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def build(cls, values: dict | None, where: str):
    """Instantiate dataclass `cls` from `values`, rejecting unknown keys and wrong types."""
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            raise HarnessError(f"unknown key {key!r} in {where}; valid: {', '.join(names)}")
    for key, value in values.items():
        if not _type_ok(value, hints[key]):
            raise HarnessError(f"{where}.{key} = {value!r} has the wrong type; expected {_describe(hints[key])}")
        if isinstance(value, int) and not isinstance(value, bool) and not _accepts_int(hints[key]):
            values[key] = float(value)   # `lr: 1` and `lr: 1.0` are the same run
    try:
        instance = cls(**values)
    except (TypeError, ValueError) as error:
        raise HarnessError(f"{where}: {error}") from None
    check = getattr(instance, "validate", None)
    if check:
        check(where)
    return instance


def non_negative(where: str, **values) -> None:
    """Raise HarnessError for any negative, NaN or infinite number among `values`."""
    for key, value in values.items():
        if value is not None and not (0 <= value < math.inf):
            raise HarnessError(f"{where}.{key} = {value!r} must be a finite number >= 0")


def positive(where: str, **values) -> None:
    """Raise HarnessError for any number among `values` that is not finite and > 0."""
    for key, value in values.items():
        if value is not None and not (0 < value < math.inf):
            raise HarnessError(f"{where}.{key} = {value!r} must be a finite number > 0")


# ---------------------------------------------------------------- sections
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
    stage_steps: int | None = None    # step budget of one stage (None: what is left)
    collapse_drop: float | None = 0.2  # a stage collapses when validation EM falls this far below
                                      # its best (None: only the loss-above-chance rule)
    precision: Literal["fp32", "bf16"] = "fp32"
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


@dataclass
class EvalConfig:
    """Final evaluation on the test split (one query per context, as the paper)."""
    examples: int = 1000
    batch_size: int = 128
    queries_per_context: int | Literal["all"] = 1
    write_steps: list[int] | None = None   # write steps to evaluate (None: the method's own)
    generate: bool = True                  # also greedy-generation exact match

    def validate(self, where):
        if self.examples < 1 or self.batch_size < 1:
            raise HarnessError(f"{where}: examples and batch_size must be >= 1")
        for k in self.write_steps or []:
            non_negative(where, write_steps=k)


TUNE_KEYS = ("grid", "steps", "seed")


def check_tune(tune: dict, where: str) -> None:
    """A tuning spec: a grid over train settings, a step budget, the seed it runs with."""
    _check_keys(tune, TUNE_KEYS, where)
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
            if not _type_ok(value, hint):
                raise HarnessError(f"{where}.grid.{key} value {value!r} has the wrong type; expected {_describe(hint)}")
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

    def identity(self) -> dict:
        """What the run id hashes: each section's values that differ from their defaults (so an
        option added later with a default leaves existing ids alone), and the seed."""
        return {**{key: _non_default(key, getattr(self, key)) for key in SECTIONS}, "seed": self.seed}

    @property
    def run_id(self) -> str:
        text = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    def label(self) -> str:
        """'rmt(memory_size=4,write_passes=1,reconstruction_weight=1.0) seed=0': the memory size, the
        method's write-compute setting and its other settings that differ from their defaults, as
        --dry-run prints and --match selects."""
        cls = registry.get_method(self.method["name"])
        axis = cls.write_axis(build(cls.Config, {k: v for k, v in self.method.items() if k != "name"}, "method"))
        always = ["memory_size"] + ([axis["field"]] if axis else [])
        settings = {k: self.method[k] for k in always if k in self.method}
        settings.update((k, v) for k, v in _non_default("method", self.method).items() if k != "name")
        inner = ",".join(f"{k}={v}" for k, v in settings.items())
        return f"{self.method['name']}({inner}) seed={self.seed}"

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
        from harness.backbone import BackboneConfig
        return BackboneConfig
    return {"train": TrainConfig, "eval": EvalConfig}[section]


def _non_default(section: str, values: dict) -> dict:
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


# ---------------------------------------------------------------- suites
MAX_SEEDS = 1000
SUITE_KEYS = ("description", "base", "runs", "sweep", "seeds", "scales")
SCALE_KEYS = ("description", "base", "runs", "sweep", "seeds")


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _set_path(tree: dict, dotted: str, value, where: str) -> None:
    parts = dotted.split(".")
    if parts[0] not in SECTIONS or len(parts) < 2:
        raise HarnessError(f"sweep key {dotted!r} in {where} must look like 'section.key' with section in {', '.join(SECTIONS)}")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _check_keys(mapping, valid, where):
    if not isinstance(mapping, dict):
        raise HarnessError(f"{where} must be a mapping, got {type(mapping).__name__}")
    for key in mapping:
        if key not in valid:
            raise HarnessError(f"unknown key {key!r} in {where}; valid: {', '.join(valid)}")


def _shared_method_defaults(base: dict, run: dict, suite: str) -> dict:
    """`base.method` holds options shared by several methods (e.g. memory_size): each run keeps
    those its method has. A key no registered method has is an error."""
    shared = dict(base.get("method") or {})
    if not shared:
        return base
    registry.discover()
    known = {f.name for cls in registry.METHODS.values() for f in dataclasses.fields(cls.Config)} | {"name"}
    for key in shared:
        if key not in known:
            raise HarnessError(f"unknown key {key!r} in suite {suite} base.method; no method has it")
    method_name = (run.get("method") or {}).get("name", shared.get("name"))
    if method_name is None:
        return base
    fields = {f.name for f in dataclasses.fields(registry.get_method(method_name).Config)}
    return {**base, "method": {k: v for k, v in shared.items() if k in fields or k == "name"}}


def _runs_of_unlisted_methods(methods: list[str], runs: list[dict], base: dict) -> list[dict]:
    """A run with its defaults (plus the suite's shared method options) for each selected method
    that the suite does not list, so a new method runs on every shipped suite."""
    listed = {(run.get("method") or {}).get("name") for run in runs} | {(base.get("method") or {}).get("name")}
    extra = []
    for name in methods:
        if name in listed:
            continue
        run = {"method": {"name": name}}
        archs = registry.get_method(name).archs
        if (base.get("backbone") or {}).get("arch", "llama") not in archs and not (base.get("backbone") or {}).get("pretrained"):
            run["backbone"] = {"arch": archs[0]}
        extra.append(run)
    return extra


def load_suite(name: str) -> dict:
    path = registry.suite_path(name)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise HarnessError(f"suite file {path} is not valid YAML: {error}") from None
    _check_keys(data, SUITE_KEYS, f"suite {name}")
    for scale, body in (data.get("scales") or {}).items():
        if scale not in SCALES:
            raise HarnessError(f"unknown scale {scale!r} in suite {name}; valid: {', '.join(SCALES)}")
        _check_keys(body or {}, SCALE_KEYS, f"suite {name}, scale {scale}")
    return data


def expand_suite(name: str, scale: str, methods: list[str] | None = None,
                 seeds: int | None = None, data_dir: str | None = None) -> list[RunSpec]:
    """All runs of a suite at a scale, resolved and validated (nothing is written).

    `data_dir` (the CLI's --data-dir) sets task.data_dir for tasks that read data from disk.
    """
    if scale not in SCALES:
        raise HarnessError(f"unknown scale {scale!r}; valid: {', '.join(SCALES)}")
    data = load_suite(name)
    scale_body = (data.get("scales") or {}).get(scale) or {}
    base = deep_merge(data.get("base") or {}, scale_body.get("base") or {})
    _check_keys(base, SECTIONS, f"suite {name} base")
    runs = scale_body.get("runs", data.get("runs")) or [{}]
    sweep = {**(data.get("sweep") or {}), **(scale_body.get("sweep") or {})}
    seed_count = seeds if seeds is not None else scale_body.get("seeds", data.get("seeds", 1))
    if not isinstance(seed_count, int) or not 1 <= seed_count <= MAX_SEEDS:
        raise HarnessError(f"seeds = {seed_count!r} must be an integer from 1 to {MAX_SEEDS}")
    if methods:
        registry.discover()
        for method in methods:
            registry.get_method(method)
        runs = list(runs) + _runs_of_unlisted_methods(methods, runs, base)
    sweep_keys = list(sweep)
    for key, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise HarnessError(f"sweep {key!r} in suite {name} must be a non-empty list")
    suite_name = Path(name).stem
    specs, seen = [], set()
    for index, run in enumerate(runs):
        _check_keys(run, (*SECTIONS, "seeds"), f"suite {name} run {index}")
        run = dict(run)
        run_seeds = seeds if seeds is not None else run.pop("seeds", seed_count)   # a run may have its own count
        run.pop("seeds", None)
        if not isinstance(run_seeds, int) or isinstance(run_seeds, bool) or run_seeds < 1:
            raise HarnessError(f"seeds = {run_seeds!r} in suite {name} run {index} must be a positive integer")
        for combo in itertools.product(*(sweep[k] for k in sweep_keys)):
            tree = deep_merge(_shared_method_defaults(base, run, name), run)
            for key, value in zip(sweep_keys, combo):
                _set_path(tree, key, value, f"suite {name}")
            if methods and tree.get("method", {}).get("name") not in methods:
                continue
            if data_dir is not None and "name" in tree.get("task", {}):
                task_fields = {f.name for f in dataclasses.fields(registry.get_task(tree["task"]["name"]).Config)}
                if "data_dir" in task_fields:
                    tree["task"]["data_dir"] = str(data_dir)
            where = f"suite {name} run {index}"
            resolved = {s: resolve_section(s, tree.get(s), f"{where} {s}") for s in SECTIONS}
            for seed in range(run_seeds):
                spec = RunSpec(suite=suite_name, scale=scale, seed=seed, **resolved)
                if spec.run_id not in seen:
                    seen.add(spec.run_id)
                    specs.append(spec)
    for spec in specs:
        check_feasible(spec)
    return specs


def check_feasible(spec: RunSpec) -> None:
    """Raise HarnessError if a run cannot work (impossible task, sequence too long)."""
    from harness.backbone import max_positions
    stages = spec.train["curriculum"] or [{}]
    for stage in stages:
        task_values = {**{k: v for k, v in spec.task.items() if k != "name"}, **stage}
        task_cls = registry.get_task(spec.task["name"])
        task = task_cls(build(task_cls.Config, task_values, f"task {spec.task['name']} (curriculum stage {stage})"))
        context_len, read_len = task.max_lengths()
        method_cls = registry.get_method(spec.method["name"])
        arch = spec.backbone.get("arch", "llama")
        if spec.backbone.get("pretrained"):
            from harness.backbone import BackboneConfig, check_pretrained_available
            check_pretrained_available(build(BackboneConfig, spec.backbone, "backbone"))
            if not task_cls.supports_pretrained_tokenizer:
                raise HarnessError(f"task {task_cls.name!r} needs its own tokenizer; "
                                   f"use a backbone built from a config, not {spec.backbone['pretrained']!r}")
        elif arch not in method_cls.archs:
            raise HarnessError(f"method {method_cls.name!r} needs a backbone arch in {list(method_cls.archs)}, "
                               f"got {arch!r}; set backbone.arch in its run")
        needed = method_cls.sequence_length(spec.method, context_len, read_len) \
            if hasattr(method_cls, "sequence_length") else context_len + read_len
        limit = max_positions(spec.backbone)
        if limit is not None and needed > limit:
            raise HarnessError(
                f"run {spec.label()}: sequences of {needed} tokens exceed the backbone's "
                f"max_positions={limit} (task {task_values})")
