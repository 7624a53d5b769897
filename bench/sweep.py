"""Train a suite's unfinished runs one at a time in this process and commit each run's results to
git as it lands, so a sweep stopped at any point keeps what finished (a later start resumes the
rest from its checkpoints). Start one per core; they share the work through the run locks
(`harness.store.run_lock_path`): a run another worker trains is skipped.

    OMP_NUM_THREADS=1 taskset -c 0 python -m bench.sweep --suite capacity --scale chars --commit &
    OMP_NUM_THREADS=1 taskset -c 1 python -m bench.sweep --suite capacity --scale chars --commit &
"""
from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

import torch

from harness import registry
from harness.runner import execute_run, is_done
from harness.suite import expand_suite

REPO = Path(__file__).resolve().parent.parent
log = logging.getLogger("sweep")


def commit(paths: list[Path], message: str) -> None:
    """Commit just `paths` (other staged or edited files are left as they are); waits on git's lock."""
    paths = [str(p) for p in paths if p.exists()]
    if not paths:
        return
    git = ["flock", str(REPO / ".git" / "sweep.lock"), "git", "-C", str(REPO)]
    subprocess.run([*git, "add", "--", *paths], check=True)
    staged = subprocess.run([*git, "diff", "--cached", "--quiet", "--", *paths])
    if staged.returncode:
        subprocess.run([*git, "commit", "-q", "-m", message, "--", *paths], check=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", required=True)
    parser.add_argument("--scale", required=True)
    parser.add_argument("--match", action="append", default=[], help="keep runs whose label or task contains this")
    parser.add_argument("--out", default="results")
    parser.add_argument("--cache", default=str(REPO / ".cache"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--commit", action="store_true", help="git-commit each finished run's folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    registry.discover()
    out = Path(args.out)
    tried = set()
    while True:   # the suite is read again before each run: an edit to it counts from the next run
        specs = expand_suite(args.suite, args.scale)
        specs = [s for s in specs if not args.match or any(m in f"{s.label()} {s.task_label()}" for m in args.match)]
        pending = sorted((s for s in specs if not is_done(out, s) and s.run_id not in tried), key=lambda s: s.seed)
        log.info("%s %s: %d of %d runs to train", args.suite, args.scale, len(pending), len(specs))
        if not pending:
            return 0
        spec = pending[0]
        tried.add(spec.run_id)   # tried once per worker: a failed or skipped run is not retried here
        outcome = execute_run(spec, out, "cpu", Path(args.cache), progress=False)
        log.info("%s: %s (%.0f s)", outcome.label, outcome.status, outcome.seconds)
        if args.commit and outcome.status not in ("skipped", "failed"):
            suite_dir = out / spec.suite
            commit([suite_dir / spec.run_id, suite_dir / "tuning"],
                   f"{spec.suite} {spec.scale}: {outcome.label} {outcome.status} ({outcome.seconds / 60:.0f} min)")


if __name__ == "__main__":
    sys.exit(main())
