"""Probe: does a GradMem write carry which value goes with which key, or only which values occur?

For test contexts C of a KV task, C_swap is C with the values of two pairs exchanged (the same
tokens, a different binding) and C_other another test context. With the weights of a trained
run's stage, it writes each context (evaluation: no meta-graph) and reports, over the contexts:

- binding share of the write: ||M(C) - M(C_swap)|| / ||M(C) - M(C_other)||, for the memory
  after the run's K steps and for the first inner gradient grad_M L_write(M_0; C) alone (the
  direction a single step writes). 0: the write ignores the binding (a bag of values); about 1:
  exchanging two values moves the memory as far as a new context does.
- exact match of the READ on C (every query), and on C_swap for the queries that ask the two
  swapped keys (their targets the swapped values): a memory blind to the binding gets them wrong
  as often as it can tell the two values apart.

    PYTHONPATH=. python bench/probes/binding_write.py SUITE SCALE RUN_ID CHECKPOINT PAIRS [CONTEXTS]

CHECKPOINT: a stage's best weights (`.cache/checkpoints/<run id>/best_stage<k>.pt`). Prints one
table row and writes nothing.
"""
from __future__ import annotations

import random
import re
import sys

import torch

from harness import registry
from harness.builder import build_run
from harness.data import collate
from harness.evaluate import exact_match
from harness.pipeline import write_then_read
from harness.suite import expand_suite


def pairs_of(task, context: str) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """The (key, value) symbol tuples of a rendered context, in order."""
    c = task.config
    if c.format == "paper":
        return [(tuple(k), tuple(v)) for k, v in re.findall(r"!(\w+):(\w+)!", context)]
    symbols = context.split()
    step = c.key_length + c.value_length
    return [(tuple(symbols[i:i + c.key_length]), tuple(symbols[i + c.key_length:i + step]))
            for i in range(0, len(symbols), step)]


def query_key(task, query) -> tuple[str, ...]:
    """The key a rendered query asks: `?!k1k2:` (paper format) or `K1` (compact)."""
    return tuple(query.text[2:-1]) if task.config.format == "paper" else tuple(query.text.split())


def swapped(task, example, rng: random.Random):
    """The example with the values of two of its pairs (with different values) exchanged; its
    queries in the same order, their targets the new values."""
    pairs = pairs_of(task, example.context)
    candidates = [(i, j) for i in range(len(pairs)) for j in range(i + 1, len(pairs)) if pairs[i][1] != pairs[j][1]]
    i, j = rng.choice(candidates)
    pairs[i], pairs[j] = (pairs[i][0], pairs[j][1]), (pairs[j][0], pairs[i][1])
    keys = [k for k, _ in pairs]
    return task._render(pairs, [keys.index(query_key(task, q)) for q in example.queries]), {keys[i], keys[j]}


def first_gradient(method, ids, mask) -> torch.Tensor:
    """grad_M L_write(M_0; C) per context, the direction of one write step."""
    memory = method.initial_memory.detach().unsqueeze(0).expand(len(ids), -1, -1).clone().requires_grad_(True)
    with torch.enable_grad():
        loss = method.write_loss(memory, ids, mask).sum()
        (grad,) = torch.autograd.grad(loss, memory)
    return grad


def main(argv: list[str]) -> None:
    suite, scale, run_id, checkpoint, pairs = argv[:5]
    contexts = int(argv[5]) if len(argv) > 5 else 200
    registry.discover()
    spec = next(s for s in expand_suite(suite, scale) if s.run_id == run_id)
    task, method = build_run(spec)
    task = task.with_params(pairs=int(pairs))
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    method.load_state_dict(state["method"] if "method" in state else state)
    method.eval()
    rng = random.Random(0)
    examples = [e for e in task.examples("test", 3 * contexts, seed=1)   # two values to swap
                if len({v for _, v in pairs_of(task, e.context)}) > 1]
    originals, others = examples[:contexts], examples[contexts:2 * contexts]
    swaps, moved = zip(*[swapped(task, e, rng) for e in originals])
    # per query of the swapped contexts, in collate's order: does it ask one of the two swapped keys?
    asks_swapped = [query_key(task, q) in keys for e, keys in zip(swaps, moved) for q in e.queries]
    rows = {"memory": [], "gradient": []}
    hits = {"original": [], "swapped": []}   # exact match per query
    for start in range(0, contexts, 50):
        batches = [collate(group[start:start + 50], task, "all") for group in (originals, swaps, others)]
        with torch.no_grad():
            written = [method.write(b.context_ids, b.context_mask).state for b in batches]
        gradients = [first_gradient(method, b.context_ids, b.context_mask) for b in batches]
        for name, (a, s, o) in (("memory", written), ("gradient", gradients)):
            rows[name] += ((a - s).flatten(1).norm(dim=1) / (a - o).flatten(1).norm(dim=1).clamp(min=1e-12)).tolist()
        for name, batch in (("original", batches[0]), ("swapped", batches[1])):
            with torch.no_grad():
                logits, _ = write_then_read(method, batch)
            hits[name] += exact_match(logits.argmax(-1), batch.read_ids, batch.score_mask).float().tolist()
    mean = lambda values: sum(values) / len(values)
    on_swapped = [h for h, asks in zip(hits["swapped"], asks_swapped) if asks]
    print("| run | pairs | binding share, memory | binding share, first gradient | EM | EM on swapped contexts, "
          "the swapped keys |")
    print(f"| {spec.label()} | {pairs} | {mean(rows['memory']):.3f} | {mean(rows['gradient']):.3f} | "
          f"{100 * mean(hits['original']):.1f} | {100 * mean(on_swapped):.1f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
