"""GradMem: write a context into m prefix memory vectors with K steps of gradient descent.

M_{k+1} = M_k - alpha * grad_M L_write(M_k; C), L_write = next-token cross-entropy of the
context given [M_k; C] (last memory slot predicts the first context token), the mean over one
example's real tokens, summed over the batch: alpha is per example and no example's memory
depends on another's. Meta-training backpropagates the READ loss through the K steps:
order `second` (create_graph, MAML), `first` (inner gradient treated as a constant), `none`
(the written memory is detached: M0 and alpha get no gradient). At evaluation no graph is built.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from harness.api import HarnessError, Memory, at_least_fp32, non_negative, positive, register_method
from methods._prefix import PrefixMemoryConfig, PrefixMemoryMethod, reconstruction_suffix


@dataclass
class GradMemConfig(PrefixMemoryConfig):
    """Paper defaults: 8 memory vectors, K <= 5, second order, memory map and WRITE head on
    (the official KV script turns the memory map off), alpha searched in [0.01, 10]."""
    write_steps: int = 1
    order: Literal["second", "first", "none"] = "second"
    inner_lr: float = 0.1            # alpha, the inner step size (initial value when learned)
    learn_inner_lr: bool = False     # learn log(alpha) with the outer optimiser
    write_head: bool = True          # untied copy of the LM head used only for L_write
    inner_grad_clip: float | None = None  # clip each example's inner gradient to this norm
    checkpoint_steps: bool = False   # recompute each write step in the outer backward: peak
                                     # memory stops growing with K, gradients are unchanged
    log_write_loss: bool = True      # evaluation logs L_write at M_0..M_K (one extra forward per
                                     # context for M_K); off: no inner-loss log, pure throughput

    def validate(self, where):
        super().validate(where)
        non_negative(where, write_steps=self.write_steps, inner_grad_clip=self.inner_grad_clip)
        positive(where, inner_lr=self.inner_lr)


@register_method
class GradMem(PrefixMemoryMethod):
    name = "gradmem"
    summary = "m prefix vectors written by K steps of test-time gradient descent (m*d floats)"
    Config = GradMemConfig

    def __init__(self, config: GradMemConfig, backbone):
        super().__init__(config, backbone)
        log_lr = torch.tensor(math.log(config.inner_lr))
        if config.learn_inner_lr:
            self.log_inner_lr = nn.Parameter(log_lr)
        else:
            self.register_buffer("log_inner_lr", log_lr)
        self.write_head = None
        if config.write_head:
            head = backbone.lm_head
            self.write_head = nn.Linear(head.in_features, head.out_features, bias=head.bias is not None)
            with torch.no_grad():
                self.write_head.load_state_dict(head.state_dict())

    @property
    def inner_lr(self) -> torch.Tensor:
        return self.log_inner_lr.exp()

    def token_losses(self, memory: torch.Tensor, context_ids: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy of every context token given [M; C] (B, Lc), WRITE head."""
        hidden = self.prefix_hidden(memory, context_ids)
        head = self.write_head if self.write_head is not None else self.backbone.lm_head
        logits = at_least_fp32(head(hidden))
        return F.cross_entropy(logits.transpose(1, 2), context_ids, reduction="none")

    def write_loss(self, memory: torch.Tensor, context_ids: torch.Tensor,
                   context_mask: torch.Tensor, token_loss: torch.Tensor | None = None) -> torch.Tensor:
        """L_write per example (B,): mean next-token cross-entropy over its real context tokens."""
        token_loss = self.token_losses(memory, context_ids) if token_loss is None else token_loss
        mask = context_mask.to(token_loss.dtype)
        return (token_loss * mask).sum(1) / mask.sum(1).clamp(min=1)

    def _clip(self, grad: torch.Tensor) -> torch.Tensor:
        limit = self.config.inner_grad_clip
        if limit is None:
            return grad
        norm = grad.flatten(1).norm(dim=1).clamp(min=1e-12)
        return grad * (limit / norm).clamp(max=1.0)[:, None, None]

    def _inner_step(self, memory, context_ids, context_mask, create_graph: bool, alpha):
        """M - alpha * grad_M L_write(M); with create_graph the step stays differentiable (MAML)."""
        with torch.enable_grad():
            point = memory if create_graph else memory.detach().requires_grad_(True)
            token_loss = self.token_losses(point, context_ids)
            per_example = self.write_loss(point, context_ids, context_mask, token_loss)
            (grad,) = torch.autograd.grad(per_example.sum(), point, create_graph=create_graph)
        grad = self._clip(grad)
        return (memory - alpha * grad, per_example.detach(), token_loss.detach(),
                grad.detach().flatten(1).norm(dim=1))

    def write(self, context_ids, context_mask, write_setting=None) -> Memory:
        steps = self.config.write_steps if write_setting is None else write_setting
        if steps < 0:
            raise HarnessError(f"write_steps = {steps} must be >= 0")
        order = self.config.order
        meta = self.training and torch.is_grad_enabled()
        second_order = meta and order == "second"
        batch = context_ids.shape[0]
        memory = self.initial_memory.unsqueeze(0).expand(batch, -1, -1)
        if not meta:
            memory = memory.detach()
        losses, token_losses, grad_norms = [], [], []
        alpha = self.inner_lr if meta else self.inner_lr.detach()
        for _ in range(steps):
            if second_order and self.config.checkpoint_steps:
                memory, loss, token_loss, grad_norm = checkpoint(
                    self._inner_step, memory, context_ids, context_mask, True, alpha, use_reentrant=False)
            else:
                memory, loss, token_loss, grad_norm = self._inner_step(
                    memory, context_ids, context_mask, second_order, alpha)
            if not meta:
                memory = memory.detach()
            losses.append(loss)
            token_losses.append(token_loss)
            grad_norms.append(grad_norm)
        if meta and order == "none":
            memory = memory.detach()
        if not meta and self.config.log_write_loss:  # evaluation: the WRITE loss at the final memory too
            with torch.no_grad():
                token_losses.append(self.token_losses(memory, context_ids))
                losses.append(self.write_loss(memory, context_ids, context_mask, token_losses[-1]))
        elif not meta:
            losses, token_losses, grad_norms = [], [], []
        # 0-dim tensors on the device, read only when logged: no host wait inside a training step
        log = {"inner_loss": [l.mean() for l in losses],      # at M_0 .. M_K (M_K: evaluation only)
               "grad_norm": [g.mean() for g in grad_norms],
               "token_loss": token_losses}
        return self.with_reconstruction(Memory(state=memory, floats=self.memory_floats(), log=log),
                                        context_ids, context_mask)

    def eval_write_settings(self):
        return [self.config.write_steps]

    def write_compute(self, write_setting=None):
        steps = self.config.write_steps if write_setting is None else write_setting
        return {"forward": steps, "backward": steps}

    @classmethod
    def display_label(cls, config):
        """'gradmem K=2', 'gradmem 1st-order K=1', 'gradmem no-meta K=1', 'gradmem K=1 + recon'."""
        prefix = {"first": f"{cls.name} 1st-order", "none": f"{cls.name} no-meta"}.get(config.order, cls.name)
        return f"{prefix} K={config.write_steps}{reconstruction_suffix(config)}"

    @classmethod
    def write_axis(cls, config):
        return {"name": "write steps", "field": "write_steps", "trained": config.write_steps}
