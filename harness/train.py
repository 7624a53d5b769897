"""Outer loop: AdamW, warmup, clipping, periodic validation, stages, collapse detection, resume.

A curriculum is a list of task overrides (e.g. pairs 2 -> 4 -> 8). A stage ends when validation
exact match reaches `advance_em` (the last stage: `target_em`), when `patience` evaluations pass
without improvement, or when its step budget `stage_steps` runs out (one number, or one per
stage; the same budgets for every method of a suite); the best weights of the stage are kept,
evaluated on the test split, and the next stage starts from them (as the paper's runs for more
pairs start from the checkpoint of fewer); the first `warmup_stages` stages are not scored. A
stage collapses when its validation exact match falls more than `collapse_drop` below the
stage's best, or when the training loss rises above the task's chance level after having been
below it; the run is then recorded `collapsed` (its scores still come from the best weights). A
checkpoint after every evaluation lets a killed run resume where it stopped (the one before it
is kept: a last checkpoint that does not load falls back to it, then to a fresh start, with a
warning naming the file); training batches are a function of (seed, step), so the resumed run
sees the same data. Training losses stay on the device until an evaluation reads them back, once
per interval (batches are built ahead by worker processes on CUDA, `harness.prefetch`);
`deadline` stops a run before its next step (DeadlineReached) at its last checkpoint.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from harness import store
from harness.schema import EvalConfig, TrainConfig, stage_budget
from harness.prefetch import BatchPrefetcher, step_batch
from harness.evaluate import evaluate
from harness.pipeline import training_loss

log = logging.getLogger(__name__)

TEST_SEED = 0   # every run of a task is scored on the same test examples, whatever its seed
PREVIOUS = "previous.pt"   # the checkpoint before `last.pt`, kept as its fallback
CHECKPOINT_KEYS = {"method", "optimizer", "scheduler", "state", "train"}


@dataclass
class TrainerState:
    """Where a run stands: saved in every checkpoint, restored on resume."""
    step: int = 0                       # optimiser steps over all stages
    stage: int = 0                      # current curriculum stage
    stage_step: int = 0                 # steps in the current stage
    best_em: float = -1.0               # the stage's best validation exact match so far
    best_step: int = 0                  # ... and its step
    best_state: dict | None = None      # ... and its weights (on the CPU)
    since_best: int = 0                 # evaluations without improvement (patience)
    last_em: float | None = None        # the latest validation exact match
    below_chance: bool = False          # the training loss has been below chance this stage
    collapse: dict | None = None        # the stage's first collapse, if any
    collapses: list = field(default_factory=list)       # every stage's collapse
    stage_results: list = field(default_factory=list)   # one record per finished stage
    train_seconds: float = 0.0
    status: str = "running"             # running, diverged, finished, collapsed
    diverged_step: int | None = None

    def next_stage(self) -> None:
        """Start the next curriculum stage: its counters and best weights start afresh."""
        self.stage += 1
        self.stage_step, self.best_em, self.best_step, self.best_state = 0, -1.0, 0, None
        self.since_best, self.below_chance, self.collapse = 0, False, None

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}   # shallow: weights not copied

    @classmethod
    def from_dict(cls, data: dict) -> "TrainerState":
        """A checkpoint's state; fields it lacks (added since) keep their defaults."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class DeadlineReached(Exception):
    """Training stopped at the sweep's deadline (`run_all.py --until`); the run's last checkpoint
    is its resume point."""


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of the base learning rate at `step` (0-based): warmup, then the schedule."""
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    span = max(config.steps - config.warmup_steps, 1)
    progress = min(max(step - config.warmup_steps, 0) / span, 1.0)
    return 1.0 - progress if config.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))


def _cpu_state(module: torch.nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


class Trainer:
    def __init__(self, method, task, train: TrainConfig, eval_config: EvalConfig, seed: int,
                 device, metrics_path: Path, checkpoint_dir: Path | None, label: str = "run",
                 progress: bool = True, test_at_stage_end: bool = True, deadline: float | None = None,
                 batch_workers: int | None = None):
        self.test_at_stage_end = test_at_stage_end
        self.deadline = deadline   # time.time() past which no step starts (DeadlineReached)
        self.method, self.base_task, self.config, self.eval_config = method, task, train, eval_config
        self.seed, self.device, self.label, self.progress = seed, torch.device(device), label, progress
        self.metrics_path, self.checkpoint_dir = Path(metrics_path), checkpoint_dir
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = train.tf32
        # processes building the coming steps' batches (harness.prefetch): on CUDA one, so the card
        # does not wait for the host; none on a CPU, where they would take the training thread's cores
        self.batch_workers = (1 if self.device.type == "cuda" else 0) if batch_workers is None else batch_workers
        self._prefetch: BatchPrefetcher | None = None
        params = [p for p in method.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=train.lr, betas=tuple(train.betas),
                                           weight_decay=train.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, train))
        self.stages = train.curriculum or [{}]
        self._valid_sets: dict = {}
        self.state = TrainerState()

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_path(self) -> Path | None:
        return self.checkpoint_dir / "last.pt" if self.checkpoint_dir else None

    def save_checkpoint(self) -> None:
        path = self._checkpoint_path()
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"method": _cpu_state(self.method), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "state": self.state.to_dict(), "train": asdict(self.config)}
        tmp = path.with_suffix(".tmp")
        torch.save(data, tmp)
        if path.exists():
            path.replace(path.with_name(PREVIOUS))   # the fallback when `last.pt` does not load
        tmp.replace(path)
        if self.state.best_state is not None:
            best = path.with_name(f"best_stage{self.state.stage}.pt")
            torch.save(self.state.best_state, best.with_suffix(".tmp"))
            best.with_suffix(".tmp").replace(best)

    def discard_resume_point(self) -> None:
        """Drop the resume checkpoints (the best weights of each stage stay)."""
        path = self._checkpoint_path()
        if path is not None:
            path.unlink(missing_ok=True)
            path.with_name(PREVIOUS).unlink(missing_ok=True)

    def _load_resume_point(self) -> dict | None:
        """The newest checkpoint that loads whole (`last.pt`, else `previous.pt`); a damaged one is
        named in one warning line and deleted. None: nothing to resume."""
        path = self._checkpoint_path()
        for candidate in (path, path.with_name(PREVIOUS)):
            if not candidate.exists():
                continue
            try:
                data = torch.load(candidate, map_location="cpu", weights_only=False)
                if not isinstance(data, dict) or not CHECKPOINT_KEYS <= set(data):
                    raise ValueError(f"missing {sorted(CHECKPOINT_KEYS - set(data or {}))}")
                return data
            except Exception as error:   # a truncated zip, a torn pickle, a foreign file
                first = (str(error).strip().splitlines() or [""])[0][:120]
                log.warning("%s: checkpoint %s is damaged (%s: %s); falling back", self.label, candidate,
                            type(error).__name__, first)
                candidate.unlink()
        return None

    def _start_afresh(self, reason: str) -> bool:
        """Drop a resume point that must not be continued, and its curve; False: not resumed."""
        log.warning("%s: %s; starting afresh", self.label, reason)
        self.discard_resume_point()
        self.metrics_path.unlink(missing_ok=True)
        return False

    def try_resume(self) -> bool:
        data = self._load_resume_point() if self._checkpoint_path() is not None else None
        if data is None:
            self.metrics_path.unlink(missing_ok=True)  # a curve from a run that left no checkpoint
            return False
        settings = asdict(self.config)
        # an option added since the checkpoint was written counts at its default
        recorded = {**asdict(TrainConfig()), **data.get("train", settings)}
        if recorded != settings:
            # the run id leaves out the tuned setting: a run retrained for a new tuning choice must
            # not resume the old choice's weights, nor keep its curve
            changed = {k: v for k, v in recorded.items() if v != settings.get(k)}
            return self._start_afresh(f"its checkpoint trained with other settings ({changed})")
        step = data["state"]["step"]
        kept = [r for r in store.read_jsonl(self.metrics_path) if r["step"] <= step]
        if step and (not kept or kept[-1]["step"] != step):
            # every checkpoint follows the curve's record of its step: without that record the
            # curve was lost (its folder deleted), and a resumed run would ship a curve with a gap
            return self._start_afresh(f"its checkpoint at step {step} has no curve up to that step")
        self.method.load_state_dict(data["method"])
        self.optimizer.load_state_dict(data["optimizer"])
        self.scheduler.load_state_dict(data["scheduler"])
        self.state = TrainerState.from_dict(data["state"])   # fields added since keep their defaults
        store.atomic_write(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        log.info("%s: resumed at step %d (stage %d)", self.label, self.state.step, self.state.stage)
        return True

    # ------------------------------------------------------------------ loop
    def stage_task(self, index: int):
        return self.base_task.with_params(**self.stages[index]) if self.stages[index] else self.base_task

    def train_batch(self, task):
        """The training batch of the current step: a function of (seed, step) alone, built ahead by
        the prefetching workers when there are any."""
        cfg, step = self.config, self.state.step
        if self._prefetch is not None:
            batch = self._prefetch.batch(step)
        else:
            batch = step_batch(task, cfg.batch_size, self.seed, step, cfg.queries_per_context)
        return batch.to(self.device, non_blocking=True)

    def _start_prefetch(self, task, budget: int) -> None:
        """Workers for the rest of the current stage's steps, `budget` in all (none without
        `batch_workers`)."""
        self._stop_prefetch()
        if self.batch_workers:
            cfg, s = self.config, self.state
            last = min(cfg.steps, s.step + budget - s.stage_step)
            self._prefetch = BatchPrefetcher(task, cfg.batch_size, self.seed, cfg.queries_per_context,
                                             s.step, last, self.batch_workers)

    def _stop_prefetch(self) -> None:
        if self._prefetch is not None:
            self._prefetch.close()
            self._prefetch = None

    def train_step(self, task) -> torch.Tensor:
        """One optimiser step on the step's batch; returns the READ loss as a 0-dim tensor on the
        device, NaN where the loss optimised is not finite. It is read back at the next evaluation
        (`run`), so the host never waits for the device inside a step."""
        return self.optimise(self.train_batch(task))

    def optimise(self, batch) -> torch.Tensor:
        """Forward, backward, clipping, AdamW and schedule on a batch already on the device."""
        cfg = self.config
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
        with autocast:
            loss, read_loss = training_loss(self.method, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.method.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return torch.where(torch.isfinite(loss.detach()), read_loss.detach().float(), torch.nan)

    def validate(self, task) -> float:
        stage = self.state.stage
        if stage not in self._valid_sets:  # the same validation set at every evaluation of a stage
            self._valid_sets[stage] = task.examples("valid", self.config.eval_examples, seed=0)
        valid = self._valid_sets[stage]
        metrics = evaluate(self.method, task, valid, [None], self.eval_config.batch_size, 1, False, self.device)
        return next(iter(metrics.values()))["exact_match"]

    def finish_stage(self, task) -> None:
        """Restore the stage's best weights, score them on the test split (unless `test_at_stage_end`
        is off, as in tuning) and move to the next stage."""
        s = self.state
        if s.best_state is not None:
            self.method.load_state_dict(s.best_state)
        metrics = {}
        warmup = s.stage < self.config.warmup_stages
        if self.test_at_stage_end and not warmup:
            test = task.examples("test", self.eval_config.examples, seed=TEST_SEED)
            settings = self.eval_config.write_settings or self.method.eval_write_settings()
            metrics = evaluate(self.method, task, test, settings, self.eval_config.batch_size,
                               self.eval_config.queries_per_context, self.eval_config.generate, self.device)
        task_params = {k: v for k, v in vars(task.config).items()}
        collapse = s.collapse
        if collapse is not None:
            collapse["final_em"] = s.last_em
            s.collapses.append(collapse)
        s.stage_results.append({"stage": s.stage, "task": task_params, "steps": s.stage_step,
                                   "best_valid_em": s.best_em, "best_step": s.best_step,
                                   "final_valid_em": s.last_em, "collapsed": collapse is not None,
                                   "warmup": warmup, "eval": metrics})
        s.next_stage()

    def check_collapse(self, em: float, loss: float, chance: float) -> None:
        """Record the stage's first collapse: validation EM `collapse_drop` below the stage's best,
        or the training loss above chance after having been below it."""
        s, drop = self.state, self.config.collapse_drop
        reason = None
        if drop is not None and em < s.best_em - drop:
            reason = "valid_em_drop"
        elif s.below_chance and loss > chance:
            reason = "loss_above_chance"
        s.below_chance = s.below_chance or loss < chance
        if reason and s.collapse is None:
            s.collapse = {"stage": s.stage, "task": self.stages[s.stage], "step": s.step,
                             "best_em": s.best_em, "best_step": s.best_step, "reason": reason}
            log.warning("%s: collapsed at step %d (%s; best validation EM %.3f at step %d, now %.3f)",
                        self.label, s.step, reason, s.best_em, s.best_step, em)

    def run(self) -> dict:
        """Train through every stage; returns status, per-stage results, steps, seconds."""
        try:
            return self._run()
        finally:
            self._stop_prefetch()

    def _run(self) -> dict:
        self.try_resume()
        cfg, s = self.config, self.state
        self.method.train()
        bar = tqdm(total=cfg.steps, initial=s.step, desc=self.label, disable=not self.progress,
                   leave=False, dynamic_ncols=True)
        recent: list[torch.Tensor] = []   # the READ losses since the last evaluation, on the device
        while s.stage < len(self.stages) and s.status == "running":
            task = self.stage_task(s.stage)
            last_stage = s.stage == len(self.stages) - 1
            threshold = cfg.target_em if last_stage else cfg.advance_em
            budget = stage_budget(asdict(cfg), s.stage)
            stage_over = s.step >= cfg.steps
            if not stage_over:
                self._start_prefetch(task, budget)
            while not stage_over:
                if self.deadline is not None and time.time() >= self.deadline:
                    bar.close()   # the last checkpoint (after the last evaluation) is the resume point
                    raise DeadlineReached(f"{self.label}: stopped at the deadline at step {s.step}")
                started = time.perf_counter()
                loss = self.train_step(task)
                s.train_seconds += time.perf_counter() - started
                s.step += 1
                s.stage_step += 1
                bar.update(1)
                recent.append(loss)
                out_of_steps = s.step >= cfg.steps or s.stage_step >= budget
                if s.step % cfg.eval_every == 0 or out_of_steps:
                    started = time.perf_counter()
                    losses = torch.stack(recent).tolist()   # the one read-back of the interval
                    s.train_seconds += time.perf_counter() - started
                    bad = next((i for i, value in enumerate(losses) if not math.isfinite(value)), None)
                    if bad is not None:
                        step = s.step - len(losses) + bad + 1
                        s.status, s.diverged_step = "diverged", step
                        log.warning("%s: loss is not finite at step %d; run marked diverged", self.label, step)
                        break
                    em = self.validate(task)
                    mean_loss = sum(losses) / len(losses)
                    self.check_collapse(em, mean_loss, task.chance_loss())
                    s.last_em = em
                    if em > s.best_em:
                        s.best_em, s.best_step, s.since_best, s.best_state = em, s.step, 0, _cpu_state(self.method)
                    else:
                        s.since_best += 1
                    record = {"step": s.step, "stage": s.stage, "task": self.stages[s.stage],
                              "loss": mean_loss, "valid_em": em,
                              "lr": self.scheduler.get_last_lr()[0], "seconds": round(s.train_seconds, 3)}
                    recent = []
                    store.append_jsonl(self.metrics_path, record)
                    bar.set_postfix(stage=s.stage, loss=f"{record['loss']:.3f}", em=f"{em:.3f}")
                    patience_over = cfg.patience is not None and s.since_best >= cfg.patience
                    stage_over = em >= threshold or out_of_steps or patience_over
                    if not stage_over:
                        self.save_checkpoint()
            if s.status != "running":
                break
            self.finish_stage(task)
            self.save_checkpoint()
            if s.step >= cfg.steps:
                break
        bar.close()
        if s.status == "running":
            s.status = "collapsed" if s.collapses else "finished"
        return {"status": s.status, "diverged_step": s.diverged_step, "steps": s.step,
                "train_seconds": s.train_seconds, "stages": s.stage_results, "collapses": s.collapses}
