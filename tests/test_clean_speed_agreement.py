"""The fast quality filters (llm_recipes/data/fastfilters.py) decide as datatrove's own filter classes do:
on documents crafted to trip every rule, on the pydoc topics every Python ships and on Tiny Shakespeare
paragraphs where present; same words as datatrove's spaCy tokenizer; bad settings fail clearly. Speed is
measured in benchmarks/data/bench_filters.py, never here."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from conftest import shared_file, tiny_corpus
from datatrove.data import Document
from datatrove.utils.text import split_into_words
from test_clean import prose

from llm_recipes.data import fastfilters as F
from llm_recipes.data import steps as S
from llm_recipes.data import textops


def crafted() -> list[str]:
    """One document (or more) for each rule of the four filters, and prose that passes them all."""
    rng = random.Random(3)
    good = prose(rng, 300)
    lines = [prose(rng, 12) for _ in range(30)]
    return [
        good, "", "Too short to be a page.", "\n\n".join([good[:400]] * 4),  # empty, short, repeated paragraphs
        "\n".join(["Buy cheap watches online now at the best store."] * 40),  # repeated lines
        good + " " + " ".join(["the best watches"] * 60),  # a top 3-gram
        good + " " + " ".join(lines[0].split()[:8] * 10),  # duplicated 5..10-grams
        " ".join(["#tag"] * 80 + ["the", "and"] * 10), good + " ..." * 40, good.replace(". ", "...\n"),
        "\n".join("- " + s for s in lines), " ".join(["x" * 14] * 60 + ["the", "and"]),
        " ".join(["12 34 56"] * 40 + ["the", "and"] * 5), " ".join(w for w in good.split() if w not in ("the", "and")),
        good + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.",
        good + "\nfunction f() { return the value of the thing; }",
        good + "\nEnable JavaScript to see the rest of this page, please.\nRead our privacy policy for the details.",
        "One sentence only, with the words and the other words of a thing.",
        "\n".join(f"{w} and the {v} of a thing" for w, v in zip(F.STOP_WORDS * 10, reversed(F.STOP_WORDS * 10))),
        "\n".join(["Short line."] * 5 + [good]), "\n".join(lines + lines[:3]), "\n".join(good.split()),
        "Don't stop-gap e.g. U.S. it's 3.14 1,000 \"quote\" http://x.com/a?b=1. foo_bar a--b ... can't $5 10% 'tis "
        "me.--Pray, news?-- __dict__ print(i) and/or C++. Howe'er we'll go. " * 8,
    ]


def batch_decisions(settings: dict, texts: list[str]) -> tuple[list, list]:
    """The decisions of a one-filter profile's fast filter, prepared with all `texts` as one batch, and of
    datatrove's filter, each text alone."""
    (_, fast), = S.build_filters(settings)
    (_, reference), = S.build_filters({**settings, "engine": "datatrove"})
    docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
    fast.prepare(docs)
    return [fast.filter(d) for d in docs], [reference.filter(Document(text=t, id="x")) for t in texts]


def decisions(engine: str, profile: dict, texts: list[str]) -> list[list]:
    """Per filter and per document: the filter's answer and (for C4) the text it leaves."""
    out = []
    for name, flt in S.build_filters({**profile, "engine": engine}):
        for text in texts:
            d = Document(text=text, id="x")
            result = flt.filter(d)
            out.append([name, text[:40], result if isinstance(result, tuple) else bool(result), d.text])
    return out


@pytest.mark.parametrize("profile", ["web", "docs"])
def test_fast_filters_decide_as_datatrove_on_crafted_and_real_documents(profile):
    texts = crafted() + tiny_corpus()[:150]
    settings = S.resolve_profiles({})[profile]
    fast, reference = decisions("fast", settings, texts), decisions("datatrove", settings, texts)
    assert [f for f, r in zip(fast, reference) if f != r] == []
    reasons = {str(r[2]) for r in reference}
    assert len(reasons) >= 8 if profile == "web" else 3  # the crafted documents trip many different rules


