"""Expand a suite into runs, skip finished ones, execute them locally (joblib) and record results."""
from __future__ import annotations

import contextlib
import logging
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from harness import registry, store
from harness.allocator import retain_freed_memory
from harness.schema import SCALES, RunSpec, typed_section
from harness.errors import ContractError, HarnessError
from harness.builder import build_run, seed_everything
from harness.train import DeadlineReached, Trainer
from harness.tune import settled_choice, tune

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPO_ROOT / ".cache"


@dataclass
class RunOutcome:
    run_id: str
    label: str
    status: str           # finished, collapsed, diverged, skipped, failed, stopped (at the deadline)
    seconds: float = 0.0
    error: str | None = None
    scores: str = ""      # each stage's test exact match, for the log


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise HarnessError("--device cuda was asked for but no CUDA device is available; valid here: auto, cpu")
    if name not in ("cpu", "cuda"):
        raise HarnessError(f"unknown device {name!r}; valid: auto, cpu, cuda")
    return name


def resolve_scale(name: str, device: str, suite: str | None = None) -> str:
    """A suite scale; `auto` is gpu on a CUDA device when the suite has a gpu scale, else cpu
    (never paper)."""
    if name == "auto":
        from harness.suite import suite_scales
        name = "gpu" if device == "cuda" and (suite is None or "gpu" in suite_scales(suite)) else "cpu"
    if name not in SCALES:
        raise HarnessError(f"unknown scale {name!r}; valid: auto, {', '.join(SCALES)}")
    return name


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str | None:
    """The CPU's model name (Linux), else whatever `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def versions() -> dict:
    """What a rerun must match to repeat a run's floats: the same seed and code repeat a curve
    on the same kind of CPU and thread count; another CPU's vector kernels (`cpu_capability`)
    may round differently, and a seed on a plateau may then leave it at another step."""
    import transformers
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "git_commit": _git_commit(),
            "machine": platform.machine(), "cpu": cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32 if torch.cuda.is_available() else None}


def trained_choice(out: Path, spec: RunSpec) -> dict | None:
    """The tuned setting a finished run trained with (None without tuning)."""
    summary = store.read_summary(store.run_dir(out, spec.suite, spec.run_id) / "summary.json")
    return store.tuned_cell(summary)


def is_done(out: Path, spec: RunSpec) -> bool:
    """Finished, and a tuned run trained with the setting its tuning chooses now: a run trained
    before its tuning was rescored (e.g. on a second stage) to another choice is not done."""
    if not store.is_finished(out, spec.suite, spec.run_id):
        return False
    return not spec.train.get("tune") or settled_choice(out, spec) == trained_choice(out, spec)


def execute_run(spec: RunSpec, out: Path, device: str = "cpu", cache_dir: Path = DEFAULT_CACHE,
                progress: bool = True, deadline: float | None = None) -> RunOutcome:
    """Train and evaluate one run; write config.yaml, metrics.jsonl and summary.json. A run that
    another process is training (its lock beside the results, `store.run_lock_path`, is held) is
    skipped, whatever cache either process uses. A damaged summary is kept aside and the run trained."""
    if is_done(out, spec):
        return RunOutcome(spec.run_id, spec.label(), "skipped")
    lock_path = store.run_lock_path(out, spec.suite, spec.run_id)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning("%s: another process is training it (%s held); skipped", spec.label(), lock_path)
        return RunOutcome(spec.run_id, spec.label(), "skipped", error="running in another process")
    try:
        if is_done(out, spec):   # finished while we waited for the lock
            return RunOutcome(spec.run_id, spec.label(), "skipped")
        if store.summary_state(out, spec.suite, spec.run_id) == "damaged":
            store.set_aside(store.run_dir(out, spec.suite, spec.run_id) / "summary.json")
        return _train_and_record(spec, out, device, cache_dir, progress, deadline)
    except DeadlineReached:
        return RunOutcome(spec.run_id, spec.label(), "stopped")
    finally:
        lock.release()


def _train_and_record(spec: RunSpec, out: Path, device: str, cache_dir: Path, progress: bool,
                      deadline: float | None = None) -> RunOutcome:
    directory = store.run_dir(out, spec.suite, spec.run_id)
    retain_freed_memory()
    started = time.time()
    tuning, train = None, spec.train
    if spec.train.get("tune"):
        tuning = tune(spec, out, device, deadline, cache_dir, progress)
        train = {**spec.train, **tuning["chosen"]}
        started = time.time()   # wall_seconds: this run alone (the shared tuning has its own cells)
        if store.is_finished(out, spec.suite, spec.run_id):
            summary = store.read_summary(directory / "summary.json")
            trained = store.tuned_cell(summary)
            if trained == tuning["chosen"]:   # kept: its summary gets the new record
                store.write_json(directory / "summary.json", {**summary, "tuning": tuning})
                return RunOutcome(spec.run_id, spec.label(), "skipped")
            # its summary stays (tables mark it superseded) until the new run's replaces it
            log.warning("%s: trained with %s, its tuning now chooses %s: training it again", spec.label(),
                        trained, tuning["chosen"])
    seed_everything(spec.seed)
    task, method = build_run(spec)
    method.to(device)
    store.write_yaml(directory / "config.yaml", spec.to_dict())
    trainer = Trainer(method, task, typed_section("train", train),
                      spec.typed("eval"), spec.seed, device,
                      directory / "metrics.jsonl", Path(cache_dir) / "checkpoints" / spec.run_id,
                      label=spec.label(), progress=progress, deadline=deadline)
    result = trainer.run()
    floats = None
    if result["stages"]:
        floats = next(iter(result["stages"][-1]["eval"].values()))["memory_floats"]
    summary = {"run_id": spec.run_id, "label": spec.label(), **result,
               "memory_floats": floats, "write_compute": method.write_compute(),
               "parameters": sum(p.numel() for p in method.parameters()),
               "wall_seconds": time.time() - started, "device": device, "versions": versions(),
               "spec": spec.to_dict(), "tuning": tuning,
               "describe": method.describe(method.config)}  # label and write axis, for reports
    store.write_json(directory / "summary.json", summary)
    trainer.discard_resume_point()  # finished: a later run of this spec starts afresh
    return RunOutcome(spec.run_id, spec.label(), result["status"], summary["wall_seconds"],
                      scores=test_scores(summary))


def test_scores(summary: dict) -> str:
    """'pairs=2 99.8, pairs=4 97.1': each stage's test exact match (%) at the trained write setting."""
    parts = []
    for stage, override in zip(summary["stages"], summary["spec"]["train"].get("curriculum") or [{}]):
        metrics = next(iter(stage["eval"].values()), None)
        if metrics is not None:
            where = ",".join(f"{k}={v}" for k, v in override.items() if k != "train_key_overlap") or "test"
            parts.append(f"{where} {100 * metrics['exact_match']:.1f}")
    return ", ".join(parts)


