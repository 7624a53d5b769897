"""Running a latency suite: each cell timed once, stored as a record that resumes like a run."""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import torch

from harness import store
from harness.errors import ContractError, HarnessError
from harness.suite import matching
from latency.spec import KIND, RATIO_FOLDER, Cell, expand
from latency.timing import BackboneCache, time_method, time_ratio

log = logging.getLogger(__name__)


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
