"""bAbI: the release-file reader on a hand-written file, and generated answers checked by an
independent simulator that reads the story text."""
import re
from collections import defaultdict
from pathlib import Path

import pytest

from harness.errors import HarnessError
from tasks.babi import read_babi_file
from tests.conftest import make_method
from harness.config import build
from harness.registry import get_task

FIXTURES = Path(__file__).parent / "fixtures" / "babi"


def make_babi(**params):
    cls = get_task("babi")
    return cls(build(cls.Config, params, "task"))


def test_read_babi_file_makes_one_example_per_question():
    examples = read_babi_file(FIXTURES / "qa1_single-supporting-fact_train.txt")
    assert [e.queries[0].target for e in examples] == ["bathroom", "hallway", "office"]
    assert examples[0].context == "Mary moved to the bathroom. John went to the hallway."
    assert examples[1].context == ("Mary moved to the bathroom. John went to the hallway. "
                                   "Daniel went back to the hallway. Sandra moved to the garden.")
    assert examples[1].queries[0].text == "Where is Daniel?"
    assert examples[2].context == "Sandra travelled to the office."   # ID 1 starts a new story


def test_release_folder_as_a_task(tmp_path):
    task = make_babi(qa=1, data_dir=str(FIXTURES))
    assert len(task.examples("test", 10, 0)) == 1
    assert task.examples("valid", 10, 0)[0].queries[0].target == "kitchen"
    assert task.tokenizer.unk_id not in task.tokenizer.encode(task.examples("train", 3, 0)[0].context)
    with pytest.raises(HarnessError, match="not a folder"):
        make_babi(qa=1, data_dir=str(tmp_path / "missing"))
    bad = tmp_path / "bad.txt"
    bad.write_text("Mary moved.\n")
    with pytest.raises(HarnessError, match="not a bAbI line"):
        read_babi_file(bad)


MOVE = r"(\w+) (?:moved|went|journeyed|travelled|went back) to the (\w+)\."
GET = r"(\w+) (?:picked up|got|grabbed|took) the (\w+) there\."
DROP = r"(\w+) (?:dropped|discarded|put down|left) the (\w+)\."
GIVE = r"(\w+) (?:gave|handed|passed) the (\w+) to (\w+)\."
RELATION = r"The (\w+) is (\w+) of the (\w+)\."


def simulate(story: str, question: str) -> str:
    """Answer a question by replaying the story sentence by sentence (independent of the generator)."""
    where, carrier, lying, history, transfers, facts = {}, {}, {}, defaultdict(list), [], []

    def note(obj):
        place = where[carrier[obj]] if carrier.get(obj) else lying.get(obj)
        if place and (not history[obj] or history[obj][-1] != place):
            history[obj].append(place)

    for sentence in re.findall(r"[^.]+\.", story):
        sentence = sentence.strip()
        if m := re.fullmatch(MOVE, sentence):
            where[m[1]] = m[2]
        elif m := re.fullmatch(GET, sentence):
            carrier[m[2]] = m[1]
        elif m := re.fullmatch(DROP, sentence):
            lying[m[2]] = where[m[1]]
            carrier[m[2]] = None
        elif m := re.fullmatch(GIVE, sentence):
            carrier[m[2]] = m[3]
            transfers.append((m[1], m[2], m[3]))
        elif m := re.fullmatch(RELATION, sentence):
            facts.append((m[1], m[2], m[3]))
        else:
            raise AssertionError(f"unknown sentence {sentence!r}")
        for obj in set(carrier) | set(lying):
            note(obj)
    if m := re.fullmatch(r"Where is the (\w+)\?", question):
        return where[carrier[m[1]]] if carrier.get(m[1]) else lying[m[1]]
    if m := re.fullmatch(r"Where is (\w+)\?", question):
        return where[m[1]]
    if m := re.fullmatch(r"Where was the (\w+) before the (\w+)\?", question):
        trail = history[m[1]]
        assert trail[-1] == m[2]
        return trail[-2]
    if m := re.fullmatch(r"What is (\w+) of the (\w+)\?", question):
        (answer,) = [x for x, d, y in facts if (d, y) == (m[1], m[2])]
        return answer
    if m := re.fullmatch(r"What is the (\w+) (\w+) of\?", question):
        (answer,) = [y for x, d, y in facts if (x, d) == (m[1], m[2])]
        return answer
    if m := re.fullmatch(r"Who received the (\w+)\?", question):
        return [r for g, o, r in transfers if o == m[1]][-1]
    if m := re.fullmatch(r"Who gave the (\w+) to (\w+)\?", question):
        return [g for g, o, r in transfers if (o, r) == (m[1], m[2])][-1]
    if m := re.fullmatch(r"Who did (\w+) give the (\w+) to\?", question):
        return [r for g, o, r in transfers if (g, o) == (m[1], m[2])][-1]
    if m := re.fullmatch(r"What did (\w+) give to (\w+)\?", question):
        return [o for g, o, r in transfers if (g, r) == (m[1], m[2])][-1]
    raise AssertionError(f"unknown question {question!r}")


@pytest.mark.parametrize("qa", [1, 2, 3, 4, 5])
def test_generated_answers_agree_with_an_independent_simulator(qa):
    task = make_babi(qa=qa, story_sentences=10)
    examples = task.examples("train", 200, 0)
    assert examples == task.examples("train", 200, 0)                 # deterministic
    assert examples != task.examples("train", 200, 1)
    for example in examples:
        for query in example.queries:
            assert simulate(example.context, query.text) == query.target, (example.context, query.text)
        ids = task.tokenizer.encode(example.context + " " + example.queries[0].text)
        assert task.tokenizer.unk_id not in ids
    assert len({q.target for e in examples for q in e.queries}) > 2


def test_babi_trains_end_to_end(tmp_path):
    from harness.data import collate
    from harness.pipeline import target_loss, write_then_read
    task = make_babi(qa=2)
    method = make_method("gradmem", task, memory_size=2).train()
    batch = collate(task.examples("train", 4, 0), task, "all")
    logits, _ = write_then_read(method, batch)
    target_loss(logits, batch).backward()
    assert batch.context_ids.shape[1] <= task.max_lengths()[0]
