"""Short SQuAD in the context-removal setting, and the standard SQuAD exact match / F1.

Reads SQuAD v1.1 JSON (`train-v1.1.json`, `dev-v1.1.json` in `--data-dir`, or a Hugging Face
`squad` dataset already in the local cache); no download is attempted. Short SQuAD keeps only
the sentence(s) of the paragraph that contain the first answer span: sentences are split by a
rule (a `.`, `!` or `?`, optionally followed by a closing quote or bracket, then white space
and an upper-case letter, digit or opening quote), and every sentence overlapping the span is
kept. query = the question, target = the first answer; all answers are kept for EM/F1.
Splits: train = the train file; valid and test = the two halves of the dev file (by question
id hash). The paper reports the validation split.
"""
from __future__ import annotations

import collections
import hashlib
import json
import random
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from harness.contract import Example, Query, Task
from harness.data import Codec
from harness.errors import HarnessError
from harness.registry import register_task
from harness.text_metrics import normalize_answer, squad_em_f1  # noqa: F401 (re-exported)

SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[A-Z0-9\"'(])")


# ------------------------------------------------------------------ data
def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences of a paragraph."""
    spans, start = [], 0
    for match in SENTENCE_END.finditer(text):
        spans.append((start, match.start() + len(match.group(0).rstrip())))
        start = match.end()
    spans.append((start, len(text)))
    return [(s, e) for s, e in spans if text[s:e].strip()]


def short_context(paragraph: str, answer_start: int, answer_text: str) -> str:
    """The sentence(s) of `paragraph` that overlap the answer span."""
    end = answer_start + len(answer_text)
    kept = [paragraph[s:e].strip() for s, e in sentence_spans(paragraph) if s < end and e > answer_start]
    return " ".join(kept) if kept else paragraph.strip()


def read_squad(data: dict) -> list[Example]:
    """Short SQuAD examples from a parsed SQuAD v1.1 JSON object."""
    examples = []
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                answers = qa.get("answers") or []
                if not answers:
                    continue
                first = answers[0]
                context = short_context(paragraph["context"], first["answer_start"], first["text"])
                references = tuple(dict.fromkeys(a["text"] for a in answers))
                examples.append(Example(context, (Query(qa["question"], first["text"], references),)))
    return examples


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise HarnessError(f"cannot read SQuAD file {path}: {error}") from None


@dataclass
class SquadConfig:
    """Short SQuAD from SQuAD v1.1 in `data_dir` (train-v1.1.json, dev-v1.1.json)."""
    data_dir: str | None = None
    vocabulary: int = 20000          # word-level tokenizer: most frequent training words

    def validate(self, where):
        if self.data_dir is None:
            raise HarnessError("squad needs SQuAD v1.1: pass --data-dir DIR with train-v1.1.json and "
                               "dev-v1.1.json (nothing is downloaded)")
        folder = Path(self.data_dir)
        missing = [n for n in ("train-v1.1.json", "dev-v1.1.json") if not (folder / n).is_file()]
        if missing:
            raise HarnessError(f"{where}.data_dir = {self.data_dir!r} lacks {', '.join(missing)}; "
                               f"pass --data-dir DIR with the SQuAD v1.1 files")


def _split_of(question: str) -> str:
    return "valid" if hashlib.blake2b(question.encode(), digest_size=2).digest()[0] % 2 == 0 else "test"


@register_task
class Squad(Task):
    name = "squad"
    summary = "Short SQuAD: the answer's sentence(s) as context, SQuAD v1.1 from --data-dir"
    Config = SquadConfig

    @cached_property
    def _splits(self) -> dict[str, list[Example]]:
        folder = Path(self.config.data_dir)
        train = read_squad(_load_json(folder / "train-v1.1.json"))
        dev = read_squad(_load_json(folder / "dev-v1.1.json"))
        return {"train": train,
                "valid": [e for e in dev if _split_of(e.queries[0].text + e.context) == "valid"],
                "test": [e for e in dev if _split_of(e.queries[0].text + e.context) == "test"]}

    @cached_property
    def tokenizer(self) -> Codec:
        probe = Codec([], level="words").tokenizer.pre_tokenizer
        counts = collections.Counter(
            w for e in self._splits["train"] for text in (e.context, e.queries[0].text, e.queries[0].target)
            for w, _ in probe.pre_tokenize_str(text))
        return Codec(sorted(w for w, _ in counts.most_common(self.config.vocabulary)), level="words")

    def examples(self, split: str, count: int, seed: int) -> list[Example]:
        if split not in self._splits:
            raise HarnessError(f"unknown split {split!r}; valid: train, valid, test")
        pool = self._splits[split]
        if split == "train":
            rng = random.Random(f"squad/{seed}")
            return [pool[i] for i in rng.sample(range(len(pool)), min(count, len(pool)))]
        return pool[:count]

    def max_lengths(self) -> tuple[int, int]:
        return 0, 0   # measured on the data at run time
