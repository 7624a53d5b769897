"""Refresh the generated tables of the READMEs from results/ alone: `python -m plots.readme [FILE ...]`.

With no FILE it refreshes README.md and every results/*/README.md that has generated blocks (the
suite pages); with FILEs, just those.

A generated block is the text between a line `<!-- generated: NAME ARGS -->` and the next line
`<!-- end generated -->`; NAME is one of BLOCKS and ARGS its arguments, e.g.
`<!-- generated: table1 cpu -->` (capacity table, cpu scale) or
`<!-- generated: tuning capacity cpu -->`. Everything outside the blocks is left as written.
"""
from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

import pandas as pd

from harness import store
from harness.errors import HarnessError
from plots import of_suites
from plots.claims import claims_markdown
from harness.report import (cost_markdown, memsize_markdown, sized_labels, steps_markdown, table1_beside_paper_markdown, table1_markdown,
                            table2_markdown, tuning_markdown)

def complete_rows(frame: pd.DataFrame, scale: str) -> pd.DataFrame:
    """The runs at `scale` of the labels that have as many seeds as the best-covered label (the
    README's headline leaves out single-seed ablations and rows still training)."""
    runs = frame[frame["scale"] == scale] if not frame.empty else frame
    if runs.empty:
        return runs
    names = sized_labels(runs)
    seeds = runs.groupby(names)["seed"].nunique()
    return runs[names.isin(seeds[seeds == seeds.max()].index)]


BLOCKS = {
    "table1": (lambda f, scale: table1_markdown(of_suites(f, "capacity"), scale), "SCALE"),  # exact match per method, pairs
    "table1_complete": (lambda f, scale: table1_markdown(complete_rows(of_suites(f, "capacity"), scale), scale),
                        "SCALE"),                   # the same, rows with every seed only
    "table1_paper": (lambda f, scale: table1_beside_paper_markdown(of_suites(f, "capacity"), scale),
                     "SCALE"),                      # the same with the paper's rows under it
    "table2": (lambda f, scale: table2_markdown(of_suites(f, "babi", "squad"), scale), "SCALE"),  # bAbI / SQuAD
    "steps": (lambda f, scale: steps_markdown(of_suites(f, "steps"), scale), "SCALE"),  # write steps at evaluation
    "memsize": (lambda f, scale: memsize_markdown(of_suites(f, "capacity", "memsize"), scale),
                "SCALE"),                           # capacity + memsize suites, per memory size
    "tuning": (tuning_markdown, "SUITE SCALE"),     # tuning grid of a suite
    "costs": (lambda f, suite, scale: cost_markdown(of_suites(f, suite), scale), "SUITE SCALE"),  # time to train
    "claims": (claims_markdown, "SCALE..."),        # the paper's claims, a verdict per scale
}
BLOCK = re.compile(r"^<!-- generated: (?P<spec>[^>]*?) -->\n(?P<body>.*?)^<!-- end generated -->$",
                   re.MULTILINE | re.DOTALL)


def render(spec: str, frame: pd.DataFrame) -> str:
    """The Markdown of one block, e.g. spec 'table1 cpu'."""
    name, *args = spec.split()
    if name not in BLOCKS:
        raise HarnessError(f"unknown generated block {name!r}; valid: {', '.join(BLOCKS)}")
    function, usage = BLOCKS[name]
    varargs = usage.endswith("...")
    if (len(args) < 1) if varargs else (len(args) != len(usage.split())):
        raise HarnessError(f"generated block {spec!r} needs arguments {usage}")
    return function(frame, *args)


def refresh(text: str, frame: pd.DataFrame) -> str:
    """`text` with every generated block rebuilt from `frame`."""
    def replace(match: re.Match) -> str:
        body = render(match["spec"], frame).rstrip("\n")
        return f"<!-- generated: {match['spec']} -->\n{body}\n<!-- end generated -->"
    return BLOCK.sub(replace, text)


def default_pages(results: Path | str = "results") -> list[Path]:
    """README.md and every `<results>/*/README.md` that holds a generated block."""
    pages = [Path("README.md")]
    for page in sorted(Path(results).glob("*/README.md")):
        if BLOCK.search(page.read_text()):
            pages.append(page)
    return pages


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m plots.readme", description=__doc__)
    parser.add_argument("readme", nargs="*", help="files to refresh (default: README.md and the suite pages "
                                                  "results/*/README.md that have generated blocks)")
    parser.add_argument("--results", default="results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths = [Path(p) for p in args.readme] or default_pages(args.results)
    texts = {path: path.read_text() for path in paths}
    frame = store.load(args.results)
    refreshed = {path: refresh(text, frame) for path, text in texts.items()}   # every block renders first:
    for path, text in refreshed.items():                                     # an unknown one writes nothing
        if text != texts[path]:
            path.write_text(text)
        logging.info("refreshed %d generated blocks in %s", len(BLOCK.findall(texts[path])), path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
