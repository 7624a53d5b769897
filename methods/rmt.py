"""RMT, the forward-only recurrent writer, and its repeated-forward variant (RMT xK).

WRITE runs the backbone on [M; context; M]: the trailing m slots are placed right after each
context's real tokens (so right padding stays at the end and positions skip nothing), and the
new memory is the last-layer hidden states (after the final norm) at those slots. With
`write_passes` = k the same context is read k times, each pass fed the previous memory.
READ is [M; query; target], as for GradMem. A learned linear map on the memory input (identity
init) is on by default: the official RMT stays at chance without it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from harness.api import HarnessError, Memory, register_method
from methods._prefix import PrefixMemoryConfig, PrefixMemoryMethod, reconstruction_suffix, write_slot_sequence


@dataclass
class RMTConfig(PrefixMemoryConfig):
    write_passes: int = 1       # the paper's "RMT xK": 1..5
    residual: bool = False      # new memory = previous + written states
    memory_source: Literal["final", "residual"] = "final"  # last-layer states after the final
                                # norm (RMS ~1, the paper's code) or before it (the residual stream)
    write_scale: float | None = None  # RMS-normalise each written vector to this (e.g. the
                                # embeddings' 0.02); None: keep the states' own scale

    def validate(self, where):
        super().validate(where)
        if self.write_passes < 1:
            raise HarnessError(f"{where}.write_passes = {self.write_passes} must be >= 1")


@register_method
class RMT(PrefixMemoryMethod):
    name = "rmt"
    summary = "m memory vectors written by forward passes over [M; C; M] (m*d floats); write_passes = RMT xK"
    Config = RMTConfig
    write_copies = 2   # [M; C; M]

    def write_pass(self, memory: torch.Tensor, context_ids: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        inputs, slots = write_slot_sequence(self.memory_embeddings(memory), self.backbone.embed(context_ids),
                                            context_mask.sum(1))
        hidden, _ = self.backbone.hidden(inputs, pre_norm=self.config.memory_source == "residual")
        written = hidden[slots]
        if self.config.write_scale is not None:
            written = written * (self.config.write_scale * torch.rsqrt(written.pow(2).mean(-1, keepdim=True) + 1e-12))
        return memory + written if self.config.residual else written

    def write(self, context_ids, context_mask, write_setting=None) -> Memory:
        passes = self.config.write_passes if write_setting is None else write_setting
        if passes < 1:
            raise HarnessError(f"write_passes = {passes} must be >= 1")
        memory = self.initial_memory.unsqueeze(0).expand(len(context_ids), -1, -1)
        for _ in range(passes):
            memory = self.write_pass(memory, context_ids, context_mask)
        return self.with_reconstruction(Memory(state=memory, floats=self.memory_floats(),
                                               log={"write_passes": passes}), context_ids, context_mask)

    def eval_write_settings(self):
        return [self.config.write_passes]

    def write_compute(self, write_setting=None):
        return {"forward": self.config.write_passes if write_setting is None else write_setting, "backward": 0}

    @classmethod
    def display_label(cls, config):
        """'rmt x3': the paper's RMT xK ('+ recon' when trained with the reconstruction loss)."""
        return f"{cls.name} x{config.write_passes}{reconstruction_suffix(config)}"

    @classmethod
    def write_axis(cls, config):
        return {"name": "write passes", "field": "write_passes", "trained": config.write_passes}
