"""Pure scoring functions: from log-likelihoods or generated text to accuracies and overlaps.

The `evaluate` modules under `llm_recipes/evaluation/metrics/` wrap these, so `evaluate.load(path)` and the
`evaluate` stage give the same numbers.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Sequence


def _credit(scores: Sequence[float], gold: int) -> float:
    """1 if gold has the single highest score; 1/k if it ties with k-1 others at the top.

    That is the expected accuracy with ties broken at random: a model that cannot tell the choices
    apart (all scores equal) scores exactly chance, not 100% or 0% depending on where the gold sits.
    """
    best = max(scores)
    top = [i for i, s in enumerate(scores) if s == best]
    return 1.0 / len(top) if gold in top else 0.0


def choice_credits(logprobs: Sequence[Sequence[float]], golds: Sequence[int],
                   choice_lengths: Sequence[Sequence[int]] | None = None) -> dict[str, list[float]]:
    """Per item: `acc` credit (1, 1/k for a k-way tie at the top, else 0), `acc_norm` credit when lengths are
    given, and `chance` (1 / number of choices). The item-level numbers behind `choice_accuracy`, kept for
    bootstrap intervals and paired comparisons."""
    if len(logprobs) == 0:
        raise ValueError("choice accuracy needs at least one item; got an empty set")
    if len(logprobs) != len(golds):
        raise ValueError(f"got {len(logprobs)} items but {len(golds)} gold labels")
    items: dict[str, list[float]] = {"acc": [], "chance": []}
    if choice_lengths is not None:
        items["acc_norm"] = []
    for index, (scores, gold) in enumerate(zip(logprobs, golds)):
        if not 0 <= int(gold) < len(scores):
            raise ValueError(f"item #{index}: gold index {gold} is outside its {len(scores)} choices")
        items["acc"].append(_credit(list(scores), int(gold)))
        items["chance"].append(1.0 / len(scores))
        if choice_lengths is not None:
            lengths = choice_lengths[index]
            items["acc_norm"].append(_credit([s / max(1, n) for s, n in zip(scores, lengths)], int(gold)))
    return items


def choice_accuracy(logprobs: Sequence[Sequence[float]], golds: Sequence[int],
                    choice_lengths: Sequence[Sequence[int]] | None = None) -> dict[str, float]:
    """Multiple-choice accuracy from per-choice log-likelihoods.

    Args:
        logprobs: for each item, the summed log-likelihood of each choice given the context.
        golds: index of the correct choice per item.
        choice_lengths: per item, the length of each choice in characters; gives `acc_norm`, the accuracy
            when log-likelihoods are divided by length (lm-evaluation-harness's acc_norm), which stops
            long answers from losing just for having more tokens.

    Returns:
        {"acc", "acc_norm" (when lengths are given), "chance", "n"}.
    """
    items = choice_credits(logprobs, golds, choice_lengths)
    n = len(items["acc"])
    return {**{key: math.fsum(values) / n for key, values in items.items()}, "n": n}


# -- generation QA ----------------------------------------------------------------------------------

def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


QA_METRICS = ("exact_match", "f1", "rouge1", "rouge2", "rougeL")


def qa_item_scores(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> dict[str, list[float]]:
    """Per item: exact match, token F1 (SQuAD) and ROUGE-1/2/L F-measure, each the best over its references."""
    from rouge_score import rouge_scorer

    if len(predictions) == 0:
        raise ValueError("QA scoring needs at least one item; got an empty set")
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} references")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    items: dict[str, list[float]] = {key: [] for key in QA_METRICS}
    for prediction, refs in zip(predictions, references):
        refs = [refs] if isinstance(refs, str) else list(refs)
        if not refs:
            raise ValueError("every QA item needs at least one reference answer")
        items["exact_match"].append(max(float(normalize_answer(prediction) == normalize_answer(r)) for r in refs))
        items["f1"].append(max(token_f1(prediction, r) for r in refs))
        rouge = [scorer.score(r, prediction) for r in refs]
        for key in ("rouge1", "rouge2", "rougeL"):
            items[key].append(max(s[key].fmeasure for s in rouge))
    return items


def qa_scores(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> dict[str, float]:
    """Exact match, token F1 (SQuAD) and ROUGE-1/2/L F-measure, each the best over an item's references.

    Args:
        predictions: generated answers.
        references: per item, the reference answer or a list of acceptable answers.
    """
    items = qa_item_scores(predictions, references)
    n = len(predictions)
    return {**{key: math.fsum(items[key]) / n for key in QA_METRICS}, "n": n}


# -- preferences ------------------------------------------------------------------------------------

def preference_items(chosen: Sequence[float], rejected: Sequence[float]) -> dict[str, list[float]]:
    """Per pair: `accuracy` credit (1 when chosen scores higher, 1/2 for a tie) and `margin` (chosen - rejected)."""
    if len(chosen) == 0:
        raise ValueError("preference accuracy needs at least one pair; got an empty set")
    if len(chosen) != len(rejected):
        raise ValueError(f"got {len(chosen)} chosen scores but {len(rejected)} rejected scores")
    return {"accuracy": [_credit([c, r], 0) for c, r in zip(chosen, rejected)],
            "margin": [c - r for c, r in zip(chosen, rejected)]}


def preference_accuracy(chosen: Sequence[float], rejected: Sequence[float]) -> dict[str, float]:
    """How often the model gives the chosen response a higher log-likelihood than the rejected one.

    Ties count half (see `_credit`). `margin` is the mean log-likelihood difference in nats.
    """
    items = preference_items(chosen, rejected)
    n = len(chosen)
    return {"accuracy": math.fsum(items["accuracy"]) / n, "margin": math.fsum(items["margin"]) / n, "n": n}
