"""Tables from results: our exact match per method and pairs (mean ± std over seeds) beside the
paper's Table 1; method labels shared with the figures."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference"


def _param(row, key):
    value = row.get(f"method.{key}") if hasattr(row, "get") else None
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else value


def method_label(row) -> str:
    """A short name for a method setting: 'gradmem K=2', 'gradmem 1st-order K=1', 'rmt x3'."""
    name = row["method"]
    if name == "gradmem":
        order = _param(row, "order")
        prefix = {"first": "gradmem 1st-order", "none": "gradmem no-meta"}.get(order, "gradmem")
        return f"{prefix} K={int(_param(row, 'write_steps'))}"
    if name == "rmt":
        return f"rmt x{int(_param(row, 'write_passes'))}"
    return name


def trained_setting(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows evaluated with the write setting the run was trained with."""
    def own(row):
        steps = _param(row, "write_steps") if row["method"] == "gradmem" else _param(row, "write_passes")
        return row["eval_write_steps"] in ("default", str(int(steps)) if steps is not None else "default")
    if frame.empty:
        return frame
    return frame[frame.apply(own, axis=1)]


def capacity_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Exact match per (scale, method label, memory floats, pairs): mean, std and seed count."""
    if frame.empty or "task.pairs" not in frame:
        return pd.DataFrame()
    frame = trained_setting(frame.dropna(subset=["task.pairs"])).copy()
    if frame.empty:
        return frame
    frame["label"] = frame.apply(method_label, axis=1)
    frame["memory_size"] = frame.get("method.memory_size")
    keys = ["scale", "label", "task.pairs"]
    grouped = frame.groupby(keys, dropna=False).agg(
        em_mean=("exact_match", "mean"), em_std=("exact_match", "std"), seeds=("seed", "nunique"),
        memory_floats=("memory_floats", "max"), em_seeds=("exact_match", lambda s: json.dumps([round(v, 4) for v in s])))
    return grouped.reset_index()


def capacity(frame: pd.DataFrame, threshold: float = 0.9) -> pd.DataFrame:
    """Largest pairs whose mean exact match reaches `threshold`, per scale and method label."""
    table = capacity_frame(frame)
    if table.empty:
        return table
    rows = []
    for (scale, label), group in table.groupby(["scale", "label"]):
        passed = group[group["em_mean"] >= threshold]["task.pairs"]
        rows.append({"scale": scale, "label": label, "capacity": int(passed.max()) if len(passed) else 0,
                     "memory_floats": group["memory_floats"].max()})
    return pd.DataFrame(rows)


def _cell(mean, std, seeds) -> str:
    if np.isnan(mean):
        return ""
    spread = f" ± {100 * std:.1f}" if seeds > 1 and not np.isnan(std) else ""
    return f"{100 * mean:.1f}{spread}"


def table1_markdown(frame: pd.DataFrame, scale: str) -> str:
    """Exact match (%) per method and pairs of the capacity suite at one scale, mean ± std over seeds."""
    table = capacity_frame(frame[frame["suite"] == "capacity"]) if not frame.empty else frame
    table = table[table["scale"] == scale] if not table.empty else table
    if table.empty:
        return f"_no capacity results at scale {scale}_\n"
    seeds = table.groupby("label")["seeds"].max()
    fewer = [f" ({n} of {seeds[label]} seeds)" if n < seeds[label] else "" for label, n in zip(table.label, table.seeds)]
    table = table.assign(cell=[_cell(m, s, n) + note for m, s, n, note
                               in zip(table.em_mean, table.em_std, table.seeds, fewer)])
    wide = table.pivot(index="label", columns="task.pairs", values="cell").fillna("")
    floats = table.groupby("label")["memory_floats"].max()
    wide.columns = [f"{int(c)} pairs" for c in wide.columns]
    wide.insert(0, "memory floats", floats.map(lambda v: f"{int(v):,}"))
    wide.insert(1, "seeds", seeds)
    return wide.reset_index().rename(columns={"label": "method"}).to_markdown(index=False) + "\n"


def paper_table1() -> pd.DataFrame:
    """The paper's Table 1 (results/reference/paper_table1_kv.csv) with our method labels."""
    paper = pd.read_csv(REFERENCE / "paper_table1_kv.csv", comment="#")
    names = {"gradmem_first_order": "first", "gradmem": "second"}
    paper["label"] = [method_label({"method": "gradmem" if m in names else m, "method.order": names.get(m),
                                    "method.write_steps": k, "method.write_passes": k})
                      for m, k in zip(paper.method, paper.write_steps)]
    return paper


def paper_table1_markdown() -> str:
    """The paper's Table 1 in the same layout."""
    paper = paper_table1()
    paper["cell"] = [f"{m:.1f} ± {s:.1f}" for m, s in zip(paper.em_mean, paper.em_std)]
    wide = paper.pivot(index="label", columns="pairs", values="cell").fillna("")
    wide.columns = [f"{c} pairs" for c in wide.columns]
    return wide.reset_index().rename(columns={"label": "method"}).to_markdown(index=False) + "\n"


def table2_markdown(frame: pd.DataFrame, scale: str) -> str:
    """Exact match (%) per method on bAbI QA1-QA5 and Short SQuAD at one scale (mean ± std)."""
    if frame.empty:
        return f"_no bAbI / SQuAD results at scale {scale}_\n"
    subset = trained_setting(frame[frame["suite"].isin(["babi", "squad"]) & (frame["scale"] == scale)])
    if subset.empty:
        return f"_no bAbI / SQuAD results at scale {scale}_\n"
    subset = subset.assign(label=subset.apply(method_label, axis=1),
                           column=[f"babi_qa{int(q)}" if s == "babi" else "short_squad"
                                   for s, q in zip(subset["suite"], subset.get("task.qa", pd.Series(0, index=subset.index)).fillna(0))])
    grouped = subset.groupby(["label", "column"])["exact_match"].agg(["mean", "std", "count"]).reset_index()
    grouped["cell"] = [_cell(m, s, n) for m, s, n in zip(grouped["mean"], grouped["std"], grouped["count"])]
    wide = grouped.pivot(index="label", columns="column", values="cell").fillna("")
    return wide.reset_index().rename(columns={"label": "method"}).to_markdown(index=False) + "\n"


def paper_table2_markdown() -> str:
    """The paper's Table 2 (pretrained backbones) in the same layout."""
    paper = pd.read_csv(REFERENCE / "paper_table2_nlp.csv", comment="#")
    paper = paper[paper["task"] != "lm_ce"]
    paper["label"] = [f"{method_label({'method': m, 'method.write_steps': k, 'method.write_passes': k})} ({b})"
                      for m, k, b in zip(paper.method, paper.write_steps, paper.backbone)]
    paper["cell"] = [f"{m:.1f} ± {s:.1f}" for m, s in zip(paper.value_mean, paper.value_std)]
    wide = paper.pivot(index="label", columns="task", values="cell").fillna("")
    return wide.reset_index().rename(columns={"label": "method"}).to_markdown(index=False) + "\n"
