"""The write/read contract for every registered method: context removal, gradients, full context."""
import pytest
import torch

from harness.contract import Memory, Method
from harness.data import collate
from harness.pipeline import target_loss, training_loss, write_then_read
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


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_a_step_under_bf16_autocast(name, compact_task):
    """The trainer's `precision: bf16` (autocast): a training step runs and its loss is finite
    (RMT's write once mixed a bf16 memory map output into an fp32 sequence and failed)."""
    from harness.pipeline import training_loss
    method = _method(name, compact_task, torch.float32).train()
    batch = collate(compact_task.examples("train", 4, 0), compact_task, "all")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = training_loss(method, batch)
    loss.backward()
    assert torch.isfinite(loss)


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


def test_full_context_reading_the_context_twice_is_the_plain_model_on_c_c_q(paper_task):
    """context_reads 2: the logits of the plain model on [C; C; Q; Y], for contexts of unequal lengths."""
    method = make_method("full_context", paper_task, torch.float64, context_reads=2).eval()
    examples = [paper_task.examples("test", 1, s)[0] for s in range(2)]
    examples[0] = type(examples[0])(examples[0].context[:15] + "|", examples[0].queries)
    batch = collate(examples, paper_task, 1)
    with torch.no_grad():
        logits, memory = write_then_read(method, batch)
        for row, example in enumerate(examples):
            codec, query = paper_task.tokenizer, example.queries[0]
            context = codec.encode(example.context)
            ids = torch.tensor([context + context + codec.encode(query.text + query.target)])
            reference = method.backbone.model(input_ids=ids).logits[0]
            read_len = int(batch.read_mask[row].sum())
            expected = reference[2 * len(context) - 1: 2 * len(context) - 1 + read_len]
            assert torch.allclose(logits[row, :read_len], expected, atol=1e-10)
    assert memory.floats == 2 * 2 * 2 * batch.context_mask.sum(1).max().item() * 16
    # what the pre-run check against max_positions sees
    assert type(method).sequence_length({"name": "full_context", "context_reads": 2}, 100, 10) == 210
    assert type(method).sequence_length({"name": "full_context"}, 100, 10) == 110


@pytest.mark.parametrize("reconstruction_weight, context_reads", [(0.0, 1), (0.5, 1), (0.0, 2)])
def test_full_context_trains_in_one_pass_with_the_logits_and_gradients_of_write_then_read(paper_task,
                                                                                          reconstruction_weight,
                                                                                          context_reads):
    """float64: one pass over [C; Q1 Y1; Q2 Y2; ...] per context (4D mask, continued positions)
    gives write-then-read's logits at every target position, its context loss (`+ recon`) and the
    same loss gradients, with unequal context lengths and several queries of unequal lengths per
    context."""
    method = make_method("full_context", paper_task, torch.float64,
                         reconstruction_weight=reconstruction_weight, context_reads=context_reads).train()
    examples = paper_task.examples("train", 3, 0)
    queries = examples[0].queries
    examples[0] = type(examples[0])(examples[0].context[:11] + "|",                 # a short context
                                    (queries[0], type(queries[0])(queries[1].text[:1], queries[1].target + "xy")))
    examples[2] = type(examples[2])(examples[2].context, examples[2].queries[:1])   # a single query
    batch = collate(examples, paper_task, "all")
    assert len(set(batch.context_mask.sum(1).tolist())) > 1
    assert len(set(batch.read_mask.sum(1).tolist())) > 1
    reference, memory = write_then_read(method, batch)
    one_pass, aux = method.train_logits(batch)
    assert one_pass.shape == reference.shape
    if reconstruction_weight:
        # the context's next-token loss, by hand: token t + 1 of each real context from position t
        logits = method.backbone.lm_head(method.backbone.hidden(method.backbone.embed(batch.context_ids),
                                                                attention_mask=batch.context_mask.long())[0])
        by_hand = torch.stack([torch.nn.functional.cross_entropy(logits[b, :n - 1], batch.context_ids[b, 1:n])
                               for b, n in enumerate(batch.context_mask.sum(1).tolist())]).mean()
        assert abs(memory.aux_loss.item() - reconstruction_weight * by_hand.item()) < 1e-10
        assert abs(aux.item() - memory.aux_loss.item()) < 1e-10
        reference_loss, one_pass_loss = target_loss(reference, batch) + memory.aux_loss, target_loss(one_pass, batch) + aux
    else:
        assert aux is None and memory.aux_loss is None
        reference_loss, one_pass_loss = target_loss(reference, batch), target_loss(one_pass, batch)
    assert torch.equal(training_loss(method, batch)[0], one_pass_loss)   # the trainer's path
    targets = batch.target_mask
    assert (one_pass[targets] - reference[targets]).abs().max() < 1e-10
    parameters = [p for p in method.parameters() if p.requires_grad]
    expected = torch.autograd.grad(reference_loss, parameters)
    got = torch.autograd.grad(one_pass_loss, parameters)
    for e, g in zip(expected, got):
        assert torch.allclose(g, e, rtol=1e-9, atol=1e-12)
    with torch.no_grad():                                                   # not training: write, read
        assert torch.equal(training_loss(method.eval(), batch)[0], target_loss(reference, batch))


