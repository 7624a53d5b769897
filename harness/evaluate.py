"""Metrics: teacher-forced exact match and token accuracy, greedy-generation exact match,
evaluated at one or more values of the method's write axis (write settings) on the same weights."""
from __future__ import annotations

import time
from typing import Sequence

import torch

from harness.contract import ROLE_NAMES, Example, Method
from harness.data import Batch, collate, selected_queries
from harness.text_metrics import squad_em_f1


def exact_match(predictions: torch.Tensor, targets: torch.Tensor, score_mask: torch.Tensor) -> torch.Tensor:
    """Per row: 1.0 when every scored token is right (rows with no scored token count as wrong)."""
    correct = (predictions == targets) | ~score_mask
    return (correct.all(1) & score_mask.any(1)).float()


def token_hits(predictions: torch.Tensor, targets: torch.Tensor, score_mask: torch.Tensor) -> tuple[int, int]:
    """(right scored tokens, scored tokens)."""
    hits = (predictions == targets)[score_mask]
    return int(hits.sum().item()), hits.numel()


def token_accuracy(predictions: torch.Tensor, targets: torch.Tensor, score_mask: torch.Tensor) -> float:
    right, total = token_hits(predictions, targets, score_mask)
    return right / total if total else 0.0


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


def _role_losses(token_losses: list[torch.Tensor], batch: Batch) -> dict:
    """Sums and counts of the WRITE loss per step over all real tokens and per token role."""
    masks = {"all": batch.context_mask}
    masks.update({role: batch.context_mask & (batch.context_roles == i)
                  for i, role in enumerate(ROLE_NAMES) if role != "other"})
    return {role: ([(loss * mask).sum().item() for loss in token_losses], mask.sum().item())
            for role, mask in masks.items()}


def _merge_role_losses(parts: list[dict]) -> dict:
    """Token-weighted mean WRITE loss per step: 'inner_loss' (all tokens), 'inner_loss_key', ..."""
    out = {}
    for role in parts[0]:
        count = sum(p[role][1] for p in parts)
        if count == 0:
            continue
        steps = len(parts[0][role][0])
        name = "inner_loss" if role == "all" else f"inner_loss_{role}"
        out[name] = [sum(p[role][0][i] for p in parts) / count for i in range(steps)]
    return out


def evaluate(method: Method, task, examples: Sequence[Example], write_settings: Sequence[int | None] = (None,),
             batch_size: int = 128, queries_per_context: int | str = 1, generate: bool = False,
             device: str | torch.device = "cpu") -> dict:
    """Metrics per write-axis value in `write_settings`: {str(value): {...}} ('default' for None,
    the method's trained setting)."""
    was_training = method.training
    method.eval()
    results = {}
    try:
        for setting in write_settings:
            em, token_right, token_total, gen_em, reads = 0.0, 0.0, 0, 0.0, 0
            inner, write_time, read_time = [], 0.0, 0.0
            text_em, text_f1, text_count = 0.0, 0.0, 0
            for start in range(0, len(examples), batch_size):
                batch = collate(examples[start:start + batch_size], task, queries_per_context).to(device)
                with torch.no_grad():
                    t0 = time.perf_counter()
                    memory = method.write(batch.context_ids, batch.context_mask, setting)
                    t1 = time.perf_counter()
                    per_query = memory.select(batch.context_index)
                    logits = method.read(per_query, batch.read_ids, batch.read_mask)
                    read_time += time.perf_counter() - t1
                    write_time += t1 - t0
                predictions = logits.argmax(-1)
                em += exact_match(predictions, batch.read_ids, batch.score_mask).sum().item()
                right, scored = token_hits(predictions, batch.read_ids, batch.score_mask)
                token_right += right
                token_total += scored
                if generate:
                    generated = greedy_generate(method, per_query, batch)
                    gen_em += exact_match(generated, batch.read_ids, batch.score_mask).sum().item()
                    chunk = examples[start:start + batch_size]
                    references = [q.answers or (q.target,) for e in chunk
                                  for q in selected_queries(e, queries_per_context)]
                    if any(q.answers for e in chunk for q in e.queries):
                        for row, answers in enumerate(references):
                            text = task.tokenizer.decode(generated[row][batch.target_mask[row]])
                            em_text, f1_text = squad_em_f1(text, answers)
                            text_em += em_text
                            text_f1 += f1_text
                            text_count += 1
                reads += len(batch.read_ids)
                if memory.log.get("token_loss"):
                    inner.append(_role_losses(memory.log["token_loss"], batch))
            key = "default" if setting is None else str(setting)
            results[key] = {
                "exact_match": em / reads,
                "token_accuracy": token_right / max(token_total, 1),
                "reads": reads,
                "contexts": len(examples),
                "memory_floats": memory.floats,
                "write_seconds": write_time,
                "read_seconds": read_time,
                "contexts_per_second": len(examples) / max(write_time + read_time, 1e-9),
            }
            if generate:
                results[key]["generation_exact_match"] = gen_em / reads
            if text_count:
                results[key]["squad_em"] = text_em / text_count
                results[key]["squad_f1"] = text_f1 / text_count
            if inner:
                results[key].update(_merge_role_losses(inner))
    finally:
        method.train(was_training)
    return results
