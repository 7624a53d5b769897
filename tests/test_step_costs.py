"""Step-cost records and the dry run's time estimate (harness.step_costs, bench.suite_cost)."""
import json

import pytest
import torch
import yaml

from harness import step_costs, store
from harness.schema import RunSpec
from harness.suite import expand_suite
from harness.cli import main

BASE = {
    "task": {"name": "kv_retrieval", "format": "compact", "pairs": 3, "key_length": 1,
             "value_length": 1, "key_symbols": 6, "value_symbols": 6},
    "backbone": {"layers": 1, "hidden": 16, "heads": 2, "ffn": 32, "max_positions": 64},
    "train": {"steps": 6, "stage_steps": 3, "batch_size": 4, "lr": 1e-3, "warmup_steps": 2, "eval_every": 3,
              "eval_examples": 8, "curriculum": [{"pairs": 2}, {"pairs": 3}]},
    "eval": {"examples": 8, "batch_size": 8},
}
TINY = {"description": "tiny curriculum suite", "base": BASE,
        "runs": [{"method": {"name": "gradmem", "memory_size": 2}}, {"method": {"name": "full_context"}}]}


@pytest.fixture(autouse=True)
def no_gpu(monkeypatch):
    """The dry run resolves --device auto itself: keep it on the CPU on any machine."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def write_suite(tmp_path, data=TINY, name="tiny"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def changed(spec, section=None, **values):
    data = spec.to_dict()
    if section:
        data[section] = {**data[section], **values}
    else:
        data.update(values)
    return RunSpec(**data)


def test_cost_key_ignores_seed_lr_and_steps_but_separates_stages_and_methods(tmp_path):
    gradmem, full = expand_suite(write_suite(tmp_path), "cpu")
    key = step_costs.cost_key(gradmem, 0)
    same = [changed(gradmem, seed=7), changed(gradmem, "train", lr=0.5, warmup_steps=9, steps=60, stage_steps=30),
            changed(gradmem, "train", tune={"grid": {"lr": [1e-3]}, "steps": 2})]
    assert all(step_costs.cost_key(s, 0) == key for s in same)
    assert step_costs.cost_key(gradmem, 1) != key                    # the 3-pair stage
    assert step_costs.cost_key(full, 0) != key                       # another method
    assert step_costs.cost_key(changed(gradmem, "method", write_steps=2), 0) != key
    assert step_costs.cost_key(changed(gradmem, "train", batch_size=8), 0) != key
    assert step_costs.cost_key(changed(gradmem, "train", precision="bf16"), 0) != key
    # a stage that sets the task's own value is the same shape as the task without the stage
    flat = changed(gradmem, "train", curriculum=[])
    assert step_costs.cost_key(flat, 0) == step_costs.cost_key(gradmem, 1)


def hand_record(spec, costs):
    entries = {step_costs.cost_key(spec, i): {"seconds": s, "valid_seconds_per_context": v,
                                              "test_seconds_per_context": t, "date": "2026-01-02T00:00:00"}
               for i, (s, v, t) in enumerate(costs)}
    return {"device_tag": "cpu-1threads", "entries": entries, "path": "hand"}


def test_estimate_is_budget_times_step_cost_plus_evaluation_and_tuning(tmp_path):
    gradmem, _ = expand_suite(write_suite(tmp_path), "cpu")
    record = hand_record(gradmem, [(0.5, 0.01, 0.02), (2.0, 0.03, 0.04)])
    result = step_costs.estimate(gradmem, record)
    assert result.train == pytest.approx(3 * 0.5 + 3 * 2.0)
    # one validation per 3 steps on 8 contexts, then the 8-context test, per stage
    assert result.evaluation == pytest.approx((8 * 0.01 + 8 * 0.02) + (8 * 0.03 + 8 * 0.04))
    tuned = changed(gradmem, "train", tune={"grid": {"lr": [1e-3, 3e-3]}, "steps": 2})
    with_tuning = step_costs.estimate(tuned, record, tuning_cells=2)
    assert with_tuning.tuning == pytest.approx(2 * (2 * 0.5 + 1 * 8 * 0.01))
    assert with_tuning.seconds == pytest.approx(7.5 + 0.8 + 2.16)
    # steps for fewer than every stage's budget: the dearer stage gets its budget first (upper bound)
    short = changed(gradmem, "train", steps=4)
    assert step_costs.stage_budgets(short) == [3, 1]
    assert step_costs.estimate(short, record).train == pytest.approx(1 * 0.5 + 3 * 2.0)
    # one budget per stage
    assert step_costs.stage_budgets(changed(gradmem, "train", stage_steps=[5, 1], steps=6)) == [5, 1]
    # a missing or skipped stage makes the run unmeasured
    key = step_costs.cost_key(gradmem, 1)
    record["entries"][key] = {"skipped": "a step took 30 s > --max-seconds 20", "seconds": None}
    assert step_costs.estimate(gradmem, record).seconds is None
    assert step_costs.estimate(gradmem, record).missing == [key]


def dry_run(suite, tmp_path, *extra):
    return main(["--suite", suite, "--dry-run", "--out", str(tmp_path / "results"), "--device", "cpu", *extra])


def test_dry_run_without_record_prints_unmeasured_and_the_command(tmp_path, capsys):
    suite = write_suite(tmp_path)
    assert dry_run(suite, tmp_path) == 0
    out = capsys.readouterr().out
    assert "est unmeasured" in out and "2 of 2 runs to train unmeasured" in out
    assert f"python -m bench.step_cost --suite {suite} --scale cpu --device cpu --out" in out   # as given
    assert not (tmp_path / "results").exists()


def test_gpu_scale_on_a_cpu_machine_reads_a_cuda_record(tmp_path, capsys):
    suite = write_suite(tmp_path)
    assert dry_run(suite, tmp_path, "--scale", "gpu") == 0
    out = capsys.readouterr().out
    # none under --out: the shipped cuda record is read (unmeasured for these shapes)
    assert "read the shipped record" in out and "--scale gpu --device cuda" in out
    gradmem, full = expand_suite(suite, "gpu")
    record = hand_record(gradmem, [(1.0, 0.0, 0.0), (2.0, 0.0, 0.0)])
    record["entries"].update(hand_record(full, [(0.1, 0.0, 0.0), (0.2, 0.0, 0.0)])["entries"])
    record.update(device_tag="cuda-test-gpu", updated="2026-01-02")
    store.write_json(step_costs.record_path(tmp_path / "results", "cuda-test-gpu"), record)
    assert dry_run(suite, tmp_path, "--scale", "gpu") == 0
    out = capsys.readouterr().out
    assert "on cuda-test-gpu" in out and "this machine has no GPU" in out
    assert "est <= 9 s" in out and "est <= 1 s" in out   # 3 x 1 + 3 x 2 = 9 s; 3 x 0.1 + 3 x 0.2 = 0.9 s
    assert "every run to train is measured" in out


@pytest.mark.slow
def test_suite_mode_records_then_the_dry_run_estimates(tmp_path, capsys):
    from bench.step_cost import main as step_cost
    suite = write_suite(tmp_path)
    out = tmp_path / "results"
    args = ["--suite", suite, "--scale", "cpu", "--device", "cpu", "--steps", "2", "--warmup", "0", "--out", str(out)]
    assert step_cost(args) == 0
    path = step_costs.record_path(out, step_costs.device_tag("cpu"))
    record = json.loads(path.read_text())
    specs = expand_suite(suite, "cpu")
    keys = {step_costs.cost_key(s, i) for s in specs for i in range(2)}
    assert set(record["entries"]) == keys
    entry = record["entries"][step_costs.cost_key(specs[0], 1)]
    assert entry["seconds"] > 0 and len(entry["repeats"]) == 2 and entry["test_seconds_per_context"] > 0
    assert entry["what"]["task"]["pairs"] == 3 and entry["torch"] == torch.__version__ and entry["date"]
    capsys.readouterr()
    assert dry_run(suite, tmp_path) == 0
    printed = capsys.readouterr().out
    assert "unmeasured" not in printed and printed.count("est <= ") == 2
    assert f"of training on {record['device_tag']}" in printed and "every run to train is measured" in printed
    # measured keys are skipped; --remeasure measures them again
    assert step_cost(args) == 0
    assert "measuring 0" in capsys.readouterr().out
    assert step_cost([*args, "--remeasure", "--no-eval", "--match", "full_context("]) == 0
    assert "measuring 2" in capsys.readouterr().out


def test_a_step_over_max_seconds_is_recorded_as_skipped(tmp_path, capsys):
    from bench.suite_cost import main as suite_cost
    suite = write_suite(tmp_path)
    out = tmp_path / "results"
    assert suite_cost(["--suite", suite, "--scale", "cpu", "--device", "cpu", "--steps", "1", "--out", str(out),
                       "--max-seconds", "1e-9", "--methods", "full_context"]) == 0
    record = json.loads(step_costs.record_path(out, step_costs.device_tag("cpu")).read_text())
    assert len(record["entries"]) == 2 and all(e["skipped"] for e in record["entries"].values())
    capsys.readouterr()
    assert dry_run(suite, tmp_path, "--methods", "full_context") == 0
    assert "est unmeasured" in capsys.readouterr().out

