"""KV retrieval generator: format, lengths, determinism, disjoint splits, unique keys, scoring."""
import re

import pytest
import torch

from harness.data import collate
from harness.errors import HarnessError
from harness.evaluate import exact_match, token_accuracy
from tests.conftest import make_task


def test_paper_format_matches_the_paper(paper_task):
    examples = paper_task.examples("train", 50, 0)
    pair = r"!([a-zA-Z0-9]{2}):([a-zA-Z0-9]{2})!"
    for example in examples:
        assert re.fullmatch(f"({pair}){{4}}\\|", example.context)
        assert len(example.context) == 7 * 4 + 1
        pairs = dict(re.findall(pair, example.context))
        assert len(pairs) == 4, "keys are unique within a context"
        assert sorted(q.text[2:4] for q in example.queries) == sorted(pairs), "every key is asked"
        for query in example.queries:
            assert re.fullmatch(r"\?![a-zA-Z0-9]{2}:", query.text)
            assert query.target == pairs[query.text[2:4]] + "!|"
    assert paper_task.tokenizer.vocab_size == 70


@pytest.mark.parametrize("pairs", [1, 16, 64])
def test_context_length_is_7n_plus_1(pairs):
    task = make_task(pairs=pairs)
    example = task.examples("test", 1, 3)[0]
    assert len(example.context) == 7 * pairs + 1
    assert len(task.tokenizer.encode(example.context)) == 7 * pairs + 1
    assert task.max_lengths() == (7 * pairs + 1, 9)


def test_compact_format_uses_disjoint_key_and_value_symbols(compact_task):
    for example in compact_task.examples("train", 20, 0):
        tokens = example.context.split()
        keys, values = tokens[0::2], tokens[1::2]
        assert all(k.startswith("K") for k in keys) and all(v.startswith("V") for v in values)
        assert len(set(keys)) == len(keys) == 3
        answers = dict(zip(keys, values))
        assert {q.text: q.target for q in example.queries} == answers


def test_generation_is_deterministic_per_seed_and_splits_are_disjoint():
    task = make_task(format="compact", pairs=2, key_length=1, value_length=1, key_symbols=4, value_symbols=4)
    assert task.examples("train", 30, 5) == task.examples("train", 30, 5)
    assert task.examples("train", 30, 5) != task.examples("train", 30, 6)
    contexts = {split: {e.context for e in task.examples(split, 60, 0)} for split in ("train", "valid", "test")}
    assert not contexts["train"] & contexts["valid"]
    assert not contexts["train"] & contexts["test"]
    assert not contexts["valid"] & contexts["test"]


def test_impossible_tasks_are_rejected():
    with pytest.raises(HarnessError, match="distinct keys"):
        make_task(format="compact", pairs=9, key_length=1, key_symbols=8)
    with pytest.raises(HarnessError, match="alphabet"):
        make_task(alphabet=63)


def shared_key_fraction(examples) -> float:
    """Fraction of asked keys that share a character with another key of their context."""
    shared = total = 0
    for example in examples:
        keys = [pair[:2] for pair in example.context.rstrip("|").split("!") if pair]
        for key in keys:
            shared += any(k != key and (k[0] == key[0] or k[1] == key[1]) for k in keys)
            total += 1
    return shared / total


def test_train_key_overlap_makes_training_keys_share_characters_and_leaves_evaluation_alone():
    plain, overlap = make_task(pairs=8), make_task(pairs=8, train_key_overlap=0.5)
    for split in ("valid", "test"):
        assert overlap.examples(split, 40, 0) == plain.examples(split, 40, 0)
    train = overlap.examples("train", 200, 0)
    for example in train:   # still unique keys, every key asked, the paper's format
        keys = [pair[:2] for pair in example.context.rstrip("|").split("!") if pair]
        assert len(set(keys)) == len(keys) == 8
        assert sorted(q.text[2:4] for q in example.queries) == sorted(keys)
    # at 62 symbols a plain draw shares a character for about 20% of keys at 8 pairs
    assert shared_key_fraction(plain.examples("train", 200, 0)) < 0.3
    assert shared_key_fraction(train) > 0.6


def test_train_key_overlap_is_checked():
    with pytest.raises(HarnessError, match="train_key_overlap"):
        make_task(train_key_overlap=1.5)
    with pytest.raises(HarnessError, match="key_length >= 2"):
        make_task(format="compact", key_length=1, train_key_overlap=0.5)


