"""Text answer metrics: the standard SQuAD exact match and F1 (max over reference answers)."""
from __future__ import annotations

import collections
import re
import string


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, collapse white space."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_em_f1(prediction: str, references) -> tuple[float, float]:
    """Standard SQuAD exact match and token F1 of one prediction, max over the references."""
    if isinstance(references, str):
        references = [references]
    if not references:
        raise ValueError("squad_em_f1 needs at least one reference answer")
    predicted = normalize_answer(prediction).split()
    best_em, best_f1 = 0.0, 0.0
    for reference in references:
        truth = normalize_answer(reference).split()
        best_em = max(best_em, float(predicted == truth))
        common = sum((collections.Counter(predicted) & collections.Counter(truth)).values())
        if not predicted or not truth:
            f1 = float(predicted == truth)
        elif common == 0:
            f1 = 0.0
        else:
            precision, recall = common / len(predicted), common / len(truth)
            f1 = 2 * precision * recall / (precision + recall)
        best_f1 = max(best_f1, f1)
    return best_em, best_f1


