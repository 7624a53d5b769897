"""bAbI: the release-file reader on a hand-written file, and generated answers checked by an
independent simulator that reads the story text."""
import re
import shutil
from collections import defaultdict
from functools import cached_property
from pathlib import Path

import pytest

from harness.errors import HarnessError
from tasks.babi import read_babi_file
from tests.conftest import make_method
from harness.typed import build
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


@pytest.mark.parametrize("content,message", [
    (b"Mary moved.\n", r"bad\.txt:1: not a bAbI line"),
    (b"1 Mary moved to the bathroom.\n3 Where is Mary? \tbathroom\t1\n", r"bad\.txt:2: line ID 3 follows 1"),
    (b"1 Mary moved to the bathroom.\n2 Where is Mary? \t\t1\n", r"bad\.txt:2: question line with an empty answer"),
    (b"1 Mary moved to the bathroom.\n2 Where is Mary? \t\n", r"bad\.txt:2: question line with an empty answer"),
    (b"1 Mary moved to the bathroom.\n2 \tbathroom\t1\n", r"bad\.txt:2: question line with an empty question"),
    (b"1 Mary moved to the bathroom.\n2 Where is Mary? bathroom 1\n", r"bad\.txt:2: question without a tab"),
    (b"1 Mary moved to the bathroom.\n2 \n", r"bad\.txt:2: empty statement"),
    (b"1 Mary moved to the bathroom.\n2 Where is Mary?\tbath\xe9room\t1\n", r"bad\.txt:2: not UTF-8"),
    (b"", r"bad\.txt: no bAbI questions"),
    (b"\n\n", r"bad\.txt: no bAbI questions"),
    (b"1 Mary moved to the bathroom.\n", r"bad\.txt: no bAbI questions"),
])
def test_read_babi_file_names_the_file_and_line_of_bad_input(tmp_path, content, message):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    with pytest.raises(HarnessError, match=message) as error:
        read_babi_file(bad)
    assert len(str(error.value).splitlines()) == 1


def release_folder(tmp_path, **replaced: bytes) -> Path:
    """A copy of the QA1 + QA5 fixture release with some files' contents replaced (`qa1_train=b"..."`)."""
    folder = tmp_path / "babi"
    shutil.copytree(FIXTURES, folder)
    for key, content in replaced.items():
        qa, split = key.split("_")
        (path,) = folder.glob(f"{qa}_*{split}.txt")
        path.write_bytes(content)
    return folder


def run_babi_suite(tmp_path, capsys, folder, *extra):
    from harness.cli import main
    code = main(["--suite", "babi", "--scale", "smoke", "--data-dir", str(folder), "--out", str(tmp_path / "r"),
                 "--cache", str(tmp_path / "c"), "--quiet", "--device", "cpu", *extra])
    return code, capsys.readouterr()


def test_babi_suite_on_a_good_release_folder_validates_and_plans(tmp_path, capsys):
    code, captured = run_babi_suite(tmp_path, capsys, FIXTURES, "--dry-run")
    assert code == 0, captured.err
    assert "qa=5" in captured.out and not (tmp_path / "r").exists()


BAD_RELEASES = {
    "empty folder": (lambda p: (p / "empty").mkdir() or p / "empty", r"no file qa1_\*train\.txt in --data-dir"),
    "corrupt file": (lambda p: release_folder(p, qa1_train=b"Mary moved to the bathroom.\n"),
                     r"qa1_single-supporting-fact_train\.txt:1: not a bAbI line"),
    "empty file": (lambda p: release_folder(p, qa1_valid=b""), r"qa1_single-supporting-fact_valid\.txt: no bAbI questions"),
    "non-UTF-8": (lambda p: release_folder(p, qa1_test=b"1 John moved to the k\xff\xfeitchen.\n"),
                  r"qa1_single-supporting-fact_test\.txt:1: not UTF-8"),
    "empty answer": (lambda p: release_folder(p, qa1_train=b"1 John moved to the kitchen.\n2 Where is John? \t\t1\n"),
                     r"qa1_single-supporting-fact_train\.txt:2: question line with an empty answer"),
    # every run of the sweep is checked, not only the first: QA1 is good, QA5 (a later run) is not
    "bad file of a later run": (lambda p: release_folder(p, qa5_test=b"1 Fred grabbed the apple there.\n"),
                                r"qa5_three-arg-relations_test\.txt: no bAbI questions"),
}


@pytest.mark.parametrize("case", sorted(BAD_RELEASES))
def test_bad_release_data_exits_2_with_one_line_and_writes_nothing(case, tmp_path, capsys):
    make_folder, message = BAD_RELEASES[case]
    code, captured = run_babi_suite(tmp_path, capsys, make_folder(tmp_path))
    err = captured.err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert re.search(message, err), err
    assert not (tmp_path / "r").exists()


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


