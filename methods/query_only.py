"""Query-only lower bound: READ sees the query alone (after one learned start vector)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness.api import Memory, Method, register_method


@dataclass
class QueryOnlyConfig:
    init_std: float = 0.02


@register_method
class QueryOnly(Method):
    name = "query_only"
    summary = "lower bound: no memory (0 floats); a learned start vector, then the query"
    bound = "lower"
    Config = QueryOnlyConfig

    def __init__(self, config, backbone):
        super().__init__(config, backbone)
        self.start = nn.Parameter(torch.randn(1, backbone.hidden_size) * config.init_std)

    def write(self, context_ids, context_mask, write_setting=None) -> Memory:
        # on the model's device: Memory.select indexes it with the batch's context index
        return Memory(state=self.start.new_zeros(context_ids.shape[0], 0), floats=0)

    def read(self, memory, read_ids, read_mask):
        start = self.start.unsqueeze(0).expand(read_ids.shape[0], -1, -1)
        hidden, _ = self.backbone.hidden(torch.cat([start, self.backbone.embed(read_ids)], 1))
        return self.backbone.lm_head(hidden[:, :read_ids.shape[1]])

    def write_compute(self, write_setting=None):
        return {"forward": 0, "backward": 0}
