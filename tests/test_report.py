"""Tables and figures are rebuilt from results alone; capacity is computed as defined; cells give
a 95% interval over seeds and mark collapsed runs; a method describes itself (label, write axis)."""
import json
from dataclasses import dataclass

import pytest
import torch
import yaml

from harness import registry, store
from harness.cli import main
from harness.contract import Memory, Method
from harness.describe import describe_spec
from migrations.describe_summaries import describe_summaries
from harness.errors import HarnessError
from harness.paper import paper_fig4a_markdown, paper_table1
from harness.report import (COLLAPSE_NOTE, bound_violations, capacity, cost_markdown, memsize_markdown,
                            steps_markdown, table1_beside_paper_markdown, table1_markdown, table2_markdown,
                            tuning_markdown, OLD_RECIPE_MARK, OLD_RECIPE_NOTE, SUPERSEDED_MARK)
from plots.__main__ import main as plots_main
from tests.test_cli import TINY, run, write_suite


def write_summary(results, method, seed, stages, suite="capacity", describe=True, tuning=None, floats=256,
                  collapses=None):
    """A synthetic summary.json: `stages` is a list of (pairs, {eval key: exact match}, collapsed)."""
    run_id = f"{method['name']}-{'-'.join(f'{k}{v}' for k, v in method.items() if k != 'name')}-s{seed}"
    summary = {
        "run_id": run_id, "status": "collapsed" if any(c for *_, c in stages) else "finished",
        "stages": [{"stage": i, "task": {"pairs": pairs}, "steps": 100, "best_valid_em": 1.0,
                    **({} if collapsed is None else {"collapsed": collapsed}),
                    "eval": {key: {"exact_match": em, "memory_floats": floats} for key, em in evals.items()}}
                   for i, (pairs, evals, collapsed) in enumerate(stages)],
        "spec": {"suite": suite, "scale": "cpu", "seed": seed, "method": method,
                 "task": {"name": "kv_retrieval"}, "backbone": {"layers": 1}},
        "tuning": tuning}
    if collapses is not None:
        summary["collapses"] = collapses
    if describe:
        summary["describe"] = describe_spec(method)
    store.write_json(results / suite / run_id / "summary.json", summary)
    return summary


def test_capacity_is_the_largest_pairs_whose_mean_reaches_90_percent(tmp_path):
    rmt = {"name": "rmt", "write_passes": 1}
    write_summary(tmp_path, {"name": "full_context"}, 0, [(2, {"default": 1.0}, False), (4, {"default": 0.95}, False),
                                                        (8, {"default": 0.5}, False)])
    write_summary(tmp_path, rmt, 0, [(2, {"1": 0.95}, False), (4, {"1": 0.95}, False)])
    write_summary(tmp_path, rmt, 1, [(2, {"1": 0.90}, False), (4, {"1": 0.80}, False)])
    write_summary(tmp_path, {"name": "query_only"}, 0, [(2, {"default": 0.1}, False)])
    frame = store.load(tmp_path)
    result = capacity(frame).set_index("label")["capacity"].to_dict()
    assert result == {"full_context": 4, "rmt x1": 2, "query_only": 0}


def test_cells_give_the_95_percent_t_interval_over_seeds(tmp_path):
    for seed, em in enumerate([0.90, 0.95, 1.00]):   # mean 95.0, sd 5.0, t(0.975, 2) = 4.3027
        write_summary(tmp_path, {"name": "gradmem", "write_steps": 2}, seed, [(2, {"2": em}, False)])
    markdown = table1_markdown(store.load(tmp_path), "cpu")
    assert "| gradmem K=2 |" in markdown.replace("  ", "")
    assert "95.0 ± 12.4" in markdown          # 4.3027 * 5.0 / sqrt(3) = 12.42
    assert "95% interval" in markdown and "Student t" in markdown