def test_exact_match_scores_value_characters_only(paper_task):
    example = paper_task.examples("test", 1, 0)[0]
    batch = collate([example], paper_task, 1)
    scored = batch.read_ids[batch.score_mask]
    assert paper_task.tokenizer.decode(scored) == example.queries[0].target[:2]
    predictions = batch.read_ids.clone()
    target_positions = batch.target_mask.nonzero()[:, 1]
    predictions[0, target_positions[-1]] = 1          # wrong '|' does not count
    assert exact_match(predictions, batch.read_ids, batch.score_mask).item() == 1.0
    predictions[0, target_positions[0]] = 1           # wrong first value character does
    assert exact_match(predictions, batch.read_ids, batch.score_mask).item() == 0.0


def test_metrics_on_hand_made_cases():
    targets = torch.tensor([[5, 6, 7], [5, 6, 7], [5, 6, 7]])
    score = torch.tensor([[False, True, True]] * 3)
    predictions = torch.tensor([[0, 6, 7], [5, 6, 0], [5, 0, 0]])
    assert exact_match(predictions, targets, score).tolist() == [1.0, 0.0, 0.0]
    assert token_accuracy(predictions, targets, score) == pytest.approx(3 / 6)
    assert exact_match(predictions, targets, torch.zeros_like(score)).tolist() == [0.0] * 3


def test_collate_aligns_targets_and_contexts(compact_task):
    examples = compact_task.examples("train", 2, 0)
    batch = collate(examples, compact_task, "all")
    assert batch.context_index.tolist() == [0, 0, 0, 1, 1, 1]
    codec = compact_task.tokenizer
    for row, (i, query) in enumerate((i, q) for i, e in enumerate(examples) for q in e.queries):
        assert codec.decode(batch.read_ids[row][batch.target_mask[row]]) == query.target
        assert codec.decode(batch.read_ids[row][batch.read_mask[row] & ~batch.target_mask[row]]) == query.text
    assert collate(examples, compact_task, 1).context_index.tolist() == [0, 1]


def test_context_roles_mark_key_and_value_tokens(paper_task, compact_task):
    from harness.contract import ROLE_NAMES
    example = paper_task.examples("test", 1, 0)[0]
    roles = paper_task.context_roles(paper_task.tokenizer.encode(example.context))
    named = "".join(ROLE_NAMES[r][0] for r in roles)
    assert named == "okkovvo" * 4 + "o"
    example = compact_task.examples("test", 1, 0)[0]
    assert compact_task.context_roles(compact_task.tokenizer.encode(example.context)) == [1, 2] * 3


def test_evaluation_reports_the_write_loss_per_step_and_role(paper_task):
    from harness.evaluate import evaluate
    from tests.conftest import make_method
    method = make_method("gradmem", paper_task, memory_size=2)
    metrics = evaluate(method, paper_task, paper_task.examples("test", 6, 0), [0, 2], batch_size=4)
    assert len(metrics["0"]["inner_loss"]) == 1 and len(metrics["2"]["inner_loss_key"]) == 3
    assert metrics["2"]["inner_loss_value"][0] == metrics["0"]["inner_loss_value"][0]
    assert set(metrics["2"]) >= {"exact_match", "token_accuracy", "inner_loss", "inner_loss_key", "inner_loss_value"}


def test_character_codec_encodes_as_its_tokenizer_does(paper_task):
    codec = paper_task.tokenizer
    texts = ["!ab:cd!!ef:gh!|", "?!ab:", "", "a~b", "ab\ncd", "x\n\ny"]   # unknown characters, newlines
    expected = [codec.tokenizer.encode(t).ids if t else [] for t in texts]
    assert codec.encode_batch(texts) == expected
    assert [codec.encode(t) for t in texts] == expected
    assert codec.unk_id in expected[3]


# ---------------------------------------------------------------- generator 2: tensors
BATCH_FIELDS = ("context_ids", "context_mask", "read_ids", "read_mask", "target_mask", "score_mask",
                "context_index", "context_roles")
FORMATS = {"paper": {"pairs": 8}, "paper overlap": {"pairs": 8, "train_key_overlap": 0.5},
           "compact": {"format": "compact", "pairs": 5, "key_length": 1, "value_length": 1,
                       "key_symbols": 8, "value_symbols": 8},
           "compact 2-symbol keys": {"format": "compact", "pairs": 6, "key_length": 2, "value_length": 2,
                                     "key_symbols": 4, "value_symbols": 3}}


