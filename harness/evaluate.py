"""Metrics: teacher-forced exact match and token accuracy, greedy-generation exact match,
evaluated for one or more write-step settings on the same weights."""
from __future__ import annotations

import time
from typing import Sequence

import torch

from harness.contract import Example, Method
from harness.data import Batch, collate
from harness.pipeline import write_then_read


def exact_match(predictions: torch.Tensor, targets: torch.Tensor, score_mask: torch.Tensor) -> torch.Tensor:
    """Per row: 1.0 when every scored token is right (rows with no scored token count as wrong)."""
    correct = (predictions == targets) | ~score_mask
    return (correct.all(1) & score_mask.any(1)).float()


def token_accuracy(predictions: torch.Tensor, targets: torch.Tensor, score_mask: torch.Tensor) -> float:
    hits = (predictions == targets)[score_mask]
    return hits.float().mean().item() if hits.numel() else 0.0


@torch.no_grad()
def greedy_generate(method: Method, memory, batch: Batch) -> torch.Tensor:
    """Fill each read's target positions with the method's own greedy predictions."""
    generated = batch.read_ids.clone()
    generated[batch.target_mask] = 0
    target_start = (~batch.target_mask & batch.read_mask).sum(1)
    scored = batch.score_mask.float()
    last_scored = scored.shape[1] - 1 - scored.flip(1).argmax(1)
    rows = torch.arange(len(generated), device=generated.device)
    for offset in range(int((last_scored - target_start).max().item()) + 1):
        position = target_start + offset
        active = position <= last_scored
        logits = method.read(memory, generated, batch.read_mask)
        next_tokens = logits[rows, position.clamp(max=generated.shape[1] - 1)].argmax(-1)
        generated[rows[active], position[active]] = next_tokens[active]
    return generated


def evaluate(method: Method, task, examples: Sequence[Example], write_steps: Sequence[int | None] = (None,),
             batch_size: int = 128, queries_per_context: int | str = 1, generate: bool = False,
             device: str | torch.device = "cpu") -> dict:
    """Metrics per write-step setting: {str(k): {...}} (k = 'default' for None)."""
    was_training = method.training
    method.eval()
    results = {}
    try:
        for steps in write_steps:
            em, token_hits, token_total, gen_em, reads = 0.0, 0.0, 0, 0.0, 0
            inner, write_time, read_time = [], 0.0, 0.0
            for start in range(0, len(examples), batch_size):
                batch = collate(examples[start:start + batch_size], task, queries_per_context).to(device)
                with torch.no_grad():
                    t0 = time.perf_counter()
                    memory = method.write(batch.context_ids, batch.context_mask, steps)
                    t1 = time.perf_counter()
                    per_query = memory.select(batch.context_index)
                    logits = method.read(per_query, batch.read_ids, batch.read_mask)
                    read_time += time.perf_counter() - t1
                    write_time += t1 - t0
                predictions = logits.argmax(-1)
                em += exact_match(predictions, batch.read_ids, batch.score_mask).sum().item()
                hits = (predictions == batch.read_ids)[batch.score_mask]
                token_hits += hits.float().sum().item()
                token_total += hits.numel()
                if generate:
                    generated = greedy_generate(method, per_query, batch)
                    gen_em += exact_match(generated, batch.read_ids, batch.score_mask).sum().item()
                reads += len(batch.read_ids)
                if "inner_loss" in memory.log:
                    inner.append((len(batch.context_ids), memory.log["inner_loss"]))
            key = "default" if steps is None else str(steps)
            results[key] = {
                "exact_match": em / reads,
                "token_accuracy": token_hits / max(token_total, 1),
                "reads": reads,
                "contexts": len(examples),
                "memory_floats": memory.floats,
                "write_seconds": write_time,
                "read_seconds": read_time,
                "contexts_per_second": len(examples) / max(write_time + read_time, 1e-9),
            }
            if generate:
                results[key]["generation_exact_match"] = gen_em / reads
            if inner:
                total = sum(n for n, _ in inner)
                results[key]["inner_loss"] = [sum(n * losses[i] for n, losses in inner) / total
                                              for i in range(len(inner[0][1]))]
    finally:
        method.train(was_training)
    return results
