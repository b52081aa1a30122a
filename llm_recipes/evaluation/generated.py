"""Choice tasks generated from a run's own held-out text: large enough for intervals that tell models apart.

- `generated:next_word`: a passage cut before one of its words; the model chooses that word among 4, the 3
  distractors drawn from the held-out vocabulary *at the answer's frequency*: every candidate is a draw from
  the same frequency band, weighted by occurrences as the answer itself is, so a unigram model (one that
  knows word frequencies and nothing of context) scores chance (tested). Only context can lift a model above it.
- `generated:continuation`: the opening of a document; the model chooses its true continuation among 4, the
  others cut at the same length from other held-out documents.

Items are built with a fixed seed from the held-out documents (`heldout_data`), so every model of a run is
scored on the same items, and nothing from the training split is used.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from typing import Sequence

from .data import ChoiceItem, ChoiceTask
from .models import EvalInputError

GENERATED_SETS = ("next_word", "continuation")
WORD = re.compile(r"[A-Za-z][a-z]{2,}")  # plain words: the answer must be a word, not a symbol or a number
CHOICES = 4
CONTEXT_CHARS = 240  # how much text precedes the blank: enough for a small context window (~64 tokens)
CONTINUATION_CHARS = 80


def _frequency_band(count: int) -> int:
    """Words whose corpus counts are within a factor of two share a band."""
    return int(math.log2(count))


def next_word_items(texts: Sequence[str], n_items: int, seed: int = 0) -> list[ChoiceItem]:
    counts = Counter(word for text in texts for word in WORD.findall(text))
    bands: dict[int, list[str]] = {}
    for word, count in counts.items():
        bands.setdefault(_frequency_band(count), []).append(word)
    rng = random.Random(seed)
    positions = [(doc, match) for doc, text in enumerate(texts) for match in WORD.finditer(text)
                 if match.start() >= 40]  # some context before every blank
    rng.shuffle(positions)
    items = []
    for doc, match in positions:
        answer = match.group()
        band = [w for w in bands[_frequency_band(counts[answer])] if w != answer]
        if len(band) < CHOICES - 1:
            continue
        # occurrence-weighted, like the answer (a random running word of the text): exchangeable with it
        weights = [counts[w] for w in band]
        distractors: list[str] = []
        while len(distractors) < CHOICES - 1:
            word = rng.choices(band, weights)[0]
            if word not in distractors:
                distractors.append(word)
        choices = distractors + [answer]
        rng.shuffle(choices)
        start = max(0, match.start() - CONTEXT_CHARS)
        context = texts[doc][start:match.start()]
        if start > 0:
            context = context[context.find(" ") + 1:]  # begin at a word
        items.append(ChoiceItem(context=context.rstrip(" "), choices=[" " + c for c in choices],
                                gold=choices.index(answer), lengths=[len(c) for c in choices]))
        if len(items) == n_items:
            break
    return items


def _cut(text: str, start: int, length: int) -> str | None:
    """`length` characters from `start`, ending at a word boundary; None when the text is too short."""
    piece = text[start:start + length + 20]
    if len(piece) < length:
        return None
    end = piece.rfind(" ", 0, length + 20)
    return piece[:end if end > length // 2 else length].strip() or None


def continuation_items(texts: Sequence[str], n_items: int, seed: int = 0) -> list[ChoiceItem]:
    rng = random.Random(seed)
    documents = [t for t in texts if len(t) >= 2 * (CONTEXT_CHARS // 2) + CONTINUATION_CHARS]
    if len(documents) < CHOICES:
        return []
    items = []
    attempts = 0
    while len(items) < n_items and attempts < 20 * n_items:
        attempts += 1
        doc = rng.randrange(len(documents))
        text = documents[doc]
        # the blank starts at a word boundary somewhere in the document, with context before it
        cut = text.find(" ", rng.randrange(CONTEXT_CHARS // 2, len(text) - CONTINUATION_CHARS))
        if cut < 0:
            continue
        context = text[max(0, cut - CONTEXT_CHARS):cut]
        context = context[context.find(" ") + 1:] if cut > CONTEXT_CHARS else context
        answer = _cut(text, cut + 1, CONTINUATION_CHARS)
        others = []
        for other in rng.sample([i for i in range(len(documents)) if i != doc], len(documents) - 1):
            candidate_text = documents[other]
            start = candidate_text.find(" ", rng.randrange(0, max(1, len(candidate_text) - CONTINUATION_CHARS)))
            piece = _cut(candidate_text, start + 1, CONTINUATION_CHARS) if start >= 0 else None
            if piece and piece != answer:
                others.append(piece)
            if len(others) == CHOICES - 1:
                break
        if not answer or len(others) < CHOICES - 1 or not context.strip():
            continue
        choices = others + [answer]
        rng.shuffle(choices)
        items.append(ChoiceItem(context=context.rstrip(" "), choices=[" " + c for c in choices],
                                gold=choices.index(answer), lengths=[len(c) for c in choices]))
    return items


def generated_task(spec: str, texts: Sequence[str] | None, n_items: int, seed: int = 0) -> ChoiceTask:
    """`generated:<set>` (or `name=generated:<set>`) built from the held-out texts."""
    name, source = spec.split("=", 1) if "=" in spec.split(":", 1)[0] else (None, spec)
    kind = source.split(":", 1)[1]
    if kind not in GENERATED_SETS:
        raise EvalInputError(f"choice task {spec!r}: unknown generated set; expected one of "
                             f"{', '.join('generated:' + s for s in GENERATED_SETS)}")
    if not texts:
        raise EvalInputError(f"choice task {spec!r} is built from the held-out text: set heldout_data")
    build = next_word_items if kind == "next_word" else continuation_items
    items = build(texts, n_items, seed)
    if len(items) < CHOICES:
        raise EvalInputError(f"choice task {spec!r}: the held-out text gave only {len(items)} items; it needs more "
                             "documents (or longer ones)")
    return ChoiceTask(name=name or kind, source=source, layout="cloze", items=items)
