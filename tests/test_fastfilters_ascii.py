"""Shortcuts the fast filters take on ASCII texts and on texts without a rule's marks give the full answer."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("datatrove")

from test_clean_speed_agreement import batch_decisions  # noqa: E402

from llm_recipes.data import steps as S  # noqa: E402


def ascii_texts(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = [chr(c) for c in range(128)] + list("abcXYZ019_' -.") * 10
    return ["".join(map(chr, range(128))), "It's o'clock: don't_stop 'quoted' ''a''b' x'' 12'3 \x1c\x1d\x1e\x1f.",
            *("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 200))) for _ in range(count))]


def test_regex_words_of_ascii_texts_are_the_unicode_patterns():
    """RegexWords splits ASCII texts with explicit ASCII classes: the words of its Unicode pattern, every ASCII
    character included (\\x1c-\\x1f count as space in Unicode mode, and stay so)."""
    words = S.RegexWords()
    for text in ascii_texts(6, 400):
        assert words.word_tokenize(text) == S.RegexWords._WORDS.findall(text), text
    assert words.word_tokenize("naïve café’s x") == S.RegexWords._WORDS.findall("naïve café’s x")


def test_gopher_quality_line_rules_skipped_without_bullets_or_ellipses_decide_as_datatrove():
    """The bullet and end-ellipsis line rules run only on texts that hold a bullet mark or an ellipsis: texts
    with and without them, near each threshold, decide as datatrove's filter."""
    rng = random.Random(8)
    sentence = "the cat and the dog sat on a mat with the other pets of the house"
    texts = []
    for _ in range(200):
        lines, bullets, ellipses = [], rng.random() * 0.6, rng.random() * 0.6  # shares of such lines
        for _ in range(rng.randint(1, 12)):
            line = " ".join(rng.sample(sentence.split(), rng.randint(2, 10)))
            line = rng.choice(["- ", "• ", "  -"] if rng.random() < bullets else ["", "x-y "]) + line
            lines.append(line + rng.choice(["...", "…"] if rng.random() < ellipses else ["", ".", " ... x"]))
        texts.append("\n".join(lines))
    for settings in (S.resolve_profiles({})["web"], S.resolve_profiles({})["docs"],
                     {"gopher_quality": {"max_bullet_lines_ratio": 0.3, "max_ellipsis_lines_ratio": 0.2,
                                         "max_symbol_word_ratio": 5, "min_doc_words": 3, "min_stop_words": 1}}):
        settings = {"gopher_quality": settings["gopher_quality"], "word_tokenizer": settings.get("word_tokenizer")}
        ours, theirs = batch_decisions(settings, texts)
        assert ours == theirs
        reasons = {r[1] for r in theirs if isinstance(r, tuple)}
        if settings["gopher_quality"].get("max_bullet_lines_ratio") == 0.3:
            assert {"gopher_too_many_bullets", "gopher_too_many_end_ellipsis"} <= reasons
