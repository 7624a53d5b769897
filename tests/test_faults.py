"""Faults and bad paths leave nothing half-true: a damaged summary is retrained (kept aside) and
skipped by readers, a damaged checkpoint falls back, one trainer per run whatever the cache, and
every bad path or suite file is one line with exit code 2 before anything runs."""
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness import store
from harness.cli import main
from tests.test_cli import TINY, kill_once_at_step, modified, run, summaries, write_suite

REPO = Path(__file__).resolve().parent.parent
ONE_RUN = {**TINY, "runs": [{"method": {"name": "full_context"}}]}


def files_under(path: Path) -> set:
    return {p for p in Path(path).rglob("*")}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    return err


# ---------------------------------------------------------------- damaged summaries
@pytest.mark.parametrize("damage", ["truncated", "empty object", "a list", "not utf-8"])
def test_a_damaged_summary_is_shown_retrained_kept_aside_and_skipped_by_readers(damage, tmp_path, capsys, caplog):
    suite = write_suite(tmp_path, ONE_RUN)
    assert run(["--suite", suite], tmp_path) == 0
    [path] = summaries(tmp_path)
    whole = path.read_text()
    path.write_bytes({"truncated": whole[:len(whole) // 2].encode(), "empty object": b"{}",
                      "a list": b"[1, 2]", "not utf-8": b"\xff\xfe{"}[damage])
    damaged_bytes = path.read_bytes()

    with caplog.at_level(logging.WARNING):
        frame = store.load(tmp_path / "results")   # readers skip it with one warning naming it
    assert frame.empty
    assert [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]

    capsys.readouterr()
    assert run(["--suite", suite, "--dry-run"], tmp_path) == 0
    assert "damaged" in capsys.readouterr().out

    assert run(["--suite", suite], tmp_path) == 0   # retrained, the damaged file kept aside
    assert json.loads(path.read_text())["status"] == "finished"
    assert (path.parent / "summary.json.damaged").read_bytes() == damaged_bytes
    assert len(store.load(tmp_path / "results")["run_id"].unique()) == 1


def test_plots_on_a_missing_or_empty_results_folder_exit_2_and_write_nothing(tmp_path, capsys):
    from plots.__main__ import main as plots_main
    out = tmp_path / "plots"
    out.mkdir()
    (out / "table1_kv.md").write_text("shipped table\n")
    for results in (tmp_path / "result", tmp_path / "empty"):
        if results.name == "empty":
            results.mkdir()
        assert plots_main(["--results", str(results), "--out", str(out)]) == 2
        assert str(results) in one_error_line(capsys)
        assert (out / "table1_kv.md").read_text() == "shipped table\n"
        assert {p.name for p in out.iterdir()} == {"table1_kv.md"}


# ---------------------------------------------------------------- damaged checkpoints
def _killed_at_step_7(tmp_path, monkeypatch):
    """A 9-step run killed at step 7: checkpoints at steps 3 (previous.pt) and 6 (last.pt)."""
    suite = write_suite(tmp_path, modified(ONE_RUN, "train", steps=9, eval_every=3))
    steps_run = kill_once_at_step(monkeypatch, 7)
    assert run(["--suite", suite], tmp_path) == 130   # Ctrl-C: one line, exit 130
    [folder] = (tmp_path / "cache" / "checkpoints").iterdir()
    assert {p.name for p in folder.glob("*.pt")} >= {"last.pt", "previous.pt"}
    return suite, folder, steps_run


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 3])


@pytest.mark.parametrize("damaged, resumed_from", [(["last.pt"], 3), (["last.pt", "previous.pt"], 0)])
def test_a_damaged_checkpoint_falls_back_to_the_previous_one_then_to_a_fresh_start(
        damaged, resumed_from, tmp_path, monkeypatch, caplog):
    suite, folder, steps_run = _killed_at_step_7(tmp_path, monkeypatch)
    for name in damaged:
        _truncate(folder / name)
    with caplog.at_level(logging.WARNING):
        assert run(["--suite", suite], tmp_path) == 0
    for name in damaged:
        assert [r for r in caplog.records if str(folder / name) in r.getMessage()], name
    after = steps_run[steps_run.index("died") + 1:]
    assert after == list(range(resumed_from, 9))
    [summary] = summaries(tmp_path)
    assert json.loads(summary.read_text())["steps"] == 9
    curve = store.read_jsonl(summary.parent / "metrics.jsonl")
    assert [r["step"] for r in curve] == [3, 6, 9]


