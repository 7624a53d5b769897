"""Where a trained bAbI QA1, QA2 or QA3 model errs: test exact match per kind of question.

Loads a run's best weights of a stage (`.cache/checkpoints/<run id>/best_stage<N>.pt`) and
scores the test stories of the run's final task (the ones its test score reads, every question
of each), grouped by what the answer needs. QA1 ("Where is Mary?"): how often the actor moved
and how many statements follow its latest move. QA2 ("Where is the milk?"): the object still
held (and how often its holder moved after taking it), or dropped (and whether its holder moved
on after the drop), and whether it changed hands. QA3 ("Where was the milk before the
garden?"): how many places the object's trail has and whether it changed hands. Each wrong
answer is named by whose place it is.

    python -m bench.probes.babi_errors results/babi/5838de9b963c --stage 4 --stories 2000
"""
from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import torch
import yaml

from harness.contract import Example
from harness.data import collate
from harness.builder import build_run
from harness.schema import RunSpec
from harness.train import TEST_SEED
from tasks.babi import DROP, GET, MOVE


def _verb(line: str, verbs) -> bool:
    return any(f" {verb} " in f" {line} " for verb in verbs)


def _statements(story: str) -> list[str]:
    return [line.strip() for line in story.split(".") if line.strip()]


def _last_mention(lines: list[str], obj: str) -> int:
    """Index of the last statement that names the object (its last taker or dropper is its first word)."""
    return max(i for i, line in enumerate(lines) if f" the {obj}" in line)


def _hands(holders: set[str]) -> str:
    return "one holder" if len(holders) == 1 else "changed hands"


def question_kind(story: str, obj: str) -> str:
    """What answering 'Where is the <obj>?' needs on this story: the object's last holder, held
    or dropped, and the holder's moves after it took (or dropped) the object."""
    lines = _statements(story)
    last = _last_mention(lines, obj)
    _, takers = object_trail(lines, obj)
    holder = lines[last].split()[0]
    moves_after = sum(1 for line in lines[last + 1:] if line.split()[0] == holder and _verb(line, MOVE))
    hands = _hands(takers)
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


def _capped(count: int) -> str:
    return f"{min(count, 3)}{'+' if count >= 3 else ''}"


def actor_question_kind(story: str, actor: str) -> str:
    """What answering 'Where is <actor>?' needs: how often the actor moved (the answer is its
    latest move) and how many statements of other actors follow that move."""
    lines = _statements(story)
    own = [i for i, line in enumerate(lines) if line.split()[0] == actor]
    after = len(lines) - 1 - own[-1]
    return f"moved {_capped(len(own))} times, {_capped(after)} statements after its last move"


def actor_wrong_answer_kind(story: str, actor: str, predicted: str) -> str:
    """What a wrong answer to 'Where is <actor>?' names: an earlier place of the actor, the
    story's last place (another actor's), a place another actor went to, or no place of the story."""
    lines = _statements(story)
    if predicted in {line.split()[-1] for line in lines if line.split()[0] == actor}:
        return "an earlier place of the actor"
    if predicted == lines[-1].split()[-1]:
        return "the story's last place (another actor's)"
    if predicted in {line.split()[-1] for line in lines}:
        return "a place another actor went to"
    return "no place of the story"


def object_trail(lines: list[str], obj: str) -> tuple[list[str], set[str]]:
    """The object's places in story order (a place once per stay, as the generator's trail) and
    the actors who held it, replayed from the statements."""
    actor_at, holder, trail, holders = {}, None, [], set()
    for line in lines:
        words = line.split()
        actor = words[0]
        if _verb(line, MOVE):
            actor_at[actor] = words[-1]
        elif f" the {obj}" in line and _verb(line, GET):
            holder = actor
            holders.add(actor)
        elif f" the {obj}" in line and _verb(line, DROP):
            holder = None
            continue
        else:
            continue
        if holder == actor and (not trail or trail[-1] != actor_at[actor]):
            trail.append(actor_at[actor])
    return trail, holders


def trail_question_kind(story: str, obj: str) -> str:
    """What answering 'Where was the <obj> before the <place>?' needs: the length of the object's
    trail (the answer is its second-to-last place) and whether it changed hands."""
    trail, holders = object_trail(_statements(story), obj)
    places = f"{len(trail)}" if len(trail) < 4 else "4+"
    return f"trail of {places} places ({_hands(holders)})"


def trail_wrong_answer_kind(story: str, obj: str, predicted: str) -> str:
    """What a wrong answer to 'Where was the <obj> before the <place>?' names: the latest place
    (the one the question names), an earlier place of the object's trail, a place one of its
    holders went to without it, a place only other actors went to, or no place of the story."""
    lines = _statements(story)
    trail, holders = object_trail(lines, obj)
    moves = [line.split() for line in lines if _verb(line, MOVE)]
    if predicted == trail[-1]:
        return "the object's latest place (the one the question names)"
    if predicted in trail[:-2]:
        return "an earlier place of the object"
    if predicted in {words[-1] for words in moves if words[0] in holders}:
        return "a place a holder of the object went to without it"
    if predicted in {words[-1] for words in moves}:
        return "a place only other actors went to"
    return "no place of the story"


QUESTIONS = {   # qa: (the question's actor or object, its kind, a wrong answer's kind)
    1: (r"Where is (\w+)\?", actor_question_kind, actor_wrong_answer_kind),
    2: (r"Where is the (\w+)\?", question_kind, wrong_answer_kind),
    3: (r"Where was the (\w+) before the \w+\?", trail_question_kind, trail_wrong_answer_kind),
}


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
    if spec.task.get("name") != "babi" or spec.task.get("qa") not in QUESTIONS:
        raise SystemExit(f"{args.run_dir}: a bAbI QA1, QA2 or QA3 run is needed, this one is {spec.task}")
    pattern, kind_of, wrong_kind_of = QUESTIONS[spec.task["qa"]]
    task, method = build_run(spec)
    state = torch.load(Path(args.checkpoints) / spec.run_id / f"best_stage{args.stage}.pt", map_location="cpu")
    method.load_state_dict(state)
    method.eval()
    groups = defaultdict(list)
    for example in task.examples("test", args.stories, seed=TEST_SEED):
        for query in example.queries:
            obj = re.fullmatch(pattern, query.text)[1]
            groups[kind_of(example.context, obj)].append((obj, Example(example.context, (query,))))
    total = sum(len(g) for g in groups.values())
    for kind, group in sorted(groups.items()):
        examples = [example for _, example in group]
        right, wrong = 0, defaultdict(int)
        for (obj, example), word in zip(group, predicted_words(method, task, examples)):
            if word == example.queries[0].target:    # one-word answers: exact match
                right += 1
            else:
                wrong[wrong_kind_of(example.context, obj, word)] += 1
        print(json.dumps({"run": spec.run_id, "stage": args.stage, "kind": kind, "questions": len(group),
                          "share": round(len(group) / total, 3), "exact_match": round(right / len(group), 3),
                          "wrong_answers": dict(sorted(wrong.items()))}))


if __name__ == "__main__":
    main()
