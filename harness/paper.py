"""The paper's reference numbers (results/reference/*.csv, copied from the paper) as frames and
Markdown tables, with our method labels: what the report and the figures set beside our runs."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference"


PAPER_METHODS = {"gradmem_first_order": {"name": "gradmem", "order": "first"}}
"""Method strings of the paper's CSVs that are not a registered name: the spec they stand for."""


def paper_label(method: str, write_setting) -> str:
    """Our label of a paper row: the registered method's own description, its write axis set to
    the CSV's `write_steps` when the method has one."""
    from harness.describe import describe_spec
    spec = dict(PAPER_METHODS.get(method, {"name": method}))
    axis = describe_spec(spec)["axis"]
    if axis is not None and not pd.isna(write_setting):
        spec[axis["field"]] = int(write_setting)
    return describe_spec(spec)["label"]


def paper_table1() -> pd.DataFrame:
    """The paper's Table 1 (results/reference/paper_table1_kv.csv) with our method labels."""
    paper = pd.read_csv(REFERENCE / "paper_table1_kv.csv", comment="#")
    paper["label"] = [paper_label(m, k) for m, k in zip(paper.method, paper.write_steps)]
    return paper


def paper_table1_markdown() -> str:
    """The paper's Table 1 in the same layout (mean ± std over 3 runs, as the paper gives it)."""
    wide = paper_wide(paper_table1())
    return wide.reset_index().rename(columns={"label": "method"}).to_markdown(index=False) + "\n"


def paper_wide(paper: pd.DataFrame) -> pd.DataFrame:
    """Rows of the paper's Table 1 pivoted to one row per label, one 'N pairs' column per pairs,
    cells 'mean ± std'."""
    paper = paper.assign(cell=[f"{m:.1f} ± {s:.1f}" for m, s in zip(paper.em_mean, paper.em_std)])
    wide = paper.pivot(index="label", columns="pairs", values="cell").fillna("")
    wide.columns = [f"{int(c)} pairs" for c in wide.columns]
    return wide


def paper_table2_markdown() -> str:
    """The paper's Table 2 (pretrained backbones) in the same layout (mean ± std, as the paper gives it)."""
    paper = pd.read_csv(REFERENCE / "paper_table2_nlp.csv", comment="#")
    paper = paper[paper["task"] != "lm_ce"]
    paper["label"] = [f"{paper_label(m, k)} ({b})" for m, k, b in zip(paper.method, paper.write_steps, paper.backbone)]
    paper["cell"] = [f"{m:.1f} ± {s:.1f}" for m, s in zip(paper.value_mean, paper.value_std)]
    wide = paper.pivot(index="label", columns="task", values="cell").fillna("")
    return wide.reset_index().rename(columns={"label": "method"}).to_markdown(index=False) + "\n"


def paper_fig4a() -> pd.DataFrame:
    """The paper's Figure 4(a) (results/reference/paper_fig4a_steps.csv): pairs, k_train, k_eval
    (a number, or 'best_0_n': the best over K_eval in 0..n), em (%)."""
    return pd.read_csv(REFERENCE / "paper_fig4a_steps.csv", comment="#", dtype={"k_eval": str})


def paper_fig4a_markdown() -> str:
    """The paper's Figure 4(a) as a table: exact match (%) per (pairs, K in training) and K at
    evaluation; 'best 0-n' = best over K_eval in 0..n."""
    paper = paper_fig4a()
    paper["trained"] = [f"{p} pairs, gradmem K={k}" for p, k in zip(paper.pairs, paper.k_train)]
    paper["column"] = [f"K={k}" if k.isdigit() else k.replace("best_0_", "best 0-") for k in paper.k_eval]
    wide = paper.pivot(index="trained", columns="column", values="em")
    order = sorted(wide.columns, key=lambda c: (not c.startswith("K="), int(c.split("=")[1]) if c.startswith("K=")
                                                else int(c.split("-")[1])))
    return wide[order].reset_index().to_markdown(index=False, floatfmt=".1f") + "\n"
