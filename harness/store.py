"""Results layout, atomic writes, and loading every summary into one DataFrame.

results/<suite>/<run_id>/config.yaml   the resolved spec
                         metrics.jsonl the training curve, one JSON object per evaluation
                         summary.json  final metrics; a summary that reads back whole and
                                       valid marks the run finished (`summary_state`)
<out>/.locks/<suite>-<run_id>.lock     held by the one process training that run
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import pandas as pd
import yaml



def run_dir(out: Path, suite: str, run_id: str) -> Path:
    return Path(out) / suite / run_id


def atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data) -> None:
    atomic_write(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_yaml(path: Path, data) -> None:
    atomic_write(path, yaml.safe_dump(data, sort_keys=False))


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record, default=str) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON-lines file. A torn last line (a write cut by power loss or a full disk)
    is dropped with a warning; a bad line anywhere else is an error."""
    if not Path(path).exists():
        return []
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    records = []
    for index, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if index < len(lines) - 1:
                raise
            logging.getLogger(__name__).warning("%s: dropped an incomplete last line (%d characters)", path, len(line))
    return records


class DamagedSummary(ValueError):
    """A summary.json that does not read back whole and valid (cut short, not JSON, not a summary)."""


def read_summary(path: Path) -> dict:
    """A summary read back whole: a JSON object with a `run_id`; a latency record has its `kind`, a
    training run's (no `kind`) a status, a spec naming its suite, scale, method, task and seed, and a
    list of stages. Raises DamagedSummary."""
    path = Path(path)
    try:
        summary = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DamagedSummary(f"{path}: not a whole JSON file ({type(error).__name__}: {error})") from None
    if not isinstance(summary, dict):
        raise DamagedSummary(f"{path}: a JSON {type(summary).__name__}, not a summary object")
    missing = [] if "run_id" in summary else ["run_id"]
    if "kind" not in summary:
        missing += [] if "status" in summary else ["status"]
        spec = summary.get("spec")
        if not isinstance(spec, dict) or not {"suite", "scale", "method", "task", "seed"} <= set(spec):
            missing.append("spec.{suite, scale, method, task, seed}")
        if not isinstance(summary.get("stages"), list):
            missing.append("stages")
    if missing:
        raise DamagedSummary(f"{path}: not a summary (missing {', '.join(missing)})")
    return summary


def record_state(path: Path) -> str:
    """'finished' (the summary at `path` reads back valid), 'damaged' (a file that does not) or 'missing'."""
    if not Path(path).exists():
        return "missing"
    try:
        read_summary(path)
    except DamagedSummary:
        return "damaged"
    return "finished"


def summary_state(out: Path, suite: str, run_id: str) -> str:
    """`record_state` of a run's summary.json."""
    return record_state(run_dir(out, suite, run_id) / "summary.json")


def is_finished(out: Path, suite: str, run_id: str) -> bool:
    return summary_state(out, suite, run_id) == "finished"


def set_aside(path: Path) -> Path:
    """Rename a damaged file to `<name>.damaged` (`.damaged.1`, ... if taken), with one warning line."""
    path = Path(path)
    target, index = path.with_name(path.name + ".damaged"), 0
    while target.exists():
        index += 1
        target = path.with_name(f"{path.name}.damaged.{index}")
    path.replace(target)
    logging.getLogger(__name__).warning("%s is damaged: kept aside as %s", path, target.name)
    return target


def summaries(results: Path | str, pattern: str = "*/*/summary.json"):
    """(path, summary) of every summary under `results` (`<suite>/<run>/summary.json`) that reads
    back valid; a damaged one is skipped with one warning line naming it."""
    for path in sorted(Path(results).glob(pattern)):
        try:
            yield path, read_summary(path)
        except DamagedSummary as error:
            logging.getLogger(__name__).warning("skipped a damaged summary: %s", error)


def run_lock_path(out: Path, suite: str, run_id: str) -> Path:
    """The lock a process holds while it trains a run: beside the results, whatever the cache."""
    return Path(out) / ".locks" / f"{suite}-{run_id}.lock"


def _flatten(prefix: str, mapping: dict) -> dict:
    return {f"{prefix}.{k}": (json.dumps(v) if isinstance(v, (list, dict)) else v)
            for k, v in mapping.items()}


def _write_setting(key: str, trained):
    """The value of a method's write axis that an evaluation key stands for ('default' = trained)."""
    if key == "default":
        return trained
    try:
        return int(key)
    except ValueError:
        try:
            return float(key)
        except ValueError:
            return key


