"""Latency results as tables: timing cells and R, measured break-even reads, and the paper's
appendix-D cost model with the measured R (beside the latency figures, `plots/latency.py`)."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from harness import store
from latency.spec import KIND, RATIO_FOLDER

def load(results: Path | str = "results") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(timing cells, R measurements) of every latency suite under `results`, one row each."""
    timings, ratios = [], []
    for _, summary in store.summaries(results):
        if summary.get("kind") == KIND:
            timings.append(timing_row(summary))
    for _, summary in store.summaries(results, f"*/{RATIO_FOLDER}/*.json"):
        if summary.get("kind") == "ratio":
            cell = summary["cell"]
            ratios.append({**_cell_keys(cell), "memory_size": cell["memory_size"], "ratio": summary["ratio"],
                           "forward": summary["forward"]["median"], "gradient_step": summary["gradient_step"]["median"]})
    return pd.DataFrame(timings), pd.DataFrame(ratios)


def _cell_keys(cell: dict) -> dict:
    return {k: cell[k] for k in ("suite", "scale", "device", "family", "arch", "context_tokens", "query_tokens",
                                 "target_tokens", "batch_size")}


def timing_row(summary: dict) -> dict:
    """One row of a timing summary: where it ran, what it is, its medians and spread (seconds)."""
    cell, peak = summary["cell"], summary.get("peak_memory") or {}
    axis = summary["describe"].get("axis") or {}
    row = {**_cell_keys(cell), "method": cell["method"]["name"], "label": summary["describe"]["label"],
           "axis": axis.get("name"), "write_setting": cell["write_setting"],
           "memory_size": cell["method"].get("memory_size"), "reference": cell["reference"],
           "cost_model_method": cell["cost_model_method"], "memory_floats": summary["memory_floats"],
           "peak_write_bytes": peak.get("write_bytes"), "peak_read_bytes": peak.get("read_bytes"),
           "threads": summary.get("versions", {}).get("threads"), "gpu": summary.get("versions", {}).get("gpu")}
    for part in ("write", "read"):
        for stat in ("median", "q25", "q75", "min", "max", "repeats"):
            row[f"{part}_{stat}"] = summary[part][stat]
    row["write"], row["read"] = row["write_median"], row["read_median"]
    return row


def break_even_reads(write_a: float, read_a: float, write_b: float, read_b: float) -> int | None:
    """The smallest N >= 1 from which WRITE_a + N READ_a <= WRITE_b + N READ_b holds for N and every
    larger count; None when a never pays off (its READ is slower, or as fast with a slower WRITE)."""
    if read_a < read_b:
        return max(1, math.ceil((write_a - write_b) / (read_b - read_a)))
    if read_a == read_b and write_a <= write_b:
        return 1
    return None


GROUP_KEYS = ["suite", "scale", "device", "family", "context_tokens", "query_tokens", "target_tokens", "batch_size"]


def break_even_table(costs: pd.DataFrame, keys: list[str] | None = None) -> pd.DataFrame:
    """`costs` (columns: `keys`, method, write, read, reference) with `break_even`: per row, the
    measured break-even reads against its `reference` method's row of the same group (the one with
    the smallest write setting when it has several), None when it never pays off; and
    `reference_found` (False: the group has no row of the reference method, break_even is None)."""
    keys = GROUP_KEYS if keys is None else keys
    out = costs.copy()
    out["break_even"] = pd.Series([None] * len(out), index=out.index, dtype=object)
    out["reference_found"] = False
    for _, group in out.groupby(keys, dropna=False):
        for reference, rows in group.groupby("reference", dropna=False):
            ref = group[group["method"] == reference]
            if ref.empty:
                continue
            if "write_setting" in ref:
                ref = ref.sort_values("write_setting", na_position="first")
            ref = ref.iloc[0]
            for index, row in rows.iterrows():
                out.at[index, "break_even"] = break_even_reads(row["write"], row["read"], ref["write"], ref["read"])
                out.at[index, "reference_found"] = True
    return out


def predicted_break_even(context: int, query: int, memory: int, steps: int, ratio: float) -> float | None:
    """The paper's appendix-D cost model: T_full ~ c^2 + c q N, T_write ~ R (c+m)^2 K + m^2 + m q N;
    writing is cheaper when N > [c^2 (RK - 1) + (1 + RK) m^2 + 2 c m R K] / [q (c - m)]. Returns that
    smallest integer N (>= 1), or None when c <= m (never)."""
    c, q, m, K, R = context, query, memory, steps, ratio
    if c <= m:
        return None
    bound = (c * c * (R * K - 1) + (1 + R * K) * m * m + 2 * c * m * R * K) / (q * (c - m))
    return max(1, math.floor(bound) + 1)


def with_predictions(timings: pd.DataFrame, ratios: pd.DataFrame) -> pd.DataFrame:
    """Timings with `ratio` (R of the same family, context, batch and device) and `predicted` (the
    cost model's break-even N with that R) on the rows of each suite's cost-model method."""
    out = timings.copy()
    out["ratio"], out["predicted"] = float("nan"), pd.Series([None] * len(out), index=out.index, dtype=object)
    if out.empty or ratios.empty:
        return out
    lookup = {tuple(r[k] for k in GROUP_KEYS): r["ratio"] for _, r in ratios.iterrows()}
    for index, row in out.iterrows():
        if row["method"] != row["cost_model_method"] or pd.isna(row["write_setting"]):
            continue
        ratio = lookup.get(tuple(row[k] for k in GROUP_KEYS))
        if ratio is None or pd.isna(row["memory_size"]):
            continue
        out.at[index, "ratio"] = ratio
        out.at[index, "predicted"] = predicted_break_even(row["context_tokens"], row["query_tokens"],
                                                          int(row["memory_size"]), int(row["write_setting"]), ratio)
    return out
