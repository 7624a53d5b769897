"""Where a trained bAbI QA2 model errs: test exact match per kind of question.

Loads a run's best weights of a stage (`.cache/checkpoints/<run id>/best_stage<N>.pt`) and
scores generated QA2 stories of the run's final task, question by question, grouped by what the
answer needs: the object still held (and how often its holder moved after taking it), or
dropped (and whether its holder moved on after the drop), and whether it changed hands.

    python -m bench.babi_errors results/babi/5838de9b963c --stage 4 --stories 2000
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch
import yaml

from harness.contract import Example
from harness.evaluate import evaluate
from harness.runner import build_run
from harness.schema import RunSpec
from tasks.babi import DROP, GET, MOVE


def _verb(line: str, verbs) -> bool:
    return any(f" {verb} " in f" {line} " for verb in verbs)


def question_kind(story: str, obj: str) -> str:
    """What answering 'Where is the <obj>?' needs on this story: the object's last holder, held
    or dropped, and the holder's moves after it took (or dropped) the object."""
    lines = [line.strip() + "." for line in story.split(".") if line.strip()]
    mentions = [i for i, line in enumerate(lines) if f" the {obj}" in line]
    takers = {lines[i].split()[0] for i in mentions if _verb(lines[i], GET)}
    last = mentions[-1]
    holder = lines[last].split()[0]
    moves_after = sum(1 for line in lines[last + 1:] if line.split()[0] == holder and _verb(line, MOVE))
    hands = "one holder" if len(takers) == 1 else "changed hands"
    if _verb(lines[last], DROP):
        return f"dropped, holder {'moved on' if moves_after else 'stayed'} ({hands})"
    return f"held, holder moved {min(moves_after, 2)}{'+' if moves_after >= 2 else ''} times after ({hands})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run's results folder (config.yaml)")
    parser.add_argument("--stage", type=int, required=True, help="the curriculum stage whose best weights to load")
    parser.add_argument("--checkpoints", default=".cache/checkpoints")
    parser.add_argument("--stories", type=int, default=2000)
    args = parser.parse_args(argv)
    spec = RunSpec.from_dict(yaml.safe_load(open(Path(args.run_dir) / "config.yaml")))
    task, method = build_run(spec)
    state = torch.load(Path(args.checkpoints) / spec.run_id / f"best_stage{args.stage}.pt", map_location="cpu")
    method.load_state_dict(state)
    method.eval()
    groups = defaultdict(list)
    for example in task.examples("test", args.stories, spec.seed):
        for query in example.queries:
            obj = query.text.split()[-1].rstrip("?")
            groups[question_kind(example.context, obj)].append(Example(example.context, (query,)))
    total = sum(len(g) for g in groups.values())
    for kind, group in sorted(groups.items()):
        em = evaluate(method, task, group)["default"]["exact_match"]
        print(json.dumps({"run": spec.run_id, "stage": args.stage, "kind": kind, "questions": len(group), "share": round(len(group) / total, 3),
                          "exact_match": round(em, 3)}))


if __name__ == "__main__":
    main()
