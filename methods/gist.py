"""Gist tokens: a compressed KV-cache (Mu, Li, Goodman, "Learning to Compress Prompts with Gist
Tokens", NeurIPS 2023, arXiv:2304.08467; the same idea as AutoCompressors and ICAE).

WRITE runs the backbone over [C; G]: g learned gist embeddings placed right after each
context's real tokens, attending causally to the context and to earlier gists. The memory is
the keys and values of the g gist positions at every layer (2 x layers x g x kv-width floats),
plus the logits of the last gist (they predict the read's first token, as the last context
token does for full context). READ runs [Q; Y] on a cache that holds those gist keys and
values only, positions continuing after the gists: the query never sees a context token, only
what the gists gathered. `reconstruction_weight` adds, in training, the context read back from the
gists' cache alone (ICAE's autoencoding objective, the forward writers' `+ recon`: without it
gists sit on the value-set plateau like plain RMT, results/probes/gist_titans_pilot). Training is end to end (the READ loss reaches the gist embeddings and
every backbone weight through the cached keys and values).

With g = context length this is full context with an extra g-token hop; with g = 1 on the
2 x 64 model it holds 256 floats, GradMem's budget at 4 memory vectors.

Deviations from the paper: the gists are learned from a random init (std `init_std`; the paper
initialises them from the vocabulary's mean embedding, for a pretrained LM); the backbone
trains from scratch with the task loss (the paper fine-tunes an instruction-tuned LM with the
gist mask); the gist positions follow each context's own length (the paper's prompts are left
of the gists in one packed sequence, which is the same thing per example).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache

from harness.api import HarnessError, Memory, Method, non_negative, register_method
from methods._prefix import reconstruction_suffix, with_reconstruction


@dataclass
class GistConfig:
    memory_size: int = 1        # g: gist tokens; the memory is their keys and values
    init_std: float = 0.02      # std of the learned gist embeddings
    reconstruction_weight: float = 0.0  # training only: this times the cross-entropy of the
                                # context read back from the gists' cache (ICAE's autoencoding
                                # objective; the forward writers' `+ recon`)

    def validate(self, where):
        if self.memory_size < 1:
            raise HarnessError(f"{where}.memory_size = {self.memory_size} must be >= 1")
        non_negative(where, reconstruction_weight=self.reconstruction_weight)


def gist_sequence(context_embeddings: torch.Tensor, gists: torch.Tensor,
                  lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[C; G] per example with the gists right after the real context tokens, right-padded.

    Returns the (B, Lc + g, d) inputs, their attention mask (B, Lc + g) and the (B, g) positions
    of the gists.
    """
    batch, width, _ = context_embeddings.shape
    g = gists.shape[0]
    sequence = torch.cat([context_embeddings, context_embeddings.new_zeros(batch, g, gists.shape[1])], 1)
    positions = lengths[:, None] + torch.arange(g, device=lengths.device)
    rows = torch.arange(batch, device=lengths.device)[:, None].expand(-1, g)
    sequence = sequence.index_put((rows, positions), gists.to(sequence.dtype).expand(batch, -1, -1))
    mask = torch.arange(width + g, device=lengths.device)[None, :] < (lengths + g)[:, None]
    return sequence, mask, positions


@register_method
class Gist(Method):
    name = "gist"
    summary = "g gist tokens after the context; their KV-cache is the memory (2*layers*g*d floats)"
    Config = GistConfig

    def __init__(self, config: GistConfig, backbone):
        super().__init__(config, backbone)
        self.gists = nn.Parameter(torch.randn(config.memory_size, backbone.hidden_size) * config.init_std)

    @classmethod
    def sequence_length(cls, method_spec: dict, context_len: int, read_len: int) -> int:
        """Positions of [C; G; Q; Y]: the read continues after the gists."""
        return context_len + method_spec.get("memory_size", cls.Config.memory_size) + read_len

    @classmethod
    def display_label(cls, config) -> str:
        return cls.name + reconstruction_suffix(config)   # tables add the size where sizes differ

    def write(self, context_ids, context_mask, write_setting=None) -> Memory:
        lengths = context_mask.sum(1)
        inputs, mask, positions = gist_sequence(self.backbone.embed(context_ids), self.gists, lengths)
        hidden, cache = self.backbone.hidden(inputs, attention_mask=mask.long(), use_cache=True)
        gather = positions[:, None, :, None]       # (B, 1, g, 1) against (B, heads, L, head_dim)
        keys = tuple(layer.keys.gather(2, gather.expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3]))
                     for layer in cache.layers)
        values = tuple(layer.values.gather(2, gather.expand(-1, layer.values.shape[1], -1, layer.values.shape[3]))
                       for layer in cache.layers)
        last = hidden[torch.arange(len(lengths), device=lengths.device), positions[:, -1]]
        state = {"keys": keys, "values": values, "start": positions[:, -1] + 1,
                 "next_logits": self.backbone.lm_head(last)}
        floats = sum(k.shape[1] * k.shape[3] + v.shape[1] * v.shape[3] for k, v in zip(keys, values))
        memory = Memory(state=state, floats=int(floats * self.config.memory_size))
        return with_reconstruction(self, memory, context_ids, context_mask)   # read back from the gists alone

    def read(self, memory, read_ids, read_mask):
        state = memory.state
        cache = DynamicCache()
        for layer, (k, v) in enumerate(zip(state["keys"], state["values"])):
            cache.update(k, v, layer)
        positions = state["start"][:, None] + torch.arange(read_ids.shape[1], device=read_ids.device)
        attention = torch.ones(read_ids.shape[0], self.config.memory_size + read_ids.shape[1],
                               dtype=torch.long, device=read_ids.device)
        hidden, _ = self.backbone.hidden(self.backbone.embed(read_ids), attention_mask=attention,
                                         position_ids=positions, cache=cache)
        logits = self.backbone.lm_head(hidden)
        return torch.cat([state["next_logits"].unsqueeze(1), logits[:, :-1]], dim=1)
