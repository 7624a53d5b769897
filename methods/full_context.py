"""Full-context upper bound: the memory is the backbone's KV-cache of the context.

READ continues from that cache (pads masked, positions continuing after the real context),
so its target logits equal those of the backbone on [C; Q; Y].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from harness.contract import Memory, Method
from harness.registry import register_method


@dataclass
class FullContextConfig:
    pass


@register_method
class FullContext(Method):
    name = "full_context"
    summary = "upper bound: the KV-cache of the whole context (2 * layers * tokens * d floats)"
    Config = FullContextConfig

    def write(self, context_ids, context_mask, write_steps=None) -> Memory:
        hidden, cache = self.backbone.hidden(self.backbone.embed(context_ids),
                                             attention_mask=context_mask.long(), use_cache=True)
        lengths = context_mask.sum(1)
        last = hidden[torch.arange(len(lengths)), (lengths - 1).clamp(min=0)]
        keys = tuple(layer.keys for layer in cache.layers)
        values = tuple(layer.values for layer in cache.layers)
        per_token = sum(k.shape[1] * k.shape[3] + v.shape[1] * v.shape[3] for k, v in zip(keys, values))
        state = {"keys": keys, "values": values, "mask": context_mask.clone(),
                 "next_logits": self.backbone.lm_head(last)}
        return Memory(state=state, floats=int(per_token * lengths.max().item()))

    def read(self, memory, read_ids, read_mask):
        state = memory.state
        cache = DynamicCache()
        for layer, (k, v) in enumerate(zip(state["keys"], state["values"])):
            cache.update(k, v, layer)
        mask = state["mask"]
        lengths = mask.sum(1, keepdim=True)
        positions = lengths + torch.arange(read_ids.shape[1], device=read_ids.device)
        attention = torch.cat([mask.long(), torch.ones_like(read_ids)], dim=1)
        hidden, _ = self.backbone.hidden(self.backbone.embed(read_ids), attention_mask=attention,
                                         position_ids=positions, cache=cache)
        logits = self.backbone.lm_head(hidden)
        return torch.cat([state["next_logits"].unsqueeze(1), logits[:, :-1]], dim=1)
