"""The command line: bad input, dry run, listing, plugins, resume after a crash, divergence."""
import json
import shutil
import textwrap

import pytest
import yaml

from harness import runner, store
from migrations.reindex import reindex
from harness.cli import main
from harness.errors import HarnessError

TINY = {
    "description": "tiny test suite",
    "base": {
        "task": {"name": "kv_retrieval", "format": "compact", "pairs": 2, "key_length": 1,
                 "value_length": 1, "key_symbols": 6, "value_symbols": 6},
        "backbone": {"layers": 1, "hidden": 16, "heads": 2, "ffn": 32, "max_positions": 64},
        "train": {"steps": 6, "batch_size": 4, "lr": 1e-3, "warmup_steps": 2, "eval_every": 3, "eval_examples": 8},
        "eval": {"examples": 8, "batch_size": 8},
    },
    "runs": [{"method": {"name": "gradmem", "memory_size": 2}},
             {"method": {"name": "full_context"}},
             {"method": {"name": "query_only"}}],
}


def write_suite(tmp_path, data=TINY, name="tiny"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def run(args, tmp_path):
    return main([*args, "--out", str(tmp_path / "results"), "--cache", str(tmp_path / "cache"),
                 "--quiet", "--device", "cpu"])


def summaries(tmp_path):
    return sorted((tmp_path / "results").glob("*/*/summary.json"))


def modified(data, section, **changes):
    data = json.loads(json.dumps(data))
    data["base"][section].update(changes)
    return data


BAD_INPUTS = {
    "unknown suite": lambda p: ["--suite", "no_such_suite"],
    "unknown method": lambda p: ["--suite", write_suite(p), "--methods", "gradmen"],
    "unknown scale": lambda p: ["--suite", write_suite(p), "--scale", "huge"],
    "unknown task": lambda p: ["--suite", write_suite(p, modified(TINY, "task", name="kv"))],
    "unknown yaml key": lambda p: ["--suite", write_suite(p, modified(TINY, "train", stepz=3))],
    "wrong type": lambda p: ["--suite", write_suite(p, modified(TINY, "train", steps="many"))],
    "more pairs than keys": lambda p: ["--suite", write_suite(p, modified(TINY, "task", pairs=7))],
    "sequence too long": lambda p: ["--suite", write_suite(p, modified(TINY, "backbone", max_positions=4))],
    "memory slots past max_positions": lambda p: ["--suite", write_suite(p, {**TINY, "runs": [{"method": {"name": "rmt", "memory_size": 31}}]})],
    "negative steps": lambda p: ["--suite", write_suite(p, {**TINY, "runs": [{"method": {"name": "gradmem", "write_steps": -1}}]})],
    "negative train steps": lambda p: ["--suite", write_suite(p, modified(TINY, "train", steps=-5))],
    "zero ARMT segment length": lambda p: ["--suite", write_suite(p, {**TINY, "runs": [{"method": {"name": "armt", "segment_length": 0}}]})],
    "negative reconstruction weight": lambda p: ["--suite", write_suite(p, {**TINY, "runs": [{"method": {"name": "gradmem", "reconstruction_weight": -1.0}}]})],
    "negative eval write setting": lambda p: ["--suite", write_suite(p, modified(TINY, "eval", write_settings=[-1]))],
    "bad plugin": lambda p: ["--plugin", "no.such.module", "--list"],
    "no run matches": lambda p: ["--suite", write_suite(p), "--match", "rmt("],
    "NaN lr": lambda p: ["--suite", write_suite(p, modified(TINY, "train", lr=float("nan")))],
    "infinite lr": lambda p: ["--suite", write_suite(p, modified(TINY, "train", lr=float("inf")))],
    "NaN inner lr": lambda p: ["--suite", write_suite(p, {**TINY, "runs": [{"method": {"name": "gradmem", "inner_lr": float("nan")}}]})],
    "huge memory": lambda p: ["--suite", write_suite(p, {**TINY, "runs": [{"method": {"name": "rmt", "memory_size": 10**12}}]})],
    "huge seed count": lambda p: ["--suite", write_suite(p), "--seeds", "100000000", "--dry-run"],
    "plugin raising at import": lambda p: [*_raising_plugin(p), "--list"],
    "deadline not positive": lambda p: ["--suite", write_suite(p), "--until", "0"],
    "plugin not on the path": lambda p: ["--plugin", "not_on_the_path_plugin", "--list"],
    "plugin file missing": lambda p: ["--plugin", str(p / "missing_plugin.py"), "--list"],
    "plugin registering nothing": lambda p: ["--plugin", _plugin_file(p, "empty_plugin", "x = 1\n"), "--list"],
    "plugin forgetting the decorator": lambda p: ["--plugin", _plugin_file(p, "forgot_plugin", (
        "from methods.query_only import QueryOnly\nclass Forgot(QueryOnly):\n    name = 'forgot'\n")), "--list"],
    "plugin with a bad Config": lambda p: ["--plugin", _plugin_file(p, "config_plugin", (
        "from harness.registry import register_method\nfrom methods.query_only import QueryOnly\n"
        "@register_method\nclass Bad(QueryOnly):\n    name = 'bad_config'\n    Config = None\n")), "--list"],
}


def _plugin_file(path, name: str, text: str) -> str:
    (path / f"{name}.py").write_text(text)
    return str(path / f"{name}.py")


def _raising_plugin(path):
    """A plugin module that raises something other than ImportError when imported."""
    import sys
    (path / "boom_plugin.py").write_text("raise RuntimeError('boom at import')\n")
    sys.path.insert(0, str(path))
    return ["--plugin", "boom_plugin"]


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, tmp_path, capsys):
    code = run(BAD_INPUTS[case](tmp_path), tmp_path)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert not (tmp_path / "results").exists()


