"""Mamba: the recurrent state (conv + SSM state of every layer) is the memory.

WRITE runs the context through a Mamba decoder (transformers' MambaForCausalLM weights, pure
PyTorch path) and keeps each example's state at its last real token; READ continues from that
state over [query; target]. The recurrence is written out here, over the same weights, because
transformers' cached forward only continues one token at a time; a test checks that
read(write(C)) gives the logits of the plain model on [C; Q; Y]. Memory floats = layers * d_inner
* (conv_kernel + state_size), the state as Mamba keeps it (40,960 at the paper's KV setting).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.api import Memory, Method, register_method


@dataclass
class MambaMethodConfig:
    pass


def mixer_forward(mixer, x: torch.Tensor, mask: torch.Tensor, conv_state: torch.Tensor,
                  ssm_state: torch.Tensor):
    """One Mamba mixer over a right-padded chunk, starting from (conv_state, ssm_state).

    x (B, L, d) normed inputs, mask (B, L) bool, conv_state (B, D, k) last k inputs of the
    convolution, ssm_state (B, D, N). Returns the outputs and the states after each example's
    last real token (padding leaves the state untouched).
    """
    batch, length, _ = x.shape
    kernel = mixer.conv1d.weight.shape[-1]
    projected = mixer.in_proj(x).transpose(1, 2)
    inputs, gate = projected.chunk(2, dim=1)                       # (B, D, L) each
    window = torch.cat([conv_state[:, :, 1:], inputs], dim=2)     # last k-1 inputs, then the chunk
    u = F.silu(F.conv1d(window, mixer.conv1d.weight, mixer.conv1d.bias, groups=inputs.shape[1]))
    time_step, b, c = torch.split(mixer.x_proj(u.transpose(1, 2)),
                                  [mixer.time_step_rank, mixer.ssm_state_size, mixer.ssm_state_size], dim=-1)
    delta = F.softplus(mixer.dt_proj(time_step))                  # (B, L, D)
    a = -torch.exp(mixer.A_log.to(x.dtype))                       # (D, N)
    state, outputs = ssm_state, []
    for t in range(length):
        decay = torch.exp(delta[:, t, :, None] * a)
        updated = decay * state + delta[:, t, :, None] * b[:, t, None, :] * u[:, :, t, None]
        state = torch.where(mask[:, t, None, None], updated, state)
        outputs.append((state * c[:, t, None, :]).sum(-1))
    y = torch.stack(outputs, dim=-1) + u * mixer.D.to(x.dtype)[None, :, None]
    y = y * F.silu(gate)
    lengths = mask.sum(1)
    # the k inputs ending at each example's last real token: in [conv_state; inputs] they sit at
    # positions length .. length + k - 1
    index = lengths[:, None] + torch.arange(kernel, device=x.device)
    full_window = torch.cat([conv_state, inputs], dim=2)
    new_conv = full_window.gather(2, index[:, None, :].expand(-1, inputs.shape[1], -1))
    return mixer.out_proj(y.transpose(1, 2)), new_conv, state


@register_method
class Mamba(Method):
    name = "mamba"
    summary = "recurrent Mamba state: conv + SSM state per layer (layers*d_inner*(conv+state) floats)"
    Config = MambaMethodConfig
    archs = ("mamba",)

    @property
    def _mamba(self):
        return self.backbone.model.backbone

    def _run(self, ids, mask, conv_states, ssm_states):
        hidden = self.backbone.embed(ids)
        new_conv, new_ssm = [], []
        for layer, conv, ssm in zip(self._mamba.layers, conv_states, ssm_states):
            out, conv, ssm = mixer_forward(layer.mixer, layer.norm(hidden), mask, conv, ssm)
            hidden = hidden + out
            new_conv.append(conv)
            new_ssm.append(ssm)
        return self._mamba.norm_f(hidden), torch.stack(new_conv, 1), torch.stack(new_ssm, 1)

    def write(self, context_ids, context_mask, write_setting=None) -> Memory:
        batch = len(context_ids)
        mixers = [layer.mixer for layer in self._mamba.layers]
        dtype = self.backbone.lm_head.weight.dtype
        conv = [context_ids.new_zeros(batch, m.intermediate_size, m.conv1d.weight.shape[-1], dtype=dtype) for m in mixers]
        ssm = [context_ids.new_zeros(batch, m.intermediate_size, m.ssm_state_size, dtype=dtype) for m in mixers]
        hidden, conv, ssm = self._run(context_ids, context_mask, conv, ssm)
        last = hidden[torch.arange(batch), (context_mask.sum(1) - 1).clamp(min=0)]
        floats = int(conv[0].numel() + ssm[0].numel())
        return Memory(state={"conv": conv, "ssm": ssm, "next_logits": self.backbone.lm_head(last)}, floats=floats)

    def read(self, memory: Memory, read_ids, read_mask):
        state = memory.state
        hidden, _, _ = self._run(read_ids, read_mask, state["conv"].unbind(1), state["ssm"].unbind(1))
        logits = self.backbone.lm_head(hidden)
        return torch.cat([state["next_logits"].unsqueeze(1), logits[:, :-1]], dim=1)
