"""bf16 against fp32 for every method: the smoke suite's runs trained a few hundred steps in each
precision from the same seed, their final training loss and validation exact match side by side.
A method whose bf16 run ends far from its fp32 one (or diverges) should not be run in bf16.

    python -m bench.precision_check                    # CPU: bf16 autocast is slow there, exact enough to compare
    python -m bench.precision_check --device cuda --steps 300

Writes results/bench/precision_<device>.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch


def train(spec, device: str, precision: str, steps: int) -> dict:
    """Final mean training loss (last evaluation interval) and validation EM of `spec` in `precision`."""
    from harness.builder import build_run, seed_everything
    from harness.schema import typed_section
    from harness.store import read_jsonl
    from harness.train import Trainer
    seed_everything(spec.seed)
    task, method = build_run(spec)
    method.to(device)
    config = {**spec.train, "precision": precision, "steps": steps, "stage_steps": None, "curriculum": [],
              "patience": None, "target_em": 1.0, "eval_every": max(steps // 4, 1), "tune": None}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(method, task, typed_section("train", config), spec.typed("eval"),
                          spec.seed, device, Path(tmp) / "metrics.jsonl", None, progress=False,
                          test_at_stage_end=False)
        result = trainer.run()
        curve = read_jsonl(Path(tmp) / "metrics.jsonl")
    last = curve[-1] if curve else {}
    return {"status": result["status"], "loss": last.get("loss"), "valid_em": last.get("valid_em")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.precision_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="results/bench")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from harness import registry
    from harness.suite import expand_suite
    registry.discover()
    rows = []
    for spec in expand_suite("smoke", "smoke"):
        fp32, bf16 = (train(spec, args.device, p, args.steps) for p in ("fp32", "bf16"))
        row = {"run": spec.label(), "fp32": fp32, "bf16": bf16}
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"precision_{args.device}.json").write_text(json.dumps({"device": args.device, "steps": args.steps,
                                                                   "rows": rows}, indent=2) + "\n")
    print(f"\n{'run':<58} {'fp32 loss':>9} {'bf16 loss':>9} {'fp32 EM':>8} {'bf16 EM':>8}")
    for row in rows:
        a, b = row["fp32"], row["bf16"]
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in (a["loss"], b["loss"], a["valid_em"],
                                                                           b["valid_em"])]
        print(f"{row['run'][:58]:<58} {cells[0]:>9} {cells[1]:>9} {cells[2]:>8} {cells[3]:>8}"
              + ("" if a["status"] == b["status"] else f"  ({a['status']} / {b['status']})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
