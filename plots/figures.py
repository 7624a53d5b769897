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

from harness.paper import paper_fig4a, paper_table1  # noqa: E402
from harness.report import bound_of, capacity, capacity_frame, labels, summarise  # noqa: E402
from plots import of_suites  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

log = logging.getLogger(__name__)


def save_figure(fig, path: Path, right: float = 1.0, dpi: int = 120) -> Path:
    """Lay out (the right margin from `right` on left free, e.g. for a legend), write the PNG and
    a vector copy beside it (SVG, without a date: regenerating changes nothing), and close."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=(0, 0, right, 1))
    fig.savefig(path, dpi=dpi)
    with plt.rc_context({"svg.hashsalt": "harness"}):   # the same figure gives the same file
        fig.savefig(path.with_suffix(".svg"), metadata={"Date": None})
    plt.close(fig)
    log.info("wrote %s (and .svg)", path)
    return path


def _rows(frame: pd.DataFrame, suites: list[str], scale: str) -> pd.DataFrame:
    """The rows of some suites at one scale, each with its method's display label."""
    if frame.empty:
        return frame
    subset = of_suites(frame, *suites, scale=scale)
    return subset.assign(label=labels(subset)) if not subset.empty else subset


def _axis_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of methods that have a write axis, evaluated at an explicit value of it."""
    if frame.empty or "axis" not in frame:
        return frame.iloc[0:0]
    subset = frame[frame["axis"].notna() & (frame["eval_key"] != "default")]
    return subset.assign(write_setting=pd.to_numeric(subset["write_setting"]),
                         trained_setting=pd.to_numeric(subset["trained_setting"]))


def _axis_name(frame: pd.DataFrame) -> str:
    return " / ".join(sorted(frame["axis"].dropna().unique())) or "write steps"


COLLAPSE_HANDLES = [Line2D([], [], ls="", marker="x", color="black", label="seed collapsed in training"),
                    Line2D([], [], ls="", marker="o", mfc="none", color="black", label="a seed of the point collapsed")]


def _family(label: str) -> str:
    """A panel of the capacity figure: the method of a display label and its variant word
    ('gradmem', 'gradmem 1st-order', 'rmt', 'armt', ...)."""
    words = label.split()
    return " ".join(words[:2]) if len(words) > 1 and words[1].endswith("-order") else words[0]


def _draw_capacity_line(ax, group, colour, label, linestyle="-"):
    """One method's mean exact match per pairs with its 95% interval as a band and its seeds as dots
    (x: a seed that collapsed in that stage; a hollow mean: some seed of it did)."""
    group = group.sort_values("task.pairs")
    mean, spread = 100 * group["em_mean"], 100 * group["em_ci"].fillna(0)
    ax.plot(group["task.pairs"], mean, marker="o", ms=3.5, color=colour, ls=linestyle, label=label)
    ax.fill_between(group["task.pairs"], (mean - spread).clip(lower=0), (mean + spread).clip(upper=100),
                    color=colour, alpha=0.15, lw=0)
    hit = group[group["collapsed"] > 0]
    if len(hit):
        ax.scatter(hit["task.pairs"], 100 * hit["em_mean"], s=45, facecolors="white", edgecolors=colour,
                   linewidths=1.2, zorder=3)
    for pairs, values, marks in zip(group["task.pairs"], group["em_seeds"], group["collapsed_seeds"]):
        values, marks = json.loads(values), json.loads(marks)
        if len(values) < 2 and not any(marks):
            continue   # one seed: the dot is the mean
        ax.scatter([pairs] * sum(not m for m in marks), [100 * v for v, m in zip(values, marks) if not m],
                   s=6, color=colour, alpha=0.5)
        ax.scatter([pairs] * sum(marks), [100 * v for v, m in zip(values, marks) if m], s=25, marker="x",
                   color=colour, zorder=4)


def exact_match_vs_pairs(frame: pd.DataFrame, scale: str, out: Path) -> Path | None:
    """Figure 3 as small multiples: exact match versus pairs, one panel per method family (at most
    6 lines a panel), the bounds (`Method.bound`) drawn in every panel; each line the mean with its
    95% interval over seeds (Student t) as a band, every seed a dot."""
    runs = of_suites(frame, "capacity")
    table = capacity_frame(runs) if not runs.empty else runs
    table = table[table["scale"] == scale] if not table.empty else table
    if table.empty:
        return None
    named = runs[runs["scale"] == scale]
    method_of = dict(zip(labels(named), named["method"]))
    bounds = {label: bound_of(method_of.get(label, "")) for label in table["label"].unique()}
    families: dict[str, list[str]] = {}
    for label in sorted(table["label"].unique()):
        if not bounds[label]:
            families.setdefault(_family(label), []).append(label)
    panels = [(name, members[i:i + 6]) for name, members in families.items() for i in range(0, len(members), 6)]
    if not panels:
        panels = [("bounds", [])]
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.3 * rows + 0.6), squeeze=False,
                             sharex=True, sharey=True)
    pairs = sorted(table["task.pairs"].unique())
    for ax, (name, members) in zip(axes.flat, panels):
        for label, kind in bounds.items():
            if kind:
                group = table[table["label"] == label]
                _draw_capacity_line(ax, group, "black" if kind == "upper" else "grey",
                                    f"{label} ({kind} bound)", "-" if kind == "upper" else ":")
        colours = sns.color_palette("tab10", max(len(members), 1))
        for colour, label in zip(colours, members):
            group = table[table["label"] == label]
            _draw_capacity_line(ax, group, colour, f"{label} ({int(group['memory_floats'].max()):,} floats)")
        if scale == "paper":
            for label, group in paper_table1().groupby("label"):
                if label in members:
                    ax.plot(group["pairs"], group["em_mean"], ls="--", alpha=0.4, color="grey")
        ax.set(xscale="log", ylim=(-2, 102), title=name)
        ax.minorticks_off()
        ax.set_xticks(pairs, [str(int(p)) for p in pairs])
        ax.axhline(90, color="grey", lw=0.5, ls=":")
        ax.legend(fontsize=6.5, loc="best")
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("pairs in the context")
    for ax in axes[:, 0]:
        ax.set_ylabel("exact match (%)")
    fewest, most = int(table["seeds"].min()), int(table["seeds"].max())
    seeds = f"{most} seed{'s' if most > 1 else ''}" if fewest == most else f"{fewest}-{most} seeds"
    fig.suptitle(f"KV retrieval capacity, {scale} scale ({seeds}; bands: 95% interval over seeds; "
                 f"x: a seed that collapsed)", fontsize=10)
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
    method_of = dict(zip(subset["label"], subset["method"]))
    sizes = points[[not bound_of(method_of.get(label, "")) for label in points["label"]]]
    if sizes.empty or sizes.groupby("label")["floats"].nunique().max() < 2:
        return None   # no memory method at two sizes: nothing to read off a size axis
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
           title=f"Capacity versus memory size, {scale} scale (bars: at the ends of the 95% intervals)")
    handles, names = ax.get_legend_handles_labels()
    if points["collapsed"].sum():
        handles.append(COLLAPSE_HANDLES[1])
        names.append(COLLAPSE_HANDLES[1].get_label())
    ax.legend(handles, names, fontsize=7)
    return save_figure(fig, out / f"capacity_vs_memory_{scale}.png")


def steps_lines(frame: pd.DataFrame, scale: str, out: Path) -> Path | None:
    """Figure 4a as lines: exact match versus the write-axis value at evaluation (same weights),
    one panel per pairs value, one line per trained setting with its 95% interval over seeds as a
    band and the trained value marked; the paper's Figure 4a in the last panel."""
    subset = _axis_rows(_rows(frame, ["steps"], scale))
    if subset.empty:
        return None
    table = summarise(subset, ["task.pairs", "label", "trained_setting", "write_setting"])
    pairs = sorted(table["task.pairs"].unique())
    fig, axes = plt.subplots(1, len(pairs) + 1, figsize=(3.6 * (len(pairs) + 1), 3.6), squeeze=False, sharey=True)
    settings = sorted(table["trained_setting"].unique())
    colours = dict(zip(settings, sns.color_palette("tab10", len(settings))))
    for ax, n in zip(axes[0], pairs):
        for (label, trained), group in table[table["task.pairs"] == n].groupby(["label", "trained_setting"]):
            group = group.sort_values("write_setting")
            x, mean, spread = group["write_setting"], 100 * group["em_mean"], 100 * group["em_ci"].fillna(0)
            colour = colours[trained]
            ax.plot(x, mean, marker="o", ms=3, color=colour, label=label)
            ax.fill_between(x, (mean - spread).clip(lower=0), (mean + spread).clip(upper=100), color=colour,
                            alpha=0.15, lw=0)
            at = group[group["write_setting"] == trained]
            ax.scatter(at["write_setting"], 100 * at["em_mean"], s=60, facecolors="none", edgecolors=colour, zorder=3)
        ax.set(xscale="symlog", title=f"{int(n)} pairs", xlabel=f"{_axis_name(subset)} at evaluation")
        ticks = sorted(table["write_setting"].unique())
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks], fontsize=7)
        ax.minorticks_off()
        ax.legend(fontsize=7, loc="lower right")
    paper = paper_fig4a()
    paper = paper[paper["k_eval"].str.isdigit()].astype({"k_eval": int})
    ax = axes[0][-1]
    for (n, trained), group in paper.groupby(["pairs", "k_train"]):
        ax.plot(group["k_eval"], group["em"], marker="o", ms=3, ls="--", label=f"{n} pairs, K={trained}")
    ax.set(xscale="symlog", title="the paper, Fig. 4a (4 x 128, N-K2V2-V62)", xlabel="write steps at evaluation")
    ticks = sorted(paper["k_eval"].unique())
    ax.set_xticks(ticks, [str(t) for t in ticks], fontsize=7)
    ax.minorticks_off()
    ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set(ylim=(-2, 102), ylabel="exact match (%)")
    seeds = subset["seed"].nunique()
    fig.suptitle(f"More write steps at evaluation, same weights ({scale} scale, {seeds} seed(s); bands: 95% "
                 f"interval; ring: the value used in training)", fontsize=10)
    return save_figure(fig, out / f"steps_{scale}.png")


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
    subset = subset[subset["write_setting"] == subset["write_setting"].max()]
    if subset.empty:
        return None
    pairs = sorted(subset["task.pairs"].unique())
    settings = subset.drop_duplicates("label").sort_values("trained_setting")
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
            ax.axvline(row["trained_setting"], color=colour, lw=0.6, alpha=0.6)
        ax.set(xlabel=f"{_axis_name(subset)} taken", title=f"{int(n)} pairs")
    axes[0][0].set_ylabel("WRITE loss (cross-entropy)")
    fig.legend(handles.values(), handles.keys(), fontsize=7, loc="center right")
    fig.subplots_adjust(right=0.85)
    fig.suptitle(f"Inner loss on key and value tokens per write step ({scale} scale)")
    return save_figure(fig, out / f"inner_loss_by_step_{scale}.png")


FIGURES = (exact_match_vs_pairs, capacity_vs_memory, steps_lines, em_vs_inner_loss, inner_loss_by_step)
