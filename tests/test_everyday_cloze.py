"""builtin:everyday_cloze: >= 200 well-formed everyday sentences; a scorer that sees only the choice word (word
frequencies, lengths) scores exactly chance; the evaluate stage scores it like any other choice task."""

from __future__ import annotations

import json
import math
import re
from collections import Counter

import pytest
from conftest import tiny_corpus

from llm_recipes.evaluation.everyday import GROUPS, PROVENANCE, everyday_task, group_of, scene_items
from llm_recipes.evaluation.measures import choice_credits
from llm_recipes.evaluation.models import EvalInputError


def test_everyday_cloze_is_large_and_well_formed():
    task = everyday_task("builtin:everyday_cloze")
    assert task.name == "everyday_cloze" and task.layout == "cloze" and len(task.items) >= 200
    assert "public domain" in PROVENANCE
    contexts = [item.context for item in task.items]
    assert len(set(contexts)) == len(contexts), "every sentence is its own item"
    appearances = Counter()
    for item in task.items:
        words = [c.strip() for c in item.choices]
        assert len(set(words)) == 4 and all(c == " " + w for c, w in zip(item.choices, words))
        assert item.lengths == [len(w) for w in words]
        assert item.context == item.context.strip() and item.context[0].isupper()
        assert re.fullmatch(r"[A-Za-z ,']+", item.context), item.context
        appearances.update(words)
    # every word is a choice equally often (4 as the answer, 12 as a distractor)
    assert set(appearances.values()) == {16}
    golds = Counter(item.gold for item in task.items)
    assert len(golds) == 4 and min(golds.values()) > len(task.items) // 8, golds  # the answer moves around
    assert [i.choices for i in everyday_task("x=builtin:everyday_cloze").items] == [i.choices for i in task.items]


def test_a_scorer_that_sees_only_the_word_scores_exactly_chance():
    items = everyday_task("builtin:everyday_cloze").items
    golds = [item.gold for item in items]
    # a unigram model with real English word frequencies (the pydoc topics), unseen words smoothed
    counts = Counter(w.lower() for t in tiny_corpus() for w in re.findall(r"[A-Za-z]+", t))
    total = sum(counts.values())
    unigram = [[math.log((counts[c.strip()] + 1) / total) for c in item.choices] for item in items]
    credits = choice_credits(unigram, golds, [item.lengths for item in items])
    assert math.fsum(credits["acc"]) / len(items) == pytest.approx(0.25)
    assert math.fsum(credits["acc_norm"]) / len(items) == pytest.approx(0.25)
    # and one that prefers short (or long) words
    for sign in (1, -1):
        by_length = [[sign * len(c) for c in item.choices] for item in items]
        assert math.fsum(choice_credits(by_length, golds)["acc"]) / len(items) == pytest.approx(0.25)
    # while one that reads the context (the sentences it was written with) scores 1
    answer_of = {wording: scene.answer for scene, wording, _ in scene_items()}
    oracle = [[0.0 if c.strip() == answer_of[item.context] else -1.0 for c in item.choices] for item in items]
    assert math.fsum(choice_credits(oracle, golds)["acc"]) == len(items)


def test_scene_items_for_chosen_wordings_and_bad_input():
    first = {scene.answer: [scene.wordings[0]] for group in GROUPS for scene in group}
    rows = scene_items(first)
    assert len(rows) == len(first) and all(item.choices[item.gold] == " " + scene.answer for scene, _, item in rows)
    assert [s.answer for s in group_of("mat")][0] == "mat"
    with pytest.raises(EvalInputError, match="not the answer of an everyday scene"):
        group_of("spaceship")
    with pytest.raises(EvalInputError, match="expected builtin:everyday_cloze"):
        everyday_task("builtin:everyday_closes")


def test_evaluate_scores_everyday_cloze(tiny_model_dir, tmp_path):
    from llm_recipes.cli import main

    out = tmp_path / "eval"
    assert main(["evaluate", "--models", f"tiny={tiny_model_dir}", "--choice_tasks", "builtin:everyday_cloze",
                 "--output_dir", str(out), "--update_model_card", "false", "--torch_num_threads", "1"]) == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert results["tasks"]["everyday_cloze"]["n"] == 208
    assert results["tasks"]["everyday_cloze"]["chance"] == pytest.approx(0.25)
    result = results["models"]["tiny"]["results"]["everyday_cloze"]
    low, high = result["intervals"]["acc"]
    assert 0.0 <= low <= result["acc"] <= high <= 1.0
