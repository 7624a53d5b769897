"""One function per figure; each reads the results DataFrame and writes one PNG, titled with the
scale that produced it."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from harness.report import capacity, capacity_frame, labels, paper_table1  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

log = logging.getLogger(__name__)


def save_figure(fig, path: Path, right: float = 1.0, dpi: int = 120) -> Path:
    """Lay out (the right margin from `right` on left free, e.g. for a legend), write and close."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=(0, 0, right, 1))
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    log.info("wrote %s", path)
    return path


def _rows(frame: pd.DataFrame, suites: list[str], scale: str) -> pd.DataFrame:
    """The rows of some suites at one scale, each with its method's display label."""
    if frame.empty:
        return frame
    subset = frame[frame["suite"].isin(suites) & (frame["scale"] == scale)]
    return subset.assign(label=labels(subset)) if not subset.empty else subset


def _axis_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of methods that have a write axis, evaluated at an explicit value of it."""
    if frame.empty or "axis" not in frame:
        return frame.iloc[0:0]
    subset = frame[frame["axis"].notna() & (frame["eval_write_setting"] != "default")]
    return subset.assign(axis_value=pd.to_numeric(subset["axis_value"]),
                         axis_trained=pd.to_numeric(subset["axis_trained"]))


def _axis_name(frame: pd.DataFrame) -> str:
    return " / ".join(sorted(frame["axis"].dropna().unique())) or "write steps"


COLLAPSE_HANDLES = [Line2D([], [], ls="", marker="x", color="black", label="seed collapsed in training"),
                    Line2D([], [], ls="", marker="o", mfc="none", color="black", label="a seed of the point collapsed")]


def exact_match_vs_pairs(frame: pd.DataFrame, scale: str, out: Path) -> Path | None:
    """Figure 3: exact match versus number of pairs, one line per method: the mean with its 95%
    interval over seeds (Student t) as error bars, every seed a dot (x: that seed collapsed in
    training in that stage; a hollow mean: some seed of it did)."""
    table = capacity_frame(frame[frame["suite"] == "capacity"]) if not frame.empty else frame
    table = table[table["scale"] == scale] if not table.empty else table
    if table.empty:
        return None
    fig, ax = plt.subplots(figsize=(10, 5))
    palette = dict(zip(sorted(table["label"].unique()), sns.color_palette("tab20", table["label"].nunique())))
    for label, group in table.groupby("label"):
        group = group.sort_values("task.pairs")
        floats = int(group["memory_floats"].max())
        colour = palette[label]
        mean, spread = 100 * group["em_mean"], 100 * group["em_ci"].fillna(0)
        bars = [mean - (mean - spread).clip(lower=0), (mean + spread).clip(upper=100) - mean]  # interval within 0-100
        ax.errorbar(group["task.pairs"], mean, yerr=bars, marker="o", label=f"{label} ({floats:,} floats)",
                    color=colour, capsize=3)
        hit = group[group["collapsed"] > 0]
        if len(hit):
            ax.scatter(hit["task.pairs"], 100 * hit["em_mean"], s=70, facecolors="white", edgecolors=colour,
                       linewidths=1.5, zorder=3)
        for pairs, values, marks in zip(group["task.pairs"], group["em_seeds"], group["collapsed_seeds"]):
            values, marks = json.loads(values), json.loads(marks)
            if len(values) < 2 and not any(marks):
                continue   # one seed: the dot is the mean
            kept = [100 * v for v, m in zip(values, marks) if not m]
            fell = [100 * v for v, m in zip(values, marks) if m]
            ax.scatter([pairs] * len(kept), kept, s=8, color=colour, alpha=0.5)
            ax.scatter([pairs] * len(fell), fell, s=30, marker="x", color=colour, zorder=4)
    if scale == "paper":
        for label, group in paper_table1().groupby("label"):
            ax.plot(group["pairs"], group["em_mean"], ls="--", alpha=0.3, color=palette.get(label, "grey"))
    fewest, most = int(table["seeds"].min()), int(table["seeds"].max())
    seeds = f"{most} seed{'s' if most > 1 else ''}" if fewest == most else f"{fewest}-{most} seeds per method"
    ax.set(xscale="log", xlabel="pairs in the context", ylabel="exact match (%)", ylim=(-2, 102),
           title=f"KV retrieval capacity, {scale} scale ({seeds}; bars: 95% t-interval over seeds)"
                 + (" — dashed: paper" if scale == "paper" else ""))
    pairs = sorted(table["task.pairs"].unique())
    ax.minorticks_off()
    ax.set_xticks(pairs, [str(int(p)) for p in pairs])
    ax.axhline(90, color="grey", lw=0.5, ls=":")
    handles, names = ax.get_legend_handles_labels()
    if table["collapsed"].sum():
        handles += COLLAPSE_HANDLES
        names += [h.get_label() for h in COLLAPSE_HANDLES]
    ax.legend(handles, names, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), title="memory per context")
    return save_figure(fig, out / f"capacity_{scale}.png")


def capacity_vs_memory(frame: pd.DataFrame, scale: str, out: Path) -> Path | None:
    """Capacity (largest pairs with mean exact match >= 90%) versus memory size in floats, every
    method: error bars span the capacity read off the lower and upper ends of the 95% intervals,
    dots are each seed's own capacity, a hollow marker says some run of the point collapsed."""
    subset = _rows(frame, ["capacity", "memsize"], scale)
    if subset.empty:
        return None
    rows = []
    for (label, floats), group in subset.groupby(["label", "memory_floats"]):
        cap = capacity(group)
        if cap.empty:
            continue
        best = cap.loc[cap["capacity"].idxmax()]
        per_seed = [int(capacity(runs)["capacity"].max()) for _, runs in group.groupby("seed")]
        rows.append({"label": label, "floats": floats, "capacity": int(best["capacity"]),
                     "low": int(best["capacity_low"]), "high": int(best["capacity_high"]),
                     "collapsed": int(cap["collapsed"].sum()), "seeds": per_seed})
    points = pd.DataFrame(rows)
    if points.empty:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    markers = "osD^vP*Xh<>"
    colours = sns.color_palette("tab20", points["label"].nunique())
    for index, (label, group) in enumerate(points.groupby("label")):
        group = group.sort_values("floats")
        shift = 0.15 * (index - len(markers) / 2) / len(markers)
        x, y = group["floats"].clip(lower=1), group["capacity"] + shift
        marker, colour = markers[index % len(markers)], colours[index]
        ax.errorbar(x, y, yerr=[group["capacity"] - group["low"], group["high"] - group["capacity"]],
                    marker=marker, label=label, alpha=0.8, color=colour, capsize=3)
        hit = group["collapsed"] > 0
        if hit.any():
            ax.scatter(x[hit], y[hit], s=70, marker=marker, facecolors="white", edgecolors=colour, zorder=3)
        for floats, values in zip(x, group["seeds"]):
            if len(values) > 1:
                ax.scatter([floats] * len(values), [v + shift for v in values], s=8, color=colour, alpha=0.5)
    ax.set(xscale="log", xlabel="memory size per context (floats, log; 0 shown at 1)",
           ylabel="capacity: largest pairs with EM ≥ 90%",
           title=f"Capacity versus memory size, {scale} scale\nbars: capacity at the ends of the 95% intervals; "
                 f"dots: seeds\n(a memory that grows with the context: one point per pairs)")
    handles, names = ax.get_legend_handles_labels()
    if points["collapsed"].sum():
        handles.append(COLLAPSE_HANDLES[1])
        names.append(COLLAPSE_HANDLES[1].get_label())
    ax.legend(handles, names, fontsize=7)
    return save_figure(fig, out / f"capacity_vs_memory_{scale}.png")


