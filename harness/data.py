"""Tokenise Examples into padded context / read (query + target) tensors.

Everything is right-padded: with causal attention, padding after the real tokens never
changes them, so memory-prefix methods need no attention mask and real positions stay 0..L-1.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal, Sequence

import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers

from harness.contract import Example

SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")


class Codec:
    """A character- or word-level tokenizer over a fixed symbol list, built with `tokenizers`.

    level: `char` (every character a token), `symbol` (whitespace-separated symbols such as
    `K3 V7`) or `text` (natural text: words and punctuation split apart).

    Ids 0-3 are <pad>, <unk>, <bos>, <eos>; the symbols follow in the order given.
    """

    def __init__(self, symbols: Sequence[str], level: Literal["char", "symbol", "text"] = "char"):
        vocab = {token: i for i, token in enumerate([*SPECIALS, *symbols])}
        if len(vocab) != len(SPECIALS) + len(symbols):
            raise ValueError("duplicate symbols in codec")
        self.level = level
        self.tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        self.tokenizer.pre_tokenizer = {
            "char": pre_tokenizers.Split(Regex("."), behavior="isolated"),   # every character
            "symbol": pre_tokenizers.WhitespaceSplit(),                      # space-separated symbols
            "text": pre_tokenizers.Whitespace(),                             # words and punctuation
        }[level]
        self.id_to_token = {i: t for t, i in vocab.items()}
        self.vocab = vocab
        self.pad_id = vocab["<pad>"]
        self.unk_id = vocab["<unk>"]

    @property
    def vocab_size(self) -> int:
        return len(self.id_to_token)

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if self.level == "char" and not any("\n" in text for text in texts):
            # what the tokenizer computes (one token per character), without its per-call overhead
            # (it was most of a GPU training step at the paper's KV shapes); `.` skips newlines
            lookup, unk = self.vocab.get, self.unk_id
            return [[lookup(ch, unk) for ch in text] for text in texts]
        return [e.ids if text else [] for text, e in zip(texts, self.tokenizer.encode_batch(list(texts)))]

    def decode(self, ids: Sequence[int]) -> str:
        tokens = [self.id_to_token[int(i)] for i in ids if int(i) != self.pad_id]
        return ("" if self.level == "char" else " ").join(tokens)


class PretrainedCodec:
    """A pretrained model's tokenizer behind the Codec interface.

    Targets get a leading space (`space_before_target`), as a continuation of the query would in
    natural text with a BPE tokenizer.
    """
    space_before_target = True

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
        self.unk_id = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else -1

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True).strip()


@dataclass
class Batch:
    """A batch: B contexts and Q >= B reads (query + target), each read pointing at its context."""
    context_ids: torch.Tensor     # (B, Lc) long, right-padded
    context_mask: torch.Tensor    # (B, Lc) bool, True on real tokens
    read_ids: torch.Tensor        # (Q, Lr) long: query tokens then target tokens, right-padded
    read_mask: torch.Tensor       # (Q, Lr) bool
    target_mask: torch.Tensor     # (Q, Lr) bool, True on target tokens (the loss)
    score_mask: torch.Tensor      # (Q, Lr) bool, True on target tokens exact match scores
    context_index: torch.Tensor   # (Q,) long: the context of each read
    context_roles: torch.Tensor   # (B, Lc) long: role of each context token (contract.ROLE_NAMES)

    def to(self, device, non_blocking: bool = False) -> "Batch":
        return Batch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)})


def _pad(rows: list[list[int]], pad_id: int, min_len: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (N, L) ids and their mask, built in one tensor call (a call per row made
    collation the slowest part of a GPU training step)."""
    lengths = [len(row) for row in rows]
    length = max([min_len, *lengths])
    ids = torch.tensor([list(row) + [pad_id] * (length - len(row)) for row in rows], dtype=torch.long)
    mask = torch.arange(length)[None, :] < torch.tensor(lengths, dtype=torch.long)[:, None]
    return ids.reshape(len(rows), length), mask


def selected_queries(example: Example, queries_per_context: int | str) -> tuple:
    """The queries of an example a batch reads: all, or the first `queries_per_context`."""
    return example.queries if queries_per_context == "all" else example.queries[:queries_per_context]


def collate(examples: Sequence[Example], task, queries_per_context: int | str = "all") -> Batch:
    """Tokenise a list of examples; keeps the first `queries_per_context` queries of each."""
    codec = task.tokenizer
    contexts = codec.encode_batch([e.context for e in examples])
    asked, index = [], []
    for i, example in enumerate(examples):
        queries = selected_queries(example, queries_per_context)
        if not queries:
            raise ValueError("an example has no query")
        asked += queries
        index += [i] * len(queries)
    space = " " if getattr(codec, "space_before_target", False) else ""
    reads, targets, scores = [], [], []
    for query, query_ids, target_ids in zip(asked, codec.encode_batch([q.text for q in asked]),
                                            codec.encode_batch([space + q.target for q in asked])):
        if not query_ids or not target_ids:
            raise ValueError(f"empty query or target in {query!r}")
        reads.append(query_ids + target_ids)
        targets.append([False] * len(query_ids) + [True] * len(target_ids))
        scores.append([False] * len(query_ids) + list(task.score_mask(target_ids)))
    context_ids, context_mask = _pad(contexts, codec.pad_id)
    read_ids, read_mask = _pad(reads, codec.pad_id)
    target_mask = _pad([[int(t) for t in row] for row in targets], 0)[0].bool()
    score_mask = _pad([[int(s) for s in row] for row in scores], 0)[0].bool()
    context_roles = _pad([task.context_roles(c) for c in contexts], 0)[0]
    return Batch(context_ids, context_mask, read_ids, read_mask, target_mask, score_mask,
                 torch.tensor(index, dtype=torch.long), context_roles)


_FILE_CACHE: dict[tuple, object] = {}


def read_once(path, reader, what: str):
    """`reader(path)`, cached per file version (path, mtime, size): the feasibility check builds a
    task once per run of a sweep, and each build reads (and so validates) its data files."""
    from pathlib import Path
    from harness.errors import HarnessError
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as error:
        raise HarnessError(f"cannot read {what} {path}: {error.strerror or error}") from None
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _FILE_CACHE:
        _FILE_CACHE[key] = reader(path)
    return _FILE_CACHE[key]
