"""The outer loop's rules: stages end by patience, collapse is detected and reported, tuning picks
the best cell and is cached."""
import json

import pytest
import torch

from harness import store, tune
from harness.schema import EvalConfig, RunSpec, SECTIONS, TrainConfig, resolve_section
from harness.typed import build
from harness.errors import HarnessError
from harness.train import Trainer
from tests.conftest import make_method, make_task


def scripted_trainer(tmp_path, valid_ems, losses, **train):
    """A trainer whose validation EM and training loss follow a script (no learning needed)."""
    task = make_task(format="compact", pairs=2, key_length=1, value_length=1, key_symbols=6, value_symbols=6)
    method = make_method("query_only", task)
    config = build(TrainConfig, {"steps": 100, "batch_size": 2, "eval_every": 1, "eval_examples": 4,
                                 "warmup_steps": 0, **train}, "train")
    trainer = Trainer(method, task, config, build(EvalConfig, {"examples": 4, "generate": False}, "eval"), 0, "cpu",
                      tmp_path / "metrics.jsonl", None, progress=False)
    ems, loss_values = iter(valid_ems), iter(losses)
    trainer.validate = lambda task: next(ems)
    trainer.train_step = lambda task: torch.tensor(next(loss_values))   # as a step returns it: on the device
    return trainer


def test_stage_ends_after_patience_evaluations_without_improvement(tmp_path):
    trainer = scripted_trainer(tmp_path, [0.1, 0.3, 0.3, 0.2, 0.3, 0.9], [1.0] * 6, patience=3,
                               curriculum=[{"pairs": 2}], advance_em=1.0, target_em=1.0)
    result = trainer.run()
    (stage,) = result["stages"]
    assert stage["steps"] == 5          # best at step 2, three evaluations without improvement
    assert stage["best_valid_em"] == 0.3 and stage["best_step"] == 2
    assert result["status"] == "finished" and not stage["collapsed"]


def test_every_stage_gets_its_budget_when_none_converges(tmp_path):
    ems = [0.1 * i for i in range(1, 10)]
    trainer = scripted_trainer(tmp_path, ems, [1.0] * 9, steps=9, stage_steps=3,
                               curriculum=[{"pairs": 2}, {"pairs": 3}, {"pairs": 4}], advance_em=1.0)
    result = trainer.run()
    assert [s["steps"] for s in result["stages"]] == [3, 3, 3]
    assert [s["task"]["pairs"] for s in result["stages"]] == [2, 3, 4]


def test_a_list_of_stage_budgets_gives_each_stage_its_own(tmp_path):
    """stage_steps [4, 2, 3]: a longer first stage (a binding plateau's), the rest shorter."""
    ems = [0.1 * i for i in range(1, 10)]
    trainer = scripted_trainer(tmp_path, ems, [1.0] * 9, steps=9, stage_steps=[4, 2, 3],
                               curriculum=[{"pairs": 2}, {"pairs": 3}, {"pairs": 4}], advance_em=1.0)
    assert [s["steps"] for s in trainer.run()["stages"]] == [4, 2, 3]


def test_warmup_stages_train_but_are_not_scored(tmp_path):
    """warmup_stages 1: the 2-pair stage trains and validates, no test score, no table row."""
    trainer = scripted_trainer(tmp_path, [0.1 * i for i in range(1, 7)], [1.0] * 6, steps=6, stage_steps=3,
                               curriculum=[{"pairs": 2}, {"pairs": 3}], advance_em=1.0, warmup_stages=1)
    warmup, scored = trainer.run()["stages"]
    assert warmup["warmup"] and warmup["eval"] == {} and warmup["steps"] == 3
    assert not scored["warmup"] and scored["eval"]["default"]["exact_match"] >= 0
    with pytest.raises(HarnessError, match="at least one of the 2 curriculum stages scored"):
        build(TrainConfig, {"warmup_stages": 2, "curriculum": [{"pairs": 2}, {"pairs": 3}]}, "train")


@pytest.mark.parametrize("budgets", [[4, 2], [4, 0, 3]])
def test_stage_budgets_must_be_one_positive_number_per_stage(budgets):
    with pytest.raises(HarnessError, match="one budget >= 1 per curriculum stage"):
        build(TrainConfig, {"stage_steps": budgets, "curriculum": [{"pairs": 2}, {"pairs": 3}, {"pairs": 4}]}, "train")


