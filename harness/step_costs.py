"""Measured seconds per training step, and the dry run's time estimate built from them.

What a training step costs depends on what it computes, not on the seed, the learning rate or
the step counts. The cost key of a run's curriculum stage hashes the method, the backbone and
that stage's task (the settings that differ from their defaults, as run ids do), the batch size,
queries per context and precision. `python -m bench.step_cost --suite NAME --scale SCALE`
(bench/suite_cost.py) measures every key of a suite on one device into
`results/step_costs/<device tag>.json`; `estimate` turns a run and such a record into an upper
bound of the run's time: every stage trains its whole step budget (the dearest stages first when
`train.steps` cannot cover every stage's budget), every validation and the end-of-stage test is
charged at the per-context cost of one measured evaluation batch, and the run's tuning cells that
are not cached are added (once per tuning, shared by its seeds).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness.ids import content_id
from harness.schema import stage_budget

RECORD_DIR = "step_costs"          # under the results root
SHIPPED = Path(__file__).resolve().parent.parent / "results"   # the step costs that come with the harness
GPU_SCALES = ("gpu", "paper")      # scales meant for a GPU: a CPU dry run of them reads a cuda record


# ---------------------------------------------------------------- keys
def stage_overrides(spec) -> list[dict]:
    """The task overrides of each curriculum stage ([{}]: one stage, the task as it is)."""
    return list(spec.train["curriculum"] or [{}])


def key_fields(spec, stage: int) -> dict:
    """What a training step of `spec`'s curriculum stage `stage` computes."""
    from harness.schema import non_default
    task = {**spec.task, **stage_overrides(spec)[stage]}
    return {"method": non_default("method", spec.method), "backbone": non_default("backbone", spec.backbone),
            "task": non_default("task", task), "batch_size": spec.train["batch_size"],
            "queries_per_context": spec.train["queries_per_context"], "precision": spec.train["precision"],
            **({"tf32": False} if spec.train.get("tf32") is False else {})}


def cost_key(spec, stage: int) -> str:
    """Hash of `key_fields`: equal for the seeds, learning rates and step budgets of one step shape."""
    return content_id(key_fields(spec, stage))


# ---------------------------------------------------------------- records
def device_tag(device: str) -> str:
    """'cuda-nvidia-h100-80gb-hbm3' (this process's GPU) or 'cpu-1threads' (torch's thread count)."""
    import torch
    if device == "cuda":
        return "cuda-" + slug(torch.cuda.get_device_name())
    return f"cpu-{torch.get_num_threads()}threads"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def record_path(out: Path | str, tag: str) -> Path:
    return Path(out) / RECORD_DIR / f"{tag}.json"


def load_record(path: Path | str) -> dict | None:
    """A step-cost record ({device_tag, device, entries: {cost key: entry}}), None if absent."""
    path = Path(path)
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    record.setdefault("entries", {})
    record["path"] = str(path)
    return record


def _newest(paths: list[Path]) -> dict | None:
    records = [load_record(p) for p in paths]
    return max(records, key=lambda r: r.get("updated") or "", default=None)


def select_record(out: Path | str, device: str, scale: str) -> tuple[dict | None, str]:
    """The record a dry run on `device` at `scale` reads, and a note saying why that one.

    cuda: the record of this GPU, else the newest cuda record. cpu: the record with this process's
    thread count, else the newest cpu record; at a GPU scale (gpu, paper) the newest cuda record,
    since those scales are meant for a GPU. Records under `out` first, else the shipped ones.
    """
    record, note = _select_in(out, device, scale)
    if record is None and Path(out).resolve() != SHIPPED.resolve():
        shipped, shipped_note = _select_in(SHIPPED, device, scale)
        if shipped is not None:
            return shipped, f"none under {out}: read the shipped record" + (f"; {shipped_note}" if shipped_note else "")
    return record, note


def _select_in(out: Path | str, device: str, scale: str) -> tuple[dict | None, str]:
    folder = Path(out) / RECORD_DIR
    want = "cuda" if device == "cuda" or scale in GPU_SCALES else "cpu"
    if want == device:
        exact = load_record(record_path(out, device_tag(device)))
        if exact is not None:
            return exact, ""
    record = _newest(sorted(folder.glob(f"{want}-*.json")))
    if record is None:
        return None, f"no {want} step costs are recorded in {folder}/"
    if want != device:
        return record, f"this machine has no GPU: read the newest cuda record, {record['device_tag']}"
    return record, f"no record for {device_tag(device)}: read the newest {want} record, {record['device_tag']}"


def record_command(suite: str, scale: str, device: str, out: Path | str) -> str:
    """The command that records the step costs a dry run is missing."""
    command = f"python -m bench.step_cost --suite {suite} --scale {scale} --device {device}"
    return command + ("" if Path(out) == Path("results") else f" --out {out}")


# ---------------------------------------------------------------- estimates
def stage_budgets(spec, per_step: list[float] | None = None) -> list[int]:
    """The most steps each stage can train: a stage at most its `stage_steps` budget (else `steps`),
    the run at most `steps`. Given each stage's cost per step, the dearest stages get their budgets
    first, so the sum of budget x cost bounds the run's time however early the other stages end;
    without costs, the stages in order."""
    train = spec.train
    count = len(stage_overrides(spec))
    left = train["steps"]
    order = range(count) if per_step is None else sorted(range(count), key=lambda i: -per_step[i])
    budgets = [0] * count
    for index in order:
        budgets[index] = min(stage_budget(train, index), left)
        left -= budgets[index]
    return budgets