def test_fast_filters_agree_on_tiny_shakespeare():
    text = shared_file("karpathy/tinyshakespeare/input.txt").read_text(encoding="utf-8")
    paragraphs = [p for p in text.split("\n\n") if p.strip()][:1500]
    settings = S.resolve_profiles({})["web"]
    fast, reference = decisions("fast", settings, paragraphs), decisions("datatrove", settings, paragraphs)
    assert [f for f, r in zip(fast, reference) if f != r] == []
    assert any(r[2] is True for r in reference) and any(r[2] is not True for r in reference)


def test_spacy_words_equal_datatrove_words_also_when_the_cache_starts_over(monkeypatch):
    words = F.SpacyWords()
    monkeypatch.setattr(F.SpacyWords, "MAX_CACHE", 50)
    for text in crafted() + tiny_corpus()[:40]:
        assert words(text) == split_into_words(text, "eng")
    assert len(words._cache) <= 50 + len(set(tiny_corpus()[39].split()))


def test_profile_engine_is_validated_and_the_reference_engine_stays_available():
    with pytest.raises(ValueError, match="engine must be one of"):
        S.resolve_profiles({"web": {"engine": "rust"}})
    profile = S.resolve_profiles({"web": {"engine": "datatrove"}})["web"]
    from datatrove.pipeline.filters import GopherQualityFilter

    assert isinstance(dict(S.build_filters(profile))["gopher_quality"], GopherQualityFilter)
    assert isinstance(dict(S.build_filters(S.PROFILES["web"]))["gopher_quality"], F.FastGopherQuality)


def test_fast_filters_refuse_what_they_do_not_do():
    with pytest.raises(ValueError, match="filter gopher_quality"):  # a misspelled threshold, as with datatrove
        S.build_filters(S.resolve_profiles({"web": {"gopher_quality": {"min_words": 3}}})["web"])
    with pytest.raises(ValueError, match="English words only.*engine: datatrove"):
        F.FastGopherQuality(language="fra")
    with pytest.raises(TypeError, match="split_paragraph"):
        F.FastC4Quality(split_paragraph=False)
    with pytest.raises(TypeError, match="exclusion_writer"):
        F.FastFineWebQuality(exclusion_writer=object())


def test_filter_benchmark_runs_on_a_warc_it_builds(tmp_path):
    """benchmarks/data/bench_filters.py end to end on a few local HTML pages (its WARC corpus)."""
    import importlib.util

    from conftest import REPO_ROOT

    pages = tmp_path / "html"
    pages.mkdir()
    for i, text in enumerate(tiny_corpus()[:12]):
        body = "".join(f"<p>{p}</p>" for p in text.split("\n\n"))
        (pages / f"{i}.html").write_text(f"<html><body><article><h1>Topic {i}</h1>{body}</article></body></html>")
    spec = importlib.util.spec_from_file_location("bench_filters", REPO_ROOT / "benchmarks/data/bench_filters.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = tmp_path / "results.jsonl"
    assert bench.main(["--corpus", "warc", "--html", str(pages / "*.html"), "--work", str(tmp_path / "work"),
                       "--results", str(results)]) == 0
    record = json.loads(results.read_text())
    assert record["corpus"] == "warc" and record["documents"] >= 10
    assert set(record["per_filter"]) == set(S.FILTER_ORDER)
    assert all(f["agreement"] == 1.0 for f in record["per_filter"].values())
    speeds = ("fast_mb_per_cpu_s", "datatrove_mb_per_cpu_s", "fast_second_pass_mb_per_cpu_s")
    assert all(record[k] > 0 for k in speeds)
    with pytest.raises(SystemExit, match="no local HTML"):
        bench.main(["--corpus", "warc", "--html", str(tmp_path / "none/*.html"), "--work", str(tmp_path / "w2"),
                    "--results", str(results)])


def test_unicode_repair_skips_ftfy_only_where_ftfy_would_change_nothing_more():
    """The plain-ASCII shortcut of textops.repair_unicode gives ftfy's answer: random ASCII (control characters
    included) and real documents; text with entities, CR or escapes still goes through ftfy."""
    rng = random.Random(5)
    alphabet = [chr(i) for i in range(128)]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300))) for _ in range(2000)]
    texts += crafted() + tiny_corpus() + ["caf\u00c3\u00a9", "a &amp; b", "x\r\ny", "\x1b[31mred\x1b[0m"]
    for text in texts:
        assert textops.repair_unicode(text) == textops.repair_unicode_with_ftfy(text), repr(text)
    assert textops.repair_unicode("a &amp; b\r\n") == "a & b\n"


