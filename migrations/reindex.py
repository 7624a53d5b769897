"""One-off migration: re-derive every run's id from its config.yaml with the current code (legacy
keys renamed, `harness.schema.LEGACY_KEYS`; new options at their defaults) and rename its folder
and checkpoints: `python -m migrations.reindex [RESULTS] [--cache DIR]`."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml

from harness.schema import resolve_recorded
from harness.store import write_json, write_yaml


def reindex(results: Path | str = "results", cache: Path | str | None = None,
            suites: list[str] | None = None) -> list[tuple[str, str]]:
    """Re-derive every run's id from its config.yaml with the current code (legacy keys renamed,
    `LEGACY_KEYS`; new options get their defaults) and rename its folder and checkpoints,
    rewriting its config.yaml and its summary's spec; a finished run wins over an unfinished one
    with the same id. `suites`: only these folders of `results` (None: all). A run whose id is
    unchanged is left untouched. Returns the (old, new) ids that changed."""
    changed = []
    for config in sorted(Path(results).glob("*/*/config.yaml")):
        folder = config.parent
        if suites is not None and folder.parent.name not in suites:
            continue
        data = yaml.safe_load(config.read_text())
        if "kind" in data:   # a latency cell: its id hashes the cell itself
            continue
        spec = resolve_recorded(data)
        if spec.run_id == folder.name:
            continue
        target = folder.parent / spec.run_id
        if target.exists():
            if (target / "summary.json").exists() or not (folder / "summary.json").exists():
                shutil.rmtree(folder)
                continue
            shutil.rmtree(target)
        folder.rename(target)
        write_yaml(target / "config.yaml", spec.to_dict())
        summary_path = target / "summary.json"
        if summary_path.exists():
            summary = json.loads(summary_path.read_text())
            summary.update(run_id=spec.run_id, spec=spec.to_dict())
            write_json(summary_path, summary)
        if cache is not None and (Path(cache) / "checkpoints" / folder.name).exists():
            (Path(cache) / "checkpoints" / folder.name).rename(Path(cache) / "checkpoints" / spec.run_id)
        changed.append((folder.name, spec.run_id))
    return changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m migrations.reindex", description=__doc__)
    parser.add_argument("results", nargs="?", default="results")
    parser.add_argument("--cache", default=".cache")
    args = parser.parse_args(argv)
    for old, new in reindex(args.results, args.cache):
        print(f"{old} -> {new}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