def steps_heatmap(frame: pd.DataFrame, scale: str, out: Path) -> Path | None:
    """Figure 4a: exact match over (trained setting, evaluated value of the write axis), the trained
    value boxed."""
    subset = _axis_rows(_rows(frame, ["steps"], scale))
    if subset.empty:
        return None
    grid = subset.groupby(["task.pairs", "label", "axis_trained", "axis_value"])["exact_match"].mean().unstack() * 100
    trained = [t for _, _, t in grid.index]
    grid.index = [f"{int(p)} pairs, {label}" for p, label, _ in grid.index]
    grid.columns = [int(c) if float(c).is_integer() else c for c in grid.columns]
    fig, ax = plt.subplots(figsize=(max(7.0, 2 + 0.7 * grid.shape[1]), 1.5 + 0.5 * grid.shape[0]))
    sns.heatmap(grid, annot=True, fmt=".1f", cmap="viridis", vmin=0, vmax=100, ax=ax, cbar_kws={"label": "EM (%)"})
    for row, value in enumerate(trained):
        if value in grid.columns:
            col = list(grid.columns).index(value)
            ax.add_patch(plt.Rectangle((col, row), 1, 1, fill=False, edgecolor="red", lw=2))
    axis = _axis_name(subset)
    ax.set(xlabel=f"{axis} at evaluation", ylabel="",
           title=f"Exact match (%) with more {axis} at evaluation, same weights\n({scale} scale, mean of "
                 f"{subset['seed'].nunique()} seed(s); red box: the value used in training)")
    return save_figure(fig, out / f"steps_heatmap_{scale}.png")


