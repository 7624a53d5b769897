"""RMT, repeated-forward RMT, ARMT and Mamba: memory sizes, passes, exactness of their steps."""
import pytest
import torch

from harness.backbone import build_backbone
from harness.data import collate
from methods.armt import associative_read, associative_write, dpfp
from tests.conftest import make_method, make_task

PAPER_KV = {"layers": 4, "hidden": 128, "heads": 4, "ffn": 512}


@pytest.mark.parametrize("name,arch,expected", [
    ("gradmem", "llama", 1024), ("rmt", "llama", 1024), ("armt", "llama", 198_144), ("mamba", "mamba", 40_960)])
def test_memory_floats_at_the_paper_kv_setting(name, arch, expected):
    task = make_task(pairs=2)
    backbone = build_backbone({**PAPER_KV, "arch": arch}, task.tokenizer.vocab_size)
    params = {"memory_size": 8} if name != "mamba" else {}
    method = make_method(name, task, backbone=backbone, **params).eval()
    batch = collate(task.examples("test", 2, 0), task, 1)
    assert method.write(batch.context_ids, batch.context_mask).floats == expected


def _count_decoder_calls(method):
    calls = []
    method.backbone.decoder.register_forward_hook(lambda *a: calls.append(1))
    return calls


@pytest.mark.parametrize("passes", [1, 2, 3])
def test_rmt_reads_the_context_once_per_write_pass(passes, compact_task):
    method = make_method("rmt", compact_task, memory_size=2, write_passes=passes).eval()
    batch = collate(compact_task.examples("test", 2, 0), compact_task, 1)
    calls = _count_decoder_calls(method)
    method.write(batch.context_ids, batch.context_mask)
    assert len(calls) == passes


def test_rmt_single_pass_equals_a_hand_built_pass(paper_task):
    method = make_method("rmt", paper_task, torch.float64, memory_size=3).eval()
    examples = paper_task.examples("test", 2, 0)
    short = type(examples[0])(examples[0].context[:8] + "|", examples[0].queries)
    batch = collate([short, examples[1]], paper_task, 1)
    memory = method.write(batch.context_ids, batch.context_mask).state
    codec, m0 = paper_task.tokenizer, method.memory_map(method.initial_memory)
    for row, example in enumerate([short, examples[1]]):
        ids = torch.tensor([codec.encode(example.context)])
        inputs = torch.cat([m0[None], method.backbone.embed(ids), m0[None]], dim=1)
        hidden, _ = method.backbone.hidden(inputs)
        assert torch.allclose(memory[row], hidden[0, -3:], atol=1e-12)


def test_rmt_second_pass_is_fed_the_first_pass_memory(compact_task):
    one = make_method("rmt", compact_task, torch.float64, memory_size=2, write_passes=1).eval()
    two = make_method("rmt", compact_task, torch.float64, memory_size=2, write_passes=2).eval()
    two.load_state_dict(one.state_dict())
    batch = collate(compact_task.examples("test", 2, 0), compact_task, 1)
    first = one.write(batch.context_ids, batch.context_mask).state
    expected = one.write_pass(first, batch.context_ids, batch.context_mask)
    assert torch.allclose(two.write(batch.context_ids, batch.context_mask).state, expected)


def test_mamba_read_continues_the_plain_model(paper_task):
    method = make_method("mamba", paper_task).eval()
    examples = paper_task.examples("test", 2, 0)
    short = type(examples[0])(examples[0].context[:10] + "|", examples[0].queries)
    examples = [short, examples[1]]
    batch = collate(examples, paper_task, 1)
    codec = paper_task.tokenizer
    with torch.no_grad():
        memory = method.write(batch.context_ids, batch.context_mask)
        logits = method.read(memory, batch.read_ids, batch.read_mask)
        for row, example in enumerate(examples):
            query = example.queries[0]
            ids = torch.tensor([codec.encode(example.context + query.text + query.target)])
            reference = method.backbone.model(input_ids=ids).logits[0]
            start, length = len(codec.encode(example.context)) - 1, int(batch.read_mask[row].sum())
            assert torch.allclose(logits[row, :length], reference[start:start + length], atol=1e-5)


def test_dpfp_features():
    x = torch.tensor([[1.0, -2.0]])
    r = torch.tensor([[1.0, 0.0, 0.0, 2.0]])
    expected = torch.cat([r * r.roll(1, -1), r * r.roll(2, -1)], -1)
    assert torch.equal(dpfp(x, 2), expected)
    assert dpfp(torch.randn(3, 5, 64), 3).shape == (3, 5, 384)


def test_armt_write_and_read_match_a_step_by_hand():
    torch.manual_seed(0)
    keys, values = torch.rand(1, 2, 3, dtype=torch.float64), torch.randn(1, 2, 2, dtype=torch.float64)
    gates = torch.tensor([[[0.5], [0.25]]], dtype=torch.float64)
    eps = 1e-5
    # slot 1: empty memory retrieves nothing; A = b1 k1 v1^T, z = k1
    k1, k2, v1, v2 = keys[0, 0], keys[0, 1], values[0, 0], values[0, 1]
    a = 0.5 * torch.outer(k1, v1)
    z = k1.clone()
    # slot 2: delta rule against what the memory already returns for k2
    previous = (k2 @ a) / (k2 @ z + eps)
    a = a + 0.25 * torch.outer(k2, v2 - previous)
    z = z + k2
    matrix, normaliser = associative_write(keys, values, gates, eps)
    assert torch.allclose(matrix[0], a) and torch.allclose(normaliser[0], z)
    query = torch.rand(1, 1, 3, dtype=torch.float64)
    expected = (query[0, 0] @ a) / (query[0, 0] @ z + eps)
    assert torch.allclose(associative_read(query, matrix, normaliser, eps)[0, 0], expected)


def test_armt_read_changes_with_the_written_association(compact_task):
    method = make_method("armt", compact_task, torch.float64, memory_size=2, d_mem=4, nu=2).eval()
    batch = collate(compact_task.examples("test", 2, 0), compact_task, 1)
    memory = method.write(batch.context_ids, batch.context_mask)
    assert memory.state["matrix"].shape == (2, 2, 2 * 4 * 2, 16)
    zero = type(memory)({k: torch.zeros_like(v) for k, v in memory.state.items()}, memory.floats)
    with_memory = method.read(memory, batch.read_ids, batch.read_mask)
    without = method.read(zero, batch.read_ids, batch.read_mask)
    assert not torch.allclose(with_memory, without)
    method._action = None  # hooks are inactive outside write/read
    plain = method.backbone.lm_head(method.prefix_hidden(
        method.initial_memory.expand(2, -1, -1), batch.read_ids))
    assert torch.allclose(plain, without)