def test_unicode_repair_of_only_the_lines_ftfy_changes_gives_ftfys_answer_for_the_whole_text():
    """repair_unicode sends only runs of lines with non-ASCII, CR or escape characters through ftfy (entities
    decoded up to the first line with a "<", as ftfy does): random mixes of mojibake, entities, tags, CRs,
    ligatures, combining marks and plain lines give what ftfy gives for the whole text."""
    rng = random.Random(11)
    pieces = ["café ", "cafÃ© ", "â€™", "’", "\r\n", "\x1b[31m", "&amp; ", "&lt;b&gt;", "<p>", "ﬁ", "Ｆｕｌｌ",
              "\u200b", "\x00", "e\u0301", "\n", "\n\n", "plain words ", "—", "Ã¢â‚¬â„¢", "\u2028", "x < y", "&"]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 40))) for _ in range(1500)]
    for text in texts + crafted():
        assert textops.repair_unicode(text) == textops.repair_unicode_with_ftfy(text), repr(text)
    assert textops.repair_unicode("a &amp; b\n<p>c &amp; d\n") == "a & b\n<p>c &amp; d\n"


def test_simple_chunks_get_spacys_tokens_without_spacy():
    """SpacyWords.simple_tokens answers letters with an optional final mark as spaCy's tokenizer does, special
    cases included (`cannot,` -> can not ,), and leaves every other shape to spaCy."""
    import spacy

    words, reference = F.SpacyWords(), spacy.blank("en")
    chunks = {w + mark for w in ["word", "Word", "WORD", "A", "I", "a", "aB", "cannot", "Cannot", "gonna", "dont",
                                 "Mr", "etc", "vs", "co", "USA", "e"] for mark in ["", ",", ".", ";", ":", "!", "?"]}
    chunks |= {chunk for text in crafted() + tiny_corpus()[:200] for chunk in text.split()}
    simple = 0
    for chunk in chunks:
        tokens = words.simple_tokens(chunk)
        if tokens is not None:
            simple += 1
            assert tokens == tuple(t.text for t in reference.tokenizer(chunk)), chunk
    assert simple > len(chunks) / 3
    assert words.simple_tokens("cannot,") is None and words.simple_tokens("3.14") is None
    assert words.simple_tokens("word.") == ("word", ".") and words.simple_tokens("A.") is None


def test_duplicated_ngram_bound_decides_as_the_full_scan():
    """The bound that skips Gopher's duplicated n-gram scan never changes its answer, ties included."""
    rng = random.Random(2)
    vocabulary = ["a", "ab", "b", "ba", "the", "cat", "sat"]
    for _ in range(400):
        words = [rng.choice(vocabulary) for _ in range(rng.randint(5, 80))]
        for n in (5, 6, 7, 9):
            grams = ["".join(words[i:i + n]) for i in range(len(words) - n + 1)]
            joined = F._joined_ngrams(words, n)
            assert joined == grams
            seen, repeated, i = set(), 0, 0
            while i < len(grams):
                if grams[i] in seen:
                    repeated, i = repeated + len(grams[i]), i + n
                else:
                    seen.add(grams[i])
                    i += 1
            chars = sum(map(len, words)) + len(words) - 1
            for frac in (0.0, 0.1, 0.2, repeated / chars):
                assert F._repeated_ngrams_exceed(joined, n, chars, frac) == (repeated / chars > frac)