def em_vs_inner_loss(frame: pd.DataFrame, scale: str, out: Path) -> Path | None:
    """Figure 4b: exact match versus the WRITE loss after the last write step."""
    subset = _rows(frame, ["steps"], scale)
    if subset.empty or "final_inner_loss" not in subset:
        return None
    subset = subset.dropna(subset=["final_inner_loss"])
    if subset.empty:
        return None
    fig, ax = plt.subplots(figsize=(6, 4.5))
    sns.scatterplot(data=subset.assign(trained=subset["label"], pairs=subset["task.pairs"].astype(int).astype(str)),
                    x="final_inner_loss", y=subset["exact_match"] * 100, hue="trained", style="pairs", ax=ax)
    ax.set(xlabel="inner (WRITE) loss after the last step", ylabel="exact match (%)",
           title=f"Exact match versus inner loss ({scale} scale)")
    return save_figure(fig, out / f"em_vs_inner_loss_{scale}.png")


def inner_loss_by_step(frame: pd.DataFrame, scale: str, out: Path) -> Path | None:
    """WRITE loss on key and value tokens after each write step (longest evaluation), per trained setting."""
    subset = _axis_rows(_rows(frame, ["steps"], scale))
    if subset.empty or "inner_loss_key_by_step" not in subset:
        return None
    subset = subset.dropna(subset=["inner_loss_key_by_step"])
    subset = subset[subset["axis_value"] == subset["axis_value"].max()]
    if subset.empty:
        return None
    pairs = sorted(subset["task.pairs"].unique())
    settings = subset.drop_duplicates("label").sort_values("axis_trained")
    colours = dict(zip(settings["label"], sns.color_palette("tab10", len(settings))))
    fig, axes = plt.subplots(1, len(pairs), figsize=(4 * len(pairs) + 1.5, 3.8), squeeze=False, sharey=True)
    handles = {}
    for ax, n in zip(axes[0], pairs):
        for _, row in subset[subset["task.pairs"] == n].iterrows():
            colour = colours[row["label"]]
            for role, style in (("key", "--"), ("value", "-")):
                values = row[f"inner_loss_{role}_by_step"]
                (line,) = ax.plot(range(len(values)), values, ls=style, color=colour)
                handles[f"{row['label']}, {role} tokens"] = line
            ax.axvline(row["axis_trained"], color=colour, lw=0.6, alpha=0.6)
        ax.set(xlabel=f"{_axis_name(subset)} taken", title=f"{int(n)} pairs")
    axes[0][0].set_ylabel("WRITE loss (cross-entropy)")
    fig.legend(handles.values(), handles.keys(), fontsize=7, loc="center right")
    fig.subplots_adjust(right=0.85)
    fig.suptitle(f"Inner loss on key and value tokens per write step ({scale} scale)")
    return save_figure(fig, out / f"inner_loss_by_step_{scale}.png")


FIGURES = (exact_match_vs_pairs, capacity_vs_memory, steps_heatmap, em_vs_inner_loss, inner_loss_by_step)