def test_error_names_valid_choices(tmp_path, capsys):
    run(["--suite", write_suite(tmp_path), "--methods", "gradmen"], tmp_path)
    err = capsys.readouterr().err
    assert "gradmen" in err and "gradmem" in err and "full_context" in err


def test_dry_run_lists_runs_and_trains_nothing(tmp_path, capsys):
    assert run(["--suite", write_suite(tmp_path), "--dry-run"], tmp_path) == 0
    out = capsys.readouterr().out
    assert "3 runs" in out and "gradmem" in out
    assert not (tmp_path / "results").exists()


def test_match_keeps_runs_by_label_and_seeds_add_runs(tmp_path, capsys):
    suite = write_suite(tmp_path)
    assert run(["--suite", suite, "--dry-run", "--seeds", "2", "--match", "full_context(",
                "--match", "query_only("], tmp_path) == 0
    out = capsys.readouterr().out
    assert "4 runs" in out and "gradmem" not in out and "seed=1" in out
    swept = {**TINY, "sweep": {"task.pairs": [2, 3]}}   # --match also selects by task settings
    assert run(["--suite", write_suite(tmp_path, swept), "--dry-run", "--match", "pairs=3,"], tmp_path) == 0
    out = capsys.readouterr().out
    assert "3 runs" in out and "pairs=2," not in out


def test_a_plugin_given_as_a_file_path_registers_its_method(tmp_path, capsys):
    path = _plugin_file(tmp_path, "file_plugin", (
        "from harness.registry import register_method\nfrom methods.query_only import QueryOnly\n"
        "@register_method\nclass FromFile(QueryOnly):\n    name = 'from_file_plugin'\n"))
    assert main(["--plugin", path, "--list"]) == 0
    assert "from_file_plugin" in capsys.readouterr().out