# ---------------------------------------------------------------- one trainer per run
@pytest.mark.slow
def test_two_sweeps_with_different_caches_on_one_out_train_each_run_once(tmp_path, capsys):
    suite = write_suite(tmp_path, modified(ONE_RUN, "train", steps=3000, eval_every=100, eval_examples=4))
    results = tmp_path / "results"
    first = subprocess.Popen([sys.executable, str(REPO / "run_all.py"), "--suite", suite, "--out", str(results),
                              "--cache", str(tmp_path / "cache_a"), "--quiet", "--device", "cpu"],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        while not list(results.glob("*/*/metrics.jsonl")) and time.time() < deadline:
            assert first.poll() is None, first.stdout.read()
            time.sleep(0.2)
        [curve] = list(results.glob("*/*/metrics.jsonl"))
        assert first.poll() is None, "the first sweep finished before the second started: make it longer"
        assert main(["--suite", suite, "--out", str(results), "--cache", str(tmp_path / "cache_b"),
                     "--quiet", "--device", "cpu"]) == 0
        assert not (tmp_path / "cache_b" / "checkpoints").exists() or \
            not any((tmp_path / "cache_b" / "checkpoints").iterdir())
    finally:
        first.wait(timeout=600)
    assert first.returncode == 0
    steps = [r["step"] for r in store.read_jsonl(curve)]
    summary = store.read_summary(curve.parent / "summary.json")
    assert steps == sorted(steps) and len(steps) == len(set(steps)) and steps[-1] == summary["steps"]


# ---------------------------------------------------------------- bad paths and suite files
def _out_below_a_file(p):
    (p / "afile").write_text("x")
    return ["--suite", write_suite(p, ONE_RUN), "--out", str(p / "afile" / "results")]


def _out_a_file(p):
    (p / "afile").write_text("x")
    return ["--suite", write_suite(p, ONE_RUN), "--out", str(p / "afile")]


def _cache_a_file(p):
    (p / "afile").write_text("x")
    return ["--suite", write_suite(p, ONE_RUN), "--out", str(p / "results"), "--cache", str(p / "afile")]


def _suite_a_folder(p):
    (p / "folder.yaml").mkdir()
    return ["--suite", str(p / "folder.yaml"), "--out", str(p / "results")]


def _suite_not_utf8(p):
    path = p / "latin1.yaml"
    path.write_bytes(yaml.safe_dump(ONE_RUN).replace("tiny test suite", "caf\xe9").encode("latin-1"))
    return ["--suite", str(path), "--out", str(p / "results")]


def _suite_with_a_key_twice(p):
    path = p / "twice.yaml"
    path.write_text(yaml.safe_dump(ONE_RUN).replace("  train:\n", "  train:\n    steps: 2\n", 1))
    return ["--suite", str(path), "--out", str(p / "results")]


def _description_not_text(p):
    return ["--suite", write_suite(p, {**ONE_RUN, "description": 42}), "--out", str(p / "results")]


def _plugin_taking_a_name(p):
    (p / "clash_plugin.py").write_text(
        "from harness.registry import register_method\nfrom methods.query_only import QueryOnly\n\n"
        "@register_method\nclass Impostor(QueryOnly):\n    name = 'gradmem'\n")
    sys.path.insert(0, str(p))
    return ["--plugin", "clash_plugin", "--suite", write_suite(p, ONE_RUN), "--out", str(p / "results")]


BAD_PATHS = {
    "--out below a regular file": (_out_below_a_file, "afile"),
    "--out a regular file": (_out_a_file, "afile"),
    "--out empty": (lambda p: ["--suite", write_suite(p, ONE_RUN), "--out", ""], "--out"),
    "--cache a regular file": (_cache_a_file, "afile"),
    "suite path a folder": (_suite_a_folder, "folder.yaml"),
    "suite file not UTF-8": (_suite_not_utf8, "latin1.yaml"),
    "suite key given twice": (_suite_with_a_key_twice, "twice"),
    "description not text": (_description_not_text, "description"),
    "plugin taking a method name": (_plugin_taking_a_name, "Impostor"),
}


@pytest.mark.parametrize("case", sorted(BAD_PATHS))
def test_a_bad_path_or_suite_file_is_one_line_exit_2_and_leaves_nothing(case, tmp_path, capsys, monkeypatch):
    from harness import registry
    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))   # a plugin's registration stays here
    make, named = BAD_PATHS[case]
    argv = make(tmp_path)
    before = files_under(tmp_path)
    assert main([*argv, "--quiet", "--device", "cpu"]) == 2
    assert named in one_error_line(capsys)
    assert files_under(tmp_path) == before   # no results, no lock file, no cache


