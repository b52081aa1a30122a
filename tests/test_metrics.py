"""Our `evaluate` modules load offline from a local path and give hand-checked numbers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

METRICS = Path(__file__).resolve().parent.parent / "llm_recipes" / "evaluation" / "metrics"


def _load(name):
    import evaluate

    return evaluate.load(str(METRICS / name))


def test_every_metric_folder_loads_offline():
    for folder in sorted(p for p in METRICS.iterdir() if p.is_dir() and not p.name.startswith("_")):
        module = _load(folder.name)
        assert module.name == folder.name and module.description


def test_choice_accuracy_by_hand():
    acc = _load("choice_accuracy")
    # item 0: choice 0 wins; item 1: all tied -> 1/3 credit; item 2: choice 2 wins on raw, choice 0 per char
    result = acc.compute(predictions=[[-3.0, -7.0, -5.0], [-1.0, -1.0, -1.0], [-6.0, -9.0, -5.0]],
                         references=[0, 1, 0], choice_lengths=[[3, 5, 4], [1, 1, 1], [12, 1, 2]])
    assert result["acc"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    # per-char: item 0 -> [-1, -1.4, -1.25] picks 0; item 2 -> [-0.5, -9, -2.5] picks 0
    assert result["acc_norm"] == pytest.approx((1 + 1 / 3 + 1) / 3)
    assert result["chance"] == pytest.approx(1 / 3) and result["n"] == 3
    with pytest.raises(ValueError, match="outside its 2 choices"):
        acc.compute(predictions=[[-1.0, -2.0]], references=[5])


def test_generation_qa_by_hand():
    qa = _load("generation_qa")
    result = qa.compute(predictions=["The Paris.", "a big cat"], references=[["Paris", "Lyon"], ["the big dog"]])
    assert result["exact_match"] == pytest.approx(0.5)  # "The Paris." normalises to "paris"
    # item 2: tokens {big, cat} vs {big, dog}: precision 1/2, recall 1/2 -> F1 1/2
    assert result["f1"] == pytest.approx((1 + 0.5) / 2)
    assert 0 < result["rougeL"] < 1 and result["n"] == 2
    single = qa.compute(predictions=["x y"], references=["x y"])
    assert single["exact_match"] == 1.0 and single["rouge2"] == 1.0


def test_preference_accuracy_by_hand():
    pref = _load("preference_accuracy")
    result = pref.compute(predictions=[-10.0, -8.0, -3.0], references=[-12.0, -7.0, -3.0])
    assert result["accuracy"] == pytest.approx((1 + 0 + 0.5) / 3)  # the tie counts half
    assert result["margin"] == pytest.approx((2 - 1 + 0) / 3)


def test_perplexity_module_matches_the_scorer(tiny_model_dir):
    from conftest import tiny_corpus

    from llm_recipes.evaluation import LMScorer, load_model_and_tokenizer, perplexity_summary

    texts = [t[:300] for t in tiny_corpus()[:3]]
    result = _load("perplexity").compute(predictions=texts, model_id=str(tiny_model_dir), device="cpu", batch_size=2)
    model, tokenizer, _ = load_model_and_tokenizer(tiny_model_dir, device="cpu")
    direct = perplexity_summary(LMScorer(model, tokenizer, progress=False).score_texts(texts))
    assert result["perplexity"] == pytest.approx(direct["perplexity"], rel=1e-5)
    assert result["bits_per_byte"] == pytest.approx(
        direct["loss"] * direct["tokens"] / (math.log(2) * direct["bytes"]))
    # a random model is close to uniform: perplexity near the vocabulary size
    assert 0.5 * model.config.vocab_size < result["perplexity"] < 2 * model.config.vocab_size
