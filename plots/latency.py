"""Latency figures and tables from `results/<suite>/` alone (the `latency` suite, issue #13):

- `latency_<scale>_<device>_<family>.png`: WRITE + N x READ against N, one panel per batch size and
  context length, one line per method and write setting of the results (the paper's Fig. 7), the
  measured break-even with the reference method marked;
- `latency_breakeven_<scale>_<device>_<family>.png`: break-even N against context length, measured
  (solid) and predicted by the paper's cost model with the measured R (dashed) (the paper's Fig. 6);
- `latency_<scale>.md`: WRITE, READ, memory, peak memory, break-even (measured, predicted) and
  totals at a few read counts per cell, and R per backbone.

Every method and label comes from the results; nothing here names a method.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from plots.latency_costs import break_even_table, load, with_predictions  # noqa: E402
from plots.figures import save_figure  # noqa: E402

log = logging.getLogger(__name__)
READS = np.unique(np.round(np.logspace(0, 12, 97, base=2)).astype(int))   # 1 .. 4096 reads
TOTALS_AT = (1, 64, 1024)   # read counts whose WRITE + N x READ the table lists


def cost_frame(results: Path | str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(timing cells with measured break-even, R and predicted break-even; R measurements)."""
    timings, ratios = load(results)
    if timings.empty:
        return timings, ratios
    return with_predictions(break_even_table(timings), ratios), ratios


def _palette(labels) -> dict:
    names = sorted(set(labels))
    return dict(zip(names, sns.color_palette("tab10" if len(names) <= 10 else "tab20", len(names))))


def _legend(fig, axes) -> None:
    """One legend for all panels, each label once, sorted."""
    entries = {}
    for ax in np.ravel(axes):
        for handle, name in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(name, handle)
    names = sorted(entries)
    fig.legend([entries[n] for n in names], names, fontsize=8, loc="center right")


def _title(rows: pd.DataFrame) -> str:
    first = rows.iloc[0]
    threads = f", {int(first['threads'])} thread(s)" if first["device"] == "cpu" and pd.notna(first["threads"]) else ""
    gpu = f" ({first['gpu']})" if first["device"] == "cuda" and isinstance(first["gpu"], str) else ""
    return (f"{first['suite']} {first['scale']} scale on {first['device']}{gpu}{threads}, backbones '{first['family']}' "
            f"({', '.join(sorted(rows['arch'].unique()))}); query {int(first['query_tokens'])} tokens, "
            f"READ decodes {int(first['target_tokens'])} target tokens")


def write_plus_reads(rows: pd.DataFrame, out: Path) -> Path | None:
    """Fig. 7 layout for one (suite, scale, device, family): WRITE + N READ against N."""
    if rows.empty:
        return None
    contexts, batches = sorted(rows["context_tokens"].unique()), sorted(rows["batch_size"].unique())
    palette = _palette(rows["label"])
    fig, axes = plt.subplots(len(batches), len(contexts), figsize=(4.2 * len(contexts) + 2.5, 3.4 * len(batches)),
                             squeeze=False, sharex=True)
    for i, batch in enumerate(batches):
        for j, context in enumerate(contexts):
            ax = axes[i][j]
            cell = rows[(rows["batch_size"] == batch) & (rows["context_tokens"] == context)]
            for _, row in cell.sort_values("label").iterrows():
                total = row["write"] + READS * row["read"]
                ax.plot(READS, total, color=palette[row["label"]], label=row["label"], lw=1.4)
                n = row["break_even"]
                if n is not None and not pd.isna(n) and row["method"] != row["reference"] and n <= READS[-1]:
                    ax.scatter([n], [row["write"] + n * row["read"]], color=palette[row["label"]], s=18, zorder=3)
            ax.set(xscale="log", yscale="log", title=f"context {context} tokens, batch {batch}")
            ax.set_xscale("log", base=2)
            if i == len(batches) - 1:
                ax.set_xlabel("reads per context N")
            if j == 0:
                ax.set_ylabel("WRITE + N x READ (s)")
    _legend(fig, axes)
    fig.suptitle(_title(rows) + "\ndots: where each method breaks even with the reference "
                 f"({', '.join(sorted(rows['reference'].dropna().unique()))})", fontsize=9)
    first = rows.iloc[0]
    name = f"{first['suite']}_{first['scale']}_{first['device']}_{first['family']}.png"
    return save_figure(fig, out / name, right=0.84, dpi=110)


