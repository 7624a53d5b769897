"""Associative key-value retrieval, generated offline from a seed.

`paper` format (the GradMem paper's N{n}-K2V2-V62): context `!k1:v1!!k2:v2!...!kn:vn!|`,
query `?!kj:`, target `vj!|`, character tokenizer (4 specials + alphabet + `! ? : |`: 70 ids at
alphabet 62). `compact` format for small models: context `K3 V7 K1 V2 ...`, query `K3`, target
`V7`, keys and values from disjoint word-level symbol sets. Keys are unique within a context,
values may repeat, every key is asked (queries in random order). Exact match scores the value
symbols only. Splits are disjoint by construction: a context belongs to the split its hash
selects (test 10%, valid 10%, train 80%), on top of separate seeds per split.
"""
from __future__ import annotations

import hashlib
import math
import random
import string
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, Sequence

import torch

from harness.api import Batch, Codec, Example, HarnessError, Query, Task, register_task
from tasks import _kv_tensors as kv_tensors

PAPER_ALPHABET = string.ascii_lowercase + string.ascii_uppercase + string.digits
PUNCTUATION = "!?:|"
SPLIT_BUCKETS = {"test": (0,), "valid": (1,), "train": tuple(range(2, 10))}


@dataclass
class KVRetrievalConfig:
    """Paper setting: format paper, key_length 2, value_length 2, alphabet 62."""
    format: Literal["paper", "compact"] = "paper"
    pairs: int = 16
    key_length: int = 2
    value_length: int = 2
    alphabet: int = 62          # paper format: first `alphabet` characters of a-z A-Z 0-9
    key_symbols: int = 16       # compact format: number of key symbols
    value_symbols: int = 16     # compact format: number of value symbols
    train_key_overlap: float = 0.0  # training contexts only: chance that a key after the first is
                                    # an earlier key with one symbol redrawn (a key matched on one
                                    # symbol then fails; validation and test keep the plain draw)
    generator: int = 1          # 1: drawn as text (shipped runs); 2: drawn as tensors, the same
                                # format and rules with other draws, a training batch in ~1 ms
                                # (tasks/_kv_tensors.py)

    def validate(self, where):
        for key in ("pairs", "key_length", "value_length", "alphabet", "key_symbols", "value_symbols"):
            if getattr(self, key) < 1:
                raise HarnessError(f"{where}.{key} = {getattr(self, key)!r} must be >= 1")
        if self.alphabet > len(PAPER_ALPHABET):
            raise HarnessError(f"{where}.alphabet = {self.alphabet} exceeds {len(PAPER_ALPHABET)} characters")
        if self.generator not in (1, 2):
            raise HarnessError(f"{where}.generator = {self.generator!r}; valid: 1 (text), 2 (tensors)")
        if not 0.0 <= self.train_key_overlap <= 1.0:
            raise HarnessError(f"{where}.train_key_overlap = {self.train_key_overlap!r} must be in [0, 1]")
        if self.train_key_overlap and self.key_length < 2:
            raise HarnessError(f"{where}.train_key_overlap needs key_length >= 2 (keys of one symbol cannot share a part)")
        symbols = self.alphabet if self.format == "paper" else self.key_symbols
        distinct = symbols ** self.key_length
        if self.pairs > distinct:
            raise HarnessError(f"{where}: pairs = {self.pairs} exceeds the {distinct} distinct keys "
                               f"({symbols} symbols, key_length {self.key_length})")


def split_of(context: str) -> str:
    bucket = int.from_bytes(hashlib.blake2b(context.encode(), digest_size=4).digest(), "little") % 10
    return next(name for name, buckets in SPLIT_BUCKETS.items() if bucket in buckets)


