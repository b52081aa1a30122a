"""Choice tasks generated from held-out text: large, reproducible, and fair: a unigram model (word frequencies,
no context) scores chance on the next-word cloze, while a model that knows the text scores far above it."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from conftest import tiny_corpus

from llm_recipes.evaluation.generated import continuation_items, generated_task, next_word_items
from llm_recipes.evaluation.intervals import metric_intervals
from llm_recipes.evaluation.measures import choice_credits
from llm_recipes.evaluation.models import EvalInputError


def _texts():
    return tiny_corpus()


def test_next_word_cloze_is_large_reproducible_and_well_formed():
    texts = _texts()
    items = next_word_items(texts, 500, seed=0)
    assert len(items) == 500
    assert [i.choices for i in items[:20]] == [i.choices for i in next_word_items(texts, 500, seed=0)[:20]]
    for item in items:
        assert len(item.choices) == 4 and len(set(item.choices)) == 4
        answer = item.choices[item.gold].strip()
        assert any(item.context + " " + answer in text or (item.context + answer) in text for text in texts) or \
            answer in " ".join(texts)


def test_a_unigram_model_scores_chance_on_next_word():
    # frequency-matched, occurrence-weighted distractors: word frequencies alone cannot find the answer
    texts = _texts()
    counts = Counter(w for t in texts for w in __import__("re").findall(r"[A-Za-z][a-z]{2,}", t))
    total = sum(counts.values())
    items = next_word_items(texts, 2000, seed=1)
    logprobs = [[math.log(counts[c.strip()] / total) for c in item.choices] for item in items]
    per_item = choice_credits(logprobs, [i.gold for i in items])
    low, high = metric_intervals(per_item, ["acc"])["acc"]
    assert low <= 0.25 <= high, (low, high)


def test_a_model_that_knows_the_text_scores_far_above_chance():
    texts = _texts()
    items = continuation_items(texts, 300, seed=0)
    assert len(items) == 300
    # an oracle that has read the documents: the true continuation is in the document its context comes from
    logprobs = [[0.0 if any(item.context in t and c.strip() in t for t in texts) else -1.0 for c in item.choices]
                for item in items]
    acc = sum(choice_credits(logprobs, [i.gold for i in items])["acc"]) / len(items)
    assert acc > 0.9


def test_bad_specs_are_clear_errors():
    with pytest.raises(EvalInputError, match="set heldout_data"):
        generated_task("generated:next_word", None, 500)
    with pytest.raises(EvalInputError, match="unknown generated set"):
        generated_task("generated:riddles", _texts(), 500)
    with pytest.raises(EvalInputError, match="gave only"):
        generated_task("generated:continuation", ["too short"], 500)
