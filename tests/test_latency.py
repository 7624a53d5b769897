"""The latency suite: break-even on a hand-made cost table, the paper's cost model, every method of
the registry (an outside plugin included) timed without edits, resume, figures from results."""
import json
import math
import textwrap

import pandas as pd
import pytest
import yaml

from harness import registry, store
from latency import run as latency_run, spec as latency_spec
from plots import latency_costs
from harness.cli import main
from migrations.reindex import reindex


def run(args, tmp_path):
    return main([*args, "--out", str(tmp_path / "results"), "--quiet", "--device", "cpu"])


def test_break_even_reads_is_the_first_count_from_which_writing_stays_cheaper():
    assert latency_costs.break_even_reads(10.0, 1.0, 2.0, 3.0) == 4      # 10 + 4 = 14 <= 2 + 12
    assert latency_costs.break_even_reads(10.0, 1.0, 4.0, 3.0) == 3      # exactly equal at N = 3
    assert latency_costs.break_even_reads(1.0, 1.0, 2.0, 3.0) == 1       # cheaper from the first read
    assert latency_costs.break_even_reads(1.0, 2.0, 1.0, 2.0) == 1       # the same cost
    assert latency_costs.break_even_reads(2.0, 2.0, 1.0, 2.0) is None    # same READ, slower WRITE
    assert latency_costs.break_even_reads(0.0, 3.0, 5.0, 2.0) is None    # cheaper at first, never for many reads


def test_break_even_table_on_a_hand_made_cost_table():
    rows = []
    for context, (ref_write, ref_read) in ((64, (1.0, 2.0)), (256, (2.0, 4.0))):
        shared = {"suite": "s", "scale": "cpu", "device": "cpu", "family": "f", "context_tokens": context,
                  "query_tokens": 24, "target_tokens": 4, "batch_size": 16, "reference": "ref"}
        rows += [{**shared, "method": "ref", "write_setting": None, "write": ref_write, "read": ref_read},
                 {**shared, "method": "memory", "write_setting": 1, "write": 11.0, "read": 1.0},
                 {**shared, "method": "slow", "write_setting": None, "write": 0.5, "read": ref_read + 1}]
    rows.append({**rows[0], "family": "alone", "method": "memory"})   # a group without its reference
    table = latency_costs.break_even_table(pd.DataFrame(rows))
    got = {(r["family"], r["context_tokens"], r["method"]): r["break_even"] for _, r in table.iterrows()}
    assert got[("f", 64, "memory")] == 10      # 11 + N <= 1 + 2N from N = 10
    assert got[("f", 256, "memory")] == 3      # 11 + N <= 2 + 4N from N = 3
    assert got[("f", 64, "ref")] == 1
    assert got[("f", 64, "slow")] is None and got[("f", 256, "slow")] is None
    assert got[("alone", 64, "memory")] is None and not table[table["family"] == "alone"]["reference_found"].any()
    assert table[table["family"] == "f"]["reference_found"].all()


def test_predicted_break_even_is_the_papers_cost_model():
    # N > [c^2 (RK - 1) + (1 + RK) m^2 + 2 c m R K] / [q (c - m)] with c 256, q 24, m 8, K 1, R 3
    bound = (256 ** 2 * 2 + 4 * 64 + 2 * 256 * 8 * 3) / (24 * 248)
    assert latency_costs.predicted_break_even(256, 24, 8, 1, 3.0) == math.floor(bound) + 1 == 25
    assert latency_costs.predicted_break_even(1024, 24, 8, 1, 1.0) == 1   # RK = 1: only the small terms remain
    assert latency_costs.predicted_break_even(8, 24, 8, 1, 3.0) is None   # no shorter memory than the context


PLUGIN = textwrap.dedent('''
    from dataclasses import dataclass
    from harness.registry import register_method
    from methods.query_only import QueryOnly, QueryOnlyConfig

    @dataclass
    class EchoConfig(QueryOnlyConfig):
        echo_passes: int = 3

    @register_method
    class LatencyEcho(QueryOnly):
        name = "latency_echo"
        summary = "an outside method for the latency test"
        Config = EchoConfig

        @classmethod
        def write_axis(cls, config):
            return {"name": "echo passes", "field": "echo_passes", "trained": config.echo_passes}
''')


