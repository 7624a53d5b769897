"""The write/read contract: Query, Example, Memory, Method and Task base classes.

A Method WRITES a batch of contexts into a Memory and READS each query from that memory
alone; the context never reaches `read` (see `harness.pipeline.write_then_read`).
"""
from __future__ import annotations

import abc
import math
import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class Query:
    """One question about a context; `answers` are extra references for text metrics."""
    text: str
    target: str
    answers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Example:
    """One context and one or more queries about it."""
    context: str
    queries: tuple[Query, ...]


def _map_tensors(state: Any, fn) -> Any:
    """Apply `fn` to every tensor of a nested tuple/list/dict state."""
    if isinstance(state, torch.Tensor):
        return fn(state)
    if isinstance(state, (list, tuple)):
        return type(state)(_map_tensors(s, fn) for s in state)
    if isinstance(state, dict):
        return {k: _map_tensors(v, fn) for k, v in state.items()}
    return state


@dataclass
class Memory:
    """The state that crosses from write to read.

    state:  tensors whose first dimension is the batch of contexts (any nesting of
            tuples/lists/dicts); `select` indexes them along that dimension.
    floats: size of one context's memory in numbers (same units for every method).
    log:    what the write logged, e.g. per-step inner loss and gradient norm (tensors are fine:
            nothing reads them inside a training step).
    aux_loss: a training-only loss term the method adds to the READ loss (e.g. RMT's
            reconstruction of the context from memory); None for most methods.
    """
    state: Any
    floats: int
    log: dict = field(default_factory=dict)
    aux_loss: Any = None

    def select(self, index: torch.Tensor) -> "Memory":
        """Memory for each query: row i is the memory of context index[i]."""
        return dataclasses.replace(self, state=_map_tensors(self.state, lambda t: t.index_select(0, index)))


class Method(nn.Module, abc.ABC):
    """A memory method around a backbone.

    Subclasses set `name`, `summary` (one line: what the memory is) and `Config` (a dataclass
    of the method's options), and implement `write` and `read`.
    """
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    bound: ClassVar[str | None] = None   # "upper" / "lower": a reference every figure panel draws
    Config: ClassVar[type] = None
    archs: ClassVar[tuple[str, ...]] = ("llama",)   # backbone architectures it works with

    def __init__(self, config, backbone):
        super().__init__()
        self.config = config
        self.backbone = backbone

    @abc.abstractmethod
    def write(self, context_ids: torch.Tensor, context_mask: torch.Tensor,
              write_setting: int | None = None) -> Memory:
        """Write a right-padded batch of contexts (B, Lc) into memory.

        `write_setting`: the value of the method's write axis (`write_axis`) to use instead of its
        trained one (GradMem: K, RMT: passes); None = its own. The pipeline passes it positionally.
        """

    @abc.abstractmethod
    def read(self, memory: Memory, read_ids: torch.Tensor, read_mask: torch.Tensor) -> torch.Tensor:
        """Logits (Q, Lr, V) for a right-padded batch of query+target tokens (Q, Lr).

        logits[:, j] is the prediction of read_ids[:, j] from the memory and read_ids[:, :j].
        """

    def train_logits(self, batch) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """Training only: the logits write-then-read would give, computed another way (full
        context: one pass over [C; Q; Y]), and the training-only term the write would attach as
        `aux_loss` (or None); None (the default) makes the pipeline write and read."""
        return None

    @classmethod
    def sequence_length(cls, method_spec: dict, context_len: int, read_len: int) -> int:
        """Longest sequence (tokens + memory slots) the backbone sees for these task lengths;
        checked against the backbone's max_positions before a run starts. Default: [C; Q; Y]."""
        return context_len + read_len

    def eval_write_settings(self) -> list[int | None]:
        """Write-axis values evaluated after training (unless the eval config lists its own);
        None = the method's own."""
        return [None]

    def write_compute(self, write_setting: int | None = None) -> dict:
        """Compute of one write at this write-axis value (None = the method's own), in backbone
        passes over the context."""
        return {"forward": 1, "backward": 0}

    # Self-description, read by reports and figures from each run's summary (summary["describe"]).
    # Class methods of the config alone, so shipped results can be described without a backbone.
    @classmethod
    def display_label(cls, config) -> str:
        """The method's name in tables and figures for this config (default: its registered name)."""
        return cls.name

    @classmethod
    def write_axis(cls, config) -> dict | None:
        """The write-compute axis, or None when the method has none.

        {"name": what the axis counts (e.g. 'write steps'), "field": the config field that sets it
        in training, "trained": its value in this config}. The values a run was evaluated at are
        the keys of its stages' `eval` ('default' = the trained value).
        """
        return None

    @classmethod
    def describe(cls, config) -> dict:
        """{"label": display label, "axis": write axis or None}: what the runner records."""
        axis = cls.write_axis(config)
        return {"label": cls.display_label(config), "axis": None if axis is None else dict(axis)}


