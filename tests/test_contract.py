"""The write/read contract for every registered method: context removal, gradients, full context."""
import pytest
import torch

from harness.data import collate
from harness.pipeline import target_loss, write_then_read
from harness.registry import METHODS
from tests.conftest import make_method


def _method(name, task, dtype=torch.float64):
    return make_method(name, task, dtype)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_read_never_sees_the_context(name, paper_task):
    method = _method(name, paper_task).eval()
    batch = collate(paper_task.examples("test", 3, 0), paper_task, "all")
    memory = method.write(batch.context_ids, batch.context_mask)
    per_query = memory.select(batch.context_index)
    before = method.read(per_query, batch.read_ids, batch.read_mask)
    batch.context_ids.random_(4, paper_task.tokenizer.vocab_size)   # poison the context
    batch.context_mask.fill_(True)
    after = method.read(per_query, batch.read_ids, batch.read_mask)
    assert torch.equal(before, after)
    assert memory.floats >= 0


@pytest.mark.parametrize("name", sorted(set(METHODS) - {"query_only"}))
def test_memory_carries_the_context(name, paper_task):
    method = _method(name, paper_task).eval()
    examples = paper_task.examples("test", 2, 0)
    batch = collate(examples, paper_task, 1)
    swapped = collate(examples, paper_task, 1)
    swapped.context_ids = batch.context_ids.flip(0)
    a, _ = write_then_read(method, batch)
    b, _ = write_then_read(method, swapped)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_trainable_parameter_gets_a_gradient(name, compact_task):
    method = _method(name, compact_task, torch.float32).train()
    batch = collate(compact_task.examples("train", 4, 0), compact_task, "all")
    logits, _ = write_then_read(method, batch)
    target_loss(logits, batch).backward()
    missing = [n for n, p in method.named_parameters()
               if p.requires_grad and (p.grad is None or not torch.any(p.grad != 0))
               and not n.endswith("embed_tokens.weight")]
    # embedding rows of unused tokens get zero gradient; every other tensor must get one
    assert not missing, missing


def test_full_context_reads_the_same_logits_as_the_plain_model(paper_task):
    method = _method("full_context", paper_task).eval()
    examples = [paper_task.examples("test", 1, s)[0] for s in range(2)]
    short = type(examples[0])(examples[0].context[:15] + "|", examples[0].queries)  # unequal lengths
    examples = [short, examples[1]]
    batch = collate(examples, paper_task, 1)
    with torch.no_grad():
        logits, memory = write_then_read(method, batch)
        for row, example in enumerate(examples):
            codec = paper_task.tokenizer
            query = example.queries[0]
            ids = torch.tensor([codec.encode(example.context + query.text + query.target)])
            reference = method.backbone.model(input_ids=ids).logits[0]
            context_len = len(codec.encode(example.context))
            read_len = int(batch.read_mask[row].sum())
            expected = reference[context_len - 1: context_len - 1 + read_len]
            assert torch.allclose(logits[row, :read_len], expected, atol=1e-10)
    layers, hidden = 2, 16
    assert memory.floats == 2 * layers * batch.context_mask.sum(1).max().item() * hidden