def test_table1_beside_the_paper_shows_the_papers_rows_of_our_methods_in_our_columns(tmp_path):
    write_summary(tmp_path, {"name": "gradmem", "write_steps": 2}, 0, [(4, {"2": 0.99}, False), (8, {"2": 0.97}, False)])
    write_summary(tmp_path, {"name": "rmt", "write_passes": 1, "reconstruction_weight": 1.0}, 0,
                  [(4, {"1": 0.6}, False), (8, {"1": 0.3}, False)])
    markdown = table1_beside_paper_markdown(store.load(tmp_path), "cpu")
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): [c.strip() for c in line.split("|")[3:-1]]
            for line in markdown.splitlines() if line.startswith("| ") and "---" not in line}
    assert rows[("gradmem K=2", "harness, cpu scale")] == ["99.0", "97.0"]
    assert rows[("gradmem K=2", "paper (mean ± std)")] == ["100.0 ± 0.0", "100.0 ± 0.0"]   # paper Table 1, 4 / 8 pairs
    assert rows[("rmt x1", "paper (mean ± std)")] == ["100.0 ± 0.0", "100.0 ± 0.0"]        # under our rmt x1 + recon
    assert not any(method in ("full_context", "gradmem K=5", "rmt x2") for method, _ in rows)  # not in our table
    assert "16 pairs" not in markdown                                                       # our columns only


def test_single_seed_cells_and_missing_seeds_say_so(tmp_path):
    write_summary(tmp_path, {"name": "query_only"}, 0, [(2, {"default": 0.52}, False)])
    for seed in range(3):
        stages = [(2, {"1": 0.9 + 0.01 * seed}, False)] + ([(4, {"1": 0.5}, False)] if seed == 0 else [])
        write_summary(tmp_path, {"name": "gradmem", "write_steps": 1}, seed, stages)
    markdown = table1_markdown(store.load(tmp_path), "cpu")
    row = next(line for line in markdown.splitlines() if line.startswith("| query_only"))
    assert [c.strip() for c in row.split("|")][3:5] == ["1", "52.0"]      # seeds column says 1, no ±
    assert "50.0 (1 of 3 seeds)" in markdown
    assert "without ± comes from one seed" in markdown


def test_collapsed_cells_are_marked_with_a_footnote(tmp_path):
    for seed in range(3):   # seed 0 collapsed at 4 pairs (recorded on the stage), seed 1 through `collapses` only
        collapsed_4 = {0: True, 1: None, 2: False}[seed]
        write_summary(tmp_path, {"name": "gradmem", "write_steps": 5}, seed,
                      [(2, {"5": 0.95}, False), (4, {"5": 0.9}, collapsed_4)],
                      collapses=[{"stage": 1, "task": {"pairs": 4}, "step": 900, "best_em": 0.94, "best_step": 500,
                                  "final_em": 0.07, "reason": "valid_em_drop"}] if seed < 2 else [])
    write_summary(tmp_path, {"name": "query_only"}, 0, [(2, {"default": 0.1}, True)])
    frame = store.load(tmp_path)
    assert frame["collapsed"].dtype == bool and frame["collapsed"].sum() == 3
    markdown = table1_markdown(frame, "cpu")
    assert "90.0 ± 0.0 †(2 of 3)" in markdown and "10.0 †" in markdown and "95.0 ± 0.0 |" in markdown
    assert COLLAPSE_NOTE in markdown
    quiet = table1_markdown(frame[~frame["collapsed"]], "cpu")
    assert "†" not in quiet


@dataclass
class LoopConfig:
    loops: int = 3
    memory_size: int = 4


class LoopMemory(Method):
    """A made-up method with its own write axis ('loops'), known to no harness code."""
    name = "loopmem"
    summary = "test only"
    Config = LoopConfig

    def write(self, context_ids, context_mask, write_setting=None):
        return Memory(state=torch.zeros(len(context_ids), 1), floats=1)

    def read(self, memory, read_ids, read_mask):
        return torch.zeros(*read_ids.shape, 2)

    @classmethod
    def display_label(cls, config):
        return f"looped memory L={config.loops}"

    @classmethod
    def write_axis(cls, config):
        return {"name": "loops", "field": "loops", "trained": config.loops}


@pytest.fixture
def loopmem(monkeypatch):
    registry.discover()
    monkeypatch.setitem(registry.METHODS, LoopMemory.name, LoopMemory)
    return LoopMemory


