"""Gist tokens and the Titans-style memory against computations by hand."""
import pytest
import torch
import torch.nn.functional as F

from harness.data import collate
from harness.errors import HarnessError
from harness.pipeline import target_loss, write_then_read
from tests.conftest import TINY_BACKBONE, make_method


def _unequal_batch(task):
    examples = [task.examples("test", 1, s)[0] for s in range(2)]
    examples[0] = type(examples[0])(examples[0].context[:15] + "|", examples[0].queries)
    return examples, collate(examples, task, 1)


def test_gist_reads_the_plain_model_on_c_g_q_with_the_query_cut_off_from_the_context(paper_task):
    """[C; G; Q; Y] in one pass, Q and Y attending to the gists and themselves, never to C."""
    g = 2
    method = make_method("gist", paper_task, torch.float64, memory_size=g).eval()
    examples, batch = _unequal_batch(paper_task)
    codec = paper_task.tokenizer
    with torch.no_grad():
        logits, memory = write_then_read(method, batch)
        for row, example in enumerate(examples):
            query = example.queries[0]
            context = torch.tensor(codec.encode(example.context))
            read = torch.tensor(codec.encode(query.text + query.target))
            n, total = len(context), len(context) + g + len(read)
            inputs = torch.cat([method.backbone.embed(context), method.gists, method.backbone.embed(read)])[None]
            allowed = torch.ones(total, total, dtype=torch.bool).tril()
            allowed[n + g:, :n] = False
            mask = torch.zeros(total, total, dtype=torch.float64).masked_fill(~allowed, torch.finfo(torch.float64).min)
            hidden, _ = method.backbone.hidden(inputs, attention_mask=mask[None, None])
            expected = method.backbone.lm_head(hidden[0, n + g - 1: n + g - 1 + len(read)])
            assert torch.allclose(logits[row, :len(read)], expected, atol=1e-10)
    layers, width = TINY_BACKBONE["layers"], TINY_BACKBONE["hidden"]
    assert memory.floats == 2 * layers * g * width
    assert type(method).sequence_length({"name": "gist", "memory_size": 3}, 100, 10) == 113


def _titans(task, **params):
    defaults = dict(memory_width=4, memory_hidden=0, chunk_size=6, inner_lr=0.3, momentum=0.8, forget=0.1)
    return make_method("titans", task, torch.float64, **{**defaults, **params})


def test_titans_write_is_two_chunks_of_gradient_descent_with_momentum_and_forgetting_by_hand(paper_task):
    method = _titans(paper_task).eval()
    context = torch.tensor([paper_task.tokenizer.encode(paper_task.examples("test", 1, 0)[0].context)[:12]])
    mask = torch.ones_like(context, dtype=torch.bool)
    with torch.no_grad():
        memory = method.write(context, mask)
        hidden, _ = method.backbone.hidden(method.backbone.embed(context))
        keys = F.normalize(hidden[0] @ method.key.weight.T, dim=-1)
        values = hidden[0] @ method.value.weight.T
    # the gates start at their configured values (their weights are zero): eta 0.8, theta 0.3,
    # alpha 0.1, up to the float32 rounding of the bias they were set in
    eta, step, alpha = torch.sigmoid(method.gates.bias.detach())
    theta = 2 * 0.3 * step
    assert torch.allclose(torch.stack([eta, theta, alpha]), torch.tensor([0.8, 0.3, 0.1], dtype=torch.float64))
    weights, momentum = method.initial_weights[0].detach(), torch.zeros(4, 4, dtype=torch.float64)
    for chunk in (slice(0, 6), slice(6, 12)):
        k, v = keys[chunk], values[chunk]
        grad = 2 * k.T @ (k @ weights - v) / len(k)      # d/dW of mean_t ||k_t W - v_t||^2
        momentum = eta * momentum - theta * grad
        weights = (1 - alpha) * weights + momentum
    assert torch.allclose(memory.state[0][0], weights, rtol=0, atol=1e-12)
    assert memory.floats == 16
    assert len(memory.log["inner_loss"]) == 2


def test_titans_read_interleaves_each_token_with_what_the_memory_returns_for_it(paper_task):
    method = _titans(paper_task, memory_hidden=3, persistent=2).eval()
    example = paper_task.examples("test", 1, 0)[0]
    batch = collate([example], paper_task, 1)
    with torch.no_grad():
        logits, memory = write_then_read(method, batch)
        query = example.queries[0]
        read = torch.tensor(paper_task.tokenizer.encode(query.text + query.target))
        embeddings = method.backbone.embed(read)
        states, _ = method.backbone.hidden(embeddings[None])
        first, second = (w[0] for w in memory.state)
        sequence = [method.persistent[0], method.persistent[1]]
        for t in range(len(read)):
            q = F.normalize(states[0, t] @ method.query.weight.T, dim=-1)
            r = (q + F.silu(q @ first) @ second) @ method.out.weight.T
            sequence += [embeddings[t], r]
        hidden, _ = method.backbone.hidden(torch.stack(sequence)[None])
        predicting = [hidden[0, 1]] + [hidden[0, 2 + 2 * t + 1] for t in range(len(read) - 1)]
        expected = method.backbone.lm_head(torch.stack(predicting))
    assert torch.allclose(logits[0, :len(read)], expected, atol=1e-10)
    assert memory.floats == 4 * 3 + 3 * 4


def test_titans_padding_chunks_leave_the_memory_alone_and_contexts_are_written_independently(paper_task):
    method = _titans(paper_task, chunk_size=4).eval()
    examples, batch = _unequal_batch(paper_task)
    alone = collate(examples[:1], paper_task, 1)
    with torch.no_grad():
        together = method.write(batch.context_ids, batch.context_mask).state[0][0]
        single = method.write(alone.context_ids, alone.context_mask).state[0][0]
    assert batch.context_ids.shape[1] > alone.context_ids.shape[1] + 4     # whole chunks of padding
    assert torch.allclose(together, single, rtol=0, atol=1e-12)


def test_titans_meta_gradient_matches_finite_differences(paper_task):
    """The READ loss through both chunk updates, against central differences along one direction
    of the initial weights and of the key projection."""
    method = _titans(paper_task, memory_hidden=3).train()
    batch = collate(paper_task.examples("train", 2, 0), paper_task, 1)

    def loss():
        logits, _ = write_then_read(method, batch)
        return target_loss(logits, batch)

    for parameter in (method.initial_weights[0], method.key.weight):
        direction = torch.randn_like(parameter)
        method.zero_grad()
        loss().backward()
        analytic = (parameter.grad * direction).sum()
        eps = 1e-6
        with torch.no_grad():
            parameter += eps * direction
            up = loss()
            parameter -= 2 * eps * direction
            down = loss()
            parameter += eps * direction
        assert torch.allclose(analytic, (up - down) / (2 * eps), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("name, params, message", [
    ("gist", {"memory_size": 0}, "memory_size"),
    ("titans", {"momentum": 1.0}, "momentum"),
    ("titans", {"memory_hidden": -1}, "memory_hidden"),
])
def test_bad_settings_are_one_line_errors(name, params, message, compact_task):
    with pytest.raises(HarnessError, match=message):
        make_method(name, compact_task, **params)
