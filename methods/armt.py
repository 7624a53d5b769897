"""ARMT: RMT with a per-layer associative memory written by a gated delta rule.

WRITE runs the backbone on [M0; C; M0] (trailing slots after the real tokens, as RMT). At every
layer l, the input states h_j of the m trailing slots give keys phi_j = DPFP(W_k h_j), values
v_j = W_v h_j and gates b_j = sigmoid(W_b h_j), written one slot after another:
    prev_j = phi_j A / (phi_j . z + eps);  A += b_j phi_j^T (v_j - prev_j);  z += phi_j
(A: F x d, z: F, F = 2 * d_mem * nu). READ runs [M0; query; target], and before every layer l
each token's state h gets h + q A_l / (q . z_l + eps), q = DPFP(W_q h). The memory that crosses
from write to read is (A_l, z_l) for every layer: layers * F * (d + 1) floats (198,144 at the
paper's KV setting: 4 layers, d 128, d_mem 64, nu 3); the prefix M0 is a learned constant.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from harness.contract import Memory
from harness.errors import HarnessError
from harness.registry import register_method
from methods._prefix import PrefixMemoryMethod
from methods.rmt import write_slot_sequence


@dataclass
class ARMTConfig:
    memory_size: int = 8
    d_mem: int = 64          # key / query width before DPFP
    nu: int = 3              # DPFP order: features = 2 * d_mem * nu
    memory_map: bool = False
    init_std: float = 0.02
    eps: float = 1e-5

    def validate(self, where):
        for key in ("memory_size", "d_mem", "nu"):
            if getattr(self, key) < 1:
                raise HarnessError(f"{where}.{key} = {getattr(self, key)} must be >= 1")


def dpfp(x: torch.Tensor, nu: int) -> torch.Tensor:
    """Deterministic parameter-free projection (Schlag et al., 2021): (..., k) -> (..., 2 k nu)."""
    r = torch.cat([F.relu(x), F.relu(-x)], dim=-1)
    return torch.cat([r * torch.roll(r, shifts=i, dims=-1) for i in range(1, nu + 1)], dim=-1)


def associative_write(keys: torch.Tensor, values: torch.Tensor, gates: torch.Tensor, eps: float):
    """Gated delta rule over slots, in order. keys (B, m, F), values (B, m, d), gates (B, m, 1)."""
    batch, slots, features = keys.shape
    matrix = keys.new_zeros(batch, features, values.shape[-1])
    normaliser = keys.new_zeros(batch, features)
    for j in range(slots):
        phi = keys[:, j]
        previous = torch.einsum("bf,bfd->bd", phi, matrix) / ((phi * normaliser).sum(-1, keepdim=True) + eps)
        matrix = matrix + torch.einsum("bf,bd->bfd", phi, gates[:, j] * (values[:, j] - previous))
        normaliser = normaliser + phi
    return matrix, normaliser


def associative_read(queries: torch.Tensor, matrix: torch.Tensor, normaliser: torch.Tensor, eps: float):
    """Retrieval for every token: queries (B, L, F) -> (B, L, d)."""
    numerator = torch.einsum("blf,bfd->bld", queries, matrix)
    return numerator / (torch.einsum("blf,bf->bl", queries, normaliser).unsqueeze(-1) + eps)


@register_method
class ARMT(PrefixMemoryMethod):
    name = "armt"
    summary = "per-layer associative matrices written by a gated delta rule over DPFP features (layers*F*(d+1) floats)"
    Config = ARMTConfig

    def __init__(self, config: ARMTConfig, backbone):
        super().__init__(config, backbone)
        d, layers = backbone.hidden_size, self._layers(backbone)
        self.query_proj = nn.ModuleList(nn.Linear(d, config.d_mem, bias=False) for _ in layers)
        self.key_proj = nn.ModuleList(nn.Linear(d, config.d_mem, bias=False) for _ in layers)
        self.value_proj = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in layers)
        self.gate_proj = nn.ModuleList(nn.Linear(d, 1) for _ in layers)
        self._action = None
        for index, layer in enumerate(layers):
            layer.register_forward_pre_hook(partial(self._layer_hook, index), with_kwargs=True)

    @staticmethod
    def _layers(backbone) -> nn.ModuleList:
        return backbone.layers

    @property
    def features(self) -> int:
        return 2 * self.config.d_mem * self.config.nu

    def memory_floats(self) -> int:
        return len(self.query_proj) * self.features * (self.backbone.hidden_size + 1)

    def _layer_hook(self, index, module, args, kwargs):
        if self._action is None:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        kind, payload = self._action
        if kind == "capture":
            slots, captured = payload
            captured.append(hidden[slots])
            return None
        matrix, normaliser = payload
        queries = dpfp(self.query_proj[index](hidden), self.config.nu)
        hidden = hidden + associative_read(queries, matrix[:, index], normaliser[:, index], self.config.eps)
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    def write(self, context_ids, context_mask, write_steps=None) -> Memory:
        memory = self.initial_memory.unsqueeze(0).expand(len(context_ids), -1, -1)
        inputs, slots = write_slot_sequence(self.memory_embeddings(memory), self.backbone.embed(context_ids),
                                            context_mask.sum(1))
        captured: list[torch.Tensor] = []
        self._action = ("capture", (slots, captured))
        try:
            self.backbone.hidden(inputs)
        finally:
            self._action = None
        matrices, normalisers = [], []
        for index, states in enumerate(captured):
            keys = dpfp(self.key_proj[index](states), self.config.nu)
            gates = torch.sigmoid(self.gate_proj[index](states))
            matrix, normaliser = associative_write(keys, self.value_proj[index](states), gates, self.config.eps)
            matrices.append(matrix)
            normalisers.append(normaliser)
        state = {"matrix": torch.stack(matrices, 1), "normaliser": torch.stack(normalisers, 1)}
        return Memory(state=state, floats=self.memory_floats())

    def read(self, memory: Memory, read_ids, read_mask):
        prefix = self.initial_memory.unsqueeze(0).expand(len(read_ids), -1, -1)
        self._action = ("read", (memory.state["matrix"], memory.state["normaliser"]))
        try:
            return self.backbone.lm_head(self.prefix_hidden(prefix, read_ids))
        finally:
            self._action = None
