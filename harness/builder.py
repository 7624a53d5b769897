"""A run's task, backbone and method built from its resolved spec, and its seeding: shared by the
runner, tuning and the benchmarks."""
from __future__ import annotations

import random

import torch

from harness import registry
from harness.backbone import build_backbone
from harness.data import PretrainedCodec
from harness.errors import HarnessError
from harness.schema import RunSpec


def build_run(spec: RunSpec):
    """Task, backbone and method of a run, built from its resolved spec."""
    task_cls = registry.get_task(spec.task["name"])
    task = task_cls(spec.typed("task"))
    backbone = build_backbone(spec.backbone, task.tokenizer.vocab_size)
    if backbone.tokenizer is not None:
        task.use_tokenizer(PretrainedCodec(backbone.tokenizer))
    method_cls = registry.get_method(spec.method["name"])
    if backbone.arch not in method_cls.archs:
        raise HarnessError(f"method {method_cls.name!r} needs a backbone in {list(method_cls.archs)}, "
                           f"{spec.backbone.get('pretrained')!r} is {backbone.arch!r}")
    method = method_cls(spec.typed("method"), backbone)
    return task, method


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
