"""A generated near-duplicate set for measuring near-dedup: precision and recall, documentation and web.

Documentation part: numpy/pandas-style docstrings filled from templates, one per API name, so that
siblings differ only in the name they document (Jaccard of their 3-word shingles ~0.8: they must all be
kept); half of them also appear as a real near duplicate (about 8% of the prose words changed and the
text re-wrapped, names untouched), which must be caught. Web part: prose documents, half of them with a
copy that has 10% of its words changed (caught) and half without (kept).

Used by tests/test_dedup_precision.py and benchmarks/data/bench_dedup.py.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

NAMES = ("sum prod mean median std var min max ptp argmin argmax cumsum cumprod average nansum nanmean "
         "nanstd nanvar nanmin nanmax quantile percentile count mode").split()
TEMPLATES = (
    # a numpy reduction
    """numpy.{name}(a, axis=None, dtype=None, out=None, keepdims=False)

Compute the {name} of the array elements over the given axis.

Parameters
----------
a : array_like
    Input array. If `a` is not an array, a conversion is attempted first.
axis : None or int or tuple of ints, optional
    Axis or axes along which the {name} is computed. The default is to compute the {name} of the
    flattened array, which is usually what a caller wants for a single vector of numbers.
dtype : data-type, optional
    Type to use in computing the {name}. For integer inputs the default is float64; for floating
    point inputs it is the same as the input type.
out : ndarray, optional
    Alternate output array in which to place the result. It must have the same shape as the expected
    output, but the type will be cast if necessary.

Returns
-------
result : ndarray
    A new array holding the result is returned unless `out` is specified, in which case a reference to
    `out` is returned.

Examples
--------
>>> a = np.array([[1, 2], [3, 4]])
>>> np.{name}(a, axis=0)
""",
    # a pandas method
    """DataFrame.{name}(axis=0, skipna=True, numeric_only=False, **kwargs)

Return the {name} of the values over the requested axis.

This method is equivalent to calling `numpy.{name}` on every column when the frame holds only numbers,
and it skips missing values unless the caller asks otherwise.

Parameters
----------
axis : {{index (0), columns (1)}}
    Axis for the function to be applied on. For a Series this parameter is unused and defaults to 0.
skipna : bool, default True
    Exclude missing values when computing the result. If an entire row or column is missing, the
    result will be missing as well.
numeric_only : bool, default False
    Include only float, int and boolean columns. Other columns are dropped before the computation.

Returns
-------
Series or scalar
    The {name} of each column, or of the whole Series.

See Also
--------
Series.{name} : Return the {name} over a Series.
DataFrame.agg : Aggregate using one or more operations over the specified axis.
""",
    # a statistics helper
    """statistics_{name}(data, weights=None)

Return the sample {name} of data, which can be a sequence or an iterable of real-valued numbers.

The {name} is a common measure of a collection of values, and the helper accepts integers, fractions
and decimal numbers alike. If data is empty, a StatisticsError is raised with a message that says which
argument was empty, so that the caller can decide what to report to the user.

Args:
    data (iterable): the values to summarize; they are read only once.
    weights (iterable, optional): one weight per value; when given, the weighted {name} is returned.

Returns:
    float: the {name} of the values, e.g. ``statistics_{name}([1, 2, 3, 4])``.
""",
    # a SQL aggregate description
    """sqlalchemy.func.{name}(expression)

Produce a SQL {name} aggregate over a column expression, for use in a select statement with an optional
group by clause. The aggregate is rendered with the name that the database dialect uses for it.

The expression may be a column, a labelled expression or any other construct that the compiler knows
how to render. Rows where the expression is null are ignored by most databases, which matches what the
Python side of the library does when it computes the {name} of loaded objects.