def _run_in_worker(spec_dict: dict, out: str, device: str, cache_dir: str, plugins: list[str],
                   threads: int | None, progress: bool, deadline: float | None = None) -> RunOutcome:
    """Entry point of a parallel worker: re-import plugins, pin threads, run, report failures. Past
    the deadline a run does not start (status stopped)."""
    if threads:
        torch.set_num_threads(threads)
    for plugin in plugins:
        registry.load_plugin(plugin)
    registry.discover()
    spec = RunSpec.from_dict(spec_dict)
    if deadline is not None and time.time() >= deadline:
        return RunOutcome(spec.run_id, spec.label(), "stopped")
    try:
        return execute_run(spec, Path(out), device, Path(cache_dir), progress, deadline)
    except ContractError as error:  # the method broke the contract: one line, no traceback
        log.error("run %s failed: %s", spec.label(), error)
        return RunOutcome(spec.run_id, spec.label(), "failed", error=f"ContractError: {error}")
    except Exception as error:  # a failed run is reported; the sweep goes on
        log.exception("run %s failed", spec.label())
        return RunOutcome(spec.run_id, spec.label(), "failed", error=f"{type(error).__name__}: {error}")


@contextlib.contextmanager
def _backend(backend: str, jobs: int, scheduler: str | None):
    """joblib's local processes (loky), or a Dask cluster: the one at `scheduler`, else a local one."""
    from joblib import parallel_config
    if backend == "loky":
        with parallel_config(backend="loky"):
            yield jobs
        return
    if backend != "dask":
        raise HarnessError(f"unknown backend {backend!r}; valid: loky, dask")
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise HarnessError("--backend dask needs dask[distributed]: pip install 'dask[distributed]'") from None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                               dashboard_address=None, host="127.0.0.1")
        client = Client(cluster)
    try:
        with parallel_config(backend="dask"):
            yield -1
    finally:
        client.close()
        if not scheduler:
            cluster.close()


def run_specs(specs: list[RunSpec], out: Path, device: str = "cpu", jobs: int = 1,
              cache_dir: Path = DEFAULT_CACHE, plugins: list[str] | None = None,
              backend: str = "loky", progress: bool = True, scheduler: str | None = None,
              deadline: float | None = None) -> list[RunOutcome]:
    """Run every unfinished spec; finished ones are skipped without building anything.

    A run that raises is reported as failed and the others go on. With a `deadline` (time.time()),
    no training step starts past it: each unfinished run stops at its last checkpoint (status
    stopped) and a later call resumes it.
    """
    plugins = plugins or []
    done = [is_done(out, s) for s in specs]
    outcomes = [RunOutcome(s.run_id, s.label(), "skipped") for s, d in zip(specs, done) if d]
    # seed-major order: the first seed of every setting goes first, so parallel workers tune
    # different settings instead of one waiting on another's tuning lock
    pending = sorted((s for s, d in zip(specs, done) if not d), key=lambda s: s.seed)
    if not pending:
        return outcomes
    if jobs == 1 and backend == "loky":
        for index, spec in enumerate(pending, 1):
            log.info("run %d of %d: %s", index, len(pending), spec.label())
            outcome = _run_in_worker(spec.to_dict(), str(out), device, str(cache_dir), plugins, None, progress,
                                     deadline)
            report(outcome, index, len(pending))
            outcomes.append(outcome)
        return outcomes
    from joblib import Parallel, delayed
    threads = max(1, len(os.sched_getaffinity(0)) // max(jobs, 1)) if backend == "loky" else 1
    tasks = [delayed(_run_in_worker)(s.to_dict(), str(out), device, str(cache_dir), plugins, threads, False,
                                     deadline) for s in pending]
    with _backend(backend, jobs, scheduler) as n_jobs:
        log.info("%d runs, %s at a time", len(pending), jobs)
        for index, outcome in enumerate(Parallel(n_jobs=n_jobs, return_as="generator_unordered")(tasks), 1):
            report(outcome, index, len(pending))
            outcomes.append(outcome)
    return outcomes


def report(outcome: RunOutcome, index: int, total: int) -> None:
    """One log line for a run that ended: k of n, status, time and its test scores."""
    log.info("[%d/%d] %s: %s (%.0f s)%s", index, total, outcome.label, outcome.status, outcome.seconds,
             f"; test exact match {outcome.scores}" if outcome.scores else "")
