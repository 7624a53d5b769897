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

from harness.report import capacity, capacity_frame, method_label, paper_table1  # noqa: E402

log = logging.getLogger(__name__)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    log.info("wrote %s", path)
    return path


def _rows(frame: pd.DataFrame, suites: list[str], scale: str) -> pd.DataFrame:
    """The rows of some suites at one scale."""
    if frame.empty:
        return frame
    return frame[frame["suite"].isin(suites) & (frame["scale"] == scale)]


def exact_match_vs_pairs(frame: pd.DataFrame, scale: str, out: Path) -> Path | None:
    """Figure 3: exact match versus number of pairs, one line per method (mean ± std over seeds,
    each seed a dot)."""
    table = capacity_frame(frame[frame["suite"] == "capacity"]) if not frame.empty else frame
    table = table[table["scale"] == scale] if not table.empty else table
    if table.empty:
        return None
    fig, ax = plt.subplots(figsize=(10, 5))
    palette = dict(zip(sorted(table["label"].unique()), sns.color_palette("tab20", table["label"].nunique())))
    for label, group in table.groupby("label"):
        group = group.sort_values("task.pairs")
        floats = int(group["memory_floats"].max())
        ax.errorbar(group["task.pairs"], 100 * group["em_mean"], yerr=100 * group["em_std"].fillna(0),
                    marker="o", label=f"{label} ({floats:,} floats)", color=palette[label], capsize=3)
        if group["seeds"].max() > 1:  # every seed, not only the mean
            for pairs, values in zip(group["task.pairs"], group["em_seeds"]):
                seeds = json.loads(values)
                ax.scatter([pairs] * len(seeds), [100 * v for v in seeds], s=8, color=palette[label], alpha=0.5)
    if scale == "paper":
        for label, group in paper_table1().groupby("label"):
            ax.plot(group["pairs"], group["em_mean"], ls="--", alpha=0.3, color=palette.get(label, "grey"))
    fewest, most = int(table["seeds"].min()), int(table["seeds"].max())
    seeds = f"{most} seed{'s' if most > 1 else ''}" if fewest == most else f"{fewest}-{most} seeds per method"
    ax.set(xscale="log", xlabel="pairs in the context", ylabel="exact match (%)", ylim=(-2, 102),
           title=f"KV retrieval capacity, {scale} scale ({seeds})"
                 + (" — dashed: paper" if scale == "paper" else ""))
    pairs = sorted(table["task.pairs"].unique())
    ax.minorticks_off()
    ax.set_xticks(pairs, [str(int(p)) for p in pairs])
    ax.axhline(90, color="grey", lw=0.5, ls=":")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), title="memory per context")
    return _save(fig, out / f"capacity_{scale}.png")


def capacity_vs_memory(frame: pd.DataFrame, scale: str, out: Path) -> Path | None:
    """Capacity (largest pairs with exact match >= 90%) versus memory size in floats, every method."""
    subset = _rows(frame, ["capacity", "memsize"], scale)
    if subset.empty:
        return None
    subset = subset.assign(label=subset.apply(method_label, axis=1)
                           + subset.get("method.memory_size", pd.Series(index=subset.index, dtype=float))
                           .map(lambda m: "" if pd.isna(m) else f" m={int(m)}"))
    rows = []
    for (label, floats), group in subset.groupby(["label", "memory_floats"]):
        cap = capacity(group)
        if not cap.empty:
            rows.append({"label": label.split(" m=")[0], "floats": floats, "capacity": int(cap["capacity"].max())})
    points = pd.DataFrame(rows)
    if points.empty:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    markers = "osD^vP*Xh<>"
    colours = sns.color_palette("tab20", points["label"].nunique())
    for index, (label, group) in enumerate(points.groupby("label")):
        group = group.sort_values("floats")
        ax.plot(group["floats"].clip(lower=1), group["capacity"] + 0.15 * (index - len(markers) / 2) / len(markers),
                marker=markers[index % len(markers)], label=label, alpha=0.8, color=colours[index])
    ax.set(xscale="log", xlabel="memory size per context (floats, log; 0 shown at 1)",
           ylabel="capacity: largest pairs with EM ≥ 90%",
           title=f"Capacity versus memory size, {scale} scale (full context: its KV-cache at each pairs)")
    ax.legend(fontsize=7)
    return _save(fig, out / f"capacity_vs_memory_{scale}.png")


