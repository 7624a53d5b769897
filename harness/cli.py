"""Command line: expand a suite at a scale, run what is not finished, report.

Errors a user can cause print one line on stderr and exit with code 2, with nothing written.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from harness import registry
from harness.suite import expand_suite, load_suite, matching, suite_kind
from harness.errors import HarnessError

log = logging.getLogger("harness")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="run_all.py", description=__doc__)
    parser.add_argument("--suite", help="suite name (harness/suites/NAME.yaml) or a YAML path")
    parser.add_argument("--scale", default="auto", help="smoke | cpu | gpu | paper | auto (gpu on a GPU, else cpu; never paper)")
    parser.add_argument("--methods", help="comma-separated method names to keep")
    parser.add_argument("--match", action="append", default=[],
                        help="keep only runs whose label or task (as --dry-run prints them, e.g. 'gradmem' or "
                             "'qa=1,') contains this text; repeatable")
    parser.add_argument("--seeds", type=int, help="number of seeds (overrides the suite)")
    parser.add_argument("--data-dir", help="local dataset folder for tasks that read files (bAbI release, SQuAD v1.1)")
    parser.add_argument("--out", default="results", help="results directory (default: results)")
    parser.add_argument("--cache", default=None, help="checkpoint directory (default: .cache/)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (joblib)")
    parser.add_argument("--backend", default="loky", help="loky (local processes) | dask")
    parser.add_argument("--scheduler", help="Dask scheduler address (default: start a local cluster)")
    parser.add_argument("--plugin", action="append", default=[], help="import an outside module that registers methods/tasks")
    parser.add_argument("--dry-run", action="store_true", help="print the runs and their cost; train nothing")
    parser.add_argument("--list", action="store_true", help="print registered methods, tasks and suites")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--until", type=float, metavar="SECONDS",
                        help="train until SECONDS from now, then leave every unfinished run at its last "
                             "checkpoint (the same command later resumes them)")
    parser.add_argument("--yes", action="store_true",
                        help=f"start a sweep estimated at more than {LONG_SWEEP_SECONDS // 3600} hours")
    return parser.parse_args(argv)


def print_registry() -> None:
    registry.discover()
    print("methods:")
    for name, cls in sorted(registry.METHODS.items()):
        print(f"  {name:<14} {cls.summary}")
    print("tasks:")
    for name, cls in sorted(registry.TASKS.items()):
        print(f"  {name:<14} {cls.summary}")
    print("suites:")
    for name in registry.suite_names():
        description = (load_suite(name).get("description") or "").strip().splitlines()
        print(f"  {name:<14} {description[0] if description else ''}")


def print_plan(specs, out: Path, device: str | None = None, suite: str | None = None) -> None:
    """The runs, the training contexts left, and the estimated time from measured step costs
    (harness.step_costs; `device` defaults to auto: cuda when available, else cpu)."""
    from harness import step_costs, store
    from harness.runner import is_done, resolve_device
    from harness.tune import tune_id
    plan = step_costs.plan(specs, out, device or resolve_device("auto"), suite)
    total, left, tunings = 0, 0, {}
    for spec in specs:
        done = is_done(out, spec)
        damaged = not done and store.summary_state(out, spec.suite, spec.run_id) == "damaged"
        state = "done" if done else "damaged" if damaged else "todo"
        tune = spec.train.get("tune")
        if tune and not done and tune_id(spec) not in tunings:   # the grid cells not cached yet
            tunings[tune_id(spec)] = step_costs.tuning_cells_left(out, spec) * tune["steps"] * spec.train["batch_size"]
        left += not done
        total += 0 if done else spec.train["steps"] * spec.train["batch_size"]
        stages = spec.train["curriculum"] or [{}]
        curriculum = " -> ".join(",".join(f"{k}={v}" for k, v in stage.items()) for stage in stages if stage)
        print(f"{spec.run_id}  {state:<7} {spec.label():<44} {spec.task_label()}"
              + (f" curriculum {curriculum}" if curriculum else "")
              + f" steps<={spec.train['steps']} batch={spec.train['batch_size']}"
              + f"  est {plan.notes.get(spec.run_id, 'unmeasured')}")
    tunings = {key: contexts for key, contexts in tunings.items() if contexts}
    print(f"{len(specs)} runs, {left} to train, at most {total:,} training contexts"
          + (f" + {sum(tunings.values()):,} for {len(tunings)} tunings (one per setting, shared by its seeds)"
             if tunings else ""))
    for line in plan.lines:
        print(line)


LONG_SWEEP_SECONDS = 86400   # a sweep estimated longer than this starts only with --yes


def announce(specs, out: Path, device: str, scale: str, suite: str, yes: bool) -> None:
    """Log what the sweep will do (runs to train, the estimate) before it starts; refuse, in one
    line, a sweep whose estimate (`harness.step_costs.plan`: unmeasured runs count their step
    budgets at the fastest measured step) exceeds a day unless `yes`."""
    from harness import step_costs
    from harness.runner import is_done
    todo = sum(not is_done(out, spec) for spec in specs)
    if not todo:
        shipped = Path(out).resolve() == step_costs.SHIPPED.resolve()
        log.info("suite %s at scale %s: all %d runs are finished under %s%s: nothing to train (--out DIR trains "
                 "afresh into DIR)", suite, scale, len(specs), out, " (the shipped results)" if shipped else "")
        return
    plan = step_costs.plan(specs, out, device)
    estimate = (f", estimated {'at least' if plan.unmeasured else 'at most'} {step_costs.duration(plan.seconds)} "
                f"one at a time on {plan.device_tag}" if plan.device_tag else ", no step costs recorded")
    log.info("suite %s at scale %s: %d runs, %d to train on %s%s", suite, scale, len(specs), todo, device, estimate)
    if yes:
        return
    if plan.seconds > LONG_SWEEP_SECONDS:
        raise HarnessError(f"this sweep needs {'at least ' if plan.unmeasured else 'up to '}"
                           f"{step_costs.duration(plan.seconds)} of training on "
                           f"{plan.device_tag}; add --yes to start it anyway (--dry-run shows the runs)")


def print_outcomes(outcomes) -> None:
    """A short table of the runs this invocation trained: status, minutes, test exact match."""
    trained = [o for o in outcomes if o.status != "skipped"]
    if not trained:
        return
    width = min(max(len(o.label) for o in trained), 70)
    print(f"{'run':<{width}}  {'status':<9} {'min':>5}  test exact match (%)")
    for o in trained:
        print(f"{o.label[:width]:<{width}}  {o.status:<9} {o.seconds / 60:>5.1f}  {o.scores}")


def writable_folder(text: str, flag: str) -> Path:
    """The folder `flag` names, checked before anything runs: not empty, not a file, not below a
    file, and writable where it exists or would be made (a HarnessError naming the path if not)."""
    if not text.strip():
        raise HarnessError(f"{flag} is empty; give a folder (e.g. {flag} results)")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise HarnessError(f"{flag} {path} is a file, not a folder")
    existing = path
    while not existing.exists():   # the nearest folder that exists: where the rest would be made
        existing = existing.parent
    if not existing.is_dir():
        raise HarnessError(f"{flag} {path}: {existing} is a file, so no folder can be made below it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise HarnessError(f"{flag} {path}: {existing} is not writable")
    return path


def make_folders(*paths: Path) -> None:
    """Create the results and cache folders before any run starts; a failure is one line."""
    for path in paths:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise HarnessError(f"cannot create {path}: {error.strerror or error}") from None


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    import transformers
    transformers.logging.set_verbosity_error()
    try:
        for plugin in args.plugin:
            registry.load_plugin(plugin)
        registry.discover()
        if args.list:
            print_registry()
            return 0
        if not args.suite:
            raise HarnessError("no --suite given; valid: " + ", ".join(registry.suite_names()))
        from harness.runner import resolve_device, resolve_scale, run_specs
        device = resolve_device(args.device)
        scale = resolve_scale(args.scale, device, args.suite)
        if args.jobs < 1:
            raise HarnessError(f"--jobs = {args.jobs} must be >= 1")
        if args.until is not None and not args.until > 0:
            raise HarnessError(f"--until {args.until:g} must be a positive number of seconds")
        methods = [m for m in (args.methods or "").split(",") if m] or None
        out = writable_folder(args.out, "--out")
        cache = writable_folder(args.cache, "--cache") if args.cache is not None else None
        if suite_kind(args.suite) == "latency":   # timing only, no training: the latency package runs it
            from latency.run import main as time_suite
            return time_suite(args, scale, device, methods, out)
        specs = expand_suite(args.suite, scale, methods, args.seeds, args.data_dir)
        specs = matching(specs, args.match, lambda s: f"{s.label()} {s.task_label()}",
                         f"run of suite {args.suite} at scale {scale}")
        if args.dry_run:
            print_plan(specs, out, device, args.suite)
            return 0
        kwargs = {"cache_dir": cache} if cache else {}
        if args.backend not in ("loky", "dask"):
            raise HarnessError(f"unknown backend {args.backend!r}; valid: loky, dask")
        announce(specs, out, device, scale, args.suite, args.yes)
        make_folders(out, *([cache] if cache else []))
        deadline = time.time() + args.until if args.until is not None else None
        outcomes = run_specs(specs, out, device, args.jobs, plugins=args.plugin, backend=args.backend,
                             progress=not args.quiet, scheduler=args.scheduler, deadline=deadline, **kwargs)
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept and every unfinished one resumes from its last checkpoint "
              "when the same command runs again", file=sys.stderr)
        return 130
    print_outcomes(outcomes)
    counts = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
        if outcome.status == "failed":
            print(f"failed: {outcome.label}: {outcome.error}", file=sys.stderr)
    log.info("done: %s", ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if counts.get("stopped"):
        log.info("%d runs stopped at the deadline at their last checkpoint: the same command resumes them",
                 counts["stopped"])
    return 1 if counts.get("failed") else 0