def test_a_new_method_with_its_own_axis_shows_up_with_its_own_label(tmp_path, loopmem):
    for seed in range(2):   # evaluated at its trained 3 loops and at 6: the table shows the trained setting
        write_summary(tmp_path, {"name": "loopmem", "loops": 3}, seed,
                      [(2, {"3": 0.9 + 0.05 * seed, "6": 0.2}, False), (4, {"3": 0.8, "6": 0.1}, False)],
                      floats=64)
    frame = store.load(tmp_path)
    assert set(frame["axis"]) == {"loops"} and set(frame["trained_setting"]) == {3}
    assert set(frame["write_setting"]) == {3, 6}
    markdown = table1_markdown(frame, "cpu")
    assert "looped memory L=3" in markdown and "92.5 ± 31.8" in markdown and "80.0 ± 0.0" in markdown
    out = tmp_path / "figures"
    assert plots_main(["--results", str(tmp_path), "--out", str(out)]) == 0
    assert (out / "capacity_cpu.png").exists() and (out / "capacity_cpu.svg").exists()
    assert not (out / "capacity_vs_memory_cpu.png").exists()   # one memory size: no size axis to draw
    assert "looped memory L=3" in (out / "table1_kv.md").read_text()
    write_summary(tmp_path, {"name": "loopmem", "loops": 3}, 2, [(2, {"3": 0.95}, False)], floats=128)
    assert plots_main(["--results", str(tmp_path), "--out", str(out)]) == 0
    assert (out / "capacity_vs_memory_cpu.png").exists()


def test_migration_describes_old_summaries_without_a_backbone(tmp_path, loopmem):
    write_summary(tmp_path, {"name": "gradmem", "write_steps": 2, "order": "first"}, 0, [(2, {"2": 0.5}, False)],
                  describe=False)
    old = write_summary(tmp_path, {"name": "loopmem", "loops": 5}, 0, [(2, {"5": 0.5}, False)], describe=False)
    old["write_passes"] = {"forward": 5, "backward": 0}   # the old name of write_compute
    store.write_json(tmp_path / "capacity" / old["run_id"] / "summary.json", old)
    assert set(store.load(tmp_path)["label"]) == {"gradmem", "loopmem"}   # undescribed: the name, no axis
    assert len(describe_summaries(tmp_path)) == 2 and describe_summaries(tmp_path) == []
    migrated = json.loads((tmp_path / "capacity" / old["run_id"] / "summary.json").read_text())
    assert migrated["write_compute"] == {"forward": 5, "backward": 0} and "write_passes" not in migrated
    frame = store.load(tmp_path)
    assert set(frame["label"]) == {"gradmem 1st-order K=2", "looped memory L=5"}
    assert set(frame["axis"]) == {"write steps", "loops"}


def test_paper_labels_come_from_the_methods_own_description():
    labels = set(paper_table1()["label"])
    assert {"gradmem K=5", "gradmem 1st-order K=1", "rmt x3", "armt", "full_context"} <= labels


def test_table2_gives_intervals_seeds_and_collapse_marks(tmp_path):
    for seed, em in enumerate([0.90, 0.95, 1.00]):
        write_summary(tmp_path, {"name": "gradmem", "write_steps": 1}, seed, [(2, {"1": em}, seed == 0)], suite="babi")
    frame = store.load(tmp_path).assign(**{"task.qa": 1})
    markdown = table2_markdown(frame, "cpu")
    assert "95.0 ± 12.4 †(1 of 3)" in markdown and "| 3 " in markdown and COLLAPSE_NOTE in markdown


def test_table2_scores_a_curriculum_run_on_its_last_stage_only(tmp_path):
    # stages on 2 then 8 statements: the easier first stage is not a second score of the task
    write_summary(tmp_path, {"name": "full_context"}, 0, [(2, {"default": 1.0}, False), (8, {"default": 0.6}, False)],
                  suite="babi")
    markdown = table2_markdown(store.load(tmp_path).assign(**{"task.qa": 1}), "cpu")
    assert "| 60.0 " in markdown and "80.0" not in markdown and "±" not in markdown.split("\n")[2]


