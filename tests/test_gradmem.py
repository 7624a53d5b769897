"""GradMem: meta-gradients against finite differences, orders, independence, alignment, K=0."""
import pytest
import torch
import torch.nn.functional as F

from harness.data import collate
from harness.pipeline import target_loss, write_then_read
from tests.conftest import make_method

OPTIONS = dict(memory_size=2, write_steps=2, inner_lr=0.5, learn_inner_lr=True, memory_map=True, write_head=True)


def _batch(task, count=3, seed=0, queries="all"):
    return collate(task.examples("train", count, seed), task, queries)


def _loss(method, batch):
    logits, _ = write_then_read(method, batch)
    return target_loss(logits, batch)


def _finite_difference(method, batch, tensor, index, eps=1e-6):
    with torch.no_grad():
        original = tensor[index].item()
        tensor[index] = original + eps
        plus = _loss(method, batch).item()
        tensor[index] = original - eps
        minus = _loss(method, batch).item()
        tensor[index] = original
    return (plus - minus) / (2 * eps)


def test_second_order_meta_gradient_matches_finite_differences(compact_task):
    method = make_method("gradmem", compact_task, torch.float64, **OPTIONS).train()
    batch = _batch(compact_task)
    loss = _loss(method, batch)
    layer = method.backbone.model.model.layers[0]
    tensors = {"M0": method.initial_memory, "log_alpha": method.log_inner_lr,
               "q_proj": layer.self_attn.q_proj.weight, "mlp": layer.mlp.down_proj.weight,
               "memory_map": method.memory_map.weight, "write_head": method.write_head.weight}
    grads = torch.autograd.grad(loss, list(tensors.values()))
    generator = torch.Generator().manual_seed(0)
    for (name, tensor), grad in zip(tensors.items(), grads):
        for _ in range(3):
            index = tuple(torch.randint(0, s, (1,), generator=generator).item() for s in tensor.shape)
            numeric = _finite_difference(method, batch, tensor.data, index)
            assert grad[index].item() == pytest.approx(numeric, rel=1e-4, abs=1e-8), name


