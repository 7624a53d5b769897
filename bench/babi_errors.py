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
from harness.data import collate
from harness.runner import build_run
from harness.schema import RunSpec
from tasks.babi import DROP, GET, MOVE


def _verb(line: str, verbs) -> bool:
    return any(f" {verb} " in f" {line} " for verb in verbs)


def _statements(story: str) -> list[str]:
    return [line.strip() for line in story.split(".") if line.strip()]


def _last_mention(lines: list[str], obj: str) -> int:
    """Index of the last statement that names the object (its last taker or dropper is its first word)."""
    return max(i for i, line in enumerate(lines) if f" the {obj}" in line)


def question_kind(story: str, obj: str) -> str:
    """What answering 'Where is the <obj>?' needs on this story: the object's last holder, held
    or dropped, and the holder's moves after it took (or dropped) the object."""
    lines = _statements(story)
    last = _last_mention(lines, obj)
    takers = {line.split()[0] for line in lines if f" the {obj}" in line and _verb(line, GET)}
    holder = lines[last].split()[0]
    moves_after = sum(1 for line in lines[last + 1:] if line.split()[0] == holder and _verb(line, MOVE))
    hands = "one holder" if len(takers) == 1 else "changed hands"
    if _verb(lines[last], DROP):
        return f"dropped, holder {'moved on' if moves_after else 'stayed'} ({hands})"
    return f"held, holder moved {min(moves_after, 2)}{'+' if moves_after >= 2 else ''} times after ({hands})"


def wrong_answer_kind(story: str, obj: str, predicted: str) -> str:
    """What a wrong answer to 'Where is the <obj>?' names: a place the object's last holder was
    in earlier, the place of the story's last move before the object's last mention (whoever
    moved), a place another actor went to, or no place of the story."""
    lines = _statements(story)
    mention = _last_mention(lines, obj)
    holder = lines[mention].split()[0]
    moves = [line for line in lines if _verb(line, MOVE)]
    if predicted in {line.split()[-1] for line in moves if line.split()[0] == holder}:
        return "an earlier place of the holder"
    before = [line for line in lines[:mention] if _verb(line, MOVE)]
    if before and predicted == before[-1].split()[-1]:
        return "the place of the last move before the object's last mention (another actor's)"
    if predicted in {line.split()[-1] for line in moves}:
        return "a place another actor went to"
    return "no place of the story"


def predicted_words(method, task, examples: list[Example]) -> list[str]:
    """The model's answer word (argmax at the answer position) for each one-question example."""
    words = []
    for start in range(0, len(examples), 250):
        batch = collate(examples[start:start + 250], task, 1)
        with torch.no_grad():
            memory = method.write(batch.context_ids, batch.context_mask)
            logits = method.read(memory.select(batch.context_index), batch.read_ids, batch.read_mask)
        predictions = logits.argmax(-1)
        words += [task.tokenizer.decode(row[mask]).strip() for row, mask in zip(predictions, batch.score_mask)]
    return words


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run's results folder (config.yaml)")
    parser.add_argument("--stage", type=int, required=True, help="the curriculum stage whose best weights to load")
    parser.add_argument("--checkpoints", default=".cache/checkpoints")
    parser.add_argument("--stories", type=int, default=2000)
    args = parser.parse_args(argv)
    spec = RunSpec.from_dict(yaml.safe_load(open(Path(args.run_dir) / "config.yaml")))
    if spec.task.get("name") != "babi" or spec.task.get("qa") != 2:
        raise SystemExit(f"{args.run_dir}: a bAbI QA2 run is needed, this one is {spec.task}")
    task, method = build_run(spec)
    state = torch.load(Path(args.checkpoints) / spec.run_id / f"best_stage{args.stage}.pt", map_location="cpu")
    method.load_state_dict(state)
    method.eval()
    groups = defaultdict(list)
    for example in task.examples("test", args.stories, spec.seed):
        for query in example.queries:
            obj = query.text.split()[-1].rstrip("?")
            groups[question_kind(example.context, obj)].append((obj, Example(example.context, (query,))))
    total = sum(len(g) for g in groups.values())
    for kind, group in sorted(groups.items()):
        examples = [example for _, example in group]
        right, wrong = 0, defaultdict(int)
        for (obj, example), word in zip(group, predicted_words(method, task, examples)):
            if word == example.queries[0].target:    # one-word answers: exact match
                right += 1
            else:
                wrong[wrong_answer_kind(example.context, obj, word)] += 1
        print(json.dumps({"run": spec.run_id, "stage": args.stage, "kind": kind, "questions": len(group),
                          "share": round(len(group) / total, 3), "exact_match": round(right / len(group), 3),
                          "wrong_answers": dict(sorted(wrong.items()))}))


if __name__ == "__main__":
    main()
