"""ARMT (Rodkin et al., 2024, arXiv 2407.04841): a per-layer associative memory over RMT slots.

What the code does, per decoder layer l (d: hidden width, F = 2 * d_mem * nu features):
- Features: phi(x) = L2-normalise(DPFP_nu(x)), DPFP_nu(x) = [r * roll(r, 1), ..., r * roll(r, nu)]
  with r = [relu(x), relu(-x)] (Schlag et al., 2021). Keys and queries both go through phi.
- WRITE runs the backbone on [M0; S; M0] for each segment S of the context (trailing slots
  right after the segment's real tokens, `write_slot_sequence` of methods/_prefix.py, as RMT);
  from the second segment on every layer reads the memory so far at its input, as READ does.
  A forward hook takes the layer's OUTPUT states m_j at the m trailing slots: keys
  phi_j = phi(W_k m_j), values v_j = W_v m_j, gates b_j = sigmoid(w_b . m_j + c_b) (one scalar
  per slot). One segment updates (A, z) from the state (A', z') before it, all slots at once:
      prev_j  = phi_j A' / (phi_j . z' + eps)
      gamma_j = clip(1 - (phi_j . z' + eps) / |phi_j|^2, 0, 1)   (detached; 1 with use_gamma off)
      A = A' + sum_j b_j phi_j^T (v_j - prev_j)          z = z' + sum_j gamma_j phi_j
  and for the first segment (empty memory) prev_j = 0, gamma_j = 1. By default the context is
  ONE segment, so A = sum_j b_j phi_j^T v_j, z = sum_j phi_j, and the layer reads nothing
  during WRITE (ARMT skips the read on the first segment); `segment_length: n` makes segments
  of n tokens. With `slot_update: sequential` every slot is its own update instead (slot 1 as
  above, slots 2..m with the delta rule and gamma against the slots before them).
- READ runs [M0; query; target]; a forward pre-hook on every layer l replaces the layer's input
  h by h + phi(W_q h) A_l / (phi(W_q h) . z_l + eps), for every token; the layer reads only at its
  input.
- Memory crossing from write to read: state {"matrix": (B, layers, F, d), "normaliser":
  (B, layers, F)}; layers * F * (d + 1) floats (198,144 at the paper's KV setting: 4 layers,
  d 128, d_mem 64, nu 3). M0 is a learned constant.

Source: RodkinIvan/associative-recurrent-memory-transformer, modeling_amt/language_modeling.py
(`dpfp`/`DPFP`, `AssociativeLayerWrapper.associate`, `.forward`, `.update_mem`): forward = if not
first segment, h = associate(h) + h; out = layer(h); update_mem(out[0][:, -num_mem_tokens:]).
associate/update_mem apply F.normalize(p=2) after DPFP, eps 1e-5 in both denominators,
new_info_coef (gamma) = clip(1 - denom / |mk|^2, 0, 1).detach() with denom = z.mk + 1e-5, z += sum
gamma mk (not gated), W_mem += sum b mk^T (v - prev); W_mb: Linear(d, n_heads) with bias; nu 3.

Where this deviates from that code, and why:
- Memory tokens: ARMT runs [segment; mem] (write slots at the end only); here the harness's
  prefix convention is kept, [M0; C; M0] to write and [M0; query; target] to read, so ARMT shares
  READ and the trailing-slot placement with GradMem and RMT.
- Segments: by default one context = one segment (write once, read many), so the matrix gets
  one rank-m update per layer. The paper's KV runs give each pair its own segment, so their
  delta rule and gamma act across pairs: `segment_length: n` cuts the context into segments of
  n tokens (a pair of the format), each written as above while every layer reads the memory so
  far at its input (the ARMT code's `associate` from the second segment on); a context that has
  ended keeps its memory. `slot_update: sequential` (an option of this harness, not of the
  code) makes every slot of a segment its own update instead.
- W_v is not zero-initialised (the code zeroes it): with A = 0 the read is 0 whatever the
  context, W_q and W_k get no gradient at initialisation, and the contract tests (the memory
  carries the context; every parameter gets a gradient) would fail. Default nn.Linear init.
- A single head (the code's default n_heads = 1); no ACT, no gating of the value per dimension.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from harness.api import HarnessError, Memory, register_method
from methods._prefix import PrefixMemoryConfig, PrefixMemoryMethod, reconstruction_suffix, write_slot_sequence


@dataclass
class ARMTConfig(PrefixMemoryConfig):
    d_mem: int = 64          # key / query width before DPFP
    nu: int = 3              # DPFP order: features = 2 * d_mem * nu
    memory_map: bool = False
    eps: float = 1e-5        # in the denominators of the write's retrieval and of the read
    use_gamma: bool = True   # ARMT's `correction`: normaliser grows by gamma * phi, not phi
    slot_update: Literal["parallel", "sequential"] = "parallel"  # slots of a segment against the
                             # memory before it (ARMT code), or one slot after another
    segment_length: int | None = None  # context tokens per write segment (the paper's KV runs:
                             # one pair per segment); None: the whole context is one segment

    def validate(self, where):
        super().validate(where)
        for key in ("d_mem", "nu"):
            if getattr(self, key) < 1:
                raise HarnessError(f"{where}.{key} = {getattr(self, key)} must be >= 1")
        if self.segment_length is not None and self.segment_length < 1:
            raise HarnessError(f"{where}.segment_length = {self.segment_length} must be >= 1 (or null: one segment)")
        if self.slot_update not in ("parallel", "sequential"):
            raise HarnessError(f"{where}.slot_update = {self.slot_update!r}: choose 'parallel' or 'sequential'")


def dpfp(x: torch.Tensor, nu: int) -> torch.Tensor:
    """Deterministic parameter-free projection (Schlag et al., 2021): (..., k) -> (..., 2 k nu)."""
    r = torch.cat([F.relu(x), F.relu(-x)], dim=-1)
    return torch.cat([r * torch.roll(r, shifts=i, dims=-1) for i in range(1, nu + 1)], dim=-1)


def feature_map(x: torch.Tensor, nu: int) -> torch.Tensor:
    """Keys and queries of the associative memory: DPFP, then L2-normalised (as the ARMT code)."""
    return F.normalize(dpfp(x, nu), p=2.0, dim=-1)


def associative_write(keys: torch.Tensor, values: torch.Tensor, gates: torch.Tensor,
                      matrix: torch.Tensor | None = None, normaliser: torch.Tensor | None = None,
                      use_gamma: bool = True, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """One segment's update of (A, z), all its slots against the memory before it.

    keys (B, m, F) features, values (B, m, d), gates (B, m, 1); matrix (B, F, d) and normaliser
    (B, F) the memory before the segment, None for the first segment (empty memory: nothing is
    retrieved and gamma = 1).
    """
    if matrix is None:
        matrix = keys.new_zeros(keys.shape[0], keys.shape[-1], values.shape[-1])
        normaliser = keys.new_zeros(keys.shape[0], keys.shape[-1])
        previous, gamma = torch.zeros_like(values), 1.0
    else:
        denominator = torch.einsum("bmf,bf->bm", keys, normaliser).unsqueeze(-1) + eps
        previous = torch.einsum("bmf,bfd->bmd", keys, matrix) / denominator
        gamma = 1.0
        if use_gamma:
            gamma = (1 - denominator / keys.pow(2).sum(-1, keepdim=True)).clamp(0, 1).detach()
    matrix = matrix + torch.einsum("bmf,bmd->bfd", keys, gates * (values - previous))
    normaliser = normaliser + (gamma * keys).sum(1)
    return matrix, normaliser


def associative_read(queries: torch.Tensor, matrix: torch.Tensor, normaliser: torch.Tensor,
                     eps: float = 1e-5) -> torch.Tensor:
    """Retrieval for every token: queries (B, L, F) features -> (B, L, d)."""
    numerator = torch.einsum("blf,bfd->bld", queries, matrix)
    return numerator / (torch.einsum("blf,bf->bl", queries, normaliser).unsqueeze(-1) + eps)


@register_method
class ARMT(PrefixMemoryMethod):
    name = "armt"
    summary = ("per-layer associative matrices written from each layer's output at the memory slots "
               "(DPFP keys, delta rule, gamma-corrected normaliser), read at each layer's input "
               "(layers*F*(d+1) floats)")
    Config = ARMTConfig
    write_copies = 2   # [M; C; M]

    def __init__(self, config: ARMTConfig, backbone):
        super().__init__(config, backbone)
        d, layers = backbone.hidden_size, backbone.layers
        self.query_proj = nn.ModuleList(nn.Linear(d, config.d_mem, bias=False) for _ in layers)
        self.key_proj = nn.ModuleList(nn.Linear(d, config.d_mem, bias=False) for _ in layers)
        self.value_proj = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in layers)
        self.gate_proj = nn.ModuleList(nn.Linear(d, 1) for _ in layers)
        self._reading = None     # (matrix, normaliser) every layer reads at its input; None: no read
        self._capturing = None   # (slots, captured): layer outputs at the write slots go to `captured`
        for index, layer in enumerate(layers):
            layer.register_forward_pre_hook(partial(self._read_hook, index), with_kwargs=True)
            layer.register_forward_hook(partial(self._capture_hook, index))

    @classmethod
    def display_label(cls, config) -> str:
        """'armt', 'armt seg2 + recon' (segments of 2 tokens, the reconstruction loss)."""
        segments = f" seg{config.segment_length}" if config.segment_length else ""
        return f"{cls.name}{segments}{reconstruction_suffix(config)}"

    @property
    def features(self) -> int:
        return 2 * self.config.d_mem * self.config.nu

    def memory_floats(self) -> int:
        return len(self.query_proj) * self.features * (self.backbone.hidden_size + 1)

    def _read_hook(self, index, module, args, kwargs):
        if self._reading is None:
            return None
        matrix, normaliser = self._reading
        hidden = args[0] if args else kwargs["hidden_states"]
        queries = feature_map(self.query_proj[index](hidden), self.config.nu)
        hidden = hidden + associative_read(queries, matrix[:, index], normaliser[:, index], self.config.eps)
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    def _capture_hook(self, index, module, args, output):
        if self._capturing is None:
            return None
        slots, captured = self._capturing
        hidden = output[0] if isinstance(output, (tuple, list)) else output
        captured[index] = hidden[slots]
        return None

    def write_layer(self, index: int, states: torch.Tensor, matrix: torch.Tensor | None = None,
                    normaliser: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(A_l, z_l) after one segment, written from layer `index`'s output states (B, m, d) at
        the memory slots into the memory before it (None: the first segment)."""
        config = self.config
        keys = feature_map(self.key_proj[index](states), config.nu)
        values = self.value_proj[index](states)
        gates = torch.sigmoid(self.gate_proj[index](states))
        update = partial(associative_write, use_gamma=config.use_gamma, eps=config.eps)
        if config.slot_update == "parallel":
            return update(keys, values, gates, matrix, normaliser)
        for j in range(keys.shape[1]):
            matrix, normaliser = update(keys[:, j:j + 1], values[:, j:j + 1], gates[:, j:j + 1], matrix, normaliser)
        return matrix, normaliser

    def write_segment(self, segment_ids: torch.Tensor, lengths: torch.Tensor,
                      state: dict | None) -> dict:
        """One segment: the backbone on [M0; segment; M0], every layer reading `state` (None: the
        first segment, nothing to read), then each layer's memory updated from its slot outputs."""
        memory = self.initial_memory.unsqueeze(0).expand(len(segment_ids), -1, -1)
        inputs, slots = write_slot_sequence(self.memory_embeddings(memory), self.backbone.embed(segment_ids), lengths)
        captured: dict[int, torch.Tensor] = {}
        self._reading = None if state is None else (state["matrix"], state["normaliser"])
        self._capturing = (slots, captured)
        try:
            self.backbone.hidden(inputs)
        finally:
            self._reading = self._capturing = None
        def before(index):   # layer `index`'s (A, z) before this segment
            return (None, None) if state is None else (state["matrix"][:, index], state["normaliser"][:, index])
        written = [self.write_layer(index, captured[index], *before(index)) for index in range(len(self.query_proj))]
        return {"matrix": torch.stack([m for m, _ in written], 1),
                "normaliser": torch.stack([z for _, z in written], 1)}

    def write(self, context_ids, context_mask, write_setting=None) -> Memory:
        lengths, width = context_mask.sum(1), max(context_ids.shape[1], 1)
        size = self.config.segment_length or width
        state = None
        for start in range(0, width, size):
            segment_lengths = (lengths - start).clamp(0, size)
            if state is not None and not bool((segment_lengths > 0).any()):
                break
            written = self.write_segment(context_ids[:, start:start + size], segment_lengths, state)
            if state is not None:   # a context that has ended keeps its memory
                ongoing = segment_lengths > 0
                written = {key: torch.where(ongoing.view(-1, *[1] * (value.dim() - 1)), value, state[key])
                           for key, value in written.items()}
            state = written
        return self.with_reconstruction(Memory(state=state, floats=self.memory_floats()), context_ids, context_mask)

    def read(self, memory: Memory, read_ids, read_mask):
        prefix = self.initial_memory.unsqueeze(0).expand(len(read_ids), -1, -1)
        self._reading = (memory.state["matrix"], memory.state["normaliser"])
        try:
            return self.backbone.lm_head(self.prefix_hidden(prefix, read_ids))
        finally:
            self._reading = None
