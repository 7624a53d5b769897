"""Probe: does a method leave the plateau of a suite's first curriculum stage?

Trains one method of a suite (default: RMT x1 of `capacity` at cpu scale) on one curriculum
stage (default: the suite's first; `--stage` sets the stage's task settings) with method /
train / backbone overrides, and prints one JSON line per run: the validation exact match every
evaluation, the written memory's RMS against the token embeddings', and with `--by-query-form`
the best weights' validation exact match per question form (the question with every answer word
blanked: bAbI QA4's 'What is north of the _ ?' against 'What is the _ north of ?').

    python -m bench.probes.probe_plateau --method rmt --set memory_source=residual --seeds 0 1 2
    python -m bench.probes.probe_plateau --method rmt --set reconstruction_weight=1.0 --stage pairs=4 \
        --backbone layers=4 hidden=128 ffn=512   # the paper's backbone shape
    python -m bench.probes.probe_plateau --suite babi --method gradmem --match write_steps=2 \
        --set inner_lr=0.4 --steps 1500      # bAbI QA1, 2-statement stories
"""
from __future__ import annotations

import argparse
import json
import re
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

from harness import registry
from harness.schema import resolve_section
from harness.suite import expand_suite, load_yaml
from harness.contract import Example
from harness.data import collate
from harness.evaluate import evaluate
from harness.builder import build_run, seed_everything
from harness.train import Trainer


def setting(text: str) -> tuple[str, object]:
    """'KEY=VALUE' -> (KEY, VALUE parsed as YAML, `3e-3` a float)."""
    key, value = text.split("=", 1)
    return key, load_yaml(value)


def query_forms(examples: list[Example]) -> dict[str, list[Example]]:
    """One-question examples grouped by the question's form: its words with every word that is
    some question's answer in `examples` blanked ('_')."""
    answers = {w for e in examples for q in e.queries for w in q.target.split()}
    forms = defaultdict(list)
    for e in examples:
        for q in e.queries:
            words = re.findall(r"\w+|[^\w\s]", q.text)
            forms[" ".join("_" if w in answers else w for w in words)].append(Example(e.context, (q,)))
    return dict(sorted(forms.items()))


def em_by_form(method_module, task, examples: list[Example]) -> dict[str, dict]:
    """Validation exact match and question count per question form."""
    return {form: {"exact_match": round(evaluate(method_module, task, group)["default"]["exact_match"], 3),
                   "questions": len(group)}
            for form, group in query_forms(examples).items()}


def probe(args, seed: int) -> dict:
    registry.discover()
    spec = next(s for s in expand_suite(args.suite, args.scale, methods=[args.method])
                if all(text in s.label() + " " + s.task_label() for text in args.match))
    stage = {**(spec.train.get("curriculum") or [{}])[0], **dict(args.stage_set)}
    base = {**spec.method, "reconstruction_weight": 0.0} if "reconstruction_weight" in spec.method else spec.method
    method = {**base, **dict(args.method_set)}   # the plain method unless --set asks for the loss
    spec.method = resolve_section("method", method, "probe method")
    spec.backbone = resolve_section("backbone", {**spec.backbone, **dict(args.backbone_set)}, "probe backbone")
    train = {**spec.train, "curriculum": [stage], "steps": args.steps, "stage_steps": args.steps,
             "advance_em": 1.01, "target_em": 1.01, "patience": None, "eval_every": args.eval_every,
             **dict(args.train_set)}
    spec.train = resolve_section("train", train, "probe train")
    spec.seed = seed
    seed_everything(seed)
    task, method_module = build_run(spec)
    stage_task = task.with_params(**stage)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(method_module, stage_task, spec.typed("train"),
                          spec.typed("eval"), seed, "cpu", Path(tmp) / "m.jsonl", None,
                          progress=False, test_at_stage_end=False)   # the validation curve is the probe
        trainer.stages = [{}]   # the stage task above already carries the probed pairs
        trainer.run()
        curve = [json.loads(line) for line in (Path(tmp) / "m.jsonl").read_text().splitlines()]
    batch = collate(stage_task.examples("valid", 64, seed=0), stage_task, 1)
    method_module.eval()
    with torch.no_grad():
        memory = method_module.write(batch.context_ids, batch.context_mask)
        state = memory.state if isinstance(memory.state, torch.Tensor) else None
        emb_rms = method_module.backbone.embed(batch.context_ids).pow(2).mean().sqrt().item()
    by_form = em_by_form(method_module, stage_task, stage_task.examples("valid", 1000, seed=0)) \
        if args.by_query_form else None
    return {"method": spec.method, "train": {k: spec.train[k] for k in ("lr", "warmup_steps")},
            "backbone": {k: spec.backbone[k] for k in ("layers", "hidden", "heads", "ffn")},
            "stage": stage, "seed": seed,
            "valid_em": [round(r["valid_em"], 3) for r in curve], "loss": [round(r["loss"], 3) for r in curve],
            "best_em": max(r["valid_em"] for r in curve),
            "memory_rms": None if state is None else round(state.pow(2).mean().sqrt().item(), 4),
            "embedding_rms": round(emb_rms, 4), **({"valid_em_by_form": by_form} if by_form else {})}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="capacity")
    parser.add_argument("--scale", default="cpu")
    parser.add_argument("--method", default="rmt")
    parser.add_argument("--set", dest="method_set", nargs="*", default=[], type=setting)
    parser.add_argument("--train", dest="train_set", nargs="*", default=[], type=setting)
    parser.add_argument("--backbone", dest="backbone_set", nargs="*", default=[], type=setting)
    parser.add_argument("--match", nargs="*", default=[], help="texts the probed run's label or task contains, all of them")
    parser.add_argument("--stage", dest="stage_set", nargs="*", default=[], type=setting,
                        help="task settings of the probed stage (default: the suite's first curriculum stage)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--by-query-form", action="store_true",
                        help="also score the best weights on 1,000 validation stories per question form")
    parser.add_argument("--out", help="append one JSON line per run to this file")
    args = parser.parse_args(argv)
    for seed in args.seeds:
        result = probe(args, seed)
        print(json.dumps(result), flush=True)
        if args.out:
            with open(args.out, "a") as handle:
                handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
