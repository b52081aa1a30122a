"""95% intervals by bootstrap over items, and paired comparisons: invariants on data with known answers."""

from __future__ import annotations

import math
import random

import pytest

from llm_recipes.evaluation.intervals import metric_intervals, paired_difference, small_set_warning


def _credits(n: int, p: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [float(rng.random() < p) for _ in range(n)]


def test_interval_holds_the_value_and_narrows_with_more_items():
    small = {"acc": _credits(50, 0.6, 0)}
    large = {"acc": _credits(2000, 0.6, 0)}
    (lo_s, hi_s), (lo_l, hi_l) = metric_intervals(small, ["acc"])["acc"], metric_intervals(large, ["acc"])["acc"]
    for per_item, (lo, hi) in ((small, (lo_s, hi_s)), (large, (lo_l, hi_l))):
        mean = sum(per_item["acc"]) / len(per_item["acc"])
        assert lo <= mean <= hi
    assert hi_l - lo_l < (hi_s - lo_s) / 4  # width ~ 1/sqrt(n): 40x the items, ~6x narrower
    # a binomial 95% interval at n=2000, p=0.6 is about +-0.021
    assert 0.035 < hi_l - lo_l < 0.05


def test_ratio_metrics_resample_sums_not_document_means():
    # bits per byte of the corpus = sum nll / (ln 2 * sum bytes): one long document weighs more than a short one
    per_item = {"nll": [100.0, 1.0, 1.0, 1.0], "tokens": [50, 1, 1, 1], "bytes": [200, 10, 10, 10]}
    corpus = sum(per_item["nll"]) / (math.log(2) * sum(per_item["bytes"]))
    low, high = metric_intervals(per_item, ["bits_per_byte"])["bits_per_byte"]
    assert low <= corpus <= high
    low, high = metric_intervals(per_item, ["perplexity"])["perplexity"]
    assert low <= math.exp(sum(per_item["nll"]) / sum(per_item["tokens"])) <= high


def test_paired_comparison_tells_a_real_gain_and_not_noise():
    base = {"acc": _credits(500, 0.5, 1)}
    # the same items, 60 of the wrong ones now right: a real gain
    better = {"acc": list(base["acc"])}
    flipped = [i for i, c in enumerate(better["acc"]) if c == 0][:60]
    for i in flipped:
        better["acc"][i] = 1.0
    gain = paired_difference(base, better, "acc", lower_is_better=False)
    assert gain["verdict"] == "better" and gain["difference"] == pytest.approx(60 / 500) and gain["interval"][0] > 0
    assert paired_difference(better, base, "acc", lower_is_better=False)["verdict"] == "worse"
    # the same model again: a zero difference that the set cannot call either way
    same = paired_difference(base, base, "acc", lower_is_better=False)
    assert same["verdict"] == "cannot tell" and same["interval"] == [0.0, 0.0]
    # 3 items flipped each way out of 500: noise
    noisy = {"acc": list(base["acc"])}
    ones = [i for i, c in enumerate(noisy["acc"]) if c == 1][:3]
    zeros = [i for i, c in enumerate(noisy["acc"]) if c == 0][:4]
    for i in ones:
        noisy["acc"][i] = 0.0
    for i in zeros:
        noisy["acc"][i] = 1.0
    assert paired_difference(base, noisy, "acc", lower_is_better=False)["verdict"] == "cannot tell"


def test_lower_is_better_for_bits_per_byte():
    a = {"nll": [10.0] * 200, "tokens": [5] * 200, "bytes": [20] * 200}
    b = {"nll": [9.0] * 200, "tokens": [5] * 200, "bytes": [20] * 200}
    assert paired_difference(a, b, "bits_per_byte", lower_is_better=True)["verdict"] == "better"


def test_paired_needs_the_same_items_and_small_sets_warn():
    assert paired_difference({"acc": [1.0] * 10}, {"acc": [1.0] * 11}, "acc", lower_is_better=False) is None
    per_item = {"acc": _credits(20, 0.5, 3)}
    warning = small_set_warning("cloze", per_item, metric_intervals(per_item, ["acc"]), "choice")
    assert warning and "cloze: 20 items is too few" in warning
    big = {"acc": _credits(1000, 0.5, 3)}
    assert small_set_warning("cloze", big, metric_intervals(big, ["acc"]), "choice") is None
