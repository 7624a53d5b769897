"""Suites: strict loading of suite YAML files (harness/suites/*.yaml or a path) and their
expansion at a scale into resolved runs (base + scale + runs x sweep x seeds), each checked to be
feasible before anything runs."""
from __future__ import annotations

import copy
import dataclasses
import itertools
import re
from pathlib import Path

import yaml

from harness import registry
from harness.backbone import check_pretrained_available, max_positions
from harness.errors import HarnessError
from harness.schema import SCALES, SECTIONS, RunSpec, resolve_section, typed_section
from harness.typed import check_keys

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


class _Loader(yaml.SafeLoader):
    """YAML 1.1 as PyYAML reads it, plus YAML 1.2's floats (`3e-3` is 0.003, not the text '3e-3'),
    and a key given twice in one mapping is an error (PyYAML would keep the last value silently)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_yaml(text: str):
    """Parsed YAML text; numbers in exponent form without a dot (`1e-3`) are floats."""
    return yaml.load(text, Loader=_Loader)


def read_suite_file(name: str):
    """The parsed YAML of a suite (name or path); invalid YAML is a HarnessError."""
    path = registry.suite_path(name)
    if path.is_dir():
        raise HarnessError(f"suite path {path} is a folder; give a suite name or a YAML file")
    try:
        return load_yaml(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as error:
        raise HarnessError(f"suite file {path} is not UTF-8 text (byte {error.start}: {error.reason})") from None
    except OSError as error:
        raise HarnessError(f"cannot read suite file {path}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise HarnessError(f"suite file {path} is not valid YAML: {' '.join(str(error).split())}") from None


def check_suite_keys(data, suite_keys, scale_keys, name: str) -> None:
    """Top-level keys, scale names and each scale's keys of a suite."""
    check_keys(data, suite_keys, f"suite {name}")
    _check_description(data, f"suite {name}")
    for scale, body in (data.get("scales") or {}).items():
        if scale not in SCALES:
            raise HarnessError(f"unknown scale {scale!r} in suite {name}; valid: {', '.join(SCALES)}")
        check_keys(body or {}, scale_keys, f"suite {name}, scale {scale}")
        _check_description(body or {}, f"suite {name}, scale {scale}")


def _check_description(body: dict, where: str) -> None:
    description = body.get("description")
    if description is not None and not isinstance(description, str):
        raise HarnessError(f"{where}: description = {description!r} must be text")


def suite_kind(name: str) -> str | None:
    """A suite's `kind` (e.g. `latency`: timed by the `latency` package, not trained), None for a
    training suite."""
    data = read_suite_file(name)
    return data.get("kind") if isinstance(data, dict) else None


def load_suite(name: str) -> dict:
    data = read_suite_file(name)
    if isinstance(data, dict) and data.get("kind") == "latency":   # its keys: latency.spec checks them
        return data
    check_suite_keys(data, SUITE_KEYS, SCALE_KEYS, name)
    return data


def suite_scales(name: str) -> list[str]:
    """The scales a suite defines (none listed: any scale runs its base)."""
    return list(load_suite(name).get("scales") or {})


def expand_suite(name: str, scale: str, methods: list[str] | None = None,
                 seeds: int | None = None, data_dir: str | None = None) -> list[RunSpec]:
    """All runs of a suite at a scale, resolved and validated (nothing is written).

    `data_dir` (the CLI's --data-dir) sets task.data_dir for tasks that read data from disk.
    """
    if scale not in SCALES:
        raise HarnessError(f"unknown scale {scale!r}; valid: {', '.join(SCALES)}")
    data = load_suite(name)
    if data.get("kind") == "latency":
        raise HarnessError(f"suite {name} is a latency suite (no training): run it with run_all.py --suite {name}")
    defined = data.get("scales") or {}
    if defined and scale not in defined:   # else its base would run under that scale's name
        raise HarnessError(f"suite {name} has no {scale} scale; its scales: {', '.join(defined)}")
    scale_body = defined.get(scale) or {}
    base = deep_merge(data.get("base") or {}, scale_body.get("base") or {})
    check_keys(base, SECTIONS, f"suite {name} base")
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
    suite_name = Path(name).stem
    suite_file = None if name in registry.suite_names() else str(registry.suite_path(name).resolve())
    specs, seen = [], set()
    for index, run in enumerate(runs):
        check_keys(run, (*SECTIONS, "seeds", "sweep"), f"suite {name} run {index}")
        run = dict(run)
        run_sweep = _checked_sweep({**sweep, **(run.pop("sweep", None) or {})}, name)   # a run may narrow a sweep
        run_seeds = seeds if seeds is not None else run.pop("seeds", seed_count)   # a run may have its own count
        run.pop("seeds", None)
        if not isinstance(run_seeds, int) or isinstance(run_seeds, bool) or run_seeds < 1:
            raise HarnessError(f"seeds = {run_seeds!r} in suite {name} run {index} must be a positive integer")
        for combo in itertools.product(*run_sweep.values()):
            tree = deep_merge(_shared_method_defaults(base, run, name), run)
            for key, value in zip(run_sweep, combo):
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
                spec = RunSpec(suite=suite_name, scale=scale, seed=seed, suite_file=suite_file, **resolved)
                if spec.run_id not in seen:
                    seen.add(spec.run_id)
                    specs.append(spec)
    for spec in specs:
        check_feasible(spec)
    return specs


def _checked_sweep(sweep: dict, name: str) -> dict:
    for key, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise HarnessError(f"sweep {key!r} in suite {name} must be a non-empty list")
    return sweep


def check_feasible(spec: RunSpec) -> None:
    """Raise HarnessError if a run cannot work (impossible task, sequence too long)."""
    stages = spec.train["curriculum"] or [{}]
    for stage in stages:
        task_cls = registry.get_task(spec.task["name"])
        task = task_cls(typed_section("task", {**spec.task, **stage}, f"task {spec.task['name']} (curriculum stage {stage})"))
        context_len, read_len = task.max_lengths()
        method_cls = registry.get_method(spec.method["name"])
        arch = spec.backbone.get("arch", "llama")
        if spec.backbone.get("pretrained"):
            check_pretrained_available(spec.typed("backbone"))
            if not task_cls.supports_pretrained_tokenizer:
                raise HarnessError(f"task {task_cls.name!r} needs its own tokenizer; "
                                   f"use a backbone built from a config, not {spec.backbone['pretrained']!r}")
        elif arch not in method_cls.archs:
            raise HarnessError(f"method {method_cls.name!r} needs a backbone arch in {list(method_cls.archs)}, "
                               f"got {arch!r}; set backbone.arch in its run")
        needed = method_cls.sequence_length(spec.method, context_len, read_len)
        limit = max_positions(spec.backbone)
        if limit is not None and needed > limit:
            raise HarnessError(
                f"run {spec.label()}: sequences of {needed} tokens (memory slots included) exceed the backbone's "
                f"max_positions={limit} (task {task.config})")


def matching(items: list, patterns: list[str], text, what: str) -> list:
    """The items whose text contains one of `patterns` (all of them when none is given); none is
    a HarnessError naming `what` was searched."""
    if not patterns:
        return items
    kept = [item for item in items if any(pattern in text(item) for pattern in patterns)]
    if not kept:
        raise HarnessError(f"no {what} matches {patterns}; see --dry-run for the labels")
    return kept
