"""Per-method tuning of train settings (e.g. lr x warmup) on the first stage's validation split.

Every grid cell trains the run's method from scratch on the first curriculum stage for
`tune.steps` steps with seed `tune.seed` and records its best validation exact match; the best
cell trains the run. When several cells tie for the best score (an easy first stage saturates:
five of six cells at 100% for Mamba on 2 KV pairs), the tied cells train on through the next
stage (at most `tune.steps` more steps) and the best score there breaks the tie; cells still tied
go by grid order. Suites list learning rates in ascending order, so of equal cells the smaller
rate trains the run: fewest steps to the score, the earlier rule, picked Mamba's lr 3e-3, on
which one of its three KV seeds stalled where lr 1e-3 did not. Every method of a suite gets the
same grid, budget and rule. The cells are cached in
`results/<suite>/tuning/<tune_id>.json`, keyed by the run's spec without its seed and the tuned
settings: every seed of a run shares one tuning, and a rerun tunes nothing. Parallel workers
wait on a lock instead of tuning the same id twice.
"""
from __future__ import annotations

import itertools
import json
import logging
import tempfile
from pathlib import Path

from filelock import FileLock

from harness import store
from harness.schema import EvalConfig, RunSpec, TrainConfig
from harness.typed import build
from harness.ids import content_id

log = logging.getLogger(__name__)


def grid_cells(tune: dict) -> list[dict]:
    """Every combination of the grid's values, in grid order."""
    keys = list(tune["grid"])
    return [dict(zip(keys, values)) for values in itertools.product(*(tune["grid"][k] for k in keys))]


def tune_id(spec: RunSpec) -> str:
    """Hash of the run's identity without its seed and without the settings the grid tunes."""
    identity = spec.identity()
    identity.pop("seed")
    identity["train"] = {k: v for k, v in identity["train"].items() if k not in spec.train["tune"]["grid"]}
    identity["tune"] = spec.train["tune"]
    return content_id(identity)


def tune_path(out: Path, spec: RunSpec) -> Path:
    return Path(out) / spec.suite / "tuning" / f"{tune_id(spec)}.json"


CELL_RESULTS = ("valid_em", "best_step", "seconds")


def cells_grid_keys(cells: list[dict]) -> set:
    return {k for cell in cells for k in cell if k not in CELL_RESULTS}


def _setting(cell: dict, keys) -> dict:
    return {k: v for k, v in cell.items() if k in keys}


def find_cell(cells: list[dict], setting: dict) -> dict | None:
    """The first of `cells` with every value of `setting` (None if none has)."""
    return next((c for c in cells if all(c.get(k) == v for k, v in setting.items())), None)


def tied_leaders(cells: list[dict]) -> list[dict]:
    """The settings that share the best validation EM, in grid order; [] when one cell leads."""
    best = max(c["valid_em"] for c in cells)
    leaders = [_setting(c, cells_grid_keys(cells)) for c in cells if c["valid_em"] == best]
    return leaders if len(leaders) > 1 else []


def choose(cells: list[dict], tie_break: list[dict] | None = None) -> dict:
    """The best cell: highest validation EM; among tied cells the highest EM on the tie-break stage
    (when `tie_break` scores every tied cell); then the first in grid order."""
    keys = cells_grid_keys(cells)
    leaders = tied_leaders(cells)
    broken = [find_cell(tie_break or [], s) for s in leaders]
    if leaders and all(broken):
        best = max(b["valid_em"] for b in broken)
        cells = [find_cell(cells, s) for s, b in zip(leaders, broken) if b["valid_em"] == best]
    best = max(cells, key=lambda cell: cell["valid_em"])   # max keeps the first of equals: grid order
    return _setting(best, keys)


def cell_spec(spec: RunSpec, cell: dict, stages: int = 1) -> RunSpec:
    """The run restricted to its first `stages` stages, `tune.steps` steps each at most, the
    tuning seed, with the cell's settings."""
    tune = spec.train["tune"]
    train = {**spec.train, **cell, "curriculum": spec.train["curriculum"][:stages],
             "steps": tune["steps"] * stages, "stage_steps": tune["steps"], "tune": None}
    return RunSpec(**{**spec.to_dict(), "train": train, "seed": tune.get("seed", 0)})


def train_cell(spec: RunSpec, device: str) -> dict:
    """Best validation EM (and the step it came at) of one grid cell on its last stage."""
    from harness.runner import build_run, seed_everything
    from harness.train import Trainer
    seed_everything(spec.seed)
    task, method = build_run(spec)
    method.to(device)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(method, task, build(TrainConfig, spec.train, "train"), build(EvalConfig, spec.eval, "eval"),
                          spec.seed, device, Path(tmp) / "metrics.jsonl", None, label=f"tune {spec.label()}",
                          progress=False, test_at_stage_end=False)
        result = trainer.run()
    reached = len(result["stages"]) == len(spec.train["curriculum"] or [{}])   # no stage lost to a divergence
    stage = result["stages"][-1] if reached else {"best_valid_em": 0.0, "best_step": 0}
    return {"valid_em": max(stage["best_valid_em"], 0.0), "best_step": stage["best_step"],
            "seconds": round(result["train_seconds"], 1)}


def needs_tie_break(spec: RunSpec, record: dict) -> list[dict]:
    """The tied settings whose tie-break cell is not yet in `record` ([] when none is needed)."""
    if len(spec.train.get("curriculum") or []) < 2 or len(record["cells"]) < len(grid_cells(spec.train["tune"])):
        return []
    return [s for s in tied_leaders(record["cells"]) if find_cell(record.get("tie_break", []), s) is None]


def settled_choice(out: Path, spec: RunSpec) -> dict | None:
    """The setting the run's tuning chooses, read from its cache without training anything; None
    while a grid or tie-break cell is missing."""
    path = tune_path(out, spec)
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    if len(record["cells"]) < len(grid_cells(spec.train["tune"])) or needs_tie_break(spec, record):
        return None
    return choose(record["cells"], record.get("tie_break"))


def tune(spec: RunSpec, out: Path, device: str = "cpu") -> dict:
    """The tuning record of a run (grid, each cell's validation EM, the tie-break cells, the
    choice), computing only the cells not yet cached."""
    tune_spec = spec.train["tune"]
    path = tune_path(out, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        record = json.loads(path.read_text()) if path.exists() else {
            "tune_id": tune_id(spec), "grid": tune_spec["grid"], "steps": tune_spec["steps"],
            "seed": tune_spec.get("seed", 0), "method": spec.method, "cells": []}
        for cell in grid_cells(tune_spec):
            if find_cell(record["cells"], cell) is not None:
                continue
            log.info("%s: tuning %s", spec.label(), cell)
            record["cells"].append({**cell, **train_cell(cell_spec(spec, cell), device)})
            store.write_json(path, record)   # one cell at a time: an interrupted tuning resumes
        for cell in needs_tie_break(spec, record):
            log.info("%s: breaking a tuning tie with %s on stage 2", spec.label(), cell)
            record["tie_break_stage"] = spec.train["curriculum"][1]
            record.setdefault("tie_break", []).append({**cell, **train_cell(cell_spec(spec, cell, 2), device)})
            store.write_json(path, record)
        record["chosen"] = choose(record["cells"], record.get("tie_break"))
        store.write_json(path, record)
    return record