def test_qa4_stories_ask_one_question_or_up_to_all_four_they_support():
    """relation_questions = 1 keeps the release files' shape (and the draws of runs made before the
    option existed); 4 asks each fact both ways, every answer checked by the simulator."""
    one = make_babi(qa=4).examples("train", 100, 0)
    assert all(len(e.queries) == 1 for e in one)
    assert [e.context for e in one[:2]] == ["The hallway is south of the bedroom. The office is north of the bedroom.",
                                            "The bathroom is east of the kitchen. The hallway is west of the kitchen."]
    assert [q.text for e in one[:2] for q in e.queries] == ["What is north of the bedroom?", "What is east of the kitchen?"]
    every = make_babi(qa=4, relation_questions=4).examples("train", 100, 0)
    for example in every:
        assert len({q.text for q in example.queries}) == 4
        for query in example.queries:
            assert simulate(example.context, query.text) == query.target
    assert {len(e.queries) for e in make_babi(qa=4, relation_questions=2).examples("train", 20, 0)} == {2}
    with pytest.raises(HarnessError, match="relation_questions = 5 must be 1 to 4"):
        make_babi(qa=4, relation_questions=5)


@pytest.mark.parametrize("qa", [1, 2, 3, 4, 5])
def test_a_curriculum_stage_shorter_than_a_task_needs_gets_the_fewest_statements_that_ask(qa):
    """2-statement stories (the bAbI cpu curriculum's first stage) cannot move an object twice (QA3)
    or place five people and pass an object (QA5): those stories get the minimum, not a hang."""
    from tasks.babi import MIN_STATEMENTS
    examples = make_babi(qa=qa, story_sentences=2).examples("train", 20, 0)
    statements = [e.context.count(".") for e in examples]
    assert all(e.queries for e in examples)
    assert min(statements) == (2 if qa == 4 else max(2, MIN_STATEMENTS[qa]))
    for example in examples:
        for query in example.queries:
            assert simulate(example.context, query.text) == query.target


def test_babi_trains_end_to_end(tmp_path):
    from harness.data import collate
    from harness.pipeline import target_loss, write_then_read
    task = make_babi(qa=2)
    method = make_method("gradmem", task, memory_size=2).train()
    batch = collate(task.examples("train", 4, 0), task, "all")
    logits, _ = write_then_read(method, batch)
    target_loss(logits, batch).backward()
    assert batch.context_ids.shape[1] <= task.max_lengths()[0]


def test_use_tokenizer_overrides_a_property_or_a_cached_property():
    import dataclasses
    import math
    from harness.contract import Task

    @dataclasses.dataclass
    class TinyConfig:
        size: int = 1

    class Own:
        vocab_size = 3

    class External:
        vocab_size = 7

    class WithProperty(Task):
        name = "with_property"
        Config = TinyConfig

        @property
        def tokenizer(self):
            return Own()

        def examples(self, split, count, seed):
            return []

    class WithCachedProperty(WithProperty):
        name = "with_cached_property"

        @cached_property
        def tokenizer(self):
            return Own()

    for cls in (WithProperty, WithCachedProperty):
        task, untouched, codec = cls(TinyConfig()), cls(TinyConfig()), External()
        assert isinstance(task.tokenizer, Own)          # a cached_property has cached the task's own
        task.use_tokenizer(codec)
        assert task.tokenizer is codec and task.chance_loss() == pytest.approx(math.log(7))
        assert isinstance(task, cls) and type(task).__name__ == cls.__name__ and task.name == cls.name
        assert isinstance(untouched.tokenizer, Own)     # other instances keep their own tokenizer
        again = task.with_params(size=2)                 # curricula keep the override
        assert again.tokenizer is codec and isinstance(again, cls) and again.config.size == 2
        other = External()
        task.use_tokenizer(other)                        # a second override replaces the first
        assert task.tokenizer is other
        fresh = cls(TinyConfig())
        fresh.use_tokenizer(codec)
        assert type(fresh) is type(task)                 # one override class per task class


def test_probe_groups_questions_by_form_with_answer_words_blanked():
    """bench.probes.probe_plateau --by-query-form: QA4's two question forms per direction, every question once."""
    from bench.probes.probe_plateau import query_forms
    examples = make_babi(qa=4).examples("valid", 400, seed=0)
    forms = query_forms(examples)
    assert set(forms) == {f"What is {d} of the _ ?" for d in ("north", "south", "east", "west")} | \
        {f"What is the _ {d} of ?" for d in ("north", "south", "east", "west")}
    assert sum(len(group) for group in forms.values()) == 400
    assert all(len(e.queries) == 1 for group in forms.values() for e in group)


