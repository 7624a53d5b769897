"""The paper's KV claims read against results, one verdict per claim and scale: the generated block
`<!-- generated: claims SCALE ... -->` (plots.readme). Each verdict compares two rows of the
capacity (or steps) suite at the largest pairs value both reached on that scale, as mean ± 95%
interval over seeds; "beyond the intervals" means the intervals do not overlap (one seed: the
means, said so). The paper's column applies the same reading to its Table 1 and Figure 4a.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from harness.paper import paper_fig4a, paper_table1
from harness.report import capacity_frame, summarise, labels
from plots import of_suites

CLAIMS = (
    "1. Same memory: one gradient step (GradMem K=1) holds more than a forward write (RMT x1)",
    "2. More write steps raise capacity (K=1 -> K=2 -> K=5)",
    "3. Repeated forward writes (RMT x2, x3, x5) give limited gains",
    "4. Without second-order meta-learning GradMem fails",
    "5. More write steps at evaluation than in training raise exact match",
)


@dataclass
class Cell:
    """A row's exact match (%) at one pairs value: mean, 95% half-width (0: one seed), seeds."""
    mean: float
    ci: float
    seeds: int

    def __str__(self) -> str:
        return f"{self.mean:.1f}" + (f" ± {self.ci:.1f}" if self.seeds > 1 else " (1 seed)")


def _cells(table: pd.DataFrame) -> dict:
    return {(label, int(pairs)): Cell(100 * mean, 0.0 if math.isnan(ci) else 100 * ci, int(seeds))
            for label, pairs, mean, ci, seeds in zip(table["label"], table["task.pairs"], table["em_mean"],
                                                     table["em_ci"], table["seeds"])}


def _largest_shared(cells: dict, *rows: str) -> int | None:
    shared = set.intersection(*({p for (label, p) in cells if label == row} for row in rows))
    return max(shared) if shared else None


def _compare(a: Cell, b: Cell) -> str:
    """'above' / 'below' beyond the intervals, else 'within'."""
    if a.mean - a.ci > b.mean + b.ci:
        return "above"
    if a.mean + a.ci < b.mean - b.ci:
        return "below"
    return "within"


def _first(cells: dict, *candidates: str) -> str | None:
    return next((c for c in candidates if any(label == c for label, _ in cells)), None)


def claim_1(cells: dict) -> str:
    rmt = _first(cells, "rmt x1 + recon", "rmt x1")
    pairs = _largest_shared(cells, "gradmem K=1", rmt) if rmt else None
    if pairs is None:
        return "no rows"
    a, b = cells["gradmem K=1", pairs], cells[rmt, pairs]
    verdict = {"above": "supported", "within": "not separated", "below": "reversed"}[_compare(a, b)]
    return f"**{verdict}** at {pairs} pairs: K=1 {a} vs {rmt} {b}"


def claim_2(cells: dict) -> str:
    parts = []
    for low, high in (("gradmem K=1", "gradmem K=2"), ("gradmem K=2", "gradmem K=5")):
        pairs = _largest_shared(cells, low, high)
        if pairs is None:
            continue
        a, b = cells[high, pairs], cells[low, pairs]
        side = _compare(a, b)
        verdict = ("at the ceiling" if min(a.mean, b.mean) >= 99 else
                   {"above": "raises", "within": "not separated", "below": "lowers"}[side])
        parts.append(f"{low[-3:]} -> {high[-3:]} **{verdict}** at {pairs} pairs: {b} -> {a}")
    return "; ".join(parts) or "no rows"


def claim_3(cells: dict) -> str:
    base = _first(cells, "rmt x1 + recon", "rmt x1")
    repeated = [r for r in ("rmt x2 + recon", "rmt x3 + recon", "rmt x5 + recon", "rmt x2", "rmt x3", "rmt x5")
                if any(label == r for label, _ in cells)]
    if not base or not repeated:
        return "no rows"
    pairs = _largest_shared(cells, base, *repeated, "gradmem K=1")
    if pairs is None:
        return "no shared pairs value"
    gains = [r for r in repeated if _compare(cells[r, pairs], cells[base, pairs]) == "above"]
    under = all(_compare(cells[r, pairs], cells["gradmem K=1", pairs]) == "below" for r in repeated)
    verdict = "supported" if under else "not supported"
    shown = ", ".join(f"{r.split()[1]} {cells[r, pairs]}" for r in [base, *repeated])
    return (f"**{verdict}** at {pairs} pairs: {shown}; {len(gains)} of {len(repeated)} above x1, "
            f"{'all' if under else 'not all'} below K=1 {cells['gradmem K=1', pairs]}")