class _BrokenRead(Method):
    """A method whose read drops the query dimension (a deliberate contract break)."""
    name = "broken_read"

    def __init__(self, config, backbone):
        super().__init__(config, backbone)
        self.start = torch.nn.Parameter(torch.zeros(1))

    def write(self, context_ids, context_mask, write_setting=None):
        return Memory(state=context_ids.new_zeros(len(context_ids), 1).float(), floats=1)

    def read(self, memory, read_ids, read_mask):
        return torch.zeros(read_ids.shape[1], 5) + self.start


class _BrokenWrite(_BrokenRead):
    name = "broken_write"

    def write(self, context_ids, context_mask, write_setting=None):
        return Memory(state=torch.zeros(1, len(context_ids)), floats=1)   # not batch-first


@pytest.mark.parametrize("cls, rule", [(_BrokenRead, "read must return logits (Q, Lr, V)"),
                                       (_BrokenWrite, "batch-first")])
def test_a_contract_break_names_the_method_the_rule_and_the_shapes(compact_task, cls, rule):
    from harness.data import collate
    from harness.errors import ContractError
    method = cls(None, make_method("query_only", compact_task).backbone)
    batch = collate(compact_task.examples("train", 3, seed=0), compact_task)
    with pytest.raises(ContractError) as caught:
        write_then_read(method, batch)
    message = str(caught.value)
    assert cls.name in message and rule in message and "got" in message and len(message.splitlines()) == 1


def test_the_registry_refuses_a_class_that_is_not_a_method_or_task():
    from harness.errors import HarnessError
    from harness.registry import register_method, register_task

    class NotAMethod:
        name = "not_a_method"

    with pytest.raises(HarnessError, match="must subclass harness.contract.Method"):
        register_method(NotAMethod)
    with pytest.raises(HarnessError, match="must subclass harness.contract.Task"):
        register_task(NotAMethod)
    assert "not_a_method" not in METHODS


PEEKING_PLUGIN = '''
import torch
from harness.contract import Memory, Method
from harness.registry import register_method
from dataclasses import dataclass

@dataclass
class PeekConfig:
    pass

@register_method
class Peek(Method):
    """Breaks context removal: keeps the context on the module and reads it back."""
    name = "peek_plugin"
    Config = PeekConfig

    def __init__(self, config, backbone):
        super().__init__(config, backbone)
        self.scale = torch.nn.Parameter(torch.ones(()))

    def write(self, context_ids, context_mask, write_setting=None):
        self.seen = context_ids
        return Memory(state=torch.zeros(len(context_ids), 1, dtype=self.scale.dtype), floats=1)

    def read(self, memory, read_ids, read_mask):
        hidden, _ = self.backbone.hidden(self.backbone.embed(torch.cat([self.seen[:len(read_ids)], read_ids], 1)))
        return self.scale * self.backbone.lm_head(hidden[:, -read_ids.shape[1]:])
'''


@pytest.mark.slow
def test_registry_wide_tests_check_an_outside_plugin(tmp_path):
    """`pytest tests/test_contract.py --harness-plugin MODULE` runs the contract tests on a plugin."""
    import os
    import subprocess
    import sys
    (tmp_path / "peek_plugin.py").write_text(PEEKING_PLUGIN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "tests/test_contract.py", "-q", "-p", "no:cacheprovider",
                           "-k", "read_never_sees and peek_plugin", "--harness-plugin", "peek_plugin"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED tests/test_contract.py::test_read_never_sees_the_context[peek_plugin]" in done.stdout