def summary_rows(summary: dict) -> list[dict]:
    """One row per (curriculum stage, evaluated write setting) of a run summary.

    Besides the spec and metrics, each row carries `eval_key` (the stage's evaluation key:
    the write-axis value evaluated, 'default' = the method's trained setting), the method's
    self-description (`label`; `axis`, `trained_setting`, `write_setting`: the write axis's name, trained
    value and the value this row was evaluated at, None without an axis; a summary without
    "describe" gets the method's name and no axis), `collapsed` (the run collapsed in this stage;
    False when not recorded) and `tuning` (the run's tuning record as JSON, None when not tuned).
    """
    spec = summary["spec"]
    description = summary.get("describe") or {"label": spec["method"]["name"], "axis": None}
    axis = description.get("axis") or {}
    tuning = summary.get("tuning")
    collapsed_stages = {c.get("stage") for c in summary.get("collapses") or []}
    base = {"suite": spec["suite"], "scale": spec["scale"], "run_id": summary["run_id"],
            "method": spec["method"]["name"], "seed": spec["seed"], "status": summary["status"],
            "label": description["label"], "axis": axis.get("name"), "trained_setting": axis.get("trained"),
            "collapsed": False, "tuning": json.dumps(tuning) if tuning else None,
            "train_seconds": summary.get("train_seconds"), "train_steps": summary.get("steps"),
            **_flatten("method", {k: v for k, v in spec["method"].items() if k != "name"}),
            **_flatten("task", spec["task"]), **_flatten("backbone", spec["backbone"])}
    rows = []
    for stage in summary.get("stages", []):
        collapsed = bool(stage.get("collapsed", stage["stage"] in collapsed_stages))
        for setting, metrics in stage["eval"].items():
            row = {**base, **_flatten("task", stage["task"]), "stage": stage["stage"],
                   "steps_taken": stage["steps"], "best_valid_em": stage["best_valid_em"],
                   "eval_key": setting, "collapsed": collapsed,
                   "write_setting": _write_setting(setting, axis.get("trained")) if axis else None}
            row.update({k: v for k, v in metrics.items() if not isinstance(v, (list, dict))})
            for name, values in metrics.items():
                if name.startswith("inner_loss") and values:
                    row[f"final_{name}"] = values[-1]
                    row[f"{name}_by_step"] = values
            rows.append(row)
    if not rows:
        rows.append(base)
    return rows


def load(results: Path | str = "results") -> pd.DataFrame:
    """Every training run's summary under `results` as one DataFrame (one row per stage and
    evaluated write setting). Summaries with a `kind` (latency cells, the `latency` package) are not
    training runs and are left out; a damaged summary is skipped with a warning (`summaries`).
    A run's `tuning` is its suite's current tuning record (`<suite>/tuning/<tune_id>.json`, the
    one with every cell scored so far) when that record still chooses the setting the run trained
    with, else the copy in its summary, and `superseded_tuning` says which.
    `old_recipe` is True for a run whose settings its suite no longer has (`harness.recipes`),
    None where that cannot be told."""
    from harness import recipes
    recipes.forget_suites()   # suite files may have changed since the last load
    rows = []
    for path, summary in summaries(results):
        if "kind" not in summary:
            current = current_tuning(summary, path.parent.parent / "tuning")
            superseded = tuning_superseded(summary, current)
            if current is not None and not superseded:
                summary = {**summary, "tuning": current}
            is_current = recipes.is_current(summary.get("spec") or {})
            old_recipe = None if is_current is None else not is_current
            rows.extend({**row, "superseded_tuning": superseded, "old_recipe": old_recipe}
                        for row in summary_rows(summary))
    return pd.DataFrame(rows)


def current_tuning(summary: dict, tuning_dir: Path) -> dict | None:
    """The tuning record (`tuning_dir/<tune_id>.json`) of the run's tuning as it stands now; None
    when the run was not tuned or the record is not there."""
    tune_id = (summary.get("tuning") or {}).get("tune_id")
    path = Path(tuning_dir) / f"{tune_id}.json"
    return json.loads(path.read_text()) if tune_id and path.exists() else None


def tuned_cell(summary: dict) -> dict | None:
    """The tuned setting a run's summary says it trained with (None without tuning)."""
    return (summary.get("tuning") or {}).get("chosen")


def tuning_superseded(summary: dict, current: dict | None) -> bool:
    """Whether the run trained with a setting its current tuning record (`current_tuning`) no
    longer chooses (the tuning was rescored after it trained); the next invocation of its suite
    retrains it."""
    chosen = (current or {}).get("chosen")
    return chosen is not None and chosen != tuned_cell(summary)
