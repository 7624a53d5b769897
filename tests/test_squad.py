"""Short SQuAD: reading v1.1 JSON, the answer's sentences as context, SQuAD EM/F1, clear errors."""
import json
import shutil
from pathlib import Path

import pytest

from harness.cli import main
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
