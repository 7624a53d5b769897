"""Full-context upper bound: the memory is the backbone's KV-cache of the context.

READ continues from that cache (pads masked, positions continuing after the real context),
so its target logits equal those of the backbone on [C; Q; Y].

Training may skip the cache (DESIGN: "The full-context bound may train in one pass over
[C; Q; Y]"): `train_logits` packs each context and all its reads into one row,
[C; Q1 Y1; Q2 Y2; ...], with a 4D attention mask that lets every read attend to the real
context tokens and causally to itself only, and positions of every read continuing at len(C):
numerically what write then read computes, in one backbone pass (tests/test_contract.py).

`reconstruction_weight` (training only) adds that times the next-token loss of the context, the
bound's counterpart of the memory writers' reconstruction loss (`+ recon`): the same signal to
model the story, which a from-scratch backbone otherwise gets only through the answer token
(the paper's bound is a pretrained LM). Read from the write's own hidden states; the cache and
every logit of write and read are unchanged.

`context_reads` k > 1 writes the context k times in a row ([C; C; Q]): a bound that reads the
story again before the question, with k times the cache (a probe of what a second pass over the
story gives; the paper's bound reads it once).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from harness.api import HarnessError, Memory, Method, non_negative, register_method, sequence_loss
from methods._prefix import reconstruction_suffix

# attention implementations that add a custom 4D float mask to the scores as given
# (transformers' masking_utils returns a 4D mask unchanged)
ADDITIVE_MASK_ATTENTION = ("harness_eager", "eager", "sdpa")
CONTEXT, PAD = -1, -2   # segment ids of packed positions; reads are 0..Q-1


@dataclass
class FullContextConfig:
    reconstruction_weight: float = 0.0   # training only: this times the context's next-token loss
    context_reads: int = 1               # the context read this many times before the query:
                                         # 2 = [C; C; Q], a bound that re-reads the story

    def validate(self, where):
        non_negative(where, reconstruction_weight=self.reconstruction_weight)
        if self.context_reads < 1:
            raise HarnessError(f"{where}.context_reads = {self.context_reads} must be >= 1")


def repeat_context(ids: torch.Tensor, mask: torch.Tensor, reads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's real tokens `reads` times in a row ([C; C; ...]), right-padded; pads stay pads."""
    if reads == 1:
        return ids, mask
    lengths = mask.sum(1)
    width = reads * ids.shape[1]
    positions = torch.arange(width, device=ids.device)
    source = positions[None, :] % lengths.clamp(min=1)[:, None]
    repeated = torch.gather(ids, 1, source.clamp(max=ids.shape[1] - 1))
    new_mask = positions[None, :] < (reads * lengths)[:, None]
    return repeated * new_mask, new_mask


@dataclass
class PackedReads:
    """Each context and its reads in one right-padded row (B, L), and where each read sits."""
    ids: torch.Tensor            # (B, L) token ids
    segment: torch.Tensor        # (B, L) CONTEXT, the read's index q, or PAD
    positions: torch.Tensor      # (B, L) position ids: context k -> k, read token j -> len(C) + j
    predictor: torch.Tensor      # (Q, Lr) column of the row whose state predicts read token j


def pack_reads(context_ids, context_mask, read_ids, read_mask, context_index) -> PackedReads:
    """Row b = [real tokens of context b; real tokens of its reads, in batch order; pads]."""
    device = context_ids.device
    context_lengths = context_mask.sum(1)                                   # (B,)
    read_lengths = read_mask.sum(1)                                         # (Q,)
    # start of each read in its row: its context's length + the lengths of that context's
    # earlier reads (an exclusive cumulative sum over the reads grouped by context)
    order = torch.argsort(context_index, stable=True)
    grouped = context_index[order]
    before = torch.cumsum(read_lengths[order], 0) - read_lengths[order]
    group_start = torch.zeros_like(context_lengths).scatter_reduce(0, grouped, before, "amin", include_self=False)
    starts = torch.empty_like(read_lengths)
    starts[order] = before - group_start[grouped] + context_lengths[grouped]  # (Q,)
    row_lengths = context_lengths.scatter_add(0, context_index, read_lengths)
    batch, length, width = len(context_ids), int(row_lengths.max()), context_ids.shape[1]

    ids = torch.zeros((batch, length), dtype=context_ids.dtype, device=device)
    segment = torch.full((batch, length), PAD, dtype=torch.long, device=device)
    positions = torch.arange(length, device=device).expand(batch, -1).clone()
    ids[:, :width] = context_ids * context_mask
    segment[:, :width] = segment[:, :width].masked_fill(context_mask, CONTEXT)
    offsets = torch.arange(read_ids.shape[1], device=device)
    rows = context_index[:, None].expand_as(read_ids)[read_mask]
    columns = (starts[:, None] + offsets)[read_mask]
    ids[rows, columns] = read_ids[read_mask]
    segment[rows, columns] = torch.arange(len(read_ids), device=device)[:, None].expand_as(read_ids)[read_mask]
    positions[rows, columns] = (context_lengths[context_index][:, None] + offsets)[read_mask]
    # read token 0 is predicted by the context's last real token, token j > 0 by read token j-1
    last_context = (context_lengths[context_index] - 1).clamp(min=0)
    predictor = torch.cat([last_context[:, None], starts[:, None] + offsets[:-1]], 1).clamp(max=length - 1)
    return PackedReads(ids, segment, positions, predictor)