def test_orders_differ_and_none_leaves_initial_memory_without_gradient(compact_task):
    batch = _batch(compact_task)
    grads = {}
    for order in ("second", "first", "none"):
        method = make_method("gradmem", compact_task, torch.float64, order=order, **OPTIONS).train()
        _loss(method, batch).backward()
        grads[order] = (method.initial_memory.grad, method.backbone.model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    assert not torch.allclose(grads["second"][0], grads["first"][0])
    assert not torch.allclose(grads["second"][1], grads["first"][1])
    assert grads["none"][0] is None or torch.count_nonzero(grads["none"][0]) == 0


@pytest.mark.parametrize("training", [True, False])
def test_one_example_memory_never_depends_on_another(compact_task, training):
    method = make_method("gradmem", compact_task, torch.float64, **OPTIONS).train(training)
    examples = compact_task.examples("train", 3, 0)
    other = compact_task.examples("train", 5, 99)[4]
    first = method.write(*_ctx(collate(examples, compact_task)))
    changed = method.write(*_ctx(collate([examples[0], examples[1], other], compact_task)))
    assert torch.allclose(first.state[:2], changed.state[:2], atol=1e-12)
    assert not torch.allclose(first.state[2], changed.state[2])


def _ctx(batch):
    return batch.context_ids, batch.context_mask


def test_label_alignment_last_memory_slot_predicts_first_token(compact_task):
    method = make_method("gradmem", compact_task, torch.float64, **OPTIONS).eval()
    batch = _batch(compact_task)
    m = method.memory_size
    memory = method.initial_memory.unsqueeze(0).expand(len(batch.context_ids), -1, -1)
    # WRITE: with only the first context token counted, L_write is the loss of slot m-1 on it.
    only_first = torch.zeros_like(batch.context_mask)
    only_first[:, 0] = True
    inputs = torch.cat([method.memory_embeddings(memory), method.backbone.embed(batch.context_ids)], 1)
    hidden, _ = method.backbone.hidden(inputs)
    expected = F.cross_entropy(method.write_head(hidden[:, m - 1]), batch.context_ids[:, 0], reduction="none")
    assert torch.allclose(method.write_loss(memory, batch.context_ids, only_first), expected)
    # READ: logits[:, 0] come from slot m-1 and predict the first query token.
    read_memory = memory.index_select(0, batch.context_index)
    inputs = torch.cat([method.memory_embeddings(read_memory), method.backbone.embed(batch.read_ids)], 1)
    hidden, _ = method.backbone.hidden(inputs)
    logits = method.read(type("M", (), {"state": read_memory})(), batch.read_ids, batch.read_mask)
    assert torch.allclose(logits[:, 0], method.backbone.lm_head(hidden[:, m - 1]))
    assert torch.allclose(logits[:, 1], method.backbone.lm_head(hidden[:, m]))


def test_zero_write_steps_reads_initial_memory(compact_task):
    method = make_method("gradmem", compact_task, **OPTIONS).eval()
    batch = _batch(compact_task)
    memory = method.write(*_ctx(batch), write_setting=0)
    assert torch.equal(memory.state, method.initial_memory.detach().expand_as(memory.state))
    assert len(memory.log["inner_loss"]) == 1  # the WRITE loss at M_0


def test_evaluation_builds_no_graph_and_accepts_other_step_counts(compact_task):
    method = make_method("gradmem", compact_task, **OPTIONS).eval()
    batch = _batch(compact_task)
    for steps in (1, 3, 5):
        memory = method.write(*_ctx(batch), write_setting=steps)
        assert memory.state.grad_fn is None and not memory.state.requires_grad
        assert len(memory.log["inner_loss"]) == steps + 1  # at M_0 .. M_K
    with torch.no_grad():
        memory = method.write(*_ctx(batch), write_setting=2)
    assert memory.state.grad_fn is None
    assert all(p.grad is None for p in method.parameters())


def test_unlogged_evaluation_writes_the_same_memory(compact_task):
    batch = _batch(compact_task)
    logged = make_method("gradmem", compact_task, torch.float64, **OPTIONS).eval()
    unlogged = make_method("gradmem", compact_task, torch.float64, **OPTIONS, log_write_loss=False).eval()
    unlogged.load_state_dict(logged.state_dict())
    a, b = logged.write(*_ctx(batch), write_setting=2), unlogged.write(*_ctx(batch), write_setting=2)
    assert torch.equal(a.state, b.state)
    assert len(a.log["inner_loss"]) == 3 and not b.log["inner_loss"] and not b.log["token_loss"]


def test_inner_steps_lower_the_write_loss_and_clip_bounds_the_step(compact_task):
    batch = _batch(compact_task)
    small_steps = make_method("gradmem", compact_task, torch.float64, memory_size=2, inner_lr=0.05).eval()
    losses = small_steps.write(*_ctx(batch), write_setting=3).log["inner_loss"]
    assert losses[0] > losses[1] > losses[2] > losses[3]
    method = make_method("gradmem", compact_task, torch.float64, memory_size=2, inner_lr=0.5,
                         inner_grad_clip=0.01).eval()
    memory = method.write(*_ctx(batch), write_setting=1)
    step = (memory.state - method.initial_memory.detach()).flatten(1).norm(dim=1)
    assert torch.all(step <= 0.5 * 0.01 + 1e-9)


def test_negative_write_steps_is_a_harness_error(compact_task):
    from harness.errors import HarnessError
    method = make_method("gradmem", compact_task)
    with pytest.raises(HarnessError, match="write_steps"):
        method.write(*_ctx(_batch(compact_task)), write_setting=-1)


def test_checkpointed_write_steps_give_the_same_meta_gradient(compact_task):
    batch = _batch(compact_task)
    grads = []
    for checkpointed in (False, True):
        method = make_method("gradmem", compact_task, torch.float64, checkpoint_steps=checkpointed,
                             inner_grad_clip=5.0, **{**OPTIONS, "write_steps": 3}).train()
        params = [p for p in method.parameters() if p.requires_grad]
        grads.append(torch.autograd.grad(_loss(method, batch), params))
    for plain, checkpointed in zip(*grads):
        assert torch.allclose(plain, checkpointed, rtol=1e-10, atol=1e-12)
