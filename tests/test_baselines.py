"""RMT, repeated-forward RMT, ARMT and Mamba: memory sizes, passes, exactness of their steps."""

import pytest
import torch

from harness.backbone import build_backbone
from harness.data import collate
from methods.armt import associative_read, associative_write, dpfp, feature_map
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


def _dpfp_unit_by_hand(x, nu):
    """DPFP written out index by index, then divided by its Euclidean norm."""
    r = [max(v, 0.0) for v in x] + [max(-v, 0.0) for v in x]
    n = len(r)
    phi = torch.tensor([r[i] * r[(i - shift) % n] for shift in range(1, nu + 1) for i in range(n)],
                       dtype=torch.float64)
    return phi / phi.pow(2).sum().sqrt()


def test_armt_write_and_read_match_a_step_by_hand():
    """Segment 1 (two slots, empty memory), segment 2 (three slots: delta rule and gamma), a read."""
    nu, eps = 2, 1e-5
    raw_keys = [[[1.0, -2.0, 0.5], [0.3, 1.0, -1.5]],
                [[1.0, -0.5, 1.0], [-1.0, 1.0, -0.5], [1.0, -2.0, 0.5]]]   # (segment, slot, d_mem)
    values = [torch.tensor([[0.3, -1.2, 2.0], [1.1, 0.4, -0.7]], dtype=torch.float64),
              torch.tensor([[-0.5, 0.9, 0.2], [0.8, -0.3, 1.4], [0.1, 0.6, -0.9]], dtype=torch.float64)]
    gates = [torch.tensor([0.5, 0.25], dtype=torch.float64), torch.tensor([0.75, 0.6, 0.4], dtype=torch.float64)]
    phi = [[_dpfp_unit_by_hand(k, nu) for k in segment] for segment in raw_keys]
    for segment in range(2):
        computed = feature_map(torch.tensor([raw_keys[segment]], dtype=torch.float64), nu)[0]
        assert torch.allclose(computed, torch.stack(phi[segment]), rtol=0, atol=1e-12)
    # segment 1, empty memory: nothing retrieved, gamma = 1
    a = sum(gates[0][j] * torch.outer(phi[0][j], values[0][j]) for j in range(2))
    z = phi[0][0] + phi[0][1]
    # segment 2: each slot against the memory after segment 1
    new_a, new_z, gammas = a.clone(), z.clone(), []
    for j in range(3):
        denominator = phi[1][j] @ z + eps
        previous = (phi[1][j] @ a) / denominator
        gamma = min(max(1 - denominator / (phi[1][j] @ phi[1][j]), 0.0), 1.0)
        gammas.append(float(gamma))
        new_a = new_a + gates[1][j] * torch.outer(phi[1][j], values[1][j] - previous)
        new_z = new_z + gamma * phi[1][j]
    # the correction is exercised: two slots strictly inside (0, 1), the repeated key clipped to 0
    assert all(0.1 < g < 0.9 for g in gammas[:2]) and gammas[2] == 0.0, gammas

    keys = [torch.stack(segment)[None] for segment in phi]
    matrix, normaliser = associative_write(keys[0], values[0][None], gates[0][None, :, None], eps=eps)
    assert torch.allclose(matrix[0], a, rtol=0, atol=1e-10) and torch.allclose(normaliser[0], z, rtol=0, atol=1e-10)
    matrix, normaliser = associative_write(keys[1], values[1][None], gates[1][None, :, None], matrix, normaliser,
                                           eps=eps)
    assert torch.allclose(matrix[0], new_a, rtol=0, atol=1e-10)
    assert torch.allclose(normaliser[0], new_z, rtol=0, atol=1e-10)
    _, plain_z = associative_write(keys[1], values[1][None], gates[1][None, :, None], a[None], z[None],
                                   use_gamma=False, eps=eps)
    assert torch.allclose(plain_z[0], z + sum(phi[1]), rtol=0, atol=1e-10)

    query = _dpfp_unit_by_hand([0.7, -0.2, 0.4], nu)
    expected = (query @ new_a) / (query @ new_z + eps)
    read = associative_read(query[None, None], matrix, normaliser, eps)
    assert torch.allclose(read[0, 0], expected, rtol=0, atol=1e-10)


