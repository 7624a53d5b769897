"""Per-method tuning of train settings (e.g. lr x warmup) on the first stage's validation split.

Every grid cell trains the run's method from scratch on the first curriculum stage for
`tune.steps` steps with seed `tune.seed` and records its best validation exact match; the best
cell (ties: the one that got there in fewer steps, then grid order) trains the run. Every method
of a suite gets the same grid and budget. The cells are cached in
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


def choose(cells: list[dict]) -> dict:
    """The best cell: highest validation EM, then fewest steps to it, then grid order."""
    best = max(enumerate(cells), key=lambda item: (item[1]["valid_em"], -item[1]["best_step"], -item[0]))[1]
    return {k: v for k, v in best.items() if k in cells_grid_keys(cells)}


def cell_spec(spec: RunSpec, cell: dict) -> RunSpec:
    """The run restricted to its first stage, the tuning budget and seed, with the cell's settings."""
    tune = spec.train["tune"]
    stages = spec.train["curriculum"][:1]
    train = {**spec.train, **cell, "curriculum": stages, "steps": tune["steps"], "stage_steps": tune["steps"],
             "tune": None}
    return RunSpec(**{**spec.to_dict(), "train": train, "seed": tune.get("seed", 0)})


def train_cell(spec: RunSpec, device: str) -> dict:
    """Best validation EM (and the step it came at) of one grid cell."""
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
    stage = result["stages"][0] if result["stages"] else {"best_valid_em": 0.0, "best_step": 0}
    return {"valid_em": max(stage["best_valid_em"], 0.0), "best_step": stage["best_step"],
            "seconds": round(result["train_seconds"], 1)}


def tune(spec: RunSpec, out: Path, device: str = "cpu") -> dict:
    """The tuning record of a run (grid, each cell's validation EM, the choice), computing only
    the cells not yet cached."""
    tune_spec = spec.train["tune"]
    path = tune_path(out, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        record = json.loads(path.read_text()) if path.exists() else {
            "tune_id": tune_id(spec), "grid": tune_spec["grid"], "steps": tune_spec["steps"],
            "seed": tune_spec.get("seed", 0), "method": spec.method, "cells": []}
        for cell in grid_cells(tune_spec):
            if any(all(done.get(k) == v for k, v in cell.items()) for done in record["cells"]):
                continue
            log.info("%s: tuning %s", spec.label(), cell)
            record["cells"].append({**cell, **train_cell(cell_spec(spec, cell), device)})
            store.write_json(path, record)   # one cell at a time: an interrupted tuning resumes
        record["chosen"] = choose(record["cells"])
        store.write_json(path, record)
    return record
