"""Tables from results: our exact match per method and pairs (mean and 95% interval over seeds,
collapsed runs marked) beside the paper's Tables 1 and 2, and the tuning grids.

Every method-specific thing comes from the results themselves: each row's `label` and write
axis (`axis`, `trained_setting`, `write_setting`) are the method's self-description recorded by the
runner (see `harness.contract.Method.describe`); nothing here tests a method's name.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from harness.paper import paper_table1, paper_wide


INTERVAL_NOTE = ("Cells: mean exact match (%) over seeds ± the half-width of its 95% interval "
                 "(Student t over seeds: t(0.975, n-1) · sd / √n); a cell without ± comes from one seed; "
                 "'(k of n seeds)': only k of the row's n seeds were scored in that column.")
COLLAPSE_NOTE = ("† collapsed in training (validation EM fell more than 20 points below its best, or the "
                 "training loss rose back above chance); the score comes from the best weights. "
                 "'†(k of n)': k of the cell's n seeds collapsed.")


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


SUPERSEDED_MARK = " (old tuning choice: rerun pending)"
OLD_RECIPE_MARK = " (old recipe)"
OLD_RECIPE_NOTE = ("(old recipe): runs whose settings their suite no longer has (it was changed since they ran); "
                   "listed apart from the suite's runs now, until those replace them.")


def labels(frame: pd.DataFrame) -> pd.Series:
    """Each row's display label: the recorded self-description, else the method's name; runs
    trained with a setting their tuning no longer chooses get `SUPERSEDED_MARK`, runs whose
    settings their suite no longer has `OLD_RECIPE_MARK` (so neither is pooled with the current
    runs as more seeds)."""
    names = frame["method"].astype(str) if "label" not in frame else \
        frame["label"].where(frame["label"].notna(), frame["method"]).astype(str)
    if "superseded_tuning" in frame:   # kept apart from the runs trained with the current choice
        names = names.where(~frame["superseded_tuning"].eq(True), names + SUPERSEDED_MARK)
    if "old_recipe" in frame:
        names = names.where(~frame["old_recipe"].eq(True), names + OLD_RECIPE_MARK)
    return names


def _own_setting(key, trained) -> bool:
    """Whether an evaluation key ('default' or a write-axis value) is the trained setting."""
    if _missing(key) or key == "default":
        return True
    if _missing(trained):
        return False
    try:
        return float(key) == float(trained)
    except (TypeError, ValueError):
        return str(key) == str(trained)


def at_trained_setting(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows evaluated with the write setting the run was trained with."""
    if frame.empty:
        return frame
    keys = frame["eval_key"] if "eval_key" in frame else pd.Series("default", index=frame.index)
    trained = frame["trained_setting"] if "trained_setting" in frame else pd.Series(None, index=frame.index, dtype=object)
    return frame[[_own_setting(k, t) for k, t in zip(keys, trained)]]


def interval(std: float, n: int) -> float:
    """Half-width of the 95% Student-t interval of a mean of n values with sample std `std`
    (NaN for fewer than two values)."""
    if n < 2 or _missing(std):
        return float("nan")
    return float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))


def summarise(frame: pd.DataFrame, keys: list[str], value: str = "exact_match") -> pd.DataFrame:
    """Per group of `keys`: em_mean, em_std, em_ci (95% half-width), n (values averaged), seeds
    (distinct seeds), collapsed (how many of the values come from a stage that collapsed),
    memory_floats, and em_seeds / collapsed_seeds (JSON lists, one entry per value)."""
    frame = frame.assign(collapsed=frame["collapsed"].eq(True) if "collapsed" in frame else False)
    if "memory_floats" not in frame:
        frame = frame.assign(memory_floats=np.nan)
    grouped = frame.groupby(keys, dropna=False).agg(
        em_mean=(value, "mean"), em_std=(value, "std"), n=(value, "count"), seeds=("seed", "nunique"),
        collapsed=("collapsed", "sum"), memory_floats=("memory_floats", "max"),
        em_seeds=(value, lambda s: json.dumps([round(float(v), 4) for v in s])),
        collapsed_seeds=("collapsed", lambda s: json.dumps([bool(v) for v in s]))).reset_index()
    grouped["em_ci"] = [interval(s, n) for s, n in zip(grouped["em_std"], grouped["n"])]
    grouped["collapsed"] = grouped["collapsed"].astype(int)
    return grouped