def test_a_validation_drop_of_more_than_20_points_is_a_collapse(tmp_path):
    # best 0.94 at step 2, then down to 0.07: the run is recorded collapsed, scored from its best weights
    trainer = scripted_trainer(tmp_path, [0.5, 0.94, 0.9, 0.6, 0.07, 0.07], [1.0] * 6, steps=6,
                               curriculum=[{"pairs": 2}], advance_em=1.0)
    result = trainer.run()
    assert result["status"] == "collapsed"
    (collapse,) = result["collapses"]
    assert collapse["step"] == 4 and collapse["best_em"] == 0.94 and collapse["best_step"] == 2
    assert collapse["final_em"] == 0.07 and collapse["reason"] == "valid_em_drop"
    assert result["stages"][0]["collapsed"] and result["stages"][0]["best_valid_em"] == 0.94


def test_small_dips_are_not_a_collapse(tmp_path):
    trainer = scripted_trainer(tmp_path, [0.5, 0.94, 0.8, 0.9], [1.0] * 4, steps=4,
                               curriculum=[{"pairs": 2}], advance_em=1.0)
    assert trainer.run()["status"] == "finished"


def test_training_loss_back_above_chance_is_a_collapse(tmp_path):
    # compact task with 6 value symbols: chance = ln 6 = 1.79
    trainer = scripted_trainer(tmp_path, [0.2, 0.3, 0.3, 0.3], [2.5, 1.0, 1.5, 4.1], steps=4,
                               curriculum=[{"pairs": 2}], advance_em=1.0, collapse_drop=None)
    result = trainer.run()
    assert result["status"] == "collapsed"
    assert result["collapses"][0]["reason"] == "loss_above_chance" and result["collapses"][0]["step"] == 4


def test_loss_above_chance_from_the_start_is_not_a_collapse(tmp_path):
    trainer = scripted_trainer(tmp_path, [0.2, 0.3], [4.0, 3.0], steps=2, curriculum=[{"pairs": 2}], advance_em=1.0)
    assert trainer.run()["status"] == "finished"


def tiny_spec(tmp_path, **tune_spec):
    sections = {
        "task": {"name": "kv_retrieval", "format": "compact", "pairs": 2, "key_length": 1, "value_length": 1,
                 "key_symbols": 6, "value_symbols": 6},
        "method": {"name": "query_only"},
        "backbone": {"layers": 1, "hidden": 16, "heads": 2, "ffn": 32, "max_positions": 64},
        "train": {"steps": 4, "batch_size": 2, "eval_every": 2, "eval_examples": 4, "curriculum": [{"pairs": 2}],
                  "tune": {"grid": {"lr": [1e-3, 3e-3], "warmup_steps": [0, 2]}, "steps": 2, **tune_spec}},
        "eval": {"examples": 4, "generate": False},
    }
    return RunSpec(suite="tiny", scale="cpu", seed=0, **{s: resolve_section(s, sections[s], s) for s in SECTIONS})


def test_tuning_picks_the_best_cell_and_reruns_nothing(tmp_path, monkeypatch):
    spec = tiny_spec(tmp_path)   # one stage: scored on it alone
    scores = {(1e-3, 0): 0.2, (1e-3, 2): 0.6, (3e-3, 0): 0.6, (3e-3, 2): 0.4}
    calls = []

    def fake_cell(cell_spec, device, *rest):
        key = (cell_spec.train["lr"], cell_spec.train["warmup_steps"])
        calls.append(key)
        assert cell_spec.train["curriculum"] == [{"pairs": 2}] and cell_spec.train["steps"] == 2
        return [{"valid_em": scores[key], "best_step": 2}]

    monkeypatch.setattr(tune, "train_cell", fake_cell)
    record = tune.tune(spec, tmp_path)
    assert len(calls) == 4
    assert record["chosen"] == {"lr": 1e-3, "warmup_steps": 2}   # tie at 0.6: grid order
    assert [c["valid_em"] for c in record["cells"]] == [0.2, 0.6, 0.6, 0.4] and "second_stage" not in record
    other_seed = RunSpec(**{**spec.to_dict(), "seed": 2})
    assert tune.tune(other_seed, tmp_path)["chosen"] == record["chosen"]
    assert len(calls) == 4                                       # cached: nothing retrained


def two_stage_spec(tmp_path):
    spec = tiny_spec(tmp_path)
    train = {**spec.train, "curriculum": [{"pairs": 2}, {"pairs": 3}, {"pairs": 4}]}
    return RunSpec(**{**spec.to_dict(), "train": train})