def break_even_figure(rows: pd.DataFrame, out: Path) -> Path | None:
    """Fig. 6 for one (suite, scale, device, family): break-even N against context length, per batch
    size; measured (solid; 'x' at the top: never within reach) and the cost model's (dashed)."""
    rows = rows[(rows["method"] != rows["reference"]) & rows["reference_found"].astype(bool)]
    if rows.empty:
        return None
    batches = sorted(rows["batch_size"].unique())
    palette = _palette(rows["label"])
    finite = pd.to_numeric(pd.concat([rows["break_even"], rows["predicted"]]), errors="coerce").dropna()
    ceiling = 2 ** math.ceil(math.log2(max(2.0, finite.max() if len(finite) else 2.0) * 2))
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches) + 2.5, 4.5), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        subset = rows[rows["batch_size"] == batch]
        for label, group in subset.groupby("label"):
            group = group.sort_values("context_tokens")
            measured = pd.to_numeric(group["break_even"], errors="coerce")
            colour = palette[label]
            ax.plot(group["context_tokens"], measured, marker="o", color=colour, label=label)
            never = group[measured.isna()]
            if len(never):   # spread the 'never' marks of different methods a little apart
                shift = 1 + 0.04 * (sorted(palette).index(label) - len(palette) / 2)
                ax.scatter(never["context_tokens"] * shift, [ceiling] * len(never), marker="x", color=colour, s=40)
            predicted = pd.to_numeric(group["predicted"], errors="coerce")
            if predicted.notna().any():
                ax.plot(group["context_tokens"], predicted, ls="--", color=colour,
                        label=f"{label}: cost model (measured R)")
        ax.axhline(ceiling, color="grey", lw=0.5, ls=":")
        ax.set(xscale="log", yscale="log", xlabel="context tokens", ylabel="break-even reads N",
               title=f"batch {batch} (x on the dotted line: never breaks even)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        contexts = sorted(subset["context_tokens"].unique())
        ax.set_xticks(contexts, [str(c) for c in contexts])
        ax.minorticks_off()
    _legend(fig, axes)
    fig.suptitle(_title(rows) + f"\nbreak-even against {', '.join(sorted(rows['reference'].dropna().unique()))}: "
                 "the fewest reads from which WRITE + N x READ is no slower", fontsize=9)
    first = rows.iloc[0]
    name = f"{first['suite']}_breakeven_{first['scale']}_{first['device']}_{first['family']}.png"
    return save_figure(fig, out / name, right=0.8, dpi=110)


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:,.1f}" if seconds < 10 else f"{1000 * seconds:,.0f}"


def _spread(row, part: str) -> str:
    return f"{_ms(row[f'{part}_median'])} [{_ms(row[f'{part}_q25'])}-{_ms(row[f'{part}_q75'])}]"


def _mib(value) -> str:
    if value is None or pd.isna(value):
        return "n/a"
    mib = value / 2**20
    return f"{mib:,.1f}" if mib >= 10 else f"{mib:.2f}"


def _reads(value, found: bool = True) -> str:
    if not found:
        return "n/a (no reference cell)"
    return "never" if value is None or pd.isna(value) else f"{int(value):,}"