@register_task
class KVRetrieval(Task):
    name = "kv_retrieval"
    summary = "associative key-value retrieval (paper N{n}-K{k}V{v}-V{alphabet} or compact format)"
    Config = KVRetrievalConfig
    supports_pretrained_tokenizer = False   # exact match scores value characters by position

    @cached_property
    def key_symbols(self) -> list[str]:
        c = self.config
        if c.format == "paper":
            return list(PAPER_ALPHABET[:c.alphabet])
        return [f"K{i}" for i in range(c.key_symbols)]

    @cached_property
    def value_symbols(self) -> list[str]:
        c = self.config
        if c.format == "paper":
            return list(PAPER_ALPHABET[:c.alphabet])
        return [f"V{i}" for i in range(c.value_symbols)]

    @cached_property
    def tokenizer(self) -> Codec:
        if self.config.format == "paper":
            return Codec(list(PAPER_ALPHABET[:self.config.alphabet]) + list(PUNCTUATION), level="char")
        return Codec(self.key_symbols + self.value_symbols, level="symbol")

    def _render(self, pairs: list[tuple[tuple[str, ...], tuple[str, ...]]], order: list[int]) -> Example:
        if self.config.format == "paper":
            context = "".join(f"!{''.join(k)}:{''.join(v)}!" for k, v in pairs) + "|"
            queries = tuple(Query(f"?!{''.join(pairs[j][0])}:", f"{''.join(pairs[j][1])}!|") for j in order)
        else:
            context = " ".join(" ".join([*k, *v]) for k, v in pairs)
            queries = tuple(Query(" ".join(pairs[j][0]), " ".join(pairs[j][1])) for j in order)
        return Example(context, queries)

    def _one(self, rng: random.Random, overlap: float = 0.0) -> Example:
        c = self.config
        keys: list[tuple[str, ...]] = []
        seen = set()
        while len(keys) < c.pairs:
            if keys and overlap and rng.random() < overlap:
                key = list(rng.choice(keys))
                key[rng.randrange(c.key_length)] = rng.choice(self.key_symbols)
                key = tuple(key)
            else:
                key = tuple(rng.choice(self.key_symbols) for _ in range(c.key_length))
            if key not in seen:
                seen.add(key)
                keys.append(key)
        values = [tuple(rng.choice(self.value_symbols) for _ in range(c.value_length)) for _ in keys]
        order = list(range(c.pairs))
        rng.shuffle(order)
        return self._render(list(zip(keys, values)), order)

    def examples(self, split: str, count: int, seed: int) -> list[Example]:
        if split not in SPLIT_BUCKETS:
            raise HarnessError(f"unknown split {split!r}; valid: {', '.join(SPLIT_BUCKETS)}")
        if self.config.generator == 2:
            return self._decode(self._draw(split, count, seed))
        rng = random.Random(f"kv_retrieval/{split}/{seed}")
        out: list[Example] = []
        attempts = 0
        overlap = self.config.train_key_overlap if split == "train" else 0.0
        while len(out) < count:
            example = self._one(rng, overlap)
            attempts += 1
            if split_of(example.context) == split:
                out.append(example)
            elif attempts > 50 * count + 1000:
                raise HarnessError(f"cannot draw {count} {split} examples for {self.config}")
        return out

    # ------------------------------------------------------------ generator 2: tensors
    def train_batch(self, count: int, seed: int, queries_per_context: int | str = "all") -> Batch | None:
        """Generator 2: `count` training contexts and their queries as a Batch, drawn as tensors
        (equal to `collate(self.examples("train", count, seed), self, queries_per_context)`)."""
        if self.config.generator != 2:
            return None
        return self._batch(self._draw("train", count, seed), queries_per_context)

    @cached_property
    def _layout(self) -> dict:
        """Token ids of one context pair and one read, with the key and value slots left at 0 and
        where they start; the symbol ids of keys and values; the context's trailer."""
        c, vocab = self.config, self.tokenizer.vocab
        keys, values = [None] * c.key_length, [None] * c.value_length
        if c.format == "paper":
            chunk, trailer, read = ["!", *keys, ":", *values, "!"], ["|"], ["?", "!", *keys, ":", *values, "!", "|"]
            chunk_slots, read_slots = (1, 2 + c.key_length), (2, 3 + c.key_length)
        else:
            chunk, trailer, read = [*keys, *values], [], [*keys, *values]
            chunk_slots, read_slots = (0, c.key_length), (0, c.key_length)
        ids = lambda tokens: torch.tensor([vocab[t] if t else 0 for t in tokens], dtype=torch.long)   # noqa: E731
        position = torch.arange(len(read))
        query_length = read_slots[1]   # the target starts at the value
        return {"chunk": ids(chunk), "trailer": ids(trailer), "read": ids(read), "chunk_slots": chunk_slots,
                "read_slots": read_slots, "target": position >= query_length,
                "score": (position >= query_length) & (position < query_length + c.value_length),
                "key_ids": torch.tensor([vocab[k] for k in self.key_symbols]),
                "value_ids": torch.tensor([vocab[v] for v in self.value_symbols]), "roles": {}}

    def _fill(self, template: torch.Tensor, slots: tuple[int, int], keys: torch.Tensor, values: torch.Tensor):
        """`template` repeated over the leading shape of `keys`, with the key and value ids in their slots."""
        layout, c = self._layout, self.config
        out = template.repeat(*keys.shape[:-1], 1)
        out[..., slots[0]:slots[0] + c.key_length] = layout["key_ids"][keys]
        out[..., slots[1]:slots[1] + c.value_length] = layout["value_ids"][values]
        return out

    def _context_ids(self, draw: kv_tensors.Draw) -> torch.Tensor:
        layout, rows = self._layout, draw.keys.shape[0]
        chunks = self._fill(layout["chunk"], layout["chunk_slots"], draw.keys, draw.values).reshape(rows, -1)
        return torch.cat([chunks, layout["trailer"].expand(rows, -1)], 1) if len(layout["trailer"]) else chunks

    def _draw(self, split: str, count: int, seed: int) -> kv_tensors.Draw:
        """`count` contexts of `split`: rows drawn in batches, kept where their ids hash to the split."""
        c = self.config
        gen = kv_tensors.generator_for(split, seed)
        symbols = (len(self.key_symbols), c.key_length, len(self.value_symbols), c.value_length)
        overlap = c.train_key_overlap if split == "train" else 0.0
        share = kv_tensors.SPLIT_OF_BUCKET.count(split) / 10
        kept, have = [], 0
        for _ in range(100):
            draw = kv_tensors.draw(int((count - have) / share * 1.1) + 4, c.pairs, *symbols, overlap, gen)
            draw.context_ids = self._context_ids(draw)
            mine = kv_tensors.BUCKETS_OF_SPLIT[split][kv_tensors.split_bucket(draw.context_ids)]
            kept.append(kv_tensors.select(draw, mine.nonzero().squeeze(1)[:count - have]))
            have += len(kept[-1].keys)
            if have == count:
                return kv_tensors.concat(kept)
        raise HarnessError(f"cannot draw {count} {split} examples for {self.config}")

    def _batch(self, draw: kv_tensors.Draw, queries_per_context: int | str) -> Batch:
        c, layout = self.config, self._layout
        rows = draw.order.shape[0]
        asked = draw.order if queries_per_context == "all" else draw.order[:, :queries_per_context]
        per_context = asked.shape[1]
        keys = draw.keys.gather(1, asked[..., None].expand(-1, -1, c.key_length)).reshape(-1, c.key_length)
        values = draw.values.gather(1, asked[..., None].expand(-1, -1, c.value_length)).reshape(-1, c.value_length)
        read_ids = self._fill(layout["read"], layout["read_slots"], keys, values)
        context_ids = draw.context_ids
        length = context_ids.shape[1]
        if length not in layout["roles"]:
            layout["roles"][length] = torch.tensor(self.context_roles(range(length)))
        reads = len(read_ids)
        return Batch(context_ids, torch.ones_like(context_ids, dtype=torch.bool), read_ids,
                     torch.ones_like(read_ids, dtype=torch.bool), layout["target"].expand(reads, -1),
                     layout["score"].expand(reads, -1), torch.arange(rows).repeat_interleave(per_context),
                     layout["roles"][length].expand(rows, -1))

    def _decode(self, draw: kv_tensors.Draw) -> list[Example]:
        keys, values, order = draw.keys.tolist(), draw.values.tolist(), draw.order.tolist()
        k_symbols, v_symbols = self.key_symbols, self.value_symbols
        return [self._render([(tuple(k_symbols[i] for i in key), tuple(v_symbols[i] for i in value))
                              for key, value in zip(row_keys, row_values)], row_order)
                for row_keys, row_values, row_order in zip(keys, values, order)]

    def chance_loss(self) -> float:
        """A uniform guess over the value symbols at each value token, the format tokens known."""
        symbols = self.config.alphabet if self.config.format == "paper" else self.config.value_symbols
        target_tokens = self.config.value_length + (2 if self.config.format == "paper" else 0)  # `!|`
        return self.config.value_length * math.log(symbols) / target_tokens

    def score_mask(self, target_ids: Sequence[int]) -> list[bool]:
        value_tokens = self.config.value_length
        return [i < value_tokens for i in range(len(target_ids))]

    def context_roles(self, context_ids: Sequence[int]) -> list[int]:
        c = self.config
        if c.format == "compact":
            chunk = [1] * c.key_length + [2] * c.value_length
        else:
            chunk = [0] + [1] * c.key_length + [0] + [2] * c.value_length + [0]
        roles = chunk * c.pairs
        return (roles + [0] * len(context_ids))[:len(context_ids)]

    def max_lengths(self) -> tuple[int, int]:
        c = self.config
        if c.format == "paper":
            return c.pairs * (c.key_length + c.value_length + 3) + 1, (c.key_length + 3) + (c.value_length + 2)
        return c.pairs * (c.key_length + c.value_length), c.key_length + c.value_length