def test_cells_are_scored_on_the_second_stage_and_only_missing_scores_train(tmp_path, monkeypatch):
    spec = two_stage_spec(tmp_path)
    first = {(1e-3, 0): 1.0, (1e-3, 2): 0.5, (3e-3, 0): 1.0, (3e-3, 2): 0.9}
    second = {(1e-3, 0): 0.7, (1e-3, 2): 0.4, (3e-3, 0): 0.8, (3e-3, 2): 0.8}
    calls = []

    def fake_cell(cell_spec, device, *rest):
        key = (cell_spec.train["lr"], cell_spec.train["warmup_steps"])
        calls.append(key)
        assert cell_spec.train["curriculum"] == [{"pairs": 2}, {"pairs": 3}]   # the first two stages
        assert cell_spec.train["steps"] == 4 and cell_spec.train["stage_steps"] == 2
        return [{"valid_em": first[key], "best_step": 2}, {"valid_em": second[key], "best_step": 4}]

    monkeypatch.setattr(tune, "train_cell", fake_cell)
    path = tune.tune_path(tmp_path, spec)
    old = {"tune_id": tune.tune_id(spec), "grid": spec.train["tune"]["grid"], "steps": 2, "seed": 0,
           "method": spec.method, "cells": [{"lr": lr, "warmup_steps": w, "valid_em": first[(lr, w)], "best_step": 2}
                                           for lr, w in first]}
    store.write_json(path, old)   # a record from before two-stage tuning: first-stage scores only
    assert tune.settled_choice(tmp_path, spec) is None
    record = tune.tune(spec, tmp_path)
    assert len(calls) == 4 and len(record["cells"]) == 4 and record["second_stage_task"] == {"pairs": 3}
    # (3e-3, 0) and (3e-3, 2) tie on the second stage; (3e-3, 0) is better on the first
    assert record["chosen"] == {"lr": 3e-3, "warmup_steps": 0}
    assert tune.settled_choice(tmp_path, spec) == record["chosen"]
    tune.tune(spec, tmp_path)
    assert len(calls) == 4                                            # cached: nothing retrained


def test_a_run_trained_before_its_tuning_choice_changed_trains_again(tmp_path, monkeypatch):
    from harness import runner
    spec = two_stage_spec(tmp_path)
    out, cache = tmp_path / "results", tmp_path / "cache"
    assert runner.execute_run(spec, out, cache_dir=cache, progress=False).status in ("finished", "collapsed")
    assert runner.is_done(out, spec)
    assert runner.execute_run(spec, out, cache_dir=cache, progress=False).status == "skipped"
    path = tune.tune_path(out, spec)
    record = json.loads(path.read_text())
    other = next(c for c in record["cells"] if {k: c[k] for k in record["chosen"]} != record["chosen"])
    for cell in record["cells"] + record["second_stage"]:             # the tuning now chooses another cell
        cell["valid_em"] = 1.0 if all(cell[k] == other[k] for k in record["chosen"]) else 0.0
    path.write_text(json.dumps(record))
    assert not runner.is_done(out, spec)
    assert runner.execute_run(spec, out, cache_dir=cache, progress=False).status in ("finished", "collapsed")
    summary = json.loads((out / "tiny" / spec.run_id / "summary.json").read_text())
    assert summary["tuning"]["chosen"] == {k: other[k] for k in summary["tuning"]["chosen"]}
    assert runner.is_done(out, spec)


def test_a_checkpoint_from_other_train_settings_is_not_resumed(tmp_path):
    """A run retrained for a new tuning choice keeps its run id: a resume point (and curve) left by
    the old choice must not be continued under the new one."""
    task = make_task(format="compact", pairs=2, key_length=1, value_length=1, key_symbols=6, value_symbols=6)

    def trainer(lr):
        config = build(TrainConfig, {"steps": 4, "batch_size": 2, "lr": lr}, "train")
        return Trainer(make_method("query_only", task), task, config, build(EvalConfig, {"examples": 4}, "eval"),
                       0, "cpu", tmp_path / "metrics.jsonl", tmp_path / "checkpoints", progress=False)

    old = trainer(1e-3)
    old.state.step = 2
    old.save_checkpoint()
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    assert trainer(1e-3).try_resume()                                 # same settings: resumes at step 2
    assert [r["step"] for r in store.read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]
    fresh = trainer(3e-3)
    assert not fresh.try_resume() and fresh.state.step == 0
    assert not (tmp_path / "checkpoints" / "last.pt").exists() and not (tmp_path / "metrics.jsonl").exists()


def test_a_checkpoint_from_before_a_new_train_option_resumes(tmp_path):
    """An option added to TrainConfig after a checkpoint was written counts at its default there."""
    import torch
    task = make_task(format="compact", pairs=2, key_length=1, value_length=1, key_symbols=6, value_symbols=6)
    config = build(TrainConfig, {"steps": 4, "batch_size": 2}, "train")
    old = Trainer(make_method("query_only", task), task, config, build(EvalConfig, {"examples": 4}, "eval"),
                  0, "cpu", tmp_path / "metrics.jsonl", tmp_path / "checkpoints", progress=False)
    old.state.step = 2
    old.save_checkpoint()
    data = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    del data["train"]["tf32"]   # as a checkpoint written before the option existed
    torch.save(data, tmp_path / "checkpoints" / "last.pt")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    new = Trainer(make_method("query_only", task), task, config, build(EvalConfig, {"examples": 4}, "eval"),
                  0, "cpu", tmp_path / "metrics.jsonl", tmp_path / "checkpoints", progress=False)
    assert new.try_resume() and new.state.step == 2


