"""The one place that runs a batch: write each context once, read once per query.

The context goes to `write` only; `read` sees the memory and the query + target tokens.
In training only, a method may instead give the same logits from one pass over the whole batch
(`train_logits`; DESIGN: the full-context bound trains in one pass over [C; Q; Y]);
evaluation always writes and reads.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.contract import Memory, Method, _map_tensors
from harness.data import Batch
from harness.errors import ContractError


def write_then_read(method: Method, batch: Batch, write_setting: int | None = None
                    ) -> tuple[torch.Tensor, Memory]:
    """Logits (Q, Lr, V) aligned with batch.read_ids, and the memory the write produced.
    `write_setting`: the value of the method's write axis to write with (None: its trained one);
    passed to `write` positionally, so a method may name that parameter as it likes."""
    memory = method.write(batch.context_ids, batch.context_mask, write_setting)
    check_memory(method, memory, len(batch.context_ids))
    logits = method.read(memory.select(batch.context_index), batch.read_ids, batch.read_mask)
    check_logits(method, logits, batch.read_ids)
    return logits, memory


def check_memory(method: Method, memory, contexts: int) -> None:
    """`write` returns a Memory whose state tensors are batch-first with one row per context."""
    name = getattr(method, "name", type(method).__name__)
    if not isinstance(memory, Memory):
        raise ContractError(f"method {name!r}: write must return a harness.contract.Memory, got {type(memory).__name__}")
    shapes = []
    _map_tensors(memory.state, lambda t: shapes.append(tuple(t.shape)))
    if not shapes:
        raise ContractError(f"method {name!r}: Memory.state holds no tensor (batch-first tensors expected)")
    wrong = [s for s in shapes if not s or s[0] != contexts]
    if wrong:
        raise ContractError(f"method {name!r}: every Memory.state tensor must be batch-first with {contexts} rows "
                            f"(one per context); got shapes {wrong}")


def check_logits(method: Method, logits, read_ids: torch.Tensor) -> None:
    """`read` returns logits (Q, Lr, V) aligned with read_ids."""
    name = getattr(method, "name", type(method).__name__)
    expected = tuple(read_ids.shape)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or tuple(logits.shape[:2]) != expected:
        seen = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ContractError(f"method {name!r}: read must return logits (Q, Lr, V) = ({expected[0]}, {expected[1]}, V) "
                            f"aligned with read_ids; got {seen}")


def training_loss(method: Method, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to optimise, READ loss on the targets) of a training step.

    A training method with a `train_logits(batch)` hook (numerically write then read, computed
    another way, e.g. full context in one pass) gives the logits and its training-only term;
    without the hook, or when it returns None, the batch is written and read, and the memory's
    `aux_loss` (a training-only term such as RMT's reconstruction loss) is added.
    """
    hooked = method.train_logits(batch) if method.training else None
    if hooked is None:
        logits, memory = write_then_read(method, batch)
        aux = memory.aux_loss
    else:
        logits, aux = hooked
    read_loss = target_loss(logits, batch)
    return (read_loss if aux is None else read_loss + aux), read_loss


def target_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy over the target tokens of the batch."""
    mask = batch.target_mask
    return F.cross_entropy(at_least_fp32(logits[mask]), batch.read_ids[mask])


def sequence_loss(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of sequences: logits[:, t] predicts ids[:, t] where mask is set;
    the mean over each sequence's real tokens, then over the batch."""
    token_loss = F.cross_entropy(at_least_fp32(logits).transpose(1, 2), ids, reduction="none")
    weights = mask.to(token_loss.dtype)
    return ((token_loss * weights).sum(1) / weights.sum(1).clamp(min=1)).mean()


def at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """Upcast half-precision values for a loss; float64 stays float64 (gradient checks)."""
    return tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()
