"""bAbI QA1-QA5 in the context-removal setting: context = the story, query = the question,
target = the answer word.

Two sources: the official release files (`--data-dir` pointing at the en-valid-10k folder:
`qaN_*train.txt`, `qaN_*valid.txt`, `qaN_*test.txt`), read by `read_babi_file`; or, offline by
default, a seeded generator of the bAbI world (actors moving between locations, picking up,
dropping and passing objects; directions between rooms) whose answers are correct by
construction. The generated stories use the bAbI templates but are not the release data.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

from harness.api import Codec, Example, HarnessError, Query, Task, read_once, register_task

ACTORS = ("Mary", "John", "Sandra", "Daniel")
GIVERS = ("Mary", "John", "Fred", "Bill", "Jeff")
LOCATIONS = ("bathroom", "hallway", "garden", "office", "kitchen", "bedroom")
OBJECTS = ("football", "apple", "milk")
MOVE = ("moved to", "went to", "journeyed to", "travelled to", "went back to")
GET = ("picked up", "got", "grabbed", "took")
DROP = ("dropped", "discarded", "put down", "left")
GIVE = ("gave", "handed", "passed")
DIRECTIONS = {"north": "south", "south": "north", "east": "west", "west": "east"}


# ------------------------------------------------------------------ release files
def _shown(raw: str, limit: int = 80) -> str:
    return repr(raw if len(raw) <= limit else raw[:limit] + "...")


def read_text_file(path: str | Path, what: str) -> str:
    """The UTF-8 text of a data file; a missing, unreadable or non-UTF-8 file is a HarnessError
    naming the file (and the line of the first bad byte)."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise HarnessError(f"cannot read {what} {path}: {error.strerror or error}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise HarnessError(f"{path}:{line}: not UTF-8 text (byte {data[error.start]:#04x} at offset "
                           f"{error.start}); expected a {what}") from None


def read_babi_file(path: str | Path) -> list[Example]:
    """One Example per question of a bAbI release file.

    Lines are `ID text`; ID 1 starts a new story and the IDs of a story count up by one;
    question lines are `ID question<TAB>answer<TAB>supporting ids`. The context is the story's
    statements before the question (numbers removed, earlier questions left out), joined by
    spaces. Anything else (a line without an ID, a skipped ID, an empty question or answer, a
    question without its tab-separated answer, a file without questions) is a HarnessError
    naming the file and line.
    """
    examples: list[Example] = []
    story: list[str] = []
    previous = 0
    for number, raw in enumerate(read_text_file(path, "bAbI release file").splitlines(), 1):
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        match = re.match(r"\s*(\d+) +(.*)", raw)   # spaces only: a tab right after the ID is an empty question
        if not match:
            raise HarnessError(f"{where}: not a bAbI line (expected 'ID text'): {_shown(raw)}")
        line_id, text = int(match.group(1)), match.group(2)
        if line_id != 1 and line_id != previous + 1:
            raise HarnessError(f"{where}: line ID {line_id} follows {previous} (a story starts at 1 and counts "
                               f"up by one): {_shown(raw)}")
        previous = line_id
        if line_id == 1:
            story = []
        if "\t" in text:
            question, answer = (part.strip() for part in text.split("\t")[:2])
            if not question or not answer:
                raise HarnessError(f"{where}: question line with an empty {'question' if not question else 'answer'} "
                                   f"(expected 'ID question<TAB>answer<TAB>supporting ids'): {_shown(raw)}")
            examples.append(Example(" ".join(story), (Query(question, answer, tuple(answer.split(","))),)))
        elif "?" in text:   # bAbI statements never ask
            raise HarnessError(f"{where}: question without a tab-separated answer "
                               f"(expected 'ID question<TAB>answer<TAB>supporting ids'): {_shown(raw)}")
        elif not text.strip():
            raise HarnessError(f"{where}: empty statement: {_shown(raw)}")
        else:
            story.append(text.strip())
    if not examples:
        raise HarnessError(f"{path}: no bAbI questions in the file (empty, or statements only); expected lines "
                           f"'ID text' and 'ID question<TAB>answer<TAB>supporting ids'")
    return examples


def _read_release_file(path: Path) -> list[Example]:
    """`read_babi_file`, read once per file version (`harness.data.read_once`)."""
    return read_once(path, read_babi_file, "bAbI release file")