def test_armt_writes_layer_zero_from_its_output_at_the_trailing_slots(compact_task):
    method = make_method("armt", compact_task, torch.float64, memory_size=2, d_mem=4, nu=2).eval()
    examples = compact_task.examples("test", 2, 0)
    assert examples[0].context != examples[1].context
    batch = collate(examples, compact_task, 1)
    matrix = method.write(batch.context_ids, batch.context_mask).state["matrix"]
    assert not torch.allclose(matrix[0, 0], matrix[1, 0])   # the old design wrote layer 0 from M0 alone
    m0 = method.initial_memory
    for row, example in enumerate(examples):
        ids = torch.tensor([compact_task.tokenizer.encode(example.context)])
        inputs = torch.cat([m0[None], method.backbone.embed(ids), m0[None]], dim=1)
        states = method.backbone.decoder(inputs_embeds=inputs, output_hidden_states=True).hidden_states[1][0, -2:]
        keys = feature_map(method.key_proj[0](states), 2)
        gates = torch.sigmoid(method.gate_proj[0](states))
        expected = torch.einsum("mf,md->fd", keys, gates * method.value_proj[0](states))
        assert torch.allclose(matrix[row, 0], expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("slot_update", ["parallel", "sequential"])
def test_armt_read_changes_with_the_written_association(slot_update, compact_task):
    method = make_method("armt", compact_task, torch.float64, memory_size=2, d_mem=4, nu=2,
                         slot_update=slot_update).eval()
    batch = collate(compact_task.examples("test", 2, 0), compact_task, 1)
    memory = method.write(batch.context_ids, batch.context_mask)
    assert memory.state["matrix"].shape == (2, 2, 2 * 4 * 2, 16)
    assert memory.state["normaliser"].shape == (2, 2, 2 * 4 * 2)
    zero = type(memory)({k: torch.zeros_like(v) for k, v in memory.state.items()}, memory.floats)
    with_memory = method.read(memory, batch.read_ids, batch.read_mask)
    without = method.read(zero, batch.read_ids, batch.read_mask)
    assert not torch.allclose(with_memory, without)
    assert method._reading is None and method._capturing is None  # hooks are inert outside write/read
    plain = method.backbone.lm_head(method.prefix_hidden(
        method.initial_memory.expand(2, -1, -1), batch.read_ids))
    assert torch.allclose(plain, without)


def test_armt_segments_write_each_context_on_its_own_one_segment_after_another(compact_task):
    """segment_length = 2 (one compact pair): a padded batch writes what each context gives alone,
    segment by segment; a context that ended keeps its memory; one long segment = the default."""
    method = make_method("armt", compact_task, torch.float64, memory_size=2, d_mem=4, nu=2, segment_length=2).eval()
    examples = compact_task.examples("test", 2, 0)
    examples[0] = type(examples[0])(" ".join(examples[0].context.split()[:2]), examples[0].queries)
    batch = collate(examples, compact_task, 1)
    assert batch.context_mask.sum(1).tolist() == [2, 2 * compact_task.config.pairs]
    state = method.write(batch.context_ids, batch.context_mask).state
    for row in range(2):
        ids = batch.context_ids[row, batch.context_mask[row].bool()][None]
        alone, first = None, None
        for start in range(0, ids.shape[1], 2):
            alone = method.write_segment(ids[:, start:start + 2], torch.tensor([2]), alone)
            first = alone if first is None else first
        for key in ("matrix", "normaliser"):
            assert torch.allclose(state[key][row], alone[key][0], rtol=0, atol=1e-10)
    assert not torch.allclose(state["matrix"][1], first["matrix"][0])   # the second pair was written too
    whole = make_method("armt", compact_task, torch.float64, memory_size=2, d_mem=4, nu=2, segment_length=64).eval()
    default = make_method("armt", compact_task, torch.float64, memory_size=2, d_mem=4, nu=2).eval()
    whole.load_state_dict(default.state_dict())
    assert torch.allclose(whole.write(batch.context_ids, batch.context_mask).state["matrix"],
                          default.write(batch.context_ids, batch.context_mask).state["matrix"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["gradmem", "rmt", "armt", "gist"])
def test_reconstruction_loss_reads_each_context_back_from_its_memory(name, compact_task):
    """Training adds weight x the next-token loss of the context read back from the memory alone
    (the memory predicts token 0, padding ignored), the mean over examples; evaluation adds nothing."""
    method = make_method(name, compact_task, torch.float64, memory_size=2, reconstruction_weight=0.5).train()
    examples = compact_task.examples("train", 3, 0)
    examples[0] = type(examples[0])(examples[0].context[: len(examples[0].context) // 2], examples[0].queries)
    batch = collate(examples, compact_task, 1)
    memory = method.write(batch.context_ids, batch.context_mask)
    losses = []
    for row in range(len(examples)):   # one example at a time, without its padding
        ids = batch.context_ids[row, batch.context_mask[row].bool()][None]
        logits = method.read(memory.select(torch.tensor([row])), ids, torch.ones_like(ids))
        losses.append(torch.nn.functional.cross_entropy(logits[0], ids[0]))
    assert torch.allclose(memory.aux_loss, 0.5 * torch.stack(losses).mean(), atol=1e-10)
    assert method.eval().write(batch.context_ids, batch.context_mask).aux_loss is None


def test_labels_name_the_reconstruction_loss_and_armt_segments():
    from methods.armt import ARMT, ARMTConfig
    from methods.gradmem import GradMem, GradMemConfig
    assert GradMem.display_label(GradMemConfig(write_steps=2, reconstruction_weight=1.0)) == "gradmem K=2 + recon"
    assert ARMT.display_label(ARMTConfig(segment_length=2, reconstruction_weight=1.0)) == "armt seg2 + recon"
    assert ARMT.display_label(ARMTConfig()) == "armt"
