"""The one place that runs a batch: write each context once, read once per query.

The context goes to `write` only; `read` sees the memory and the query + target tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.contract import Memory, Method
from harness.data import Batch


def write_then_read(method: Method, batch: Batch, write_steps: int | None = None
                    ) -> tuple[torch.Tensor, Memory]:
    """Logits (Q, Lr, V) aligned with batch.read_ids, and the memory the write produced."""
    memory = method.write(batch.context_ids, batch.context_mask, write_steps)
    logits = method.read(memory.select(batch.context_index), batch.read_ids, batch.read_mask)
    return logits, memory


def target_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy over the target tokens of the batch."""
    mask = batch.target_mask
    return F.cross_entropy(at_least_fp32(logits[mask]), batch.read_ids[mask])


def at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """Upcast half-precision values for a loss; float64 stays float64 (gradient checks)."""
    return tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()
