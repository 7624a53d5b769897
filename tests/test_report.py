"""Tables and figures are rebuilt from results alone; capacity is computed as defined."""
import pandas as pd
import yaml

from harness.cli import main
from harness.report import capacity, table1_markdown
from plots.__main__ import main as plots_main
from tests.test_cli import TINY


def _row(label_method, pairs, em, seed, **method):
    return {"suite": "capacity", "scale": "cpu", "method": label_method, "task.pairs": pairs,
            "exact_match": em, "seed": seed, "eval_write_steps": "default", "memory_floats": 256,
            **{f"method.{k}": v for k, v in method.items()}}


def test_capacity_is_the_largest_pairs_whose_mean_reaches_90_percent():
    frame = pd.DataFrame([
        _row("full_context", 2, 1.0, 0), _row("full_context", 4, 0.95, 0), _row("full_context", 8, 0.5, 0),
        _row("rmt", 2, 0.95, 0, write_passes=1), _row("rmt", 2, 0.9, 1, write_passes=1),
        _row("rmt", 4, 0.95, 0, write_passes=1), _row("rmt", 4, 0.8, 1, write_passes=1),
        _row("query_only", 2, 0.1, 0)])
    result = capacity(frame).set_index("label")["capacity"].to_dict()
    assert result == {"full_context": 4, "rmt x1": 2, "query_only": 0}
    markdown = table1_markdown(frame, "cpu")
    assert "92.5 ± 3.5" in markdown and "87.5 ± 10.6" in markdown


def test_figures_and_tables_come_from_results_only(tmp_path):
    suite = {**TINY, "runs": TINY["runs"][:2], "seeds": 2}
    suite["base"] = {**TINY["base"], "train": {**TINY["base"]["train"], "curriculum": [{"pairs": 2}, {"pairs": 3}], "stage_steps": 3}}
    path = tmp_path / "capacity.yaml"
    path.write_text(yaml.safe_dump(suite))
    results = tmp_path / "results"
    assert main(["--suite", str(path), "--out", str(results), "--cache", str(tmp_path / "c"), "--quiet", "--scale", "cpu"]) == 0
    out = tmp_path / "figures"
    assert plots_main(["--results", str(results), "--out", str(out)]) == 0
    assert (out / "capacity_cpu.png").stat().st_size > 10_000
    assert (out / "capacity_vs_memory_cpu.png").exists()
    table = (out / "table1_kv.md").read_text()
    assert "gradmem K=1" in table and "full_context" in table and "3 pairs" in table
    assert "The paper" in table and "99.1 ± 0.3" in table
