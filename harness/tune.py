"""Per-method tuning of train settings (e.g. lr x warmup) on the first two stages' validation split.

Every grid cell trains the run's method from scratch with seed `tune.seed` through the first two
curriculum stages (one if the run has one), at most `tune.steps` steps each, and records each
stage's best validation exact match; the cell with the best second-stage score trains the run
(equal scores: the better first-stage score, then grid order, so the smaller of equal learning
rates when a suite lists them ascending). Why two stages: the first one is easy enough that most
cells saturate it, and its winner was often wrong for the later stages: on 2 KV pairs RMT x1's
lr 3e-4 led the lr 1e-3 cells by one to three validation examples, then held 53% of 4 pairs
where lr 1e-3 held 100%; Mamba's fastest cell at 100%, lr 3e-3, stalled in one of three seeds.
Every method of a suite gets the same grid, budget and rule. The cells are cached in
`results/<suite>/tuning/<tune_id>.json` (`cells`: first-stage scores, `second_stage`: second-stage
scores), keyed by the run's spec without its seed and the tuned settings: every seed of a run
shares one tuning, and a rerun tunes nothing. Parallel workers wait on a lock instead of tuning
the same id twice.
"""
from __future__ import annotations

import itertools
import json
import logging
import tempfile
from pathlib import Path

from filelock import FileLock

from harness import store
from harness.builder import build_run, seed_everything
from harness.schema import RunSpec
from harness.train import Trainer
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


def choose(cells: list[dict], second_stage: list[dict] | None = None) -> dict:
    """The best cell: highest second-stage validation EM (when `second_stage` scores every cell),
    then highest first-stage EM, then the first in grid order."""
    keys = cells_grid_keys(cells)
    second = [find_cell(second_stage or [], _setting(c, keys)) for c in cells]
    if not all(second):
        second = [{"valid_em": 0.0}] * len(cells)
    best = max(zip(cells, second), key=lambda pair: (pair[1]["valid_em"], pair[0]["valid_em"]))   # first of equals
    return _setting(best[0], keys)


def cell_spec(spec: RunSpec, cell: dict, stages: int = 1) -> RunSpec:
    """The run restricted to its first `stages` stages, `tune.steps` steps each at most, the
    tuning seed, with the cell's settings."""
    tune = spec.train["tune"]
    train = {**spec.train, **cell, "curriculum": spec.train["curriculum"][:stages],
             "steps": tune["steps"] * stages, "stage_steps": tune["steps"], "tune": None}
    return RunSpec(**{**spec.to_dict(), "train": train, "seed": tune.get("seed", 0)})


def train_cell(spec: RunSpec, device: str, deadline: float | None = None, cache_dir: Path | None = None,
               progress: bool = False) -> list[dict]:
    """Best validation EM (and the step it came at) of one grid cell on each of its stages; a stage
    lost to a divergence scores 0. With a `cache_dir` the cell checkpoints under
    `<cache_dir>/checkpoints/tune-<cell id>/` like a run, so an interrupted cell resumes."""
    seed_everything(spec.seed)
    task, method = build_run(spec)
    method.to(device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(cache_dir) / "checkpoints" / f"tune-{spec.run_id}" if cache_dir else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        trainer = Trainer(method, task, spec.typed("train"), spec.typed("eval"),
                          spec.seed, device, folder / "metrics.jsonl", folder if cache_dir else None,
                          label=f"tune {spec.label()}", progress=progress, test_at_stage_end=False,
                          deadline=deadline)
        result = trainer.run()
        if cache_dir:
            trainer.discard_resume_point()
            (folder / "metrics.jsonl").unlink(missing_ok=True)
    seconds = round(result["train_seconds"], 1)
    scores = [{"valid_em": max(stage["best_valid_em"], 0.0), "best_step": stage["best_step"], "seconds": seconds}
              for stage in result["stages"]]
    lost = len(spec.train["curriculum"] or [{}]) - len(scores)
    return scores + [{"valid_em": 0.0, "best_step": 0, "seconds": seconds}] * lost


def tuning_stages(spec: RunSpec) -> int:
    return min(2, len(spec.train.get("curriculum") or [{}]))


def cells_left(spec: RunSpec, record: dict) -> list[dict]:
    """The grid settings whose scores are not all in `record` yet."""
    two = tuning_stages(spec) == 2
    return [cell for cell in grid_cells(spec.train["tune"])
            if find_cell(record.get("cells", []), cell) is None
            or (two and find_cell(record.get("second_stage", []), cell) is None)]


def settled_choice(out: Path, spec: RunSpec) -> dict | None:
    """The setting the run's tuning chooses, read from its cache without training anything; None
    while a cell is missing."""
    path = tune_path(out, spec)
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return None if cells_left(spec, record) else choose(record["cells"], record.get("second_stage"))


def tune(spec: RunSpec, out: Path, device: str = "cpu", deadline: float | None = None,
         cache_dir: Path | None = None, progress: bool = False) -> dict:
    """The tuning record of a run (grid, each cell's validation EM on each tuning stage, the
    choice), computing only the cells not yet cached (a cell cut short resumes from its
    checkpoint under `cache_dir`)."""
    tune_spec = spec.train["tune"]
    path = tune_path(out, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        record = json.loads(path.read_text()) if path.exists() else {
            "tune_id": tune_id(spec), "grid": tune_spec["grid"], "steps": tune_spec["steps"],
            "seed": tune_spec.get("seed", 0), "method": spec.method, "cells": []}
        stages = tuning_stages(spec)
        left, total = cells_left(spec, record), len(grid_cells(tune_spec))
        for number, cell in enumerate(left, total - len(left) + 1):
            log.info("%s: tuning cell %d of %d: %s", spec.label(), number, total, cell)
            scores = train_cell(cell_spec(spec, cell, stages), device, deadline, cache_dir, progress)
            log.info("%s: tuning %s: validation EM %s", spec.label(), cell,
                     " then ".join(f"{s['valid_em']:.3f}" for s in scores))
            if find_cell(record["cells"], cell) is None:
                record["cells"].append({**cell, **scores[0]})
            if stages == 2:
                record["second_stage_task"] = spec.train["curriculum"][1]
                record.setdefault("second_stage", []).append({**cell, **scores[1]})
            store.write_json(path, record)   # one cell at a time: an interrupted tuning resumes
        record["chosen"] = choose(record["cells"], record.get("second_stage"))
        store.write_json(path, record)
    return record
