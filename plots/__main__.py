"""Rebuild every figure and table from results/ alone: `python -m plots`."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from harness import store
from harness.paper import paper_fig4a_markdown, paper_table1_markdown, paper_table2_markdown
from harness.report import steps_markdown, table1_markdown, table2_markdown, tuning_markdown
from plots import of_suites
from plots.figures import FIGURES


def scales_of(frame, suites: set) -> list:
    """The scales at which any of `suites` has results (a table section for each)."""
    if frame.empty:
        return []
    return sorted(frame.loc[frame["suite"].isin(suites), "scale"].unique())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plots", description=__doc__)
    parser.add_argument("--results", default="results")
    parser.add_argument("--out", default="plots")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = Path(args.results)
    if not results.is_dir():
        print(f"error: --results {results} is not a folder of results; nothing written", file=sys.stderr)
        return 2
    frame = store.load(results)
    if frame.empty and not any(store.summaries(results)):   # no training run, no latency cell
        print(f"error: no run summaries under {results}; nothing written (tables and figures are kept as they "
              f"are)", file=sys.stderr)
        return 2
    if not frame.empty:
        logging.info("found %d runs under %s: %s", frame["run_id"].nunique(), results,
                     ", ".join(f"{suite} {scale}" for suite, scale in
                               sorted(set(zip(frame["suite"], frame["scale"])))))
    out = Path(args.out)
    scales = sorted(frame["scale"].unique()) if not frame.empty else []
    made = []
    for scale in scales:
        for figure in FIGURES:
            path = figure(frame, scale, out)
            if path:
                made.append(path)
    tables = ["# Table 1: KV retrieval exact match (%): mean ± 95% interval over seeds (paper: mean ± std)\n"]
    for scale in scales_of(frame, {"capacity"}):
        tables += [f"\n## This harness, {scale} scale\n\n", table1_markdown(of_suites(frame, "capacity"), scale)]
    tables += ["\n## The paper (arXiv 2603.13875), Table 1 (paper scale: N{n}-K2V2-V62, 4 x 128, 8 memory vectors; mean ± std over 3 runs)\n\n",
               paper_table1_markdown()]
    out.mkdir(parents=True, exist_ok=True)
    (out / "table1_kv.md").write_text("".join(tables))
    nlp = ["# Table 2: bAbI QA1-QA5 and Short SQuAD, exact match (%): mean ± 95% interval over seeds (paper: mean ± std)\n"]
    for scale in scales_of(frame, {"babi", "squad"}):
        nlp += [f"\n## This harness, {scale} scale (from-scratch backbone, generated bAbI)\n\n", table2_markdown(of_suites(frame, "babi", "squad"), scale)]
    nlp += ["\n## The paper (arXiv 2603.13875), Table 2 (pretrained backbones, bAbI release data; mean ± std)\n\n",
            paper_table2_markdown()]
    (out / "table2_nlp.md").write_text("".join(nlp))
    steps = ["# Figure 4a as a table: exact match (%) with more write steps at evaluation, same weights\n"]
    for scale in scales_of(frame, {"steps"}):
        steps += [f"\n## This harness, {scale} scale (`steps` suite)\n\n", steps_markdown(of_suites(frame, "steps"), scale)]
    steps += ["\n## The paper (arXiv 2603.13875), Figure 4(a) (N{n}-K2V2-V62, 4 x 128, 8 memory vectors; read off "
              "the figure)\n\n", paper_fig4a_markdown()]
    (out / "steps_kv.md").write_text("".join(steps))
    if not frame.empty and "tuning" in frame:
        tuned = frame[frame["tuning"].notna()]
        for suite, scale in sorted(set(zip(tuned["suite"], tuned["scale"]))):
            path = out / f"tuning_{suite}_{scale}.md"
            path.write_text(f"# Tuning grid, {suite} suite, {scale} scale: validation exact match (%)\n\n"
                            + tuning_markdown(frame, suite, scale))
            logging.info("wrote %s", path)
    from plots.latency import make_all as latency_figures   # latency suites: their own cells and R
    made += [path for path in latency_figures(args.results, out) if path.suffix == ".png"]
    logging.info("wrote %d figures and %s", len(made), out / "table1_kv.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