Example: ``select(func.{name}(table.c.amount)).group_by(table.c.customer_id)`` returns one row per
customer with the {name} of its amounts.
""",
)
WORDS = ("time year people way day thing life world school state family group country problem hand part "
         "place case week company system program question work number night point home water room area "
         "money story fact month right study book job word business issue side kind head house service "
         "friend power hour game line member city community name team minute idea body information level "
         "office door health person history party result change morning reason research moment force").split()
STOP = "the of and to a in that is was with".split()


@dataclass
class NearDupSet:
    rows: list[dict]  # text, id, source, location, title, license (a gather output's columns)
    pairs: list[tuple[str, str, str]]  # (id, id of its near duplicate, part: docs|web)
    distinct: dict[str, str]  # id -> part, documents with no near duplicate in the set (must be kept)


def prose(rng: random.Random, n_words: int, vocabulary: tuple | list = WORDS) -> str:
    """Grammatical-looking English sentences: stop words alternating with words of `vocabulary`."""
    sentences = []
    while sum(len(s.split()) for s in sentences) < n_words:
        words = [rng.choice(vocabulary if i % 2 else STOP) for i in range(rng.randint(8, 14))]
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences)


def _edit_docstring(rng: random.Random, text: str, name: str, fraction: float) -> str:
    """Changes `fraction` of the plain prose words (never a name or code) and re-wraps the lines."""
    def replace(match: re.Match) -> str:
        word = match.group()
        return rng.choice(WORDS) if word != name and rng.random() < fraction else word

    lines = []
    for line in text.split("\n"):
        if re.search(r"[()`:>=\[\]]", line) or not line.strip():
            lines.append(line)  # signatures, parameter lines, examples and blank lines stay
        else:
            lines.append(re.sub(r"(?<![\w.])[a-z]{4,}(?![\w.(])", replace, line))
    text = "\n".join(lines)
    return re.sub(r"(?<=[a-z,])\n    (?=[a-z])", " ", text)  # re-wrap continued prose lines


def _edit_prose(rng: random.Random, text: str, fraction: float) -> str:
    words = text.split()
    for i in rng.sample(range(len(words)), k=int(len(words) * fraction)):
        words[i] = rng.choice(WORDS)
    return " ".join(words)


def near_duplicate_set(seed: int = 0, scale: int = 1) -> NearDupSet:
    """The set at `scale` (scale 1: 96 docstrings, 48 docs near duplicates, 60 web documents, 30 copies)."""
    rng = random.Random(seed)
    rows, pairs, distinct = [], [], {}

    def add(text: str, doc_id: str, source: str, title: str) -> None:
        rows.append({"text": text, "id": doc_id, "source": source, "location": f"gen:{doc_id}", "title": title,
                     "license": "generated"})

    for copy in range(scale):
        for t, template in enumerate(TEMPLATES):
            for k, base in enumerate(NAMES):
                name = f"{base}{copy}" if copy else base  # larger scales: more APIs (sum1, prod1, ...)
                doc_id = f"docs{copy}-{t}-{name}"
                text = template.format(name=name)
                title = text.split("(", 1)[0]
                add(text, doc_id, "python-docs", title)
                if k % 2 == 0:
                    add(_edit_docstring(rng, text, name, 0.08), f"{doc_id}-edited", "python-docs", title)
                    pairs.append((doc_id, f"{doc_id}-edited", "docs"))
                else:
                    distinct[doc_id] = "docs"
        for i in range(30):
            doc_id = f"web{copy}-{i}"
            text = prose(rng, 250)
            add(text, doc_id, "web", f"Page {doc_id}")
            if i % 2 == 0:
                add(_edit_prose(rng, text, 0.10), f"{doc_id}-edited", "web", f"Page {doc_id} (copy)")
                pairs.append((doc_id, f"{doc_id}-edited", "web"))
            else:
                distinct[doc_id] = "web"
    rng.shuffle(rows)
    return NearDupSet(rows, pairs, distinct)


def precision_recall(dataset: NearDupSet, kept: set[str], part: str | None = None) -> dict[str, float]:
    """Near-dedup quality on the set (or on one part: docs or web).

    recall: share of near-duplicate pairs of which one document was removed. precision: share of removed
    documents that were a duplicate's redundant copy (one per pair; a pair losing both, or a distinct
    document removed, counts against it).
    """
    pairs = [(a, b) for a, b, p in dataset.pairs if part in (None, p)]
    distinct = [d for d, p in dataset.distinct.items() if part in (None, p)]
    removed_in_pairs = [(a not in kept) + (b not in kept) for a, b in pairs]
    caught = sum(r >= 1 for r in removed_in_pairs)
    removed = sum(removed_in_pairs) + sum(d not in kept for d in distinct)
    return {"precision": caught / removed if removed else 1.0, "recall": caught / len(pairs) if pairs else 1.0,
            "removed": removed, "pairs": len(pairs), "distinct_removed": sum(d not in kept for d in distinct)}