def test_tuning_table_lists_every_grid_cell_and_the_choice(tmp_path):
    grid = {"lr": [3e-4, 1e-3], "warmup_steps": [100, 1000]}
    cells = [{"lr": lr, "warmup_steps": w, "valid_em": em}
             for (lr, w), em in zip([(3e-4, 100), (3e-4, 1000), (1e-3, 100), (1e-3, 1000)], [0.5, 0.4, 0.9, None])]
    tuning = {"grid": grid, "cells": cells, "chosen": {"lr": 1e-3, "warmup_steps": 100}, "seed": 0, "steps": 200}
    for seed in range(2):   # tuned once on seed 0, reused by seed 1: one row
        write_summary(tmp_path, {"name": "gradmem", "write_steps": 1}, seed, [(2, {"1": 0.9}, False)], tuning=tuning)
    write_summary(tmp_path, {"name": "query_only"}, 0, [(2, {"default": 0.1}, False)])   # not tuned: no row
    markdown = tuning_markdown(tmp_path, "capacity", "cpu")
    lines = [line for line in markdown.splitlines() if line.startswith("| gradmem")]
    assert len(lines) == 1 and "query_only" not in markdown
    header = markdown.splitlines()[0]
    assert "lr=0.0003, warmup_steps=100" in header and "lr=0.001, warmup_steps=1000" in header
    cells_text = [c.strip() for c in lines[0].split("|")]
    assert "50.0" in cells_text and "40.0" in cells_text and "**90.0**" in cells_text and "—" in cells_text
    assert "lr=0.001, warmup_steps=100" in cells_text and "0, 1" in cells_text
    out = tmp_path / "figures"
    assert plots_main(["--results", str(tmp_path), "--out", str(out)]) == 0
    assert "**90.0**" in (out / "tuning_capacity_cpu.md").read_text()


def test_tuning_table_shows_both_tuning_stages(tmp_path):
    grid = {"lr": [3e-4, 1e-3]}
    cells = [{"lr": 3e-4, "valid_em": 1.0, "best_step": 500}, {"lr": 1e-3, "valid_em": 0.99, "best_step": 250}]
    second = [{"lr": 3e-4, "valid_em": 0.53, "best_step": 1500}, {"lr": 1e-3, "valid_em": 1.0, "best_step": 1250}]
    tuning = {"grid": grid, "cells": cells, "second_stage": second, "second_stage_task": {"pairs": 4},
              "chosen": {"lr": 1e-3}, "seed": 0, "steps": 1000}
    write_summary(tmp_path, {"name": "rmt"}, 0, [(2, {"default": 1.0}, False)], tuning=tuning)
    row = next(line for line in tuning_markdown(tmp_path, "capacity", "cpu").splitlines() if line.startswith("| rmt"))
    assert "| 100.0 / 53.0 |" in row and "| **99.0 / 100.0** |" in row and "pairs=4" in row


def test_tuning_table_reads_the_current_record_for_runs_whose_choice_holds(tmp_path):
    # seed 0 kept an older copy of the record (before the second stage was scored): one row, both stages
    cells = [{"lr": 1e-3, "valid_em": 1.0}, {"lr": 3e-3, "valid_em": 1.0}]
    old = {"tune_id": "t2", "grid": {"lr": [1e-3, 3e-3]}, "cells": cells, "chosen": {"lr": 1e-3}, "seed": 0, "steps": 9}
    new = {**old, "second_stage": [{"lr": 1e-3, "valid_em": 0.97}, {"lr": 3e-3, "valid_em": 0.66}],
           "second_stage_task": {"pairs": 4}}
    write_summary(tmp_path, {"name": "mamba"}, 0, [(2, {"default": 1.0}, False)], tuning=old)
    write_summary(tmp_path, {"name": "mamba"}, 1, [(2, {"default": 1.0}, False)], tuning=new)
    store.write_json(tmp_path / "capacity" / "tuning" / "t2.json", new)
    rows = [line for line in tuning_markdown(tmp_path, "capacity", "cpu").splitlines() if line.startswith("| mamba")]
    assert len(rows) == 1 and "**100.0 / 97.0**" in rows[0] and "0, 1" in rows[0]


def test_runs_trained_with_a_superseded_tuning_choice_are_kept_apart_and_marked(tmp_path):
    cells = [{"lr": 1e-3, "valid_em": 1.0, "best_step": 250}, {"lr": 3e-3, "valid_em": 1.0, "best_step": 500}]
    old = {"tune_id": "t1", "grid": {"lr": [1e-3, 3e-3]}, "cells": cells, "chosen": {"lr": 1e-3}}
    for seed, em in [(0, 0.5), (1, 0.6)]:
        write_summary(tmp_path, {"name": "mamba"}, seed, [(2, {"default": em}, False)], tuning=old)
    write_summary(tmp_path, {"name": "mamba"}, 2, [(2, {"default": 0.9}, False)], tuning={**old, "chosen": {"lr": 3e-3}})
    store.write_json(tmp_path / "capacity" / "tuning" / "t1.json", {**old, "chosen": {"lr": 3e-3}})
    frame = store.load(tmp_path)
    assert frame.groupby("seed")["superseded_tuning"].first().tolist() == [True, True, False]
    rows = [line for line in table1_markdown(frame, "cpu").splitlines() if line.startswith("| mamba")]
    assert len(rows) == 2 and any(SUPERSEDED_MARK in row and "55.0 ±" in row for row in rows)
    assert any(SUPERSEDED_MARK not in row and "| 90.0 " in row for row in rows)


