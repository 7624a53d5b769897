"""Training batches built ahead of the step, in worker processes, so that their cost hides behind
the device's work.

A training batch is a function of (seed, step) alone (`step_batch`), so which process builds it,
and when, changes nothing: a run trained with prefetching reads the same batches, in the same
order, as one without (tests/test_training.py). The trainer uses it on CUDA, where the host would
otherwise build each batch (generating and tokenising text: ~11 ms for 32 bAbI stories, ~2 ms
for 64 KV contexts of the tensor generator) while the card waits; on a CPU the workers would
compete with the training thread for the same cores, so it is off there.
"""
from __future__ import annotations

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from harness.data import Batch, collate


def step_batch(task, batch_size: int, seed: int, step: int, queries_per_context) -> Batch:
    """The training batch of `step` of a run with `seed` (on the CPU)."""
    draw = seed * 1_000_003 + step
    batch = task.train_batch(batch_size, draw, queries_per_context)
    if batch is None:
        batch = collate(task.examples("train", batch_size, seed=draw), task, queries_per_context)
    return batch


class StepBatches(IterableDataset):
    """(step, batch) for steps first .. last - 1; with several workers, worker k builds the steps
    k, k + n, ... (a DataLoader returns workers' items round-robin: in step order)."""

    def __init__(self, task, batch_size: int, seed: int, queries_per_context, first: int, last: int):
        super().__init__()
        self.task, self.batch_size, self.seed, self.queries = task, batch_size, seed, queries_per_context
        self.first, self.last = first, last

    def __iter__(self):
        worker = get_worker_info()
        index, count = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        for step in range(self.first + index, self.last, count):
            yield step, step_batch(self.task, self.batch_size, self.seed, step, self.queries)


class BatchPrefetcher:
    """The batches of steps first .. last - 1 of one curriculum stage, built by `workers` processes
    up to `ahead` batches each before they are asked for."""

    def __init__(self, task, batch_size: int, seed: int, queries_per_context, first: int, last: int,
                 workers: int, ahead: int = 4):
        dataset = StepBatches(task, batch_size, seed, queries_per_context, first, last)
        self._items = iter(DataLoader(dataset, batch_size=None, num_workers=workers, prefetch_factor=ahead))
        self.next_step = first

    def batch(self, step: int) -> Batch:
        """The batch of `step`, which must be the step after the last one asked for."""
        if step != self.next_step:
            raise RuntimeError(f"prefetched batches are for step {self.next_step}, asked for step {step}")
        built, batch = next(self._items)
        assert built == step, (built, step)
        self.next_step += 1
        return batch

    def close(self) -> None:
        """Stop the workers (the batches they built ahead are dropped)."""
        self._items = None