def steps_heatmap(frame: pd.DataFrame, scale: str, out: Path) -> Path | None:
    """Figure 4a: exact match over (trained setting, evaluation write steps), training K boxed."""
    subset = _rows(frame, ["steps"], scale)
    if subset.empty:
        return None
    subset = subset[subset["eval_write_steps"] != "default"].copy()
    subset["k_eval"] = subset["eval_write_steps"].astype(int)
    subset["setting"] = [f"{int(p)} pairs, K_train={int(k)}" for p, k in zip(subset["task.pairs"], subset["method.write_steps"])]
    grid = subset.groupby(["setting", "k_eval"])["exact_match"].mean().unstack() * 100
    fig, ax = plt.subplots(figsize=(max(7.0, 2 + 0.7 * grid.shape[1]), 1.5 + 0.5 * grid.shape[0]))
    sns.heatmap(grid, annot=True, fmt=".1f", cmap="viridis", vmin=0, vmax=100, ax=ax, cbar_kws={"label": "EM (%)"})
    for row, setting in enumerate(grid.index):
        trained = int(setting.split("K_train=")[1])
        if trained in grid.columns:
            col = list(grid.columns).index(trained)
            ax.add_patch(plt.Rectangle((col, row), 1, 1, fill=False, edgecolor="red", lw=2))
    ax.set(xlabel="write steps at evaluation", ylabel="",
           title=f"Exact match (%) with more write steps at evaluation, same weights\n({scale} scale, mean of "
                 f"{subset['seed'].nunique()} seed(s); red box: K used in training)")
    return _save(fig, out / f"steps_heatmap_{scale}.png")


def em_vs_inner_loss(frame: pd.DataFrame, scale: str, out: Path) -> Path | None:
    """Figure 4b: exact match versus the WRITE loss after the last write step."""
    subset = _rows(frame, ["steps"], scale)
    if subset.empty or "final_inner_loss" not in subset:
        return None
    subset = subset.dropna(subset=["final_inner_loss"])
    fig, ax = plt.subplots(figsize=(6, 4.5))
    sns.scatterplot(data=subset.assign(K_train=subset["method.write_steps"].astype(int).astype(str),
                                       pairs=subset["task.pairs"].astype(int).astype(str)),
                    x="final_inner_loss", y=subset["exact_match"] * 100, hue="K_train", style="pairs", ax=ax)
    ax.set(xlabel="inner (WRITE) loss after the last step", ylabel="exact match (%)",
           title=f"Exact match versus inner loss ({scale} scale)")
    return _save(fig, out / f"em_vs_inner_loss_{scale}.png")


def inner_loss_by_step(frame: pd.DataFrame, scale: str, out: Path) -> Path | None:
    """WRITE loss on key and value tokens after each write step (longest evaluation), per K_train."""
    subset = _rows(frame, ["steps"], scale)
    if subset.empty or "inner_loss_key_by_step" not in subset:
        return None
    subset = subset.dropna(subset=["inner_loss_key_by_step"])
    subset = subset[subset["eval_write_steps"] != "default"]
    subset = subset[subset["eval_write_steps"].astype(int) == subset["eval_write_steps"].astype(int).max()]
    pairs = sorted(subset["task.pairs"].unique())
    trained = sorted(subset["method.write_steps"].astype(int).unique())
    colours = dict(zip(trained, sns.color_palette("tab10", len(trained))))
    fig, axes = plt.subplots(1, len(pairs), figsize=(4 * len(pairs) + 1.5, 3.8), squeeze=False, sharey=True)
    handles = {}
    for ax, n in zip(axes[0], pairs):
        for _, row in subset[subset["task.pairs"] == n].iterrows():
            k_train = int(row["method.write_steps"])
            for role, style in (("key", "--"), ("value", "-")):
                values = row[f"inner_loss_{role}_by_step"]
                (line,) = ax.plot(range(len(values)), values, ls=style, color=colours[k_train])
                handles[f"K_train={k_train}, {role} tokens"] = line
            ax.axvline(k_train, color=colours[k_train], lw=0.6, alpha=0.6)
        ax.set(xlabel="write step", title=f"{int(n)} pairs")
    axes[0][0].set_ylabel("WRITE loss (cross-entropy)")
    fig.legend(handles.values(), handles.keys(), fontsize=7, loc="center right")
    fig.subplots_adjust(right=0.85)
    fig.suptitle(f"Inner loss on key and value tokens per write step ({scale} scale)")
    return _save(fig, out / f"inner_loss_by_step_{scale}.png")


FIGURES = (exact_match_vs_pairs, capacity_vs_memory, steps_heatmap, em_vs_inner_loss, inner_loss_by_step)