@pytest.mark.slow
def test_runs_of_an_old_recipe_are_kept_apart_from_the_suites_runs_now(tmp_path):
    # a suite run, its recipe changed (longer training for gradmem), the suite run again: the old
    # gradmem run is not pooled with the new one as a second seed-0 value, and no bound check uses it;
    # a suite file named like a shipped suite is told apart by its path
    suite = {**TINY, "runs": TINY["runs"][:2]}
    path = write_suite(tmp_path, suite, name="capacity")
    assert run(["--suite", path], tmp_path) == 0
    longer = {**suite, "runs": [{**suite["runs"][0], "train": {"steps": 9}}, suite["runs"][1]]}
    write_suite(tmp_path, longer, name="capacity")
    assert run(["--suite", path], tmp_path) == 0
    frame = store.load(tmp_path / "results")
    runs = frame.drop_duplicates("run_id").set_index("train_steps")
    assert len(runs) == 3 and runs["old_recipe"].tolist().count(True) == 1
    assert runs.loc[6].query("method == 'gradmem'")["old_recipe"].item() is True
    assert not runs.loc[9, "old_recipe"]
    table = table1_markdown(frame, "cpu")
    gradmem_rows = [line for line in table.splitlines() if line.startswith("| gradmem")]
    assert len(gradmem_rows) == 2 and sum(OLD_RECIPE_MARK in row for row in gradmem_rows) == 1
    assert OLD_RECIPE_NOTE in table
    assert all(OLD_RECIPE_MARK not in p["method"] for p in bound_violations(frame, tolerance=-2.0))
    # more seeds than the suite lists and a method it does not list are still its runs
    assert run(["--suite", path, "--seeds", "2", "--methods", "full_context,rmt"], tmp_path) == 0
    frame = store.load(tmp_path / "results")
    assert frame.drop_duplicates("run_id")["old_recipe"].tolist().count(True) == 1


@pytest.mark.slow
def test_figures_and_tables_come_from_results_only(tmp_path):
    suite = {**TINY, "runs": TINY["runs"][:2], "seeds": 2}
    suite["base"] = {**TINY["base"], "train": {**TINY["base"]["train"], "curriculum": [{"pairs": 2}, {"pairs": 3}], "stage_steps": 3}}
    path = tmp_path / "capacity.yaml"
    path.write_text(yaml.safe_dump(suite))
    results = tmp_path / "results"
    assert main(["--suite", str(path), "--out", str(results), "--cache", str(tmp_path / "c"), "--quiet", "--scale", "cpu"]) == 0
    out = tmp_path / "figures"
    assert plots_main(["--results", str(results), "--out", str(out)]) == 0
    assert (out / "capacity_cpu.png").stat().st_size > 10_000 and (out / "capacity_cpu.svg").exists()
    assert not (out / "capacity_vs_memory_cpu.png").exists()   # GradMem at one memory size: no size axis
    for path in results.glob("*/*/summary.json"):   # the runner records each method's description
        assert json.loads(path.read_text())["describe"]["label"] in {"gradmem K=1", "full_context"}
    table = (out / "table1_kv.md").read_text()
    assert "gradmem K=1" in table and "full_context" in table and "3 pairs" in table
    assert "The paper" in table and "99.1 ± 0.3" in table


def test_steps_table_bolds_the_trained_value_and_the_paper_figure_4a_is_a_table(tmp_path):
    for seed, ems in enumerate([(0.5, 0.9, 0.95), (0.7, 0.9, 0.97)]):
        write_summary(tmp_path, {"name": "gradmem", "write_steps": 2}, seed,
                      [(4, dict(zip(["1", "2", "5"], ems)), False)], suite="steps")
    markdown = steps_markdown(store.load(tmp_path), "cpu")
    assert "| 4 pairs, gradmem K=2 |" in markdown and "**90.0 ± 0.0**" in markdown and "60.0 ± 127.1" in markdown
    assert "write steps=5" in markdown and "96.0 ± 12.7" in markdown
    paper = paper_fig4a_markdown()
    assert "| 96 pairs, gradmem K=5 |" in paper and "88.4" in paper and "best 0-30" in paper