def capacity_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Exact match per (scale, label, pairs) at the trained setting: mean, std, 95% interval,
    seed count and collapse count (see `summarise`)."""
    if frame.empty or "task.pairs" not in frame:
        return pd.DataFrame()
    frame = at_trained_setting(frame.dropna(subset=["task.pairs"]))
    if frame.empty:
        return frame
    return summarise(frame.assign(label=sized_labels(frame)), ["scale", "label", "task.pairs"])


def sized_labels(frame: pd.DataFrame) -> pd.Series:
    """`labels`, with ', N floats' added where one label ran at several memory sizes on the same
    scale and task (gist + recon with 1, 2 and 8 gist tokens: three rows, not one)."""
    names = labels(frame)
    if "memory_floats" not in frame or frame.empty:
        return names
    cell = [c for c in ("scale", "task.pairs", "task.qa") if c in frame]
    sizes = frame.assign(name=names).groupby(["name", *cell], dropna=False)["memory_floats"].transform("nunique")
    several = set(names[sizes > 1])
    return pd.Series([f"{n}, {int(f):,} floats" if n in several and not _missing(f) else n
                      for n, f in zip(names, frame["memory_floats"])], index=frame.index)


def _largest(pairs: pd.Series, passed: pd.Series) -> int:
    chosen = pairs[passed]
    return int(chosen.max()) if len(chosen) else 0


def capacity(frame: pd.DataFrame, threshold: float = 0.9) -> pd.DataFrame:
    """Largest pairs whose mean exact match reaches `threshold`, per scale and label; with
    capacity_low / capacity_high, the same read off the lower / upper end of the 95% intervals."""
    table = capacity_frame(frame)
    if table.empty:
        return table
    rows = []
    for (scale, label), group in table.groupby(["scale", "label"]):
        spread = group["em_ci"].fillna(0)
        rows.append({"scale": scale, "label": label,
                     "capacity": _largest(group["task.pairs"], group["em_mean"] >= threshold),
                     "capacity_low": _largest(group["task.pairs"], group["em_mean"] - spread >= threshold),
                     "capacity_high": _largest(group["task.pairs"], group["em_mean"] + spread >= threshold),
                     "collapsed": int(group["collapsed"].sum()), "memory_floats": group["memory_floats"].max()})
    return pd.DataFrame(rows)


def cell(mean, ci, n, row_seeds=None, collapsed=0) -> str:
    """'97.3 ± 1.2', '52.0' (one seed), '58.9 ± 8.3 (2 of 3 seeds)', '90.1 †', '90.1 ± 3.0 †(1 of 3)'."""
    if _missing(mean):
        return ""
    text = f"{100 * mean:.1f}"
    if n > 1 and not _missing(ci):
        text += f" ± {100 * ci:.1f}"
    if row_seeds is not None and n < row_seeds:
        text += f" ({n} of {row_seeds} seeds)"
    if collapsed:
        text += " †" if collapsed >= n else f" †({collapsed} of {n})"
    return text


def _notes(table: pd.DataFrame) -> str:
    notes = [INTERVAL_NOTE] + ([COLLAPSE_NOTE] if table["collapsed"].sum() else []) \
        + ([OLD_RECIPE_NOTE] if table["label"].str.contains(OLD_RECIPE_MARK, regex=False).any() else [])
    return "\n" + "\n\n".join(notes) + "\n"


def _wide(table: pd.DataFrame, column: str, names) -> pd.DataFrame:
    """Cells of `table` pivoted to one row per label and one column per value of `column`."""
    row_seeds = table.groupby("label")["n"].max()
    table = table.assign(cell=[cell(m, c, n, row_seeds[label], k) for m, c, n, label, k
                               in zip(table.em_mean, table.em_ci, table.n, table.label, table.collapsed)])
    wide = table.pivot(index="label", columns=column, values="cell").fillna("")
    wide.columns = [names(c) for c in wide.columns]
    return wide


def _capacity_at(frame: pd.DataFrame, scale: str) -> pd.DataFrame:
    """capacity_frame of the runs at one scale (empty when there are none)."""
    table = capacity_frame(frame) if not frame.empty else frame
    return table[table["scale"] == scale] if not table.empty else table


def table1_markdown(frame: pd.DataFrame, scale: str) -> str:
    """Exact match (%) per method and pairs of KV runs (a capacity suite's) at one scale: mean ± 95%
    interval over seeds, collapsed runs marked, with the notes saying so."""
    table = _capacity_at(frame, scale)
    if table.empty:
        return f"_no capacity results at scale {scale}_\n"
    wide = _wide(table, "task.pairs", lambda c: f"{int(c)} pairs")
    wide.insert(0, "memory floats", table.groupby("label")["memory_floats"].max().map(lambda v: f"{int(v):,}"))
    wide.insert(1, "seeds", table.groupby("label")["seeds"].max())
    return wide.reset_index().rename(columns={"label": "method"}).to_markdown(index=False, disable_numparse=True) \
        + "\n" + _notes(table)


def memsize_markdown(frame: pd.DataFrame, scale: str) -> str:
    """Exact match (%) per method, memory size and pairs, for every method that ran at more than
    one memory size at some pairs value (one row per method and memory in floats), mean ± 95%
    interval over seeds, collapsed runs marked."""
    empty = f"_no memsize results at scale {scale}_\n"
    if frame.empty:
        return empty
    subset = at_trained_setting(frame[frame["scale"] == scale].dropna(subset=["task.pairs"]))
    subset = subset.assign(method_label=labels(subset))
    sizes = subset.groupby(["method_label", "task.pairs"])["memory_floats"].nunique()
    subset = subset[subset["method_label"].isin(set(sizes[sizes > 1].index.get_level_values(0)))]
    if subset.empty:
        return empty
    subset = subset.assign(label=[f"{m}, {int(f):,} floats" for m, f in zip(subset.method_label, subset.memory_floats)])
    table = summarise(subset, ["label", "task.pairs"])
    wide = _wide(table, "task.pairs", lambda c: f"{int(c)} pairs")
    wide.insert(0, "seeds", table.groupby("label")["seeds"].max().astype(str))
    order = subset.drop_duplicates("label").sort_values(["method_label", "memory_floats"])["label"]
    wide = wide.loc[list(order)]
    return wide.reset_index().rename(columns={"label": "method, memory"}).to_markdown(index=False, disable_numparse=True) \
        + "\n" + _notes(table)


def table1_beside_paper_markdown(frame: pd.DataFrame, scale: str) -> str:
    """Table 1 at one scale with the paper's rows of the same methods under it, in the columns
    (pairs) this scale has: our cells (mean ± 95% interval) and the paper's (mean ± std)."""
    table = _capacity_at(frame, scale)
    if table.empty:
        return f"_no capacity results at scale {scale}_\n"
    ours = _wide(table, "task.pairs", lambda c: f"{int(c)} pairs")
    ours.insert(0, "source", f"harness, {scale} scale")
    ours_labels = set(ours.index)   # a paper row stands under ours of its label, or of its label + options
    paper = paper_table1()
    shown = paper["label"].map(lambda p: any(l == p or l.startswith(p + " + ") for l in ours_labels))
    theirs = paper_wide(paper[shown & paper["pairs"].isin(table["task.pairs"].unique())])
    theirs.insert(0, "source", "paper (mean ± std)")
    both = pd.concat([ours, theirs]).fillna("")
    both = both[["source", *[c for c in ours.columns if c != "source"]]]
    return both.reset_index().rename(columns={"index": "method", "label": "method"}).to_markdown(
        index=False, disable_numparse=True) + "\n" + _notes(table)


def final_stage(frame: pd.DataFrame) -> pd.DataFrame:
    """Each run's rows of its last curriculum stage."""
    last = frame.groupby("run_id")["stage"].transform("max")
    return frame[frame["stage"] == last]


BACKBONE_NOTE = ("Backbone: the model a row ran on; a full-context row is the upper bound of the memory rows "
                 "of its own backbone (the attention memories: the llama row; a cell where it is not is "
                 "listed with its cause in results/bound_gaps.yaml); a Mamba row is its own recurrent model "
                 "reading the whole context, as the paper's Mamba-130m full-context row.")


def table2_markdown(frame: pd.DataFrame, scale: str) -> str:
    """Exact match (%) per method on bAbI QA1-QA5 and Short SQuAD at one scale: mean ± 95% interval
    over seeds, collapsed runs marked."""
    if frame.empty:
        return f"_no bAbI / SQuAD results at scale {scale}_\n"
    subset = at_trained_setting(frame[frame["scale"] == scale])
    if subset.empty:
        return f"_no bAbI / SQuAD results at scale {scale}_\n"
    subset = final_stage(subset)   # a curriculum's earlier stages are easier versions of the task
    qa = subset["task.qa"] if "task.qa" in subset else pd.Series(0, index=subset.index)
    subset = subset.assign(label=labels(subset), backbone=backbone_label(subset),
                           column=[f"{task}_qa{int(q)}" if q else str(task)
                                   for task, q in zip(subset["task.name"], qa.fillna(0))])
    table = summarise(subset, ["label", "column"])
    wide = _wide(table, "column", str)
    wide.insert(0, "seeds", table.groupby("label")["seeds"].max().astype(str))
    wide.insert(0, "backbone", subset.groupby("label")["backbone"].agg(lambda b: ", ".join(sorted(set(b)))))
    return wide.reset_index().rename(columns={"label": "method"}).to_markdown(index=False, disable_numparse=True) \
        + "\n" + _notes(table) + "\n" + BACKBONE_NOTE + "\n"


def steps_markdown(frame: pd.DataFrame, scale: str) -> str:
    """Exact match (%) per (pairs, trained setting) row and write-axis value at evaluation (same
    weights), for the runs evaluated at more than one value of their write axis (a steps suite's):
    mean ± 95% interval over seeds, the trained value in bold."""
    subset = frame[frame["scale"] == scale] if not frame.empty else frame
    if subset.empty or "write_setting" not in subset or subset["write_setting"].isna().all():
        return f"_no steps results at scale {scale}_\n"
    subset = subset.dropna(subset=["write_setting"])
    subset = subset[subset.groupby("run_id")["write_setting"].transform("nunique") > 1]
    if subset.empty:
        return f"_no steps results at scale {scale}_\n"
    subset = subset.assign(label=[f"{int(p)} pairs, {l}" for p, l in zip(subset["task.pairs"], labels(subset))])
    table = summarise(subset, ["label", "trained_setting", "write_setting"])
    trained = dict(zip(table["label"], table["trained_setting"]))
    wide = _wide(table, "write_setting", lambda v: v)
    for label in wide.index:
        if trained.get(label) in wide.columns and wide.loc[label, trained[label]]:
            wide.loc[label, trained[label]] = f"**{wide.loc[label, trained[label]]}**"
    axis = subset["axis"].dropna().iloc[0] if subset["axis"].notna().any() else "write setting"
    wide.columns = [f"{axis}={int(v) if float(v).is_integer() else v}" for v in wide.columns]
    return (wide.reset_index().rename(columns={"label": "trained"}).to_markdown(index=False, disable_numparse=True)
            + "\n\nBold: the value used in training. " + INTERVAL_NOTE + "\n")


def _setting(values: dict, keys) -> str:
    return ", ".join(f"{k}={values[k]:g}" if isinstance(values.get(k), (int, float)) else f"{k}={values.get(k)}"
                     for k in keys)


def tuning_markdown(frame: pd.DataFrame | str | Path, suite: str, scale: str) -> str:
    """One row per method label (and tuning record) of a suite at one scale: the validation exact
    match (%) of every cell of the tuning grid, the chosen setting (bold), the seed and steps it was
    tuned with, and the seeds whose runs used it. `frame` may be a results folder."""
    from harness.tune import find_cell
    if not isinstance(frame, pd.DataFrame):
        from harness import store
        frame = store.load(frame)
    if frame.empty or "tuning" not in frame:
        return f"_no tuning records for {suite} at scale {scale}_\n"
    runs = frame[(frame["suite"] == suite) & (frame["scale"] == scale) & frame["tuning"].notna()]
    if runs.empty:
        return f"_no tuning records for {suite} at scale {scale}_\n"
    floats = runs.groupby("run_id")["memory_floats"].max() if "memory_floats" in runs else None
    runs = runs.drop_duplicates("run_id").assign(label=lambda r: labels(r))
    rows, columns = [], []
    for (label, record), group in runs.groupby(["label", "tuning"], sort=True):
        tuning = json.loads(record)
        keys = list(tuning.get("grid", {}))
        chosen = tuning.get("chosen") or {}
        row = {"method": label}
        if floats is not None:
            row["memory floats"] = f"{int(floats[group['run_id']].max()):,}" if floats[group["run_id"]].notna().any() else ""
        second = tuning.get("second_stage") or []
        for entry in tuning.get("cells", []):
            name = _setting(entry, keys)
            if name not in columns:
                columns.append(name)
            on_second = find_cell(second, {k: entry.get(k) for k in keys})
            scores = [entry] + ([on_second] if on_second else [])
            text = " / ".join("—" if _missing(s.get("valid_em")) else f"{100 * s['valid_em']:.1f}" for s in scores)
            row[name] = f"**{text}**" if all(entry.get(k) == chosen.get(k) for k in keys) else text
        if second:
            row["second stage"] = ", ".join(f"{k}={v}" for k, v in (tuning.get("second_stage_task") or {}).items())
        row.update({"chosen": _setting(chosen, keys), "tuned on seed": tuning.get("seed"),
                    "tuning steps": tuning.get("steps"),
                    "used by seeds": ", ".join(str(int(s)) for s in sorted(group["seed"].unique()))})
        rows.append(row)
    table = pd.DataFrame(rows)
    head = ["method"] + (["memory floats"] if "memory floats" in table else [])
    second = ["second stage"] if "second stage" in table else []
    table = table[head + columns + second + ["chosen", "tuned on seed", "tuning steps", "used by seeds"]].fillna("")
    return (table.astype(str).to_markdown(index=False, disable_numparse=True) + "\n\nCells: validation exact match (%) of each grid setting after "
            "at most the tuning steps on the first curriculum stage / then on the second (`second stage`; "
            "a cell without it predates two-stage tuning); bold: the setting chosen for training; "
            "—: no score (the cell failed or diverged).\n")


def cost_markdown(frame: pd.DataFrame, scale: str) -> str:
    """What each method cost to train at one scale: per label, the seeds, the training time of a
    run (minutes, mean ± 95% interval over seeds; tuning not counted), its optimiser steps (mean)
    and the time per step (ms), from the runs' summaries."""
    runs = frame[frame["scale"] == scale].drop_duplicates("run_id") if not frame.empty else frame
    if runs.empty or "train_seconds" not in runs:
        return f"_no runs at scale {scale}_\n"
    runs = runs.dropna(subset=["train_seconds"]).assign(label=lambda r: labels(r), minutes=lambda r: r["train_seconds"] / 60)
    rows = []
    for label, group in runs.groupby("label", sort=True):
        minutes, steps = group["minutes"], group["train_steps"]
        spread = interval(minutes.std(), len(minutes))
        rows.append({"method": label, "seeds": str(group["seed"].nunique()),
                     "minutes per run": f"{minutes.mean():.1f}" + ("" if math.isnan(spread) else f" ± {spread:.1f}"),
                     "steps per run": f"{steps.mean():,.0f}",
                     "ms per step": f"{1000 * group['train_seconds'].sum() / steps.sum():.0f}"})
    return (pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)
            + "\n\nTraining time of one run (its tuning not counted) on the machine that ran it (`versions` "
            "in each summary), mean ± 95% interval over seeds; runs end stages early at 100% validation "
            "(or by patience), so fewer steps can mean a faster learner.\n")


