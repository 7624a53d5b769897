"""Short SQuAD in the context-removal setting, and the standard SQuAD exact match / F1.

Reads SQuAD v1.1 JSON (`train-v1.1.json`, `dev-v1.1.json` in `--data-dir`); no download is
attempted. A file that is not UTF-8, not JSON (e.g. truncated) or lacks a SQuAD field is an
error naming the file and the field, raised when the suite is expanded. Short SQuAD keeps only
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

from harness.api import Codec, Example, HarnessError, Query, Task, read_once, register_task
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


_KINDS = {list: "list", str: "string", int: "integer"}


def _field(node, key: str, kind: type, where: str, source):
    """node[key] checked to be a `kind`; else a HarnessError naming the file and the field."""
    if not isinstance(node, dict):
        raise HarnessError(f"{source}: {where} is a {type(node).__name__}, expected a JSON object "
                           f"with {key!r} (SQuAD v1.1 format)")
    if key not in node:
        raise HarnessError(f"{source}: {where} has no {key!r} (SQuAD v1.1 format)")
    value = node[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise HarnessError(f"{source}: {where}.{key} is a {type(value).__name__}, expected a "
                           f"{_KINDS[kind]} (SQuAD v1.1 format)")
    return value


def read_squad(data: dict, source: str | Path = "SQuAD JSON") -> list[Example]:
    """Short SQuAD examples from a parsed SQuAD v1.1 JSON object; `source` names it in errors.

    Questions with an empty `answers` list are skipped; a missing field, a field of the wrong
    type or an answer start outside its paragraph is a HarnessError naming the source and the
    field, as is a file with no answered question.
    """
    examples = []
    for i, article in enumerate(_field(data, "data", list, "the top level", source)):
        for j, paragraph in enumerate(_field(article, "paragraphs", list, f"data[{i}]", source)):
            where = f"data[{i}].paragraphs[{j}]"
            text = _field(paragraph, "context", str, where, source)
            for k, qa in enumerate(_field(paragraph, "qas", list, where, source)):
                at = f"{where}.qas[{k}]" + (f" (id {qa['id']})" if isinstance(qa, dict) and "id" in qa else "")
                question = _field(qa, "question", str, at, source)
                answers = _field(qa, "answers", list, at, source)
                spans = []
                for n, answer in enumerate(answers):
                    answer_text = _field(answer, "text", str, f"{at}.answers[{n}]", source)
                    start = _field(answer, "answer_start", int, f"{at}.answers[{n}]", source)
                    if not 0 <= start < len(text):
                        raise HarnessError(f"{source}: {at}.answers[{n}].answer_start = {start} is outside its "
                                           f"paragraph of {len(text)} characters")
                    spans.append((start, answer_text))
                if not spans:
                    continue
                (start, target), references = spans[0], tuple(dict.fromkeys(t for _, t in spans))
                examples.append(Example(short_context(text, start, target), (Query(question, target, references),)))
    if not examples:
        raise HarnessError(f"{source}: no answered question (SQuAD v1.1 format: data[].paragraphs[].qas[] "
                           f"with answers[] of text and answer_start)")
    return examples


def _load_json(path: Path):
    try:
        data = path.read_bytes()
    except OSError as error:
        raise HarnessError(f"cannot read SQuAD file {path}: {error.strerror or error}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise HarnessError(f"{path}: not UTF-8 text (byte {data[error.start]:#04x} at offset {error.start}); "
                           f"expected SQuAD v1.1 JSON") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        ends_early = error.pos >= len(text.rstrip()) or error.msg.startswith("Unterminated string")
        truncated = " (the file ends early: truncated?)" if ends_early else ""
        raise HarnessError(f"{path}:{error.lineno}:{error.colno}: not valid JSON{truncated}: {error.msg}") from None


def read_squad_file(path: Path) -> list[Example]:
    """Short SQuAD examples of a SQuAD v1.1 JSON file, read once per file version."""
    return read_once(path, lambda p: read_squad(_load_json(p), p), "SQuAD file")


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
        train = read_squad_file(folder / "train-v1.1.json")
        dev = read_squad_file(folder / "dev-v1.1.json")
        valid = [e for e in dev if _split_of(e.queries[0].text + e.context) == "valid"]
        test = [e for e in dev if _split_of(e.queries[0].text + e.context) == "test"]
        if not valid or not test:
            raise HarnessError(f"{folder / 'dev-v1.1.json'}: its {len(dev)} answered question(s) all fall in the "
                               f"{'test' if not valid else 'valid'} half; the valid and test splits need one each")
        return {"train": train, "valid": valid, "test": test}

    @cached_property
    def tokenizer(self) -> Codec:
        probe = Codec([], level="text").tokenizer.pre_tokenizer
        counts = collections.Counter(
            w for e in self._splits["train"] for text in (e.context, e.queries[0].text, e.queries[0].target)
            for w, _ in probe.pre_tokenize_str(text))
        return Codec(sorted(w for w, _ in counts.most_common(self.config.vocabulary)), level="text")

    def examples(self, split: str, count: int, seed: int) -> list[Example]:
        if split not in self._splits:
            raise HarnessError(f"unknown split {split!r}; valid: train, valid, test")
        pool = self._splits[split]
        if split == "train":
            rng = random.Random(f"squad/{seed}")
            return [pool[i] for i in rng.sample(range(len(pool)), min(count, len(pool)))]
        return pool[:count]

    def max_lengths(self) -> tuple[int, int]:
        self._splits   # read (and so validate) both files before any run starts
        return 0, 0    # not bounded: sequence lengths are not checked against the backbone for SQuAD