def test_memsize_table_puts_each_memory_size_of_a_method_on_its_own_row(tmp_path):
    gradmem = {"name": "gradmem", "write_steps": 1}
    for seed, em in enumerate([0.9, 1.0]):                       # the capacity suite's 4 vectors, 2 seeds
        write_summary(tmp_path, gradmem, seed, [(2, {"default": em}, False)])
    write_summary(tmp_path, {**gradmem, "memory_size": 8}, 0, [(2, {"default": 0.7}, False)], suite="memsize",
                  floats=512)
    write_summary(tmp_path, {**gradmem, "memory_size": 1}, 0, [(2, {"default": 0.5}, False)], suite="memsize",
                  floats=64)
    write_summary(tmp_path, {"name": "full_context"}, 0, [(2, {"default": 1.0}, False)], floats=8192)
    rows = [line for line in memsize_markdown(store.load(tmp_path), "cpu").splitlines() if line.startswith("| gradmem")]
    assert [row.split("|")[1].strip() for row in rows] == ["gradmem K=1, 64 floats", "gradmem K=1, 256 floats",
                                                          "gradmem K=1, 512 floats"]   # by floats, not as text
    assert "95.0 ± 63.5" in rows[1] and "| 50.0 " in rows[0]
    assert "full_context" not in memsize_markdown(store.load(tmp_path), "cpu")   # only methods memsize runs
    assert memsize_markdown(store.load(tmp_path), "gpu").startswith("_no memsize results")


def test_readme_blocks_are_rebuilt_from_results_and_the_rest_is_kept(tmp_path):
    from plots.readme import refresh
    write_summary(tmp_path, {"name": "full_context"}, 0, [(2, {"default": 0.5}, False)])
    text = ("# Title\nhand-written\n<!-- generated: table1 cpu -->\nstale table\n<!-- end generated -->\n"
            "after\n<!-- generated: table2 cpu -->\n<!-- end generated -->\n")
    out = refresh(text, store.load(tmp_path))
    assert out.startswith("# Title\nhand-written\n<!-- generated: table1 cpu -->\n| method")
    assert "stale table" not in out and "| full_context" in out and "50.0" in out
    assert "\nafter\n" in out and "_no bAbI / SQuAD results at scale cpu_" in out
    assert refresh(out, store.load(tmp_path)) == out   # idempotent
    with pytest.raises(HarnessError, match="unknown generated block 'table9'"):
        refresh("<!-- generated: table9 cpu -->\n<!-- end generated -->\n", store.load(tmp_path))


def test_a_memory_row_above_its_backbones_full_context_bound_is_reported(tmp_path):
    """bound_violations: a same-backbone memory row above the bound beyond the intervals and the
    tolerance is named; a row within them, or on another backbone (Mamba), is not."""
    for seed, (bound, above, close) in enumerate([(0.80, 0.95, 0.80), (0.82, 0.97, 0.81), (0.78, 0.96, 0.79)]):
        write_summary(tmp_path, {"name": "full_context"}, seed, [(8, {"default": bound}, False)], suite="babi")
        write_summary(tmp_path, {"name": "rmt", "write_passes": 1}, seed, [(8, {"1": above}, False)], suite="babi")
        write_summary(tmp_path, {"name": "gradmem", "write_steps": 1}, seed, [(8, {"1": close}, False)], suite="babi")
        write_summary(tmp_path, {"name": "mamba"}, seed, [(8, {"default": 0.99}, False)], suite="babi")
    frame = store.load(tmp_path).assign(**{"task.qa": 2, "backbone.arch": "llama", "backbone.hidden": 64})
    frame.loc[frame["method"] == "mamba", "backbone.arch"] = "mamba"
    problems = bound_violations(frame)
    assert [(p["cell"], p["method"]) for p in problems] == [("suite=babi, scale=cpu, backbone=llama 1x64, task.qa=2, task.pairs=8",
                                                              "rmt x1")], problems
    assert "| llama 1x64 " in table2_markdown(frame, "cpu") and "| mamba 1x64 " in table2_markdown(frame, "cpu")