def test_a_checkpoint_whose_curve_was_deleted_is_not_resumed(tmp_path):
    """A results folder deleted while its checkpoint stays: resuming would ship a curve with a gap
    (and a summary whose stages the curve no longer shows), so the run starts afresh."""
    task = make_task(format="compact", pairs=2, key_length=1, value_length=1, key_symbols=6, value_symbols=6)

    def trainer():
        config = build(TrainConfig, {"steps": 4, "batch_size": 2}, "train")
        return Trainer(make_method("query_only", task), task, config, build(EvalConfig, {"examples": 4}, "eval"),
                       0, "cpu", tmp_path / "metrics.jsonl", tmp_path / "checkpoints", progress=False)

    old = trainer()
    old.state.step = 4
    old.save_checkpoint()
    (tmp_path / "metrics.jsonl").write_text('{"step": 2}\n{"step": 4}\n')
    assert trainer().try_resume()                                     # curve up to its step: resumes
    for curve in ("", '{"step": 2}\n'):                               # folder gone, or the curve cut short
        (tmp_path / "metrics.jsonl").write_text(curve)
        old.save_checkpoint()
        fresh = trainer()
        assert not fresh.try_resume() and fresh.state.step == 0
        assert not (tmp_path / "checkpoints" / "last.pt").exists()
        assert not (tmp_path / "metrics.jsonl").exists()


def test_a_tuned_run_trains_with_the_chosen_cell_and_records_the_grid(tmp_path):
    from harness.runner import execute_run
    spec = tiny_spec(tmp_path)
    outcome = execute_run(spec, tmp_path / "results", cache_dir=tmp_path / "cache", progress=False)
    assert outcome.status in ("finished", "collapsed")
    summary = json.loads((tmp_path / "results" / "tiny" / spec.run_id / "summary.json").read_text())
    assert len(summary["tuning"]["cells"]) == 4 and summary["tuning"]["chosen"].keys() == {"lr", "warmup_steps"}
    assert (tmp_path / "results" / "tiny" / "tuning" / f"{tune.tune_id(spec)}.json").exists()
    assert store.load(tmp_path / "results").shape[0] >= 1   # the tuning file is not read as a run


@pytest.mark.parametrize("bad", [{"grid": {"lr": []}, "steps": 2}, {"grid": {"stepz": [1]}, "steps": 2},
                                 {"grid": {"lr": [1e-3]}, "steps": 0}, {"grid": {"lr": ["x"]}, "steps": 2},
                                 {"grid": {"lr": [1e-3]}}, {"grid": {"lr": [1e-3]}, "steps": 2, "sead": 1}])
def test_bad_tuning_spec_is_rejected(bad):
    with pytest.raises(HarnessError):
        build(TrainConfig, {"tune": bad}, "train")


@pytest.mark.parametrize("workers", [1, 2])
def test_prefetching_workers_train_on_the_same_batches_as_the_training_thread(tmp_path, workers):
    """Batches built ahead in worker processes (harness.prefetch, on by default on CUDA): the same
    steps, losses and weights as building each batch on the training thread, across two stages."""
    task = make_task(format="compact", pairs=3, key_length=1, value_length=1, key_symbols=6, value_symbols=6)
    config = build(TrainConfig, {"steps": 8, "stage_steps": 4, "batch_size": 4, "eval_every": 2, "eval_examples": 4,
                                 "warmup_steps": 0, "lr": 1e-2, "advance_em": 1.1, "target_em": 1.1,
                                 "curriculum": [{"pairs": 2}, {"pairs": 3}]}, "train")
    results = []
    for batch_workers in (0, workers):
        method = make_method("gradmem", task, memory_size=2)
        trainer = Trainer(method, task, config, build(EvalConfig, {"examples": 4, "generate": False}, "eval"), 0,
                          "cpu", tmp_path / f"m{batch_workers}.jsonl", None, progress=False,
                          batch_workers=batch_workers)
        trainer.run()
        losses = [record["loss"] for record in store.read_jsonl(tmp_path / f"m{batch_workers}.jsonl")]
        results.append((losses, [p.detach().clone() for p in method.parameters()]))
    (plain_losses, plain_weights), (ahead_losses, ahead_weights) = results
    assert len(plain_losses) == 4 and plain_losses == ahead_losses
    assert all(torch.equal(a, b) for a, b in zip(plain_weights, ahead_weights))