@pytest.mark.parametrize("profile", ["web", "docs", "n-grams only"])
def test_gopher_filters_decide_a_batch_as_datatrove_decides_each_document(profile):
    """The batched statistics (numpy over a batch's words) give datatrove's answer for every document:
    crafted and real texts, and generated ones where concatenated n-grams collide ("ab"+"c" = "a"+"bc"),
    the commonest n-gram ties, and repeats sit near every threshold."""
    rng = random.Random(5)
    vocabulary = ["a", "ab", "b", "ba", "c", "the", "cat", "sat", ".", "...", "#", "-"]
    generated = []
    for _ in range(300):
        words = [rng.choice(vocabulary[:rng.randint(3, 12)]) for _ in range(rng.randint(1, 60))]
        if rng.random() < 0.3:  # a repeated run
            at = rng.randrange(len(words))
            words[at:at] = words[max(0, at - rng.randint(2, 12)):at] * rng.randint(1, 3)
        generated.append(rng.choice([" ", "\n"]).join(words))
    texts = crafted() + tiny_corpus()[:150] + generated
    if profile == "n-grams only":  # every rule on n-grams, odd sizes and orders, thresholds ties can meet
        settings = {"gopher_repetition": {"dup_line_frac": None, "dup_para_frac": None, "dup_line_char_frac": None,
                                          "dup_para_char_frac": None, "top_n_grams": [[3, 0.1], [1, 0.3], [2, 0.25]],
                                          "dup_n_grams": [[6, 0.1], [2, 0.3], [5, 0.15], [3, 0.2]]},
                    "gopher_quality": {"min_doc_words": 3, "min_stop_words": 1, "max_non_alpha_words_ratio": 0.5},
                    "word_tokenizer": "regex"}
    else:
        settings = S.resolve_profiles({})[profile]
    settings = {key: settings.get(key) for key in ("gopher_repetition", "gopher_quality", "word_tokenizer")}
    docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
    for (name, fast), (_, reference) in zip(S.build_filters(settings),
                                            S.build_filters({**settings, "engine": "datatrove"})):
        fast.prepare(docs)
        ours = [fast.filter(d) for d in docs]
        theirs = [reference.filter(Document(text=t, id="x")) for t in texts]
        assert [(name, t[:40], o, r) for t, o, r in zip(texts, ours, theirs) if o != r] == []
        assert len({str(r) for r in theirs}) >= 4, name  # several rules decide somewhere


def test_exact_ranks_equal_for_equal_keys_only():
    rng = np.random.default_rng(4)
    for size, spread in [(1, 5), (50, 10), (5000, 3000), (5000, 2**62)]:
        keys = rng.integers(0, spread, size=size, dtype=np.int64)
        ranks = F._exact_ranks(keys)
        assert (ranks < 2 * size).all()
        same_key, same_rank = keys[:, None] == keys[None, :200], ranks[:, None] == ranks[None, :200]
        assert (same_key == same_rank).all()
        maybe = set(F._maybe_repeated(keys).tolist())
        values, counts = np.unique(keys, return_counts=True)
        assert {i for i, k in enumerate(keys) if k in set(values[counts > 1].tolist())} <= maybe


def test_filters_of_one_chain_share_its_words_and_chains_do_not_interfere():
    """`build_filters` gives a profile's fast filters one ChainWords: the second batch filter reuses the first's
    word arrays; another chain's batch does not replace them, and every filter still decides as datatrove."""
    rng = random.Random(8)
    docs_a = [Document(text=prose(rng, rng.randint(20, 200)), id=f"a{i}") for i in range(40)]
    docs_b = [Document(text=prose(rng, rng.randint(20, 200)), id=f"b{i}") for i in range(40)]
    profile = S.resolve_profiles(None)["docs"]
    chain_a, chain_b = S.build_filters(profile), S.build_filters(profile)
    batch_filters = [flt for _, flt in chain_a if hasattr(flt, "prepare")]
    assert len(batch_filters) >= 2 and len({id(flt.chain) for _, flt in chain_a}) == 1
    assert chain_a[0][1].chain is not chain_b[0][1].chain
    for flt in batch_filters:
        flt.prepare(docs_a)
    for _, flt in chain_b:
        if hasattr(flt, "prepare"):
            flt.prepare(docs_b)
    shared = batch_filters[0].chain.batch
    assert batch_filters[1].batch([d.text for d in docs_a]) is shared  # chain B's batch did not replace it
    assert batch_filters[0].words(docs_a[3].text) is shared.words[3]
    reference = {name: flt.reference(**flt.args, language=flt.language) for name, flt in chain_a}
    for doc in docs_a:
        for name, flt in chain_a:
            assert flt.filter(doc) == reference[name].filter(Document(text=doc.text, id=doc.id)), (name, doc.id)
