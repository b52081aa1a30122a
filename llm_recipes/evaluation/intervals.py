"""95% intervals for evaluation metrics, and paired comparisons between models, by bootstrap over items.

Every task keeps its item-level numbers (`per_item`: one value per question, pair or held-out document), so an
interval is the spread of the metric over resamples of the items, and a comparison of two models resamples the
*same* items for both (paired), which is far tighter than comparing two separate intervals. A difference is
called better or worse only when its interval excludes zero; otherwise the set cannot tell.

Ratio metrics are recomputed per resample from their sums (bits per byte = sum nll / (ln 2 x sum bytes)), as
the corpus-level metric is, not averaged per document.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95
# fewer items than this, or an accuracy interval wider than this, and the report warns that the set is too
# small to tell models apart by a few points
MIN_ITEMS = 100
MAX_USEFUL_WIDTH = 0.15


def _statistic(per_item: dict[str, list[float]], metric: str):
    """(numerators, denominators, transform) with metric = transform(sum(num[idx]) / sum(den[idx]))."""
    if metric == "bits_per_byte":
        return np.asarray(per_item["nll"]), np.asarray(per_item["bytes"]) * math.log(2), lambda x: x
    if metric == "loss":
        return np.asarray(per_item["nll"]), np.asarray(per_item["tokens"], dtype=float), lambda x: x
    if metric == "perplexity":
        return np.asarray(per_item["nll"]), np.asarray(per_item["tokens"], dtype=float), np.exp
    if metric in per_item:
        values = np.asarray(per_item[metric], dtype=float)
        return values, np.ones_like(values), lambda x: x
    return None


def _resampled(per_item: dict[str, list[float]], metric: str, indices: np.ndarray) -> np.ndarray | None:
    if metric == "labelled_gap":  # KTO: mean over desirable rows minus mean over undesirable ones
        values, labels = np.asarray(per_item["logp_per_token"]), np.asarray(per_item["label"])
        good_n, bad_n = labels[indices].sum(axis=1), (1 - labels)[indices].sum(axis=1)
        good = (values * labels)[indices].sum(axis=1) / np.maximum(good_n, 1)
        bad = (values * (1 - labels))[indices].sum(axis=1) / np.maximum(bad_n, 1)
        return good - bad
    statistic = _statistic(per_item, metric)
    if statistic is None:
        return None
    numerators, denominators, transform = statistic
    return transform(numerators[indices].sum(axis=1) / denominators[indices].sum(axis=1))


def _indices(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(RESAMPLES, n))


def _bounds(samples: np.ndarray) -> list[float]:
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return [float(low), float(high)]


def item_count(per_item: dict[str, list[float]]) -> int:
    return len(next(iter(per_item.values()))) if per_item else 0


def metric_intervals(per_item: dict[str, list[float]], metrics: list[str], seed: int = 0) -> dict[str, list[float]]:
    """{metric: [low, high]}, the 95% percentile-bootstrap interval of each metric over the items."""
    n = item_count(per_item)
    if n == 0:
        return {}
    indices = _indices(n, seed)
    intervals = {}
    for metric in metrics:
        samples = _resampled(per_item, metric, indices)
        if samples is not None:
            intervals[metric] = _bounds(samples)
    return intervals


def paired_difference(a: dict[str, list[float]], b: dict[str, list[float]], metric: str, lower_is_better: bool,
                      seed: int = 0) -> dict[str, Any] | None:
    """b minus a on the same items, with its 95% interval and a verdict: "better", "worse" or "cannot tell"
    (for b relative to a). None when the two were not scored on the same number of items."""
    n = item_count(a)
    if n == 0 or n != item_count(b):
        return None
    indices = _indices(n, seed)
    first, second = _resampled(a, metric, indices), _resampled(b, metric, indices)
    if first is None or second is None:
        return None
    point_a = _resampled(a, metric, np.arange(n)[None, :])[0]
    point_b = _resampled(b, metric, np.arange(n)[None, :])[0]
    low, high = _bounds(second - first)
    if low > 0 or high < 0:
        gained = (high < 0) if lower_is_better else (low > 0)
        verdict = "better" if gained else "worse"
    else:
        verdict = "cannot tell"
    return {"difference": float(point_b - point_a), "interval": [low, high], "verdict": verdict, "items": n}


def small_set_warning(task: str, per_item: dict[str, list[float]], intervals: dict[str, list[float]],
                      kind: str) -> str | None:
    """A sentence for the report when a set is too small for a useful interval, else None."""
    n = item_count(per_item)
    widths = [high - low for metric, (low, high) in intervals.items() if metric not in ("margin", "perplexity",
                                                                                        "loss", "bits_per_byte")]
    too_wide = kind != "perplexity" and any(width > MAX_USEFUL_WIDTH for width in widths)
    if n < MIN_ITEMS or too_wide:
        widest = f"; the widest 95% interval spans {max(widths):.2f}" if widths else ""
        return (f"{task}: {n} items is too few to tell models apart by a few points{widest} "
                f"(use {MIN_ITEMS}+ items)")
    return None