def test_claim_verdicts_on_known_cases():
    import pandas as pd
    from plots.claims import Cell, claim_1, claim_4, claim_5

    cells = {("gradmem K=1", 16): Cell(95.0, 1.0, 3), ("rmt x1 + recon", 16): Cell(30.0, 20.0, 3),
             ("gradmem 1st-order K=1", 16): Cell(50.0, 10.0, 3), ("query_only", 16): Cell(2.5, 0.5, 3)}
    assert claim_1(cells).startswith("**supported** at 16 pairs")
    cells["rmt x1 + recon", 16] = Cell(80.0, 20.0, 3)   # intervals overlap
    assert claim_1(cells).startswith("**not separated**")
    assert claim_4(cells).startswith("**weaker, not a failure**")
    cells["gradmem 1st-order K=1", 16] = Cell(5.0, 2.0, 3)
    assert claim_4(cells).startswith("**supported: first order at chance**")
    steps = pd.DataFrame({"task.pairs": 8, "trained_setting": 1, "write_setting": [1, 2, 30],
                          "em_mean": [0.80, 0.70, 0.97], "em_ci": [0.02, 0.02, 0.01], "seeds": 3})
    assert claim_5(steps) == ("**supported** (K_train=1, 8 pairs): K=1 80.0 ± 2.0 -> K=30 97.0 ± 1.0; "
                              "K=1 -> 2: 80.0 ± 2.0 -> 70.0 ± 2.0")


def test_the_claims_block_renders_every_claim_for_every_scale(tmp_path):
    from plots.readme import refresh
    frame = store.load(tmp_path)   # no results: every verdict says so, the paper's column is read
    markdown = refresh("<!-- generated: claims cpu chars -->\n<!-- end generated -->\n", frame)
    assert markdown.count("\n| ") == 6 and "cpu scale" in markdown and "chars scale" in markdown
    assert "no capacity results" in markdown and "**supported** at 96 pairs" in markdown


def test_costs_table_gives_minutes_per_run_with_an_interval_and_ms_per_step(tmp_path):
    for seed, (seconds, steps) in enumerate([(60.0, 100), (120.0, 200), (180.0, 300)]):
        summary = write_summary(tmp_path, {"name": "gradmem", "write_steps": 1}, seed, [(2, {"1": 1.0}, False)])
        store.write_json(tmp_path / "capacity" / summary["run_id"] / "summary.json",
                         {**summary, "train_seconds": seconds, "steps": steps})
    row = next(line for line in cost_markdown(store.load(tmp_path), "cpu").splitlines() if line.startswith("| gradmem"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:] == ["3", "2.0 ± 2.5", "200", "600"]   # t(0.975, 2) * 1 / sqrt(3) = 2.48
    assert cost_markdown(store.load(tmp_path), "gpu").startswith("_no runs")


def test_one_label_at_several_memory_sizes_gets_a_row_per_size(tmp_path):
    """gist + recon with 1 and 2 gist tokens (one label) are two rows of the capacity table, each
    named by its floats; a label at one size keeps its name."""
    for g, em in ((1, 0.5), (2, 0.75)):
        write_summary(tmp_path, {"name": "gist", "memory_size": g, "reconstruction_weight": 1.0}, 0,
                      [(2, {"default": em}, False)], floats=256 * g)
    write_summary(tmp_path, {"name": "full_context"}, 0, [(2, {"default": 1.0}, False)], floats=1024)
    rows = [line for line in table1_markdown(store.load(tmp_path), "cpu").splitlines() if line.startswith("| ")][1:]
    names = [row.split("|")[1].strip() for row in rows]
    assert names == ["full_context", "gist + recon, 256 floats", "gist + recon, 512 floats"]


def test_the_headline_keeps_the_rows_with_every_seed(tmp_path):
    from plots.readme import render
    for seed in range(3):
        write_summary(tmp_path, {"name": "full_context"}, seed, [(2, {"default": 1.0}, False)])
    write_summary(tmp_path, {"name": "query_only"}, 0, [(2, {"default": 0.0}, False)])
    frame = store.load(tmp_path)
    assert "query_only" in render("table1 cpu", frame) and "full_context" in render("table1 cpu", frame)
    headline = render("table1_complete cpu", frame)
    assert "full_context" in headline and "query_only" not in headline
