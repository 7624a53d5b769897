"""Short SQuAD: reading v1.1 JSON, the answer's sentences as context, SQuAD EM/F1, clear errors."""
import json
import re
import shutil
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import HarnessError
from tasks.squad import read_squad, sentence_spans, short_context, squad_em_f1

FIXTURES = Path(__file__).parent / "fixtures"


def test_short_context_keeps_the_sentences_with_the_answer():
    examples = read_squad(json.loads((FIXTURES / "squad_train.json").read_text()))
    assert [e.context for e in examples] == [
        "Their leader was Rollo!",
        "He swore fealty to King Charles III of West Francia.",
        "The Normans were the people who gave their name to Normandy. They descended from Norse raiders.",
    ]
    assert examples[1].queries[0].target == "King Charles III"
    assert examples[1].queries[0].answers == ("King Charles III", "Charles III")
    paragraph = 'He said "Stop." Then 3 men left. Mr. X (no split) stayed.'
    assert [paragraph[s:e] for s, e in sentence_spans(paragraph)] == [
        'He said "Stop."', "Then 3 men left.", "Mr.", "X (no split) stayed."]
    assert short_context("One. Two three. Four.", 5, "Two") == "Two three."


@pytest.mark.parametrize("prediction,references,expected", [
    ("Rollo", ["Rollo"], (1.0, 1.0)),
    ("the Rollo.", ["rollo"], (1.0, 1.0)),                       # case, article, punctuation
    ("King Charles", ["King Charles III", "Charles III"], (0.0, 0.8)),
    ("Charles  III", ["King Charles III", "Charles III"], (1.0, 1.0)),
    ("Norse raiders", ["Rollo"], (0.0, 0.0)),
    ("", ["Rollo"], (0.0, 0.0)),
])
def test_squad_em_f1(prediction, references, expected):
    em, f1 = squad_em_f1(prediction, references)
    assert em == expected[0] and f1 == pytest.approx(expected[1])


def test_squad_suite_without_data_exits_2_with_one_line(tmp_path, capsys):
    code = main(["--suite", "squad", "--scale", "smoke", "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--data-dir" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_squad_suite_runs_on_a_v11_folder(tmp_path):
    data = tmp_path / "squad"
    data.mkdir()
    shutil.copy(FIXTURES / "squad_train.json", data / "train-v1.1.json")
    shutil.copy(FIXTURES / "squad_dev.json", data / "dev-v1.1.json")
    assert main(["--suite", "squad", "--scale", "smoke", "--data-dir", str(data), "--out", str(tmp_path / "r"),
                 "--cache", str(tmp_path / "c"), "--quiet", "--methods", "gradmem"]) == 0
    paths = sorted((tmp_path / "r").glob("squad/*/summary.json"))
    assert len(paths) == 2  # gradmem K=1 and K=5
    for path in paths:
        summary = json.loads(path.read_text())
        (metrics,) = summary["stages"][0]["eval"].values()
        assert {"exact_match", "squad_em", "squad_f1"} <= set(metrics)


def squad_folder(tmp_path, dev: bytes | None = None) -> Path:
    """train-v1.1.json and dev-v1.1.json from the fixtures, the dev file's bytes replaced by `dev`."""
    data = tmp_path / "squad"
    data.mkdir()
    shutil.copy(FIXTURES / "squad_train.json", data / "train-v1.1.json")
    shutil.copy(FIXTURES / "squad_dev.json", data / "dev-v1.1.json")
    if dev is not None:
        (data / "dev-v1.1.json").write_bytes(dev)
    return data


def dev_without(path: list, key: str) -> bytes:
    """The fixture dev file with `key` deleted from the object at `path` (keys / list indexes)."""
    data = json.loads((FIXTURES / "squad_dev.json").read_text())
    node = data
    for step in path:
        node = node[step]
    del node[key]
    return json.dumps(data).encode()


BAD_SQUAD = {
    "no data": (lambda: dev_without([], "data"), r"dev-v1\.1\.json: the top level has no 'data'"),
    "no answers": (lambda: dev_without(["data", 0, "paragraphs", 0, "qas", 1], "answers"),
                   r"dev-v1\.1\.json: data\[0\]\.paragraphs\[0\]\.qas\[1\] \(id \w+\) has no 'answers'"),
    "no answer_start": (lambda: dev_without(["data", 0, "paragraphs", 0, "qas", 0, "answers", 0], "answer_start"),
                        r"dev-v1\.1\.json: data\[0\]\.paragraphs\[0\]\.qas\[0\] \(id \w+\)\.answers\[0\] "
                        r"has no 'answer_start'"),
    "truncated": (lambda: (FIXTURES / "squad_dev.json").read_bytes()[:300], r"dev-v1\.1\.json:\d+:\d+: not valid JSON \(the file ends early: truncated\?\)"),
    "truncated between values": (lambda: (FIXTURES / "squad_dev.json").read_bytes().rstrip()[:-3],
                                 r"dev-v1\.1\.json:\d+:\d+: not valid JSON \(the file ends early"),
    "not UTF-8": (lambda: (FIXTURES / "squad_dev.json").read_bytes().replace(b"Normans", b"Norm\xe4ns", 1),
                  r"dev-v1\.1\.json: not UTF-8"),
    "answer_start not a number": (lambda: (FIXTURES / "squad_dev.json").read_bytes().replace(
        b'"answer_start": 112', b'"answer_start": "112"'), r"qas\[0\] \(id q1\)\.answers\[0\]\.answer_start is a str"),
    "no answered question": (lambda: json.dumps({"version": "1.1", "data": []}).encode(),
                             r"dev-v1\.1\.json: no answered question"),
}


@pytest.mark.parametrize("case", sorted(BAD_SQUAD))
def test_bad_squad_json_exits_2_with_one_line_and_writes_nothing(case, tmp_path, capsys):
    make_dev, message = BAD_SQUAD[case]
    data = squad_folder(tmp_path, make_dev())
    code = main(["--suite", "squad", "--scale", "smoke", "--data-dir", str(data), "--out", str(tmp_path / "r"),
                 "--cache", str(tmp_path / "c"), "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert re.search(message, err), err
    assert not (tmp_path / "r").exists()


def test_read_squad_skips_unanswered_questions_and_checks_types():
    data = json.loads((FIXTURES / "squad_train.json").read_text())
    data["data"][0]["paragraphs"][0]["qas"][0]["answers"] = []       # SQuAD 2.0 style: no answer, skipped
    assert len(read_squad(data)) == 2
    data["data"][0]["paragraphs"][0]["qas"][1]["answers"][0]["answer_start"] = 10_000
    with pytest.raises(HarnessError, match=r"mine\.json: .*answers\[0\]\.answer_start = 10000 is outside"):
        read_squad(data, "mine.json")
    with pytest.raises(HarnessError, match=r"mine\.json: the top level is a list, expected a JSON object"):
        read_squad([], "mine.json")