@pytest.mark.parametrize("name", sorted(FORMATS))
@pytest.mark.parametrize("queries", ["all", 1, 3])
def test_a_tensor_batch_is_the_collated_batch_of_the_same_examples(name, queries):
    task = make_task(generator=2, **FORMATS[name])
    batch = task.train_batch(24, 11, queries)
    collated = collate(task.examples("train", 24, 11), task, queries)
    for field in BATCH_FIELDS:
        assert torch.equal(getattr(batch, field), getattr(collated, field)), field


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_tensor_batches_depend_on_the_seed_alone(name):
    task = make_task(generator=2, **FORMATS[name])
    first = task.train_batch(16, 3)
    task.train_batch(16, 4)   # nothing carries over from one call to the next
    assert torch.equal(make_task(generator=2, **FORMATS[name]).train_batch(16, 3).context_ids, first.context_ids)
    assert not torch.equal(task.train_batch(16, 4).context_ids, first.context_ids)
    assert make_task(**FORMATS[name]).train_batch(16, 3) is None   # generator 1 collates text


def test_generator_2_keeps_the_format_splits_and_rules_of_generator_1():
    text, tensors = make_task(pairs=8), make_task(pairs=8, generator=2)
    pair = r"!([a-zA-Z0-9]{2}):([a-zA-Z0-9]{2})!"
    for example in tensors.examples("train", 200, 0):
        assert re.fullmatch(f"({pair}){{8}}\\|", example.context)
        pairs = dict(re.findall(pair, example.context))
        assert len(pairs) == 8, "keys are unique within a context"
        assert sorted(q.text[2:4] for q in example.queries) == sorted(pairs), "every key is asked once"
        assert all(q.target == pairs[q.text[2:4]] + "!|" for q in example.queries)
    contexts = {split: {e.context for e in tensors.examples(split, 300, 0)} for split in ("train", "valid", "test")}
    assert not contexts["train"] & contexts["valid"] and not contexts["train"] & contexts["test"]
    assert not contexts["valid"] & contexts["test"]
    assert tensors.examples("valid", 20, 0) != text.examples("valid", 20, 0)   # other draws


def _symbol_statistics(examples) -> dict:
    """Per-symbol frequency of keys and values, the share of contexts with a repeated value, and
    the share of asked keys in the first query position."""
    from collections import Counter
    keys, values, repeats = Counter(), Counter(), 0
    for example in examples:
        pairs = re.findall(r"!([a-zA-Z0-9]{2}):([a-zA-Z0-9]{2})!", example.context)
        keys.update("".join(k for k, _ in pairs))
        values.update("".join(v for _, v in pairs))
        repeats += len({v for _, v in pairs}) < len(pairs)
    return {"keys": keys, "values": values, "repeats": repeats / len(examples)}


def test_generator_2_draws_symbols_and_value_repeats_as_generator_1():
    """Same statistics: every symbol of the alphabet, uniform; values repeat within a context at
    the rate of independent draws (1 - prod(1 - i/3844) over 16 values: 3.1%)."""
    text, tensors = (make_task(pairs=16, generator=g) for g in (1, 2))
    for task in (text, tensors):
        stats = _symbol_statistics(task.examples("train", 1500, 0))
        for counts in (stats["keys"], stats["values"]):
            assert len(counts) == 62
            expected = sum(counts.values()) / 62
            assert max(abs(c - expected) for c in counts.values()) < 5 * expected ** 0.5
        assert 0.015 < stats["repeats"] < 0.05


def test_generator_2_follows_the_overlap_rule_in_training_only():
    plain, overlap = make_task(pairs=8, generator=2), make_task(pairs=8, train_key_overlap=0.5, generator=2)
    assert overlap.examples("valid", 40, 0) == plain.examples("valid", 40, 0)
    train = overlap.examples("train", 300, 0)
    assert shared_key_fraction(plain.examples("train", 300, 0)) < 0.3
    text = shared_key_fraction(make_task(pairs=8, train_key_overlap=0.5).examples("train", 300, 0))
    assert abs(shared_key_fraction(train) - text) < 0.08   # as generator 1 (about 0.7)


def test_generator_is_checked():
    with pytest.raises(HarnessError, match="generator"):
        make_task(generator=3)
