"""Titans-style neural memory: an MLP whose weights are written at test time by gradient
descent with momentum and forgetting (Behrouz, Zhong, Mirrokni, "Titans: Learning to Memorize
at Test Time", arXiv:2501.00663, 2024), read as context ("memory as context", MAC).

WRITE. One backbone pass over the context gives hidden states h_t; keys k_t = norm(W_K h_t) and
values v_t = W_V h_t (width `memory_width`). The memory is an MLP M_W, one per context, started
at learned weights W_0: linear (M(k) = k W) with `memory_hidden` 0, else
M(k) = k + silu(k W_1) W_2. The context is cut into chunks of `chunk_size` tokens; chunk c
updates every weight with the surprise of its tokens (Titans' parallel mini-batch form: the
gradient of a chunk is taken at the weights the chunk starts from):

    g_c = grad_W mean_{t in c} ||M_W(k_t) - v_t||^2
    S_c = eta_c S_{c-1} - theta_c g_c          (momentum: past surprise)
    W_c = (1 - alpha_c) W_{c-1} + S_c          (forgetting gate)

eta, theta, alpha are data-dependent: sigmoids of a learned linear map of the chunk's mean
hidden state (theta scaled so that it starts at `inner_lr`). Chunks of padding leave W and S
as they are. Meta-training backpropagates the READ loss through every update (create_graph), as
Titans trains its memory end to end; at evaluation no graph is built. The memory is W: its
floats are the MLP's weights (momentum is a write-time buffer, not read).

READ, memory as context. A backbone pass over [Q; Y] without memory gives query states;
q_t = norm(W_Q h_t) retrieves r_t = W_O M_W(q_t), a vector of the backbone's width. The
backbone then reads [P; x_0, r_0, x_1, r_1, ...]: `persistent` learned tokens P (Titans'
persistent memory), then each read token followed by what the memory returned for it; token
j + 1 is predicted from r_j's position (which saw x_0..x_j and r_0..r_j), token 0 from P's last.
Every retrieval sits after the token it was made from: the read stays causal.

Deviations from Titans: the memory sits outside the backbone (its keys come from the
backbone's last hidden states, not from a layer's input, and there is no short convolution
before the projections); gates per chunk, not per token; MAC's segment-wide retrieval prefix
(which would let a token see retrievals made from later tokens of its segment) becomes one
retrieval interleaved after each token; no weight decay of S beyond the gates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.api import HarnessError, Memory, Method, at_least_fp32, positive, register_method


@dataclass
class TitansConfig:
    memory_width: int = 16      # width of keys, values and queries (the MLP's input and output)
    memory_hidden: int = 0      # hidden width of a 2-layer memory MLP; 0: a linear memory
    chunk_size: int = 8         # context tokens per memory update
    inner_lr: float = 0.5       # theta at initialisation (theta <= 2 * inner_lr)
    momentum: float = 0.9       # eta at initialisation
    forget: float = 0.01        # alpha at initialisation
    persistent: int = 1         # learned tokens before the read (Titans' persistent memory)
    init_std: float = 0.02      # std of the persistent tokens

    def validate(self, where):
        positive(where, memory_width=self.memory_width, chunk_size=self.chunk_size,
                 inner_lr=self.inner_lr, persistent=self.persistent)
        if self.memory_hidden < 0:
            raise HarnessError(f"{where}.memory_hidden = {self.memory_hidden} must be >= 0")
        for field in ("momentum", "forget"):
            if not 0.0 < getattr(self, field) < 1.0:
                raise HarnessError(f"{where}.{field} = {getattr(self, field)} must be in (0, 1)")


def memory_forward(weights: tuple[torch.Tensor, ...], keys: torch.Tensor) -> torch.Tensor:
    """M_W(keys) for a batch of memories: weights (B, ...) each, keys (B, T, w) -> (B, T, w)."""
    if len(weights) == 1:
        return keys @ weights[0]
    first, second = weights
    return keys + F.silu(keys @ first) @ second


def logit(p: float) -> float:
    return math.log(p / (1 - p))


@register_method
class Titans(Method):
    name = "titans"
    summary = "an MLP memory written by test-time gradient descent with momentum and forgetting (its weights)"
    Config = TitansConfig

    def __init__(self, config: TitansConfig, backbone):
        super().__init__(config, backbone)
        d, w, h = backbone.hidden_size, config.memory_width, config.memory_hidden
        self.key = nn.Linear(d, w, bias=False)
        self.value = nn.Linear(d, w, bias=False)
        self.query = nn.Linear(d, w, bias=False)
        self.out = nn.Linear(w, d, bias=False)
        shapes = [(w, w)] if h == 0 else [(w, h), (h, w)]
        self.initial_weights = nn.ParameterList(
            nn.Parameter(torch.randn(*shape) / shape[0] ** 0.5) for shape in shapes)
        self.gates = nn.Linear(d, 3)     # momentum eta, step theta, forgetting alpha
        with torch.no_grad():
            self.gates.weight.zero_()
            self.gates.bias.copy_(torch.tensor([logit(config.momentum), 0.0, logit(config.forget)]))
        self.persistent = nn.Parameter(torch.randn(config.persistent, d) * config.init_std)

    @classmethod
    def sequence_length(cls, method_spec: dict, context_len: int, read_len: int) -> int:
        """The longer of the context pass and the read [P; x_0, r_0, ...] (two positions a token)."""
        return max(context_len, method_spec.get("persistent", cls.Config.persistent) + 2 * read_len)

    @classmethod
    def display_label(cls, config) -> str:
        """'titans' (linear memory) or 'titans mlp'; tables add ', N floats' where sizes differ."""
        return cls.name + (" mlp" if config.memory_hidden else "")

    def memory_floats(self) -> int:
        return sum(p.numel() for p in self.initial_weights)

    def chunk_gates(self, hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """eta, theta, alpha (each (B,)) from the mean hidden state of a chunk's real tokens."""
        weight = mask.to(hidden.dtype)[..., None]
        mean = (hidden * weight).sum(1) / weight.sum(1).clamp(min=1)
        z = self.gates(mean)
        return (torch.sigmoid(z[:, 0]), 2 * self.config.inner_lr * torch.sigmoid(z[:, 1]),
                torch.sigmoid(z[:, 2]))

    def surprise(self, weights, keys, values, mask, create_graph: bool):
        """Per-memory gradients of the chunk's mean associative loss, and that loss (B,)."""
        with torch.enable_grad():
            points = weights if create_graph else tuple(w.detach().requires_grad_(True) for w in weights)
            error = (at_least_fp32(memory_forward(points, keys)) - values).pow(2).sum(-1)   # (B, T)
            weight = mask.to(error.dtype)
            loss = (error * weight).sum(1) / weight.sum(1).clamp(min=1)
            grads = torch.autograd.grad(loss.sum(), points, create_graph=create_graph)
        return grads, loss.detach()

    def write(self, context_ids, context_mask, write_setting=None) -> Memory:
        if write_setting is not None:
            raise HarnessError(f"titans has no write axis (got write setting {write_setting!r})")
        meta = self.training and torch.is_grad_enabled()
        hidden, _ = self.backbone.hidden(self.backbone.embed(context_ids), attention_mask=context_mask.long())
        keys = F.normalize(self.key(hidden), dim=-1)
        values = self.value(hidden)
        batch = context_ids.shape[0]
        weights = tuple(w.unsqueeze(0).expand(batch, -1, -1) for w in self.initial_weights)
        momenta = tuple(torch.zeros_like(w) for w in weights)
        losses = []
        size = self.config.chunk_size
        for start in range(0, context_ids.shape[1], size):
            part = slice(start, start + size)
            mask = context_mask[:, part]
            active = mask.any(1).to(hidden.dtype)[:, None, None]          # (B, 1, 1)
            eta, theta, alpha = (g[:, None, None] for g in self.chunk_gates(hidden[:, part], mask))
            grads, loss = self.surprise(weights, keys[:, part], values[:, part], mask, meta)
            momenta = tuple(active * (eta * s - theta * g) + (1 - active) * s for s, g in zip(momenta, grads))
            weights = tuple(active * ((1 - alpha) * w + s) + (1 - active) * w for w, s in zip(weights, momenta))
            if not meta:
                weights, momenta = tuple(w.detach() for w in weights), tuple(s.detach() for s in momenta)
            losses.append(loss.mean())
        return Memory(state=weights, floats=self.memory_floats(), log={"inner_loss": losses})

    def read(self, memory, read_ids, read_mask):
        embeddings = self.backbone.embed(read_ids)
        states, _ = self.backbone.hidden(embeddings)
        queries = F.normalize(self.query(states), dim=-1)
        retrieved = self.out(memory_forward(memory.state, queries).to(embeddings.dtype))   # (Q, Lr, d)
        batch, length, d = embeddings.shape
        interleaved = torch.stack([embeddings, retrieved], 2).reshape(batch, 2 * length, d)
        prefix = self.persistent.to(embeddings.dtype).unsqueeze(0).expand(batch, -1, -1)
        hidden, _ = self.backbone.hidden(torch.cat([prefix, interleaved], 1))
        p = prefix.shape[1]
        predicting = hidden[:, p - 1: p - 1 + 2 * length: 2]     # P's last, then r_0 .. r_{Lr-2}
        return self.backbone.lm_head(predicting)