def claim_4(cells: dict) -> str:
    first = _first(cells, "gradmem 1st-order K=1")
    pairs = _largest_shared(cells, first, "gradmem K=1") if first else None
    if pairs is None:
        return "no rows"
    a, second = cells[first, pairs], cells["gradmem K=1", pairs]
    chance = cells.get(("query_only", pairs))
    floor = chance.mean if chance else 0.0
    if a.mean <= floor + 10:
        verdict = "supported: first order at chance"
    elif _compare(a, second) == "below":
        verdict = "weaker, not a failure"
    else:
        verdict = "not supported: first order as good"
    return (f"**{verdict}** at {pairs} pairs: 1st-order K=1 {a} vs 2nd-order {second}"
            + (f" (query only {chance})" if chance else ""))


def claim_5(steps: pd.DataFrame) -> str:
    """K_train = 1 at the largest pairs value of the steps suite: EM at the largest K at evaluation
    against EM at K = 1, the same weights."""
    if steps.empty:
        return "no steps results"
    trained = steps[steps["trained_setting"] == 1]
    if trained.empty:
        return "no K_train = 1 rows"
    pairs = int(trained["task.pairs"].max())
    rows = trained[trained["task.pairs"] == pairs]
    cells = {int(v): Cell(100 * m, 0.0 if math.isnan(c) else 100 * c, int(s))
             for v, m, c, s in zip(rows["write_setting"], rows["em_mean"], rows["em_ci"], rows["seeds"])}
    if 1 not in cells or len(cells) < 2:
        return "no K_eval sweep"
    most = max(cells)
    side = _compare(cells[most], cells[1])
    verdict = {"above": "supported", "within": "no gain beyond the intervals", "below": "reversed"}[side]
    after = min((k for k in cells if k > 1), default=None)
    step = f"; K=1 -> {after}: {cells[1]} -> {cells[after]}" if after is not None and after != most else ""
    return f"**{verdict}** (K_train=1, {pairs} pairs): K=1 {cells[1]} -> K={most} {cells[most]}{step}"


def scale_verdicts(frame: pd.DataFrame, scale: str) -> list[str]:
    capacity = of_suites(frame, "capacity", scale=scale)
    table = capacity_frame(capacity) if not capacity.empty else capacity
    cells = _cells(table) if not table.empty else {}
    steps = of_suites(frame, "steps", scale=scale)
    if not steps.empty and "write_setting" in steps:
        steps = steps.dropna(subset=["write_setting"])
        steps = summarise(steps.assign(label=labels(steps), write_setting=pd.to_numeric(steps["write_setting"]),
                                       trained_setting=pd.to_numeric(steps["trained_setting"])),
                          ["task.pairs", "trained_setting", "write_setting"])
    if not cells:
        return ["no capacity results"] * 4 + [claim_5(steps)]
    return [claim_1(cells), claim_2(cells), claim_3(cells), claim_4(cells), claim_5(steps)]


def paper_verdicts() -> list[str]:
    """The same reading of the paper's Table 1 (means; the paper gives std, not intervals) and
    Figure 4a."""
    paper = paper_table1()
    cells = {(label, int(p)): Cell(m, 0.0, 1) for label, p, m in zip(paper["label"], paper["pairs"], paper["em_mean"])}
    fig = paper_fig4a()
    fig = fig[fig["k_eval"].str.isdigit()]
    rows = fig[fig["k_train"] == 1]
    pairs = int(rows["pairs"].min()) if not rows.empty else None
    rows = rows[rows["pairs"] == pairs] if pairs else rows
    steps = pd.DataFrame({"task.pairs": pairs, "trained_setting": 1, "write_setting": rows["k_eval"].astype(int),
                          "em_mean": rows["em"] / 100, "em_ci": float("nan"), "seeds": 1})
    verdicts = [claim_1(cells), claim_2(cells), claim_3(cells), claim_4(cells), claim_5(steps)]
    return [v.replace(" (1 seed)", "") for v in verdicts]


def claims_markdown(frame: pd.DataFrame, *scales: str) -> str:
    """One row per claim: the verdict at each scale and the paper's."""
    columns = {f"{scale} scale": scale_verdicts(frame, scale) for scale in scales}
    columns["the paper (Table 1, Fig. 4a)"] = paper_verdicts()
    table = pd.DataFrame({"claim": CLAIMS, **columns})
    note = ("\nEach verdict: two rows of the scale's results at the largest pairs value both reached, mean ± "
            "95% interval over seeds; 'beyond the intervals' = the intervals do not overlap (`plots/claims.py`).\n")
    return table.to_markdown(index=False) + "\n" + note
