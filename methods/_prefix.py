"""Shared by the memory-prefix methods (GradMem, RMT, ARMT): READ = backbone on [M; query; target],
the [M; C; M] write sequence of the forward writers, the memory-size check, the reconstruction loss.

Not a method itself (modules starting with `_` are not discovered).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from harness.api import HarnessError, Memory, Method, non_negative, sequence_loss


MAX_MEMORY_SIZE = 4096   # memory vectors; far above any setting of the paper (<= 32)


def check_memory_size(where: str, memory_size: int) -> None:
    if not 1 <= memory_size <= MAX_MEMORY_SIZE:
        raise HarnessError(f"{where}.memory_size = {memory_size} must be from 1 to {MAX_MEMORY_SIZE}")


@dataclass
class PrefixMemoryConfig:
    """Options every prefix-memory method shares (each method may change a default)."""
    memory_size: int = 8
    memory_map: bool = True     # learned linear map on the memory input, identity init
    init_std: float = 0.02      # std of the learned initial memory M0
    reconstruction_weight: float = 0.0  # training only: add this times the cross-entropy of the
                                # context read back from the written memory (the official RMT
                                # code's reconstruction loss); the write itself is unchanged

    def validate(self, where):
        check_memory_size(where, self.memory_size)
        non_negative(where, reconstruction_weight=self.reconstruction_weight)


def reconstruction_suffix(config) -> str:
    return " + recon" if getattr(config, "reconstruction_weight", 0) > 0 else ""


def with_reconstruction(method: Method, memory: Memory, context_ids: torch.Tensor,
                        context_mask: torch.Tensor) -> Memory:
    """In training with `reconstruction_weight` > 0, attach that times the reconstruction loss as
    the memory's training-only `aux_loss` (the official RMT code's reconstruction loss: the context
    read back from the memory by `method.read`, next-token cross-entropy over its real tokens, per
    example then over the batch). The write itself is unchanged."""
    weight = getattr(method.config, "reconstruction_weight", 0.0)
    if not (method.training and weight > 0):
        return memory
    loss = sequence_loss(method.read(memory, context_ids, context_mask), context_ids, context_mask)
    return dataclasses.replace(memory, aux_loss=weight * loss)


def write_slot_sequence(memory_inputs: torch.Tensor, context_embeddings: torch.Tensor,
                        lengths: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """[M; C; M] per example with the trailing slots right after the real context tokens.

    Returns the (B, 2m + Lc, d) inputs and the (rows, positions) index of the trailing slots.
    """
    batch, m, _ = memory_inputs.shape
    sequence = torch.cat([memory_inputs, context_embeddings, torch.zeros_like(memory_inputs)], dim=1)
    positions = m + lengths[:, None] + torch.arange(m, device=lengths.device)
    rows = torch.arange(batch, device=lengths.device)[:, None].expand(-1, m)
    # under bf16 autocast the memory map's output is bf16 and the embeddings fp32 (cat promotes)
    return sequence.index_put((rows, positions), memory_inputs.to(sequence.dtype)), (rows, positions)


class PrefixMemoryMethod(Method):
    """A method whose memory is m vectors of the backbone's embedding width, read as a prefix."""
    write_copies = 1   # copies of the memory in the write sequence: [M; C] (GradMem), [M; C; M] (RMT, ARMT)

    @classmethod
    def sequence_length(cls, method_spec: dict, context_len: int, read_len: int) -> int:
        """The longer of the write sequence (memory copies + context) and the read [M; Q; Y]."""
        m = method_spec.get("memory_size", cls.Config.memory_size)
        return max(cls.write_copies * m + context_len, m + read_len)

    def __init__(self, config, backbone):
        super().__init__(config, backbone)
        d = backbone.hidden_size
        self.memory_size = config.memory_size
        self.initial_memory = nn.Parameter(torch.randn(config.memory_size, d) * config.init_std)
        self.memory_map = None
        if config.memory_map:
            self.memory_map = nn.Linear(d, d)
            with torch.no_grad():
                self.memory_map.weight.copy_(torch.eye(d))
                self.memory_map.bias.zero_()

    def memory_embeddings(self, memory: torch.Tensor) -> torch.Tensor:
        """Memory vectors as input embeddings (through the learned map when enabled)."""
        return self.memory_map(memory) if self.memory_map is not None else memory

    def memory_floats(self) -> int:
        return self.memory_size * self.backbone.hidden_size

    def prefix_hidden(self, memory: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """Last hidden states of [memory; tokens] at the positions that predict each token
        (row j: position m-1+j, so the last memory slot predicts token 0)."""
        return self.backbone.prefixed_hidden(self.memory_embeddings(memory), token_ids)

    @classmethod
    def display_label(cls, config) -> str:
        """The method's name, '+ recon' when trained with the reconstruction loss."""
        return cls.name + reconstruction_suffix(config)

    def with_reconstruction(self, memory: Memory, context_ids: torch.Tensor, context_mask: torch.Tensor) -> Memory:
        return with_reconstruction(self, memory, context_ids, context_mask)

    def read(self, memory: Memory, read_ids: torch.Tensor, read_mask: torch.Tensor) -> torch.Tensor:
        return self.backbone.lm_head(self.prefix_hidden(memory.state, read_ids))