def backbone_label(frame: pd.DataFrame) -> pd.Series:
    """'llama 2x64', 'mamba 2x64', 'gpt2' (a pretrained backbone's name): the model each row ran on."""
    def one(row) -> str:
        pretrained = row.get("backbone.pretrained")
        if not _missing(pretrained):
            return str(pretrained)
        arch, layers, hidden = (row.get(f"backbone.{k}") for k in ("arch", "layers", "hidden"))
        shape = "" if _missing(layers) or _missing(hidden) else f" {int(layers)}x{int(hidden)}"
        return ("" if _missing(arch) else str(arch)) + shape
    if frame.empty:
        return pd.Series("", index=frame.index, dtype=object)
    return frame.apply(one, axis=1).str.strip()


def bound_of(method: str) -> str | None:
    """'upper' / 'lower' for a registered method that declares itself a bound (`Method.bound`)."""
    from harness import registry
    registry.discover()
    return getattr(registry.METHODS.get(method), "bound", None)


def bound_violations(frame: pd.DataFrame, tolerance: float = 0.01) -> list[dict]:
    """Cells where a memory method beats the upper bound (`Method.bound`: full context) of its own
    backbone: mean exact match above the bound's by more than `tolerance` plus both 95% half-widths. A cell is a
    suite, scale and task setting (bAbI / SQuAD: the final stage; KV: the pairs count) at the
    trained write setting. Methods on another backbone (Mamba, its own recurrent model) are
    compared with their own backbone's full-context row, where there is one; runs of an old
    recipe (`old_recipe`) are left out. Each violation:
    {"cell": 'suite=..., scale=..., backbone=..., task.qa=3', "method": label, "text": ...}."""
    if frame.empty:
        return []
    frame = at_trained_setting(frame)
    if "old_recipe" in frame:   # runs their suite no longer has are not its comparison
        frame = frame[~frame["old_recipe"].eq(True)]
    # a curriculum over pairs scores every stage; any other (bAbI, SQuAD) only its last
    nlp = frame["task.pairs"].isna() if "task.pairs" in frame else pd.Series(True, index=frame.index)
    frame = pd.concat([final_stage(frame[nlp]), frame[~nlp]])
    setting = [c for c in ("task.qa", "task.pairs") if c in frame]
    frame = frame.assign(label=labels(frame), backbone=backbone_label(frame),
                         **{c: frame[c].fillna(-1) for c in setting})
    keys = ["suite", "scale", "backbone", *setting]
    table = summarise(frame, keys + ["label", "method"])
    problems = []
    upper = table["method"].map(lambda name: bound_of(name) == "upper")
    for cell_key, group in table.assign(upper=upper).groupby(keys):
        for _, b in group[group["upper"]].iterrows():
            for _, m in group[~group["upper"]].iterrows():
                margin = tolerance + np.nan_to_num(b.em_ci) + np.nan_to_num(m.em_ci)
                if m.em_mean > b.em_mean + margin:
                    where = ", ".join(f"{k}={int(v) if isinstance(v, float) else v}"
                                      for k, v in zip(keys, cell_key) if v != -1)
                    problems.append({"cell": where, "method": m.label,
                                     "text": f"{where}: {m.label} {100 * m.em_mean:.1f} > {b.label} "
                                             f"{100 * b.em_mean:.1f}"})
    return problems
