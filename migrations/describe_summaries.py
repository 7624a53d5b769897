"""One-off migration: record each method's self-description (`harness.describe.describe_spec`) in
summaries written before the runner did, and rename their `write_passes` entry (the old name of
`write_compute`): `python -m migrations.describe_summaries [RESULTS] [--refresh]`."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from harness import registry, store
from harness.describe import describe_spec

log = logging.getLogger(__name__)


def describe_summaries(results: Path | str = "results", refresh: bool = False) -> list[Path]:
    """Write summary["describe"] into every summary under `results` that lacks it (every one whose
    description differs, with `refresh`); atomic writes. Returns the summaries changed."""
    changed = []
    for path, summary in store.summaries(results):
        renamed = "write_passes" in summary
        if renamed:
            summary["write_compute"] = summary.pop("write_passes")
        keep = "describe" in summary and not refresh
        description = summary["describe"] if keep else describe_spec(summary["spec"]["method"])
        if summary.get("describe") == description and not renamed:
            continue
        summary["describe"] = description
        store.write_json(path, summary)
        changed.append(path)
    return changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m migrations.describe_summaries", description=__doc__)
    parser.add_argument("results", nargs="?", default="results")
    parser.add_argument("--refresh", action="store_true", help="recompute descriptions already recorded")
    parser.add_argument("--plugin", action="append", default=[], help="module registering outside methods")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for plugin in args.plugin:
        registry.load_plugin(plugin)
    changed = describe_summaries(args.results, args.refresh)
    log.info("described %d summaries under %s", len(changed), args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