def packed_attention_mask(segment: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive (B, 1, L, L) mask: a position attends to earlier real context tokens and to
    earlier positions of its own segment (so a read sees the context and itself, not other
    reads, not pads); the diagonal is always open (no empty softmax row)."""
    query, key = segment[:, :, None], segment[:, None, :]
    length = segment.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment.device).tril()
    allowed = causal & ((key == CONTEXT) | (key == query))
    allowed = allowed | torch.eye(length, dtype=torch.bool, device=segment.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


@register_method
class FullContext(Method):
    name = "full_context"
    summary = "upper bound: the KV-cache of the whole context (2 * layers * tokens * d floats)"
    bound = "upper"
    Config = FullContextConfig

    @classmethod
    def display_label(cls, config) -> str:
        reads = f" x{config.context_reads} reads" if config.context_reads > 1 else ""
        return cls.name + reads + reconstruction_suffix(config)

    @classmethod
    def sequence_length(cls, method_spec: dict, context_len: int, read_len: int) -> int:
        """[C; ...; C; Q; Y]: the context `context_reads` times, then the read."""
        return method_spec.get("context_reads", cls.Config.context_reads) * context_len + read_len

    def context_loss(self, hidden: torch.Tensor, context_ids: torch.Tensor, context_mask: torch.Tensor):
        """In training with `reconstruction_weight` > 0: that times the next-token loss of the
        context from its hidden states (token t + 1 from position t); else None."""
        weight = self.config.reconstruction_weight
        if not (self.training and weight > 0):
            return None
        logits = self.backbone.lm_head(hidden[:, :-1])
        return weight * sequence_loss(logits, context_ids[:, 1:], context_mask[:, 1:])

    def write(self, context_ids, context_mask, write_setting=None) -> Memory:
        context_ids, context_mask = repeat_context(context_ids, context_mask, self.config.context_reads)
        hidden, cache = self.backbone.hidden(self.backbone.embed(context_ids),
                                             attention_mask=context_mask.long(), use_cache=True)
        lengths = context_mask.sum(1)
        last = hidden[torch.arange(len(lengths)), (lengths - 1).clamp(min=0)]
        keys = tuple(layer.keys for layer in cache.layers)
        values = tuple(layer.values for layer in cache.layers)
        per_token = sum(k.shape[1] * k.shape[3] + v.shape[1] * v.shape[3] for k, v in zip(keys, values))
        state = {"keys": keys, "values": values, "mask": context_mask.clone(),
                 "next_logits": self.backbone.lm_head(last)}
        return Memory(state=state, floats=int(per_token * lengths.max().item()),
                      aux_loss=self.context_loss(hidden, context_ids, context_mask))

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

    def train_logits(self, batch) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """Logits (Q, Lr, V) of write then read, from one pass over [C; Q1 Y1; Q2 Y2; ...] per
        context, and the write's context loss (each context sits first in its row, so its hidden
        states are the write's).

        None (the pipeline then writes and reads) for an attention that takes no custom 4D mask.
        """
        if getattr(self.backbone.model.config, "_attn_implementation", None) not in ADDITIVE_MASK_ATTENTION:
            return None
        context_ids, context_mask = repeat_context(batch.context_ids, batch.context_mask, self.config.context_reads)
        packed = pack_reads(context_ids, context_mask, batch.read_ids, batch.read_mask, batch.context_index)
        inputs = self.backbone.embed(packed.ids)
        hidden, _ = self.backbone.hidden(inputs, attention_mask=packed_attention_mask(packed.segment, inputs.dtype),
                                         position_ids=packed.positions)
        predicting = hidden[batch.context_index[:, None], packed.predictor]     # (Q, Lr, d)
        width = context_ids.shape[1]
        return (self.backbone.lm_head(predicting),
                self.context_loss(hidden[:, :width], context_ids, context_mask))