@pytest.mark.parametrize("story, obj, kind", [
    ("John went to the kitchen. John got the milk there. Mary moved to the garden.", "milk",
     "held, holder moved 0 times after (one holder)"),
    ("John went to the kitchen. John got the milk there. John moved to the garden. John went to the office.",
     "milk", "held, holder moved 2+ times after (one holder)"),
    ("John went to the kitchen. John got the milk there. John dropped the milk. John went to the office.",
     "milk", "dropped, holder moved on (one holder)"),
    ("John went to the kitchen. John took the milk there. John put down the milk. Mary went to the kitchen. "
     "Mary grabbed the milk there. Mary went to the hallway.", "milk",
     "held, holder moved 1 times after (changed hands)"),
])
def test_qa2_error_kinds_name_what_the_answer_needs(story, obj, kind):
    """bench.probes.babi_errors: the object's last holder, held or dropped, and its moves after."""
    from bench.probes.babi_errors import question_kind
    assert question_kind(story, obj) == kind


def test_qa2_wrong_answers_are_named_by_whose_place_they_are():
    from bench.probes.babi_errors import wrong_answer_kind
    story = ("Mary went to the office. John went to the kitchen. Sandra moved to the hallway. "
             "John got the milk there. John moved to the garden. Mary went to the bedroom.")
    assert wrong_answer_kind(story, "milk", "kitchen") == "an earlier place of the holder"
    assert wrong_answer_kind(story, "milk", "hallway").startswith("the place of the last move before")
    assert wrong_answer_kind(story, "milk", "bedroom") == "a place another actor went to"
    assert wrong_answer_kind(story, "milk", "bathroom") == "no place of the story"


def test_qa3_trail_replayed_from_the_story_gives_every_generated_answer():
    """bench.probes.babi_errors replays an object's trail from the statements: its last place is the
    one a QA3 question names and the one before is the answer, on every generated question."""
    from bench.probes.babi_errors import _statements, object_trail
    task = make_babi(qa=3, story_sentences=12)
    questions = [(e.context, q) for e in task.examples("train", 300, 0) for q in e.queries]
    assert len(questions) > 300
    for story, query in questions:
        obj, named = re.fullmatch(r"Where was the (\w+) before the (\w+)\?", query.text).groups()
        trail, holders = object_trail(_statements(story), obj)
        assert (trail[-1], trail[-2]) == (named, query.target), (story, query.text)
        assert holders


def test_qa3_error_kinds_name_the_trail_and_whose_place_a_wrong_answer_is():
    from bench.probes.babi_errors import trail_question_kind, trail_wrong_answer_kind
    story = ("Mary went to the office. John went to the kitchen. John got the milk there. "
             "John moved to the garden. John dropped the milk. John went to the hallway. "
             "Sandra went to the garden. Sandra took the milk there. Sandra went to the bedroom.")
    assert trail_question_kind(story, "milk") == "trail of 3 places (changed hands)"
    assert trail_wrong_answer_kind(story, "milk", "bedroom").startswith("the object's latest place")
    assert trail_wrong_answer_kind(story, "milk", "kitchen") == "an earlier place of the object"
    assert trail_wrong_answer_kind(story, "milk", "hallway") == "a place a holder of the object went to without it"
    assert trail_wrong_answer_kind(story, "milk", "office") == "a place only other actors went to"
    assert trail_wrong_answer_kind(story, "milk", "bathroom") == "no place of the story"
    short = "John went to the kitchen. John got the milk there. John moved to the garden."
    assert trail_question_kind(short, "milk") == "trail of 2 places (one holder)"


def test_qa1_error_kinds_count_the_actor_moves_and_the_statements_after():
    """bench.probes.babi_errors on QA1: the asked actor's moves, the statements after its latest, and
    whose place a wrong answer is; its kind agrees with the generator's answer on every question."""
    from bench.probes.babi_errors import _statements, actor_question_kind, actor_wrong_answer_kind
    story = ("Mary went to the office. John went to the kitchen. Mary moved to the garden. "
             "Sandra went to the hallway. Daniel journeyed to the bedroom.")
    assert actor_question_kind(story, "Mary") == "moved 2 times, 2 statements after its last move"
    assert actor_question_kind(story, "Daniel") == "moved 1 times, 0 statements after its last move"
    assert actor_wrong_answer_kind(story, "Mary", "office") == "an earlier place of the actor"
    assert actor_wrong_answer_kind(story, "Mary", "bedroom") == "the story's last place (another actor's)"
    assert actor_wrong_answer_kind(story, "Mary", "kitchen") == "a place another actor went to"
    assert actor_wrong_answer_kind(story, "Mary", "bathroom") == "no place of the story"
    task = make_babi(qa=1, story_sentences=8)
    for example in task.examples("train", 200, 0):
        for query in example.queries:
            actor = re.fullmatch(r"Where is (\w+)\?", query.text)[1]
            latest = [line for line in _statements(example.context) if line.split()[0] == actor][-1]
            assert latest.split()[-1] == query.target
            assert actor_question_kind(example.context, actor).startswith("moved ")