def cells_markdown(rows: pd.DataFrame) -> str:
    """One table per (device, family, batch size): every method and setting per context length."""
    parts = []
    for (device, family, batch), group in rows.groupby(["device", "family", "batch_size"]):
        first = group.iloc[0]
        reference = group[group["method"] == first["reference"]]
        ref_totals = {(c, n): r["write"] + n * r["read"] for c, r in zip(reference["context_tokens"],
                                                                         [r for _, r in reference.iterrows()])
                      for n in TOTALS_AT}
        parts.append(f"\n### {device}, backbones '{family}' ({', '.join(sorted(group['arch'].unique()))}), batch {batch}\n\n"
                     f"WRITE: one batch of {batch} contexts; READ: one query per context, {int(first['target_tokens'])} "
                     f"target tokens decoded greedily; ms, median [quartiles] of the repeats. Break-even: reads per "
                     f"context from which WRITE + N x READ is no slower than {first['reference']}'s; predicted: the "
                     f"paper's cost model with the measured R. Total: WRITE + N x READ as a multiple of "
                     f"{first['reference']}'s.\n\n")
        header = ["context", "method", "arch", "memory floats", "WRITE ms", "READ ms", "peak MiB write / read",
                  "break-even N", "predicted N (R)"] + [f"total N={n} (x ref)" for n in TOTALS_AT]
        parts.append("| " + " | ".join(header) + " |\n|" + "|".join(["--"] * len(header)) + "|\n")
        for _, row in group.sort_values(["context_tokens", "label"]).iterrows():
            predicted = "" if row["predicted"] is None or pd.isna(row["predicted"]) else \
                f"{_reads(row['predicted'])} ({row['ratio']:.2f})"
            totals = []
            for n in TOTALS_AT:
                ref = ref_totals.get((row["context_tokens"], n))
                total = row["write"] + n * row["read"]
                totals.append(f"{total:.3g} s" + (f" ({total / ref:.2f})" if ref else ""))
            parts.append("| " + " | ".join([
                str(int(row["context_tokens"])), row["label"], row["arch"], f"{int(row['memory_floats']):,}",
                _spread(row, "write"), _spread(row, "read"),
                f"{_mib(row['peak_write_bytes'])} / {_mib(row['peak_read_bytes'])}",
                _reads(row["break_even"], row["reference_found"]) if row["method"] != row["reference"] else "(reference)",
                predicted,
                *totals]) + " |\n")
    return "".join(parts)


def ratios_markdown(ratios: pd.DataFrame) -> str:
    """R per backbone, context length, batch size and device."""
    if ratios.empty:
        return "_no R measurements_\n"
    lines = ["| device | backbones | arch | batch | context | memory vectors | forward ms | gradient step ms | R |",
             "|--|--|--|--|--|--|--|--|--|"]
    for _, r in ratios.sort_values(["device", "family", "batch_size", "context_tokens"]).iterrows():
        lines.append(f"| {r['device']} | {r['family']} | {r['arch']} | {int(r['batch_size'])} | {int(r['context_tokens'])} "
                     f"| {int(r['memory_size'])} | {_ms(r['forward'])} | {_ms(r['gradient_step'])} | {r['ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def markdown(rows: pd.DataFrame, ratios: pd.DataFrame, suite: str, scale: str) -> str:
    """The latency table of one suite at one scale."""
    ratio_rows = ratios[(ratios["suite"] == suite) & (ratios["scale"] == scale)] if not ratios.empty else ratios
    return (f"# Latency ({suite} suite, {scale} scale): WRITE once, READ N times\n\n"
            "## R: one gradient write step (forward over [M; C] + gradient of the next-token loss with respect to M) "
            "over one forward over the same tokens\n\n" + ratios_markdown(ratio_rows)
            + "\n## Per cell\n" + cells_markdown(rows))


def make_all(results: Path | str, out: Path | str) -> list[Path]:
    """Every latency figure and table under `results`, into `out`."""
    rows, ratios = cost_frame(results)
    if rows.empty:
        return []
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    made = []
    for _, group in rows.groupby(["suite", "scale", "device", "family"]):
        for figure in (write_plus_reads, break_even_figure):
            path = figure(group, out)
            if path:
                made.append(path)
    for (suite, scale), group in rows.groupby(["suite", "scale"]):
        path = out / f"{suite}_{scale}.md"
        path.write_text(markdown(group, ratios, suite, scale))
        log.info("wrote %s", path)
        made.append(path)
    return made
