"""Whether a finished run still has its suite's current settings.

A suite's recipe changes (a longer stage, another learning rate) give its runs new ids, and the
old runs' summaries stay in `results/` until they are removed. Tables must not pool them with the
new runs as extra seeds: `store.load` marks each run whose settings (seed and `task.data_dir`
aside) are no longer among its suite's runs at its scale, and `report.labels` keeps those rows
apart. A run whose suite cannot be expanded here (a suite file that is gone, a plugin method not
imported) is left unmarked: nothing is known against it.
"""
from __future__ import annotations

from functools import lru_cache

from harness.errors import HarnessError
from harness.ids import content_id
from harness.schema import SECTIONS, RunSpec, resolve_recorded


def recipe_id(spec: RunSpec) -> str:
    """The id of a run's settings (what its run id hashes) without its seed and its data folder
    (`--data-dir`)."""
    identity = {key: value for key, value in spec.identity().items() if key != "seed"}
    identity["task"] = {k: v for k, v in identity["task"].items() if k != "data_dir"}
    return content_id(identity)


@lru_cache(maxsize=None)
def _suite_recipes(suite: str, scale: str, method: str) -> frozenset[str] | None:
    """The recipe ids of a method's runs in a suite at a scale (a run of its defaults when the
    suite does not list it, as `run_all.py --methods` runs it); None when the suite cannot be
    expanded."""
    from harness.suite import expand_suite
    try:
        specs = expand_suite(suite, scale, methods=[method], seeds=1)
    except (HarnessError, OSError, ValueError, TypeError, KeyError):
        return None
    return frozenset(recipe_id(spec) for spec in specs)


def forget_suites() -> None:
    """Drop the cached suite expansions (a suite file was edited)."""
    _suite_recipes.cache_clear()


def summary_spec(spec: dict) -> RunSpec | None:
    """A summary's recorded spec, resolved with the current code; None when it lacks a section or
    no longer resolves (an option since removed)."""
    if not all(key in spec for key in (*SECTIONS, "suite", "scale", "seed")):
        return None
    try:
        return resolve_recorded(spec)
    except (HarnessError, TypeError, ValueError, KeyError):
        return None


def is_current(spec: dict) -> bool | None:
    """Whether a summary's spec is one of its suite's runs as the suite stands now (any seed);
    None when that cannot be told."""
    run = summary_spec(spec)
    if run is None:
        return None
    recipes = _suite_recipes(run.suite_file or run.suite, run.scale, run.method["name"])
    return None if recipes is None else recipe_id(run) in recipes