ROLE_NAMES = ("other", "key", "value")   # roles of context tokens, for the inner-loss split


@property
def _override_aware_tokenizer(task):
    codec = task.__dict__.get("_external_codec")
    return codec if codec is not None else task._own_tokenizer


class Task(abc.ABC):
    """A task family: seeded examples per split, a tokenizer, and what exact match scores."""
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Config: ClassVar[type] = None

    def __init__(self, config):
        self.config = config

    @property
    @abc.abstractmethod
    def tokenizer(self):
        """A `harness.data.Codec`-compatible tokenizer (encode, decode, vocab_size, pad_id)."""

    @abc.abstractmethod
    def examples(self, split: str, count: int, seed: int) -> list[Example]:
        """`count` examples of `split` ('train', 'valid', 'test'), deterministic in seed."""

    def train_batch(self, count: int, seed: int, queries_per_context: int | str = "all"):
        """A task that draws its training data as tensors returns the `harness.data.Batch` that
        `collate(self.examples("train", count, seed), self, queries_per_context)` would give, built
        without text; None (the default): the trainer collates `examples`."""
        return None

    def score_mask(self, target_ids: Sequence[int]) -> list[bool]:
        """Which target tokens exact match scores (default: all)."""
        return [True] * len(target_ids)

    def context_roles(self, context_ids: Sequence[int]) -> list[int]:
        """Role of each context token, as an index into ROLE_NAMES (default: all 'other')."""
        return [0] * len(context_ids)

    def chance_loss(self) -> float:
        """Training loss (mean cross-entropy per target token) of a model that knows the answer
        format but not the context; collapse detection compares the loss with it.
        Default: a uniform guess over the vocabulary."""
        return math.log(self.tokenizer.vocab_size)

    def max_lengths(self) -> tuple[int, int]:
        """Upper bounds (context tokens, query+target tokens) for validation against the backbone."""
        return (0, 0)

    supports_pretrained_tokenizer: ClassVar[bool] = True

    def use_tokenizer(self, codec) -> None:
        """Tokenise with a pretrained backbone's tokenizer instead of the task's own (whether the
        task defines `tokenizer` as a property or a cached_property: see `__init_subclass__`)."""
        if not self.supports_pretrained_tokenizer:
            from harness.errors import HarnessError
            raise HarnessError(f"task {self.name!r} needs its own tokenizer; use a backbone built from a config")
        self._external_codec = codec

    def __init_subclass__(cls, **kwargs):
        """A subclass's own `tokenizer` (property, cached_property, ...) moves to `_own_tokenizer`
        and `tokenizer` becomes a property that prefers the codec `use_tokenizer` set."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("tokenizer")
        if own is not None and own is not _override_aware_tokenizer:
            cls._own_tokenizer = own
            cls.tokenizer = _override_aware_tokenizer

    def with_params(self, **overrides) -> "Task":
        """The same task with some parameters changed (used by curricula)."""
        task = type(self)(dataclasses.replace(self.config, **overrides))
        if getattr(self, "_external_codec", None) is not None:
            task.use_tokenizer(self._external_codec)
        return task
