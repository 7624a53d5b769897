"""Probe: where a full-context model's errors on the paper KV format fall.

Loads a stage's best weights of a run, writes and reads validation contexts (every query,
teacher forcing) and splits exact match by whether another key of the context shares the asked
key's first character, its second character, both (impossible: keys are unique) or neither.

    PYTHONPATH=. python results/probes/kv_paper_full_context/errors_by_shared_key.py \
        SUITE.yaml SCALE CHECKPOINT PAIRS [CONTEXTS]
"""
import collections
import sys

import torch

from harness import registry
from harness.data import collate
from harness.evaluate import exact_match
from harness.pipeline import write_then_read
from harness.builder import build_run
from harness.suite import expand_suite

suite, scale, checkpoint, pairs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
contexts = int(sys.argv[5]) if len(sys.argv) > 5 else 400
registry.discover()
spec = expand_suite(suite, scale)[0]
task, method = build_run(spec)
task = task.with_params(pairs=pairs)
state = torch.load(checkpoint, map_location="cpu", weights_only=False)
state = state["method"] if "method" in state else state   # a resume point: its current weights
method.load_state_dict(state)
method.eval()
examples = task.examples("valid", contexts, seed=1)
groups = collections.defaultdict(lambda: [0, 0])
for start in range(0, contexts, 50):
    chunk = examples[start:start + 50]
    batch = collate(chunk, task, "all")
    with torch.no_grad():
        logits, _ = write_then_read(method, batch)
    hits = exact_match(logits.argmax(-1), batch.read_ids, batch.score_mask)
    q = 0
    for example in chunk:
        keys = [pair[:2] for pair in example.context.strip("|").split("!") if pair]
        for query in example.queries:
            key = query.text[2:4]
            others = [k for k in keys if k != key]
            first = any(k[0] == key[0] for k in others)
            second = any(k[1] == key[1] for k in others)
            name = {(False, False): "no shared char", (True, False): "first char shared",
                    (False, True): "second char shared", (True, True): "each char shared by some key"}[first, second]
            groups[name][0] += int(hits[q])
            groups[name][1] += 1
            q += 1
total = sum(n for _, n in groups.values())
print(f"{checkpoint}: {pairs} pairs, {total} queries, EM {sum(h for h, _ in groups.values()) / total:.3f}")
for name, (h, n) in sorted(groups.items()):
    print(f"  {name:32s} {n:6d} queries ({n / total:5.1%})  EM {h / n:.3f}")