def tuning_cells_left(out: Path | str, spec) -> int:
    """Tuning budgets (`tune.steps` each: one per cell and tuning stage) not yet in the run's
    tuning cache (0 without tuning)."""
    from harness.tune import cells_left, tune_path, tuning_stages
    if not spec.train.get("tune"):
        return 0
    path = tune_path(out, spec)
    record = json.loads(path.read_text()) if path.exists() else {}
    return len(cells_left(spec, record)) * tuning_stages(spec)


@dataclass
class Estimate:
    """Upper bound of a run's seconds; `missing` lists the cost keys without a measured entry."""
    train: float = 0.0
    evaluation: float = 0.0
    tuning: float = 0.0
    missing: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float | None:
        return None if self.missing else self.train + self.evaluation + self.tuning


def _measured(record: dict | None, key: str) -> dict | None:
    entry = (record or {}).get("entries", {}).get(key)
    return entry if entry and not entry.get("skipped") and entry.get("seconds") is not None else None


def _validation_seconds(spec, entry: dict, steps: int) -> float:
    validations = math.ceil(steps / spec.train["eval_every"]) if steps else 0
    return validations * spec.train["eval_examples"] * (entry.get("valid_seconds_per_context") or 0.0)


def estimate(spec, record: dict | None, tuning_cells: int = 0) -> Estimate:
    """Seconds of `spec` on the record's device, at most: each stage's budget x its measured seconds
    per step, plus its validations and end-of-stage test, plus `tuning_cells` cells of tuning
    (tune.steps x the first stage's step, and their validations)."""
    result = Estimate()
    keys = [cost_key(spec, i) for i in range(len(stage_overrides(spec)))]
    entries = [_measured(record, key) for key in keys]
    result.missing = [key for key, entry in zip(keys, entries) if entry is None]
    if result.missing:
        return result
    per_step = [e["seconds"] + spec.train["eval_examples"] * (e.get("valid_seconds_per_context") or 0.0)
                / spec.train["eval_every"] for e in entries]
    for entry, steps in zip(entries, stage_budgets(spec, per_step)):
        result.train += steps * entry["seconds"]
        if steps:
            result.evaluation += _validation_seconds(spec, entry, steps)
            result.evaluation += spec.eval["examples"] * (entry.get("test_seconds_per_context") or 0.0)
    if tuning_cells:
        steps = spec.train["tune"]["steps"]
        result.tuning = tuning_cells * (steps * entries[0]["seconds"] + _validation_seconds(spec, entries[0], steps))
    return result


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


@dataclass
class Plan:
    """The dry run's estimate: a note per run (by run id), the closing lines, and the seconds of the
    runs left to train, at most (the measured ones; an unmeasured run adds its step budget at the
    record's fastest measured step, a floor), on `device_tag`."""
    notes: dict[str, str]
    lines: list[str]
    seconds: float = 0.0
    device_tag: str | None = None
    unmeasured: int = 0


def plan(specs, out: Path | str, device: str, suite: str | None = None) -> Plan:
    """Estimates of every run of a dry run on `device` and the total of those left to train.
    `suite` names the suite in the recording command (default: the runs' suite name)."""
    from harness.runner import is_done
    from harness.tune import tune_id
    if not specs:
        return Plan({}, [])
    scale, suite = specs[0].scale, suite or specs[0].suite
    record, note = select_record(out, device, scale)
    target = "cuda" if device == "cuda" or scale in GPU_SCALES else "cpu"
    command = record_command(suite, scale, target, out)
    notes, total, unmeasured, todo, tuned, tunings = {}, 0.0, 0, 0, set(), 0.0
    measured_steps = [e["seconds"] for e in (record or {}).get("entries", {}).values()
                      if not e.get("skipped") and e.get("seconds") is not None]
    fastest, floor = min(measured_steps, default=0.0), 0.0   # an unmeasured run: its steps at least at this
    for spec in specs:
        done = is_done(out, spec)
        cells = 0
        if not done and spec.train.get("tune") and tune_id(spec) not in tuned:
            tuned.add(tune_id(spec))   # one tuning per setting, charged to its first run to train
            cells = tuning_cells_left(out, spec)
        result = estimate(spec, record, cells)
        todo += not done
        if result.seconds is None:
            notes[spec.run_id] = "unmeasured"
            unmeasured += not done
            floor += 0 if done else spec.train["steps"] * fastest
            continue
        notes[spec.run_id] = f"<= {duration(result.seconds)}" + (
            f" (tuning {duration(result.tuning)})" if result.tuning else "")
        if not done:
            total += result.seconds
            tunings += result.tuning
    if record is None:
        return Plan(notes, [f"estimated time: unmeasured ({note})",
                            f"{unmeasured} of {todo} runs to train unmeasured; record the step costs"
                            f"{' on a GPU' if target == 'cuda' else ''}: {command}"])
    dates = sorted({e["date"][:10] for e in record["entries"].values() if e.get("date")})
    measured = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}" if dates else "on an unknown date"
    skipped = sum(bool(e.get("skipped")) for e in record["entries"].values())
    lines = [f"estimated at most {duration(total)} of training on {record['device_tag']}, one run at a time, "
             f"for the {todo - unmeasured} measured runs to train"
             + (f" ({duration(tunings)} of it tuning)" if tunings else "")
             + f": every stage at its full step budget, evaluation from one measured batch (step costs measured "
               f"{measured}, {record['path']}{'; ' + note if note else ''})"]
    if unmeasured:
        lines.append(f"{unmeasured} of {todo} runs to train unmeasured"
                     + (f" ({skipped} step shapes recorded as skipped)" if skipped else "")
                     + (f", at least {duration(floor)} (their step budgets at the fastest measured step)"
                        if floor else "") + f": {command}")
    else:
        lines.append(f"every run to train is measured ({todo} runs)")
    return Plan(notes, lines, total + floor, record["device_tag"], unmeasured)