def test_list_and_plugin(tmp_path, capsys, monkeypatch):
    (tmp_path / "my_plugin.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from harness.registry import register_method
        from methods.query_only import QueryOnly

        @register_method
        class Echo(QueryOnly):
            name = "echo_plugin"
            summary = "a plugin method for the test"
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["--plugin", "my_plugin", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("gradmem", "full_context", "query_only", "echo_plugin", "kv_retrieval", "smoke"):
        assert name in out


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner, "execute_run", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert run(["--suite", write_suite(tmp_path)], tmp_path) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("interrupted:"), err


def test_a_sweep_says_run_k_of_n_its_estimate_and_each_runs_scores(tmp_path, capsys, caplog):
    import logging
    with caplog.at_level(logging.INFO):
        assert run(["--suite", write_suite(tmp_path)], tmp_path) == 0
    assert "3 runs, 3 to train" in caplog.text and "run 2 of 3" in caplog.text
    assert "[3/3]" in caplog.text and "test exact match test " in caplog.text
    table = capsys.readouterr().out
    assert table.splitlines()[0].startswith("run") and len(table.splitlines()) == 4
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert run(["--suite", write_suite(tmp_path)], tmp_path) == 0
    assert "all 3 runs are finished" in caplog.text and "--out DIR trains afresh" in caplog.text


def test_resume_after_crash_finishes_the_rest_and_repeats_none(tmp_path, monkeypatch):
    suite = write_suite(tmp_path)
    calls = []
    real = runner.execute_run

    def crash_on_second(spec, *args, **kwargs):
        calls.append(spec.run_id)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies in the middle of the sweep
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(runner, "execute_run", crash_on_second)
    assert run(["--suite", suite], tmp_path) == 130   # Ctrl-C: one line, exit 130
    assert len(summaries(tmp_path)) == 1
    first = summaries(tmp_path)[0]
    first_text = first.read_text()

    calls.clear()
    monkeypatch.setattr(runner, "execute_run", lambda spec, *a, **k: (calls.append(spec.run_id), real(spec, *a, **k))[1])
    assert run(["--suite", suite], tmp_path) == 0
    assert len(calls) == 2 and first.parent.name not in calls
    assert len(summaries(tmp_path)) == 3 and first.read_text() == first_text

    calls.clear()
    assert run(["--suite", suite], tmp_path) == 0
    assert calls == []  # everything finished: nothing is trained again
    frame = store.load(tmp_path / "results")
    assert set(frame["method"]) == {"gradmem", "full_context", "query_only"}
    assert (frame["status"] == "finished").all()


def kill_once_at_step(monkeypatch, step: int, which=lambda trainer: True) -> list:
    """Make the first trainer that `which` accepts die (Ctrl-C) when it reaches `step`, once; the
    returned list records each step run ("died" where it died)."""
    from harness.train import Trainer
    real_step = Trainer.train_step
    steps_run = []

    def dying_step(self, task):
        if which(self) and self.state.step == step and "died" not in steps_run:
            steps_run.append("died")
            raise KeyboardInterrupt
        steps_run.append(self.state.step)
        return real_step(self, task)

    monkeypatch.setattr(Trainer, "train_step", dying_step)
    return steps_run


def test_a_run_killed_mid_training_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    data = {**TINY, "runs": [{"method": {"name": "gradmem", "memory_size": 2}}]}
    data = modified(data, "train", steps=9, eval_every=3)
    suite = write_suite(tmp_path, data)
    steps_run = kill_once_at_step(monkeypatch, 7)
    assert run(["--suite", suite], tmp_path) == 130   # Ctrl-C: one line, exit 130
    assert run(["--suite", suite], tmp_path) == 0
    # steps 0-6 ran, the crash at step 7 lost nothing before the checkpoint at step 6
    assert steps_run == [0, 1, 2, 3, 4, 5, 6, "died", 6, 7, 8]
    summary = json.loads(summaries(tmp_path)[0].read_text())
    assert summary["steps"] == 9
    curve = store.read_jsonl(summaries(tmp_path)[0].parent / "metrics.jsonl")
    assert [r["step"] for r in curve] == [3, 6, 9]


def test_nan_loss_marks_the_run_diverged_and_the_sweep_goes_on(tmp_path, monkeypatch):
    import harness.train as train_module
    real_loss = train_module.training_loss

    def nan_for_gradmem(method, batch):
        loss, read_loss = real_loss(method, batch)
        return (loss * float("nan"), read_loss * float("nan")) if _is_gradmem[0] else (loss, read_loss)

    _is_gradmem = [False]
    real_execute = runner.execute_run

    def execute(spec, *args, **kwargs):
        _is_gradmem[0] = spec.method["name"] == "gradmem"
        return real_execute(spec, *args, **kwargs)

    monkeypatch.setattr(train_module, "training_loss", nan_for_gradmem)
    monkeypatch.setattr(runner, "execute_run", execute)
    assert run(["--suite", write_suite(tmp_path)], tmp_path) == 0
    results = {json.loads(p.read_text())["spec"]["method"]["name"]: json.loads(p.read_text()) for p in summaries(tmp_path)}
    assert results["gradmem"]["status"] == "diverged" and results["gradmem"]["diverged_step"] == 1
    assert results["full_context"]["status"] == "finished"


def test_run_ids_ignore_defaults_and_survive_new_options(tmp_path):
    from harness.suite import expand_suite
    explicit = modified(TINY, "train", weight_decay=0.01, schedule="constant")  # the defaults, spelled out
    ids = [s.run_id for s in expand_suite(write_suite(tmp_path), "cpu")]
    assert ids == [s.run_id for s in expand_suite(write_suite(tmp_path, explicit, "tiny2"), "cpu")]
    assert ids != [s.run_id for s in expand_suite(write_suite(tmp_path, modified(TINY, "train", lr=2e-3), "t3"), "cpu")]
    # a results folder under a stale id is renamed to the id the current code derives
    assert run(["--suite", write_suite(tmp_path)], tmp_path) == 0
    folder = summaries(tmp_path)[0].parent
    stale = folder.rename(folder.parent / "0123456789ab")
    assert reindex(tmp_path / "results") == [("0123456789ab", folder.name)]
    assert json.loads((folder / "summary.json").read_text())["run_id"] == folder.name
    assert not stale.exists()


def test_reindex_migrates_the_legacy_eval_write_steps_key(tmp_path):
    """eval.write_steps (the write-axis values to evaluate) became eval.write_settings: a run written
    under the old key moves to the id the current code derives, config and summary rewritten; a run
    whose old key holds the default keeps its id and is left untouched."""
    from harness.schema import RunSpec
    data = modified({**TINY, "runs": [{"method": {"name": "gradmem", "write_steps": 1}}]}, "eval", write_settings=[0, 2])
    assert run(["--suite", write_suite(tmp_path, data)], tmp_path) == 0
    folder = summaries(tmp_path)[0].parent
    summary = json.loads((folder / "summary.json").read_text())
    assert [set(stage["eval"]) for stage in summary["stages"]] == [{"0", "2"}]
    assert sorted(store.load(tmp_path / "results")["eval_key"]) == ["0", "2"]
    # the same run as the code before the rename wrote it: the old key, under the id it hashed to
    legacy = summary["spec"]
    legacy["eval"] = {("write_steps" if k == "write_settings" else k): v for k, v in legacy["eval"].items()}
    old_id = RunSpec.from_dict(legacy).run_id
    assert old_id != folder.name
    old = folder.rename(folder.parent / old_id)
    store.write_yaml(old / "config.yaml", legacy)
    store.write_json(old / "summary.json", {**summary, "run_id": old_id, "spec": legacy})
    shutil.rmtree(tmp_path / "cache" / "checkpoints" / folder.name, ignore_errors=True)
    (tmp_path / "cache" / "checkpoints" / old_id).mkdir(parents=True)
    # another suite's run with the old key at its default (None): same id before and after
    untouched = tmp_path / "results" / "other" / old_id
    shutil.copytree(old, untouched)
    other = {**legacy, "suite": "other", "eval": {**legacy["eval"], "write_steps": None}}
    store.write_yaml(untouched / "config.yaml", other)
    # the old code's id: a key at its default is left out of the hash
    other_id = RunSpec.from_dict({**other, "eval": {k: v for k, v in other["eval"].items() if k != "write_steps"}}).run_id
    untouched = untouched.rename(untouched.parent / other_id)
    before = {p.name: p.read_bytes() for p in untouched.iterdir()}

    assert reindex(tmp_path / "results", tmp_path / "cache", suites=["other"]) == []
    assert old.exists()
    assert reindex(tmp_path / "results", tmp_path / "cache") == [(old_id, folder.name)]
    assert not old.exists() and folder.exists()
    assert (tmp_path / "cache" / "checkpoints" / folder.name).exists()
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["eval"]["write_settings"] == [0, 2] and "write_steps" not in config["eval"]
    migrated = json.loads((folder / "summary.json").read_text())
    assert migrated["run_id"] == folder.name and migrated["spec"] == config
    assert migrated["stages"] == summary["stages"]
    assert {p.name: p.read_bytes() for p in untouched.iterdir()} == before
    assert reindex(tmp_path / "results", tmp_path / "cache") == []


def test_a_torn_last_curve_line_is_dropped_on_resume(tmp_path, monkeypatch):
    from harness.train import Trainer
    data = modified({**TINY, "runs": [{"method": {"name": "query_only"}}]}, "train", steps=9, eval_every=3)
    suite = write_suite(tmp_path, data)
    real_step = Trainer.train_step

    def dying_step(self, task):
        if self.state.step == 7:
            with open(self.metrics_path, "a") as handle:   # power loss in the middle of a line
                handle.write('{"step": 9, "stage": 0, "lo')
            raise KeyboardInterrupt
        return real_step(self, task)

    monkeypatch.setattr(Trainer, "train_step", dying_step)
    assert run(["--suite", suite], tmp_path) == 130   # Ctrl-C: one line, exit 130
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert run(["--suite", suite], tmp_path) == 0
    curve = store.read_jsonl(summaries(tmp_path)[0].parent / "metrics.jsonl")
    assert [r["step"] for r in curve] == [3, 6, 9]


def test_a_bad_curve_line_before_the_last_is_an_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(json.JSONDecodeError):
        store.read_jsonl(path)


def test_out_pointing_at_a_file_exits_2_and_writes_nothing(tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("not a folder")
    code = main(["--suite", write_suite(tmp_path), "--out", str(target), "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "is a file" in err
    assert target.read_text() == "not a folder"


def test_a_method_the_suite_does_not_list_runs_with_its_defaults(tmp_path, capsys):
    assert run(["--suite", write_suite(tmp_path), "--methods", "rmt", "--dry-run"], tmp_path) == 0
    out = capsys.readouterr().out
    assert "rmt(memory_size=8,write_passes=1) seed=0" in out and "1 runs" in out


def test_a_run_another_process_is_training_is_skipped_and_left_alone(tmp_path):
    """Two sweeps over the same results (e.g. one started twice) must not train one run together."""
    from filelock import FileLock
    from harness.suite import expand_suite
    spec = expand_suite(write_suite(tmp_path), "cpu")[0]
    cache = tmp_path / "cache"
    lock = store.run_lock_path(tmp_path / "results", spec.suite, spec.run_id)
    lock.parent.mkdir(parents=True)
    with FileLock(str(lock)):
        outcome = runner.execute_run(spec, tmp_path / "results", cache_dir=cache, progress=False)
    assert outcome.status == "skipped" and outcome.error == "running in another process"
    assert not (tmp_path / "results" / spec.suite).exists()
    assert runner.execute_run(spec, tmp_path / "results", cache_dir=cache, progress=False).status == "finished"


def test_every_shipped_suite_expands_at_every_scale_it_defines():
    from pathlib import Path

    from harness.errors import HarnessError
    from harness.suite import expand_suite, load_suite
    for path in sorted(Path("harness/suites").glob("*.yaml")):
        data = load_suite(path.stem)
        if data.get("kind") == "latency":
            continue
        for scale in data.get("scales") or {}:
            try:
                assert expand_suite(path.stem, scale), (path.stem, scale)
            except HarnessError as error:   # what is not on disk offline: pretrained weights, SQuAD
                assert "pretrained backbone" in str(error) or "nothing is downloaded" in str(error), \
                    (path.stem, scale, error)


def test_paper_format_scales_train_on_overlapping_keys_after_a_plain_first_stage():
    from harness.suite import expand_suite
    for suite, scale in [("capacity", "shapes"), ("capacity", "gpu"), ("memsize", "gpu")]:
        for spec in expand_suite(suite, scale):
            assert spec.task["format"] == "paper" and spec.task["train_key_overlap"] == 0.5
            first, *later = spec.train["curriculum"]
            assert first == {"pairs": 2, "train_key_overlap": 0.0}
            assert all("train_key_overlap" not in stage for stage in later)


def test_a_scale_the_suite_does_not_define_exits_2_and_auto_picks_gpu_only_where_defined(capsys):
    from harness.runner import resolve_scale
    assert main(["--suite", "steps", "--scale", "shapes", "--dry-run"]) == 2
    assert "suite steps has no shapes scale" in capsys.readouterr().err
    assert resolve_scale("auto", "cuda", "babi") == "cpu"        # babi has no gpu scale
    assert resolve_scale("auto", "cuda", "capacity") == "gpu"
    assert resolve_scale("auto", "cpu", "capacity") == "cpu"


def test_a_run_may_narrow_the_suite_sweep(tmp_path):
    from harness.suite import expand_suite
    data = {**TINY, "sweep": {"task.pairs": [1, 2]},
            "runs": [{"method": {"name": "full_context"}},
                     {"method": {"name": "query_only"}, "sweep": {"task.pairs": [2]}}]}
    pairs = [(s.method["name"], s.task["pairs"]) for s in expand_suite(write_suite(tmp_path, data), "cpu")]
    assert pairs == [("full_context", 1), ("full_context", 2), ("query_only", 2)]
    bad = {**data, "runs": [{"method": {"name": "query_only"}, "sweep": {"task.pairs": []}}]}
    with pytest.raises(HarnessError, match="non-empty list"):
        expand_suite(write_suite(tmp_path, bad, "bad"), "cpu")


def test_a_suite_writes_floats_in_exponent_form_without_a_dot(tmp_path):
    """YAML 1.1 (PyYAML) reads `3e-3` as text; a suite file and a probe's KEY=VALUE read it as 0.003."""
    from bench.probes.probe_plateau import setting
    from harness.suite import expand_suite
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(TINY).replace("lr: 0.001", "lr: 3e-3"))
    assert "lr: 3e-3" in path.read_text()
    assert {s.train["lr"] for s in expand_suite(str(path), "cpu")} == {0.003}
    assert setting("lr=3e-3") == ("lr", 0.003) and setting("name=e5") == ("name", "e5")