# ------------------------------------------------------------------ generator
class _World:
    """Where every actor and object is, and the history the questions need."""

    def __init__(self, rng: random.Random, actors: Sequence[str]):
        self.rng, self.actors = rng, list(actors)
        self.actor_at: dict[str, str] = {}
        self.holder: dict[str, str | None] = {}
        self.object_at: dict[str, str] = {}
        self.object_trail: dict[str, list[str]] = {}
        self.gives: list[tuple[str, str, str]] = []  # (giver, object, receiver)

    def _place_object(self, obj: str, location: str) -> None:
        self.object_at[obj] = location
        trail = self.object_trail.setdefault(obj, [])
        if not trail or trail[-1] != location:
            trail.append(location)

    def move(self, actor: str) -> str:
        location = self.rng.choice([l for l in LOCATIONS if l != self.actor_at.get(actor)])
        self.actor_at[actor] = location
        for obj, holder in self.holder.items():
            if holder == actor:
                self._place_object(obj, location)
        return f"{actor} {self.rng.choice(MOVE)} the {location}."

    def pick(self, actor: str) -> str | None:
        here = self.actor_at.get(actor)
        free = [o for o in OBJECTS if self.holder.get(o) is None and self.object_at.get(o, here) == here]
        if here is None or not free:
            return None
        obj = self.rng.choice(free)
        self.holder[obj] = actor
        self._place_object(obj, here)
        return f"{actor} {self.rng.choice(GET)} the {obj} there."

    def drop(self, actor: str) -> str | None:
        held = [o for o, h in self.holder.items() if h == actor]
        if not held:
            return None
        obj = self.rng.choice(held)
        self.holder[obj] = None
        return f"{actor} {self.rng.choice(DROP)} the {obj}."

    def give(self, actor: str) -> str | None:
        held = [o for o, h in self.holder.items() if h == actor]
        here = self.actor_at.get(actor)
        others = [a for a in self.actors if a != actor and self.actor_at.get(a) == here]
        if not held or not others:
            return None
        obj, receiver = self.rng.choice(held), self.rng.choice(others)
        self.holder[obj] = receiver
        self.gives.append((actor, obj, receiver))
        return f"{actor} {self.rng.choice(GIVE)} the {obj} to {receiver}."


def _story(rng: random.Random, qa: int, sentences: int) -> tuple[list[str], _World]:
    world = _World(rng, GIVERS if qa == 5 else ACTORS)
    lines: list[str] = []
    if qa == 5:  # everybody in one of two rooms, so that objects can change hands
        rooms = rng.sample(LOCATIONS, 2)
        for actor in world.actors:
            world.actor_at[actor] = rng.choice(rooms)
            lines.append(f"{actor} {rng.choice(MOVE)} the {world.actor_at[actor]}.")
    actions = {1: ("move",), 2: ("move", "move", "pick", "drop"), 3: ("move", "move", "pick", "drop"),
               5: ("pick", "give", "give", "move")}[qa]
    while len(lines) < sentences:
        actor = rng.choice(world.actors)
        action = rng.choice(actions) if actor in world.actor_at else "move"
        if qa == 5 and action == "move":
            line = f"{actor} {rng.choice(MOVE)} the {rng.choice(rooms)}."
            world.actor_at[actor] = line.split(" the ")[-1][:-1]
        else:
            line = getattr(world, action)(actor)
        if line:
            lines.append(line)
    return lines, world


def _questions(qa: int, world: _World) -> list[Query]:
    if qa == 1:
        return [Query(f"Where is {a}?", world.actor_at[a]) for a in world.actor_at]
    if qa == 2:
        return [Query(f"Where is the {o}?", world.object_at[o]) for o in world.object_at]
    if qa == 3:
        return [Query(f"Where was the {o} before the {trail[-1]}?", trail[-2])
                for o, trail in world.object_trail.items() if len(trail) >= 2]
    if not world.gives:
        return []
    giver, obj, receiver = world.gives[-1]
    earlier = world.gives[:-1]
    kinds = [Query(f"Who received the {obj}?", receiver)]   # questions with one right answer only
    if all(g == giver for g, o, r in earlier if (o, r) == (obj, receiver)):
        kinds.append(Query(f"Who gave the {obj} to {receiver}?", giver))
    if all(r == receiver for g, o, r in earlier if (g, o) == (giver, obj)):
        kinds.append(Query(f"Who did {giver} give the {obj} to?", receiver))
    if all(o == obj for g, o, r in earlier if (g, r) == (giver, receiver)):
        kinds.append(Query(f"What did {giver} give to {receiver}?", obj))
    return kinds


def _relations(rng: random.Random, questions: int = 1) -> Example:
    """QA4: two facts about three rooms in a line; one question about one fact (the release
    files' shape), or `questions` of the four the story supports (each fact asked both ways:
    the outer room, 'What is north of the kitchen?', and the middle one, 'What is the office
    north of?'), in random order."""
    a, b, c = rng.sample(LOCATIONS, 3)
    direction = rng.choice(list(DIRECTIONS))
    facts = [(a, direction, b), (c, DIRECTIONS[direction], b)]
    rng.shuffle(facts)
    lines = [f"The {x} is {d} of the {y}." for x, d, y in facts]
    if questions == 1:
        x, d, y = rng.choice(facts)
        query = rng.choice([Query(f"What is {d} of the {y}?", x), Query(f"What is the {x} {d} of?", y)])
        return Example(" ".join(lines), (query,))
    queries = [q for x, d, y in facts for q in (Query(f"What is {d} of the {y}?", x), Query(f"What is the {x} {d} of?", y))]
    rng.shuffle(queries)
    return Example(" ".join(lines), tuple(queries[:questions]))


