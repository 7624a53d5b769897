"""KV retrieval drawn as tensors (generator 2): a batch of contexts and every query, in token ids,
by vectorised torch code on a torch.Generator seeded from (split, seed) alone.

The format and its rules are those of the string generator (generator 1, `kv_retrieval.py`):
keys unique within a context, values drawn independently (they may repeat), every key asked in a
random order, and in training contexts with `train_key_overlap` p a key after the first is, with
chance p, an earlier key with one symbol redrawn. The draws differ, so shipped runs (generator 1)
keep theirs. Two differences of detail: an overlapping key copies an earlier key drawn plainly
(generator 1 may copy an overlapping one), and a context's split is chosen by a hash of its token
ids (`split_bucket`) instead of one of its text; both generators keep the splits disjoint.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

SPLIT_OF_BUCKET = ("test", "valid") + ("train",) * 8   # test 10%, valid 10%, train 80%
BUCKETS_OF_SPLIT = {split: torch.tensor([s == split for s in SPLIT_OF_BUCKET]) for split in set(SPLIT_OF_BUCKET)}
_HASH_PRIME = 2_147_483_647


def generator_for(split: str, seed: int) -> torch.Generator:
    """A CPU generator seeded from (split, seed) alone."""
    digest = hashlib.blake2b(f"kv_retrieval/{split}/{seed}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


_WEIGHTS: dict[int, torch.Tensor] = {}


def split_bucket(context_ids: torch.Tensor) -> torch.Tensor:
    """Bucket 0-9 of each row of (B, L) context ids: a fixed random linear hash modulo a prime."""
    length = context_ids.shape[1]
    if length not in _WEIGHTS:
        _WEIGHTS[length] = torch.randint(1, _HASH_PRIME, (length,), generator=torch.Generator().manual_seed(7))
    return (context_ids @ _WEIGHTS[length]) % _HASH_PRIME % 10


@dataclass
class Draw:
    """Symbol indices of B contexts: keys (B, n, key_length), values (B, n, value_length), and the
    order in which each context's keys are asked (B, n)."""
    keys: torch.Tensor
    values: torch.Tensor
    order: torch.Tensor
    context_ids: torch.Tensor | None = None   # (B, L) once rendered


def _later_duplicates(codes: torch.Tensor) -> torch.Tensor:
    """(B, n) bool: the code equals one at an earlier position of its row."""
    ordered, position = codes.sort(dim=1, stable=True)   # equal codes side by side, earliest first
    repeated = torch.zeros_like(codes, dtype=torch.bool)
    repeated[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    return torch.zeros_like(repeated).scatter_(1, position, repeated)


def _digits(codes: torch.Tensor, symbols: int, length: int) -> torch.Tensor:
    powers = symbols ** torch.arange(length - 1, -1, -1)
    return codes[..., None] // powers % symbols


def _codes(digits: torch.Tensor, symbols: int) -> torch.Tensor:
    length = digits.shape[-1]
    return (digits * symbols ** torch.arange(length - 1, -1, -1)).sum(-1)


def draw(rows: int, pairs: int, key_symbols: int, key_length: int, value_symbols: int, value_length: int,
         overlap: float, gen: torch.Generator) -> Draw:
    """Symbol indices of `rows` contexts (see the module docstring for the rules)."""
    space = key_symbols ** key_length
    if space <= 4 * pairs:   # a small key space: a random permutation of it
        codes = torch.rand(rows, space, generator=gen).argsort(1)[:, :pairs]
    else:
        codes = torch.randint(space, (rows, pairs), generator=gen)
    if overlap and pairs > 1:
        digits = _digits(codes, key_symbols, key_length)
        copies = torch.rand(rows, pairs, generator=gen) < overlap
        copies[:, 0] = False
        plain = ~copies
        # the parent of a copy: uniform among the plainly drawn keys before it
        before = plain.long().cumsum(1) - plain.long()
        rank = (torch.rand(rows, pairs, generator=gen) * before).long()
        plain_positions = (~plain).long().argsort(dim=1, stable=True)
        parent = plain_positions.gather(1, rank.clamp(max=pairs - 1))
        copied = digits.gather(1, parent[..., None].expand(-1, -1, key_length)).clone()
        symbol = torch.randint(key_length, (rows, pairs), generator=gen)
        redrawn = torch.randint(key_symbols, (rows, pairs), generator=gen)
        copied.scatter_(2, symbol[..., None], redrawn[..., None])
        codes = torch.where(copies, _codes(copied, key_symbols), codes)
    while True:   # a key equal to an earlier one of its context is drawn again, plainly
        repeated = _later_duplicates(codes)
        count = int(repeated.sum())
        if not count:
            break
        codes[repeated] = torch.randint(space, (count,), generator=gen)
    keys = _digits(codes, key_symbols, key_length)
    values = torch.randint(value_symbols, (rows, pairs, value_length), generator=gen)
    order = torch.rand(rows, pairs, generator=gen).argsort(1)
    return Draw(keys, values, order)


def select(draw_: Draw, rows: torch.Tensor) -> Draw:
    return Draw(*(None if part is None else part[rows] for part in astuple(draw_)))


def concat(draws: list[Draw]) -> Draw:
    return draws[0] if len(draws) == 1 else Draw(*(None if parts[0] is None else torch.cat(parts)
                                                   for parts in zip(*map(astuple, draws))))


def astuple(draw_: Draw) -> tuple:
    return draw_.keys, draw_.values, draw_.order, draw_.context_ids