@pytest.mark.slow
def test_the_suite_times_an_outside_plugin_without_edits_resumes_and_plots(tmp_path, monkeypatch, capsys):
    (tmp_path / "latency_echo_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["--plugin", "latency_echo_plugin", "--suite", "latency", "--scale", "smoke",
            "--methods", "latency_echo,full_context,gradmem"]
    assert run([*args, "--dry-run"], tmp_path) == 0
    plan = capsys.readouterr().out
    assert "latency_echo on tiny/llama context=8 batch=1" in plan and not (tmp_path / "results").exists()

    assert run(args, tmp_path) == 0
    timings, ratios = latency_costs.load(tmp_path / "results")
    per_method = timings.groupby("label").size().to_dict()
    # the plugin's own axis is not listed by the suite: its own setting, at every context x batch
    assert per_method == {"latency_echo": 4, "full_context": 4, "gradmem K=1": 4, "gradmem K=2": 4}
    assert len(ratios) == 4 and (ratios["ratio"] > 0).all()
    assert (timings["write_repeats"] >= 1).all() and (timings["read_median"] > 0).all()
    assert (timings["peak_write_bytes"].notna()).all()
    summary = json.loads(next((tmp_path / "results" / "latency").glob("*/summary.json")).read_text())
    assert summary["status"] == "finished" and "describe" in summary
    assert store.load(tmp_path / "results").empty   # latency cells are not training runs
    assert reindex(tmp_path / "results") == []   # nor does reindex treat them as runs

    calls = []
    monkeypatch.setattr(latency_run, "time_method", lambda *a: calls.append(a))
    monkeypatch.setattr(latency_run, "time_ratio", lambda *a: calls.append(a))
    assert run(args, tmp_path) == 0 and calls == []   # a rerun times nothing

    from plots.latency import make_all
    made = make_all(tmp_path / "results", tmp_path / "plots")
    names = {p.name for p in made}
    assert {"latency_smoke_cpu_tiny.png", "latency_breakeven_smoke_cpu_tiny.png", "latency_smoke.md"} <= names
    table = (tmp_path / "plots" / "latency_smoke.md").read_text()
    assert "latency_echo" in table and "gradmem K=2" in table and "(reference)" in table


def test_every_registered_method_gets_cells():
    cells, skipped = latency_spec.expand("latency", "smoke", "cpu")
    timed = {c.method["name"] for c in cells if c.kind == "timing"}
    assert timed == set(registry.METHODS) and not skipped
    assert any(c.kind == "ratio" for c in cells)
    # the suite's axis values: GradMem K = 1, 2 (write steps), RMT x1 (write passes)
    settings = {(c.method["name"], c.write_setting) for c in cells if c.kind == "timing"}
    assert {("gradmem", 1), ("gradmem", 2), ("rmt", 1), ("full_context", None)} <= settings


def _latency_suite(tmp_path, **changes):
    data = {"kind": "latency", "description": "test",
            "base": {"backbones": {"tiny": {"llama": {"vocab": 16, "layers": 1, "hidden": 8, "heads": 2, "ffn": 16}}},
                     "grids": [{"family": "tiny", "contexts": [4], "batch_sizes": [1]}],
                     "query_tokens": 2, "target_tokens": 1, "cost_model": {"method": "gradmem"}},
            "scales": {"smoke": {}}}
    data["base"].update(changes)
    path = tmp_path / "lat.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("case", ["unknown key", "bad family", "no vocab", "pretrained", "bad axis", "jobs", "seeds",
                                  "unknown scale", "too long"])
def test_bad_latency_input_exits_2_with_one_line(case, tmp_path, capsys):
    suite = {
        "unknown key": lambda: _latency_suite(tmp_path, contextz=[4]),
        "bad family": lambda: _latency_suite(tmp_path, grids=[{"family": "nope", "contexts": [4], "batch_sizes": [1]}]),
        "no vocab": lambda: _latency_suite(tmp_path, backbones={"tiny": {"llama": {"layers": 1}}}),
        "pretrained": lambda: _latency_suite(tmp_path, backbones={"tiny": {"llama": {"vocab": 8, "pretrained": "gpt2"}}}),
        "bad axis": lambda: _latency_suite(tmp_path, axis_values={"write_steps": [-1]}),
        "too long": lambda: _latency_suite(tmp_path, grids=[{"family": "tiny", "contexts": [4096], "batch_sizes": [1]}]),
    }.get(case, lambda: _latency_suite(tmp_path))()
    extra = {"jobs": ["--jobs", "2"], "seeds": ["--seeds", "2"], "unknown scale": ["--scale", "gpu"]}.get(case, [])
    code = run(["--suite", suite, "--scale", "smoke", *extra] if case != "unknown scale" else ["--suite", suite, *extra],
               tmp_path)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert not (tmp_path / "results").exists()