@dataclass
class BabiConfig:
    """bAbI QA task `qa` (1-5); `data_dir` = the en-valid-10k folder, else generated stories."""
    qa: int = 1
    data_dir: str | None = None
    story_sentences: int = 8        # generated: statements per story, at least MIN_STATEMENTS[qa]
                                    # (QA3 3, QA5 7; QA4 always has 2)
    relation_questions: int = 1     # generated QA4: questions per story, 1 (as the release files)
                                    # to 4 (each of its two facts asked both ways)

    def validate(self, where):
        if self.qa not in (1, 2, 3, 4, 5):
            raise HarnessError(f"{where}.qa = {self.qa} must be one of 1, 2, 3, 4, 5")
        if not 1 <= self.relation_questions <= 4:
            raise HarnessError(f"{where}.relation_questions = {self.relation_questions} must be 1 to 4 "
                               f"(a QA4 story supports four questions)")
        if self.story_sentences < 2:
            raise HarnessError(f"{where}.story_sentences = {self.story_sentences} must be >= 2")
        if self.data_dir is not None and not Path(self.data_dir).is_dir():
            raise HarnessError(f"{where}.data_dir = {self.data_dir!r} is not a folder; pass the bAbI "
                               f"en-valid-10k folder with --data-dir, or leave it out for generated stories")


# the fewest statements a story needs to ask a question: QA3 an object moved twice (move, pick,
# move), QA5 the five placements, a pick and a give; a shorter `story_sentences` (e.g. a
# curriculum's first stage shared by every QA task) gets this many
MIN_STATEMENTS = {1: 1, 2: 2, 3: 3, 4: 2, 5: 7}
MAX_ATTEMPTS = 10_000


def story_length(qa: int, sentences: int) -> int:
    """Statements of a generated story: `sentences`, at least the task's MIN_STATEMENTS."""
    return max(sentences, MIN_STATEMENTS[qa])


def generate_example(qa: int, rng: random.Random, sentences: int, relation_questions: int = 1) -> Example:
    """One generated story with every question it supports (QA4: `relation_questions` of its four)."""
    if qa == 4:
        return _relations(rng, relation_questions)
    for _ in range(MAX_ATTEMPTS):
        lines, world = _story(rng, qa, story_length(qa, sentences))
        queries = _questions(qa, world)
        if queries:
            rng.shuffle(queries)
            return Example(" ".join(lines), tuple(queries))
    raise HarnessError(f"no QA{qa} story of {story_length(qa, sentences)} statements with a question in "
                       f"{MAX_ATTEMPTS} tries; use more story_sentences")


@register_task
class Babi(Task):
    name = "babi"
    summary = "bAbI QA1-QA5 (release files with --data-dir, else a seeded generator of the bAbI world)"
    Config = BabiConfig

    def _file(self, split: str) -> Path:
        found = sorted(p for p in Path(self.config.data_dir).glob(f"qa{self.config.qa}_*{split}.txt") if p.is_file())
        if not found:
            raise HarnessError(f"no file qa{self.config.qa}_*{split}.txt in --data-dir {self.config.data_dir}; "
                               f"pass the bAbI en-valid-10k folder, or leave --data-dir out for generated stories")
        return found[0]

    @cached_property
    def _release(self) -> dict[str, list[Example]]:
        return {split: _read_release_file(self._file(split)) for split in ("train", "valid", "test")}

    @cached_property
    def tokenizer(self) -> Codec:
        if self.config.data_dir:
            texts = [t for examples in self._release.values() for e in examples
                     for t in (e.context, *(q.text for q in e.queries), *(q.target for q in e.queries))]
        else:
            texts = [" ".join([*ACTORS, *GIVERS, *LOCATIONS, *OBJECTS, *MOVE, *GET, *DROP, *GIVE, *DIRECTIONS,
                               "the there to of is was before Where Who What did give received . ? The"])]
        probe = Codec([], level="text").tokenizer.pre_tokenizer
        words = sorted({w for text in texts for w, _ in probe.pre_tokenize_str(text)})
        return Codec(words, level="text")

    def examples(self, split: str, count: int, seed: int) -> list[Example]:
        if split not in ("train", "valid", "test"):
            raise HarnessError(f"unknown split {split!r}; valid: train, valid, test")
        rng = random.Random(f"babi/{self.config.qa}/{split}/{seed}")
        if self.config.data_dir:
            pool = self._release[split]
            return [pool[i] for i in rng.sample(range(len(pool)), min(count, len(pool)))] if split == "train" \
                else pool[:count]
        return [generate_example(self.config.qa, rng, self.config.story_sentences, self.config.relation_questions)
                for _ in range(count)]

    def max_lengths(self) -> tuple[int, int]:
        if self.config.data_dir:
            self._release   # read (and so validate) the release files before any run starts
        words_per_sentence = 9
        return story_length(self.config.qa, self.config.story_sentences) * words_per_sentence + 8, 16
