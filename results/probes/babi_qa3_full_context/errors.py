"""What a bAbI QA3 model answers on 8-statement stories when it is wrong.

    PYTHONPATH=. python results/probes/babi_qa3_full_context/errors.py [RESULTS_RUN_DIR] [CHECKPOINT]

Defaults: the babi cpu suite's QA3 full-context run and the best weights of its last stage (kept
under .cache/checkpoints/<run id>/ by the runner). 1,000 generated stories (seed 12345), one question each
about an object that moved at least once; each answer is sorted by where the place comes from.
"""
import collections
import random
import sys
from pathlib import Path

import torch
import yaml

from harness.data import collate
from harness.runner import build_run
from harness.schema import RunSpec
from tasks.babi import LOCATIONS, Example, Query, _story

run_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "results/babi/d1d2742481c0")
checkpoint = sys.argv[2] if len(sys.argv) > 2 else max(
    Path(".cache/checkpoints", run_dir.name).glob("best_stage*.pt"), key=lambda p: int(p.stem[len("best_stage"):]))
spec = RunSpec.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
task, method = build_run(spec)
method.load_state_dict(torch.load(checkpoint, map_location="cpu"))
method.eval()
task = task.with_params(story_sentences=8)

rng, items = random.Random(12345), []
while len(items) < 1000:
    lines, world = _story(rng, 3, 8)
    moved = [(o, trail) for o, trail in world.object_trail.items() if len(trail) >= 2]
    if moved:
        obj, trail = moved[0]
        items.append((Example(" ".join(lines), (Query(f"Where was the {obj} before the {trail[-1]}?", trail[-2]),)),
                      trail, " ".join(lines)))

kinds, by_trail = collections.Counter(), collections.defaultdict(lambda: [0, 0])
for start in range(0, len(items), 250):
    chunk = items[start:start + 250]
    batch = collate([item[0] for item in chunk], task, 1)
    with torch.no_grad():
        memory = method.write(batch.context_ids, batch.context_mask, None)
        predictions = method.read(memory.select(batch.context_index), batch.read_ids, batch.read_mask).argmax(-1)
    for row, (_, trail, story) in enumerate(chunk):
        answer = task.tokenizer.decode([predictions[row, batch.score_mask[row].nonzero()[0].item()].item()]).strip()
        by_trail[len(trail)][0] += answer == trail[-2]
        by_trail[len(trail)][1] += 1
        kinds["right" if answer == trail[-2] else
              "the object's latest place" if answer == trail[-1] else
              "an earlier place of its trail" if answer in trail[:-2] else
              "a place of the story off its trail" if answer in story else
              "a place not in the story" if answer in LOCATIONS else "not a place"] += 1
print("answers:", dict(kinds.most_common()))
print("right by trail length (places the object was in):",
      {n: f"{right}/{total} = {right / total:.3f}" for n, (right, total) in sorted(by_trail.items())})