def test_out_in_a_read_only_folder_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:   # root writes anywhere: let the access check see the folder as read-only
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    try:
        before = files_under(tmp_path)
        assert main(["--suite", write_suite(tmp_path, ONE_RUN), "--out", str(locked / "results"),
                     "--quiet", "--device", "cpu"]) == 2
        assert "not writable" in one_error_line(capsys)
        assert files_under(tmp_path) - before == {tmp_path / "tiny.yaml"}
    finally:
        locked.chmod(0o755)


def test_a_sweep_estimated_past_a_day_needs_yes(tmp_path, capsys):
    """The paper scale (1M steps a run) is refused in one line naming --yes; its dry run is not."""
    out = tmp_path / "results"
    assert main(["--suite", "capacity", "--scale", "paper", "--out", str(out), "--quiet", "--device", "cpu"]) == 2
    err = one_error_line(capsys)
    assert "--yes" in err and "days" in err
    assert not out.exists()
    assert main(["--suite", "capacity", "--scale", "paper", "--out", str(out), "--dry-run", "--device", "cpu"]) == 0


# ---------------------------------------------------------------- a deadline
def _comparable(summary_path: Path) -> tuple:
    """What a rerun must repeat exactly: each stage's scores and steps, and the curve's losses."""
    summary = store.read_summary(summary_path)
    stages = [(s["stage"], s["steps"], s["best_valid_em"], {k: v["exact_match"] for k, v in s["eval"].items()})
              for s in summary["stages"]]
    curve = [(r["step"], r["loss"], r["valid_em"]) for r in store.read_jsonl(summary_path.parent / "metrics.jsonl")]
    return summary["status"], summary["steps"], stages, curve


@pytest.mark.slow
def test_a_sweep_stopped_at_its_deadline_resumes_to_the_same_summaries(tmp_path, monkeypatch, caplog):
    """--until stops every run at its last checkpoint; rerunning finishes them exactly as an
    uninterrupted sweep does (the clock is scripted: one second a step, the deadline inside a run)."""
    import harness.cli as cli_module
    import harness.runner as runner_module
    import harness.train as train_module
    data = modified({**TINY, "runs": [{"method": {"name": "gradmem", "memory_size": 2}},
                                      {"method": {"name": "full_context"}}]}, "train", steps=12, eval_every=3)
    suite = write_suite(tmp_path, data)
    whole = tmp_path / "whole"
    assert main(["--suite", suite, "--out", str(whole / "results"), "--cache", str(whole / "cache"),
                 "--quiet", "--device", "cpu"]) == 0

    clock = {"now": 1000.0}
    for module in (cli_module, runner_module, train_module):
        monkeypatch.setattr(module.time, "time", lambda: clock["now"])
    real_step = train_module.Trainer.train_step

    def one_second_step(self, task):
        clock["now"] += 1.0
        return real_step(self, task)

    monkeypatch.setattr(train_module.Trainer, "train_step", one_second_step)
    with caplog.at_level(logging.INFO):
        assert run(["--suite", suite, "--until", "7"], tmp_path) == 0
    assert "2 runs stopped at the deadline" in caplog.text
    assert not summaries(tmp_path)
    monkeypatch.undo()
    assert run(["--suite", suite], tmp_path) == 0
    resumed = {p.parent.name: _comparable(p) for p in summaries(tmp_path)}
    uninterrupted = {p.parent.name: _comparable(p) for p in sorted((whole / "results").glob("*/*/summary.json"))}
    assert resumed == uninterrupted and len(resumed) == 2


def test_a_tuning_cell_cut_short_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    data = modified({**TINY, "runs": [{"method": {"name": "full_context"}}]}, "train", steps=6, eval_every=3,
                    tune={"grid": {"lr": [1e-3]}, "steps": 6})
    suite = write_suite(tmp_path, data)
    steps_run = kill_once_at_step(monkeypatch, 4, lambda trainer: trainer.label.startswith("tune"))
    assert run(["--suite", suite], tmp_path) == 130
    assert run(["--suite", suite], tmp_path) == 0
    after = steps_run[steps_run.index("died") + 1:]
    assert after[:3] == [3, 4, 5]   # the cell resumed from its checkpoint at step 3, then the run trained
    assert not list((tmp_path / "cache" / "checkpoints").glob("tune-*/last.pt"))   # done: no resume point left
