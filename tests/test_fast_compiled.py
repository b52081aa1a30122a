"""The compiled kernels (llm_recipes/data/kernels.py, numba) give datatrove's values: Gopher's word n-gram rules
decide as datatrove's GopherRepetitionFilter, SHA-1 shingles equal datatrove's byte for byte; the numpy and
Python paths, which run where numba is absent, give the same; the kernels are optional.

The kernels are compiled once per machine into numba's cache (~4 s) and loaded from it afterwards (~0.6 s).
"""

from __future__ import annotations

import hashlib
import random
import sys

import numpy as np
import pytest
from test_clean_speed_agreement import batch_decisions, crafted

from llm_recipes.data import compiled, fastminhash
from llm_recipes.data import steps as S
from llm_recipes.data.fastfilters import FastGopherRepetition

kernels = compiled.kernels()
needs_numba = pytest.mark.skipif(kernels is None, reason="numba not installed (or LLM_RECIPES_COMPILED=0)")


@pytest.fixture(params=["compiled", "numpy"])
def path(request, monkeypatch):
    """Each test below runs with the kernels and with them off (the path a machine without numba takes)."""
    if request.param == "compiled" and kernels is None:
        pytest.skip("numba not installed")
    if request.param == "numpy":
        monkeypatch.setattr(compiled, "kernels", lambda: None)
    else:  # a small clean run earlier in this process may have turned them off (compiled.use_for_run)
        monkeypatch.setattr(compiled, "_small_run", False)
    return request.param


def generated(seed: int, count: int) -> list[str]:
    """Texts that reach the rules' edges: words that concatenate alike ("ab"+"c" = "a"+"bc"), ties of the
    commonest n-gram, repeated runs, Unicode (accents, CJK, astral characters, combining marks, a lone
    surrogate), one word, very long lines, empty and whitespace-only texts."""
    rng = random.Random(seed)
    vocabulary = ["a", "ab", "b", "ba", "c", "the", "cat", "sat", "é", "e\u0301", "中文", "𝄞", "ß", "\ud800", ".",
                  "...", "#", "-", "naïve", "x" * 300]
    texts = ["", " ", "\n\n", "word", "é", "𝄞 𝄞", "a b", "ab c a bc", " ".join(["x" * 5000] * 3),
             " ".join(["long line"] * 4000), "\n".join(["one two three four five six"] * 3)]
    for _ in range(count):
        words = [rng.choice(vocabulary[:rng.randint(3, len(vocabulary))]) for _ in range(rng.randint(1, 80))]
        if rng.random() < 0.4:  # a repeated run
            at = rng.randrange(len(words))
            words[at:at] = words[max(0, at - rng.randint(2, 12)):at] * rng.randint(1, 4)
        texts.append("".join(w + rng.choice([" ", " ", " ", "\n", "\n\n", "  "]) for w in words).strip())
    return texts


# every rule on n-grams, with thresholds below, at and above what the texts reach
SETTINGS = [
    {"dup_line_frac": None, "dup_para_frac": None, "dup_line_char_frac": None, "dup_para_char_frac": None,
     "top_n_grams": [[2, 0.2], [3, 0.18], [4, 0.16]], "dup_n_grams": [[n, 0.25 - n / 100] for n in range(5, 11)]},
    {"dup_line_frac": None, "dup_para_frac": None, "dup_line_char_frac": None, "dup_para_char_frac": None,
     "top_n_grams": [[3, 0.1], [1, 0.3], [2, 0.25]], "dup_n_grams": [[6, 0.1], [2, 0.3], [5, 0.15], [3, 0.2]]},
    {"top_n_grams": [[2, 0.0]], "dup_n_grams": [[5, 0.0], [1, 0.5]]},
]


@pytest.mark.parametrize("settings", range(len(SETTINGS)))
def test_gopher_repetition_decides_as_datatrove(path, settings):
    texts = generated(settings, 250) + crafted()
    profile = {"gopher_repetition": SETTINGS[settings], "word_tokenizer": "regex"}
    ours, theirs = batch_decisions(profile, texts)
    assert [(t[:40], o, r) for t, o, r in zip(texts, ours, theirs) if o != r] == []
    assert len({str(r) for r in theirs}) >= 4  # several rules decide somewhere


def test_gopher_repetition_at_its_thresholds_exactly(path):
    """A threshold equal to a text's own fraction (as datatrove computes it: characters / len(text), compared
    with >) keeps the text; the next float below it removes it: floats compared as datatrove compares them."""
    from datatrove.pipeline.filters.gopher_repetition_filter import find_all_duplicate, find_top_duplicate, get_n_grams

    rng = random.Random(9)
    words_of = S.RegexWords().word_tokenize
    checked = 0
    for text in generated(4, 200):
        words = words_of(text)
        if len(words) < 5:
            continue
        top = find_top_duplicate(get_n_grams(words, 2)) / len(text)
        dup = find_all_duplicate(words, 5) / len(text)
        for rule, fraction in (("top", top), ("dup", dup)):
            for frac, kept in ((fraction, True), (np.nextafter(fraction, -1.0), False)):
                if frac < 0:
                    continue
                top_rules = [[2, float(frac)]] if rule == "top" else []
                dup_rules = [[5, float(frac)]] if rule == "dup" else []
                flt = FastGopherRepetition(dup_line_frac=None, dup_para_frac=None, dup_line_char_frac=None,
                                           dup_para_char_frac=None, top_n_grams=top_rules, dup_n_grams=dup_rules,
                                           language=S.RegexWords())
                decision = flt.decide([text])[0]
                assert (decision is True) == kept, (text[:40], rule, frac)
                checked += 1
    assert checked > 300
    del rng


def test_gopher_repetition_of_batches_of_any_size(path):
    """One batch or one text at a time: the same decisions (the kernels' tables are sized per batch)."""
    texts = generated(11, 120)
    profile = {"gopher_repetition": SETTINGS[0], "word_tokenizer": "regex"}
    (_, fast), = S.build_filters(profile)
    together = fast.decide(texts)
    assert [fast.decide([t])[0] for t in texts] == together


def test_sha1_shingles_equal_datatroves(path):
    from test_fastminhash import TEXTS, reference_step

    texts = TEXTS + generated(13, 150)
    for n in (1, 2, 5):
        reference = reference_step(n)
        for text in texts:
            words = fastminhash.simplified_words(text, reference.config.norm_config)
            try:
                theirs = reference.get_shingles(text)
            except UnicodeEncodeError:  # a lone surrogate left in an n-gram has no UTF-8: so do we fail
                with pytest.raises(UnicodeEncodeError):
                    fastminhash.sha1_shingles(words, n)
                continue
            ours = fastminhash.sha1_shingles(words, n)
            assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, text[:40]
            assert np.array_equal(ours, theirs), text[:40]


def test_sha1_shingles_of_words_holding_spaces_or_nothing(path):
    """Words from another tokenizer may hold a space or be empty: each n-gram is still SHA-1 of its words
    joined by spaces (the kernel would split such a word, so it is not used for it)."""
    for words in (["a b", "c", "d"], ["", "x", "", ""], ["é", "", "𝄞 z"], ["only"], []):
        for n in (1, 2, 3):
            expected = [int.from_bytes(hashlib.sha1(" ".join(words[i:i + n]).encode()).digest()[:8], "little")
                        for i in range(len(words) - n + 1)]
            assert fastminhash.sha1_shingles(words, n).ravel().tolist() == expected, (words, n)


@needs_numba
def test_sha1_kernel_at_every_padding_edge():
    """SHA-1's padding puts the message length in the last 8 bytes of the last 64-byte block: lengths around
    55/56 and 64 bytes (and several blocks) hash as hashlib does, ASCII and multi-byte UTF-8."""
    rng = random.Random(1)
    for length in [*range(0, 140), 183, 184, 1000, 4097]:
        for alphabet in ("abc ", "é𝄞 x"):
            text = "".join(rng.choice(alphabet) for _ in range(length))
            data = text.encode("utf-8")
            words = text.split(" ")
            shingles, found = kernels.sha1_ngrams(np.frombuffer(bytearray(data), np.uint8), 1)
            assert found == len(words)
            assert shingles.tolist() == [int.from_bytes(hashlib.sha1(w.encode()).digest()[:8], "little")
                                         for w in words]


@needs_numba
def test_first_positions_are_exact_word_ids():
    texts = generated(17, 100)
    words_of = S.RegexWords().word_tokenize
    from llm_recipes.data.fastfilters import _WordBatch

    batch = _WordBatch([words_of(t) for t in texts])
    ids = kernels.first_positions(batch.codes, batch.offsets, batch.starts, batch.counts)
    expected = []
    for start, words in zip(batch.starts.tolist(), batch.words):
        first: dict[str, int] = {}
        expected += [first.setdefault(w, start + i) for i, w in enumerate(words)]
    assert ids.tolist() == expected


def test_kernels_are_optional(monkeypatch):
    """Without numba (or with LLM_RECIPES_COMPILED=0) there are no kernels, and the filters and shingles run
    on numpy (the tests above, `numpy` variants, check their values)."""
    compiled._loaded.cache_clear()
    try:
        monkeypatch.setenv("LLM_RECIPES_COMPILED", "0")
        assert compiled.kernels() is None
        compiled._loaded.cache_clear()
        monkeypatch.delenv("LLM_RECIPES_COMPILED")
        monkeypatch.setitem(sys.modules, "numba", None)  # import numba -> ImportError
        monkeypatch.setenv("NUMBA_CACHE_DIR", "/nonexistent")
        assert compiled.kernels() is None
    finally:
        compiled._loaded.cache_clear()


@needs_numba
def test_loading_the_kernels_leaves_scipy_linalg_out():
    """numba would import scipy.linalg (~0.3 CPU s per clean run) to look for a BLAS the kernels do not use."""
    import subprocess

    code = ("import sys; from llm_recipes.data import compiled; k = compiled.kernels(); import numpy as np; "
            "print(k is not None, 'scipy.linalg' in sys.modules, "
            "k.sha1_ngrams(np.frombuffer(bytearray(b'ab'), np.uint8), 1)[0].tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[:2] == ["True", "False"]
    assert int(out[2].strip("[]")) == int.from_bytes(hashlib.sha1(b"ab").digest()[:8], "little")


def test_a_small_run_skips_the_kernels(monkeypatch):
    monkeypatch.setattr(compiled, "_small_run", False)
    assert compiled.use_for_run(compiled.MIN_INPUT_BYTES - 1) is False
    assert compiled.kernels() is None
    assert compiled.use_for_run(compiled.MIN_INPUT_BYTES) is (compiled._loaded() is not None)
    assert compiled.kernels() is compiled._loaded()


@needs_numba
def test_signature_in_one_pass_equals_the_shingles_minima(monkeypatch):
    """`fastminhash.signature_into` (ASCII: split, SHA-1, XOR and permutations in one kernel) writes the
    permuted minimum of the XORed shingles, for every kind of text and whitespace (\\x1c-\\x1f and \\v split
    words as str.split does), n-gram size and key; a text with fewer than n words has none."""
    from test_fastminhash import TEXTS, reference_step

    monkeypatch.setattr(compiled, "_small_run", False)
    spaces = "".join(chr(c) for c in range(128) if chr(c).isspace())
    texts = TEXTS + generated(17, 120) + [f"a{s}b{s}{s}c d" for s in spaces] + [spaces, "x" + spaces + "y z"]
    texts += ["".join(random.Random(i).choice("ab _.\x1c\x0b\n\t,'`") for _ in range(i * 7)) for i in range(40)]
    for n in (1, 3, 5):
        config = reference_step(n).config
        a, b = reference_step(n).parameters
        flat_a, flat_b = a.reshape(-1).copy(), b.reshape(-1).copy()
        for key in (0, 2**64 - 1, 0x9E3779B97F4A7C15):
            for text in texts:
                if "\ud800" in text:
                    continue
                shingles = fastminhash.sha1_shingles(fastminhash.simplified_words(text, config.norm_config), n)
                out = np.zeros(a.size, np.uint64)
                found = fastminhash.signature_into(text, config.norm_config, n, key, flat_a, flat_b, out)
                assert found == bool(len(shingles)), (text[:40], n)
                if found:
                    expected = fastminhash.permuted_minimum(shingles ^ np.uint64(key), a, b)
                    assert np.array_equal(out, expected), (text[:40], n, key)


def test_signature_files_equal_datatroves_on_both_paths(path, tmp_path):
    """The signature step writes datatrove's `.minhash.sig` files with the kernels (one pass per document) and
    with the numpy paths, on generated texts of every kind."""
    from datatrove.data import Document
    from datatrove.pipeline.dedup import MinhashDedupSignature
    from test_fastminhash import TEXTS, reference_step

    config = reference_step(3).config
    docs = [Document(text=t, id=str(i)) for i, t in enumerate(TEXTS + generated(19, 200)) if "\ud800" not in t]
    reference = MinhashDedupSignature(output_folder=str(tmp_path / "theirs"), config=config)
    reference.word_tokenizer = S.WhitespaceWords()
    reference.run(docs)
    S.fast_minhash_signature(str(tmp_path / "ours"), config).run(docs)
    theirs = {p.relative_to(tmp_path / "theirs"): p.read_bytes() for p in (tmp_path / "theirs").rglob("*.sig")}
    ours = {p.relative_to(tmp_path / "ours"): p.read_bytes() for p in (tmp_path / "ours").rglob("*.sig")}
    assert len(theirs) == config.num_buckets and ours == theirs


@needs_numba
def test_api_name_kernel_matches_as_the_ascii_pattern():
    """`kernels.api_name_spans` finds what `_API_NAME_ASCII.findall` finds, match for match in order, on texts
    dense in the pattern's edges (backticks across newlines, dotted names ending in a digit or a dot, calls,
    underscores at a word's start or end, CamelCase) and on every ASCII character."""
    rng = random.Random(8)
    alphabets = ["aZb_(.`\n 09Q-", "".join(map(chr, range(128))) + "aZ_(.`" * 20]
    texts = ["".join(map(chr, range(128))), "Use `os.path.join` or np.sum(a), a.b.1_x, __init__, CamelCase, e.g.",
             "``a` `\n` x.y.z( A1B _ a_ 1_2 Ab aB ABc"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
              for alphabet in alphabets for _ in range(6000)]
    for text in texts:
        spans = kernels.api_name_spans(np.frombuffer(text.encode("ascii"), np.uint8)).tolist()
        assert [text[spans[i]:spans[i + 1]] for i in range(0, len(spans), 2)] == S._API_NAME_ASCII.findall(text)


def test_api_names_on_both_paths():
    compiled_names = [S.api_names(t) for t in TEXTS_WITH_NAMES]
    if kernels is not None:
        saved, compiled._small_run = compiled._small_run, True  # the regular expression's path
        try:
            assert [S.api_names(t) for t in TEXTS_WITH_NAMES] == compiled_names
        finally:
            compiled._small_run = saved
    assert compiled_names[0] == {"os.path.join", "np.sum", "snake_case", "CamelCase", "json.dumps"}


TEXTS_WITH_NAMES = ["Use `os.path.join` or np.sum(a) with snake_case and CamelCase, e.g. json.dumps.",
                    "Café: `naïve` x.y(z) and i.e. A_b", "", "plain words only", "`a`b` c_ `", "e.g. i.e. a.b"]


@needs_numba
def test_compiled_word_batch_is_the_regex_words_batch(monkeypatch):
    """`_CompiledWordBatch` (RegexWords' words split by a kernel into the arrays) holds what `_WordBatch` of
    `RegexWords().word_tokenize` holds: words, counts, lengths, code points, offsets, first positions, and
    `_WordKinds`' KEPT and ALPHA bits; on apostrophes (' and ’ inside and at the ends of words), Unicode words,
    \\x1c-\\x1f and other spaces, surrogates, astral characters, digits that are not \\d (²), empty texts."""
    from llm_recipes.data import fastfilters as F

    monkeypatch.setattr(compiled, "_small_run", False)
    rng = random.Random(2)
    alphabet = list("ab _'’x\x1c\x0b\n\t.,-–é中\ud800𝄞²٣")
    texts = generated(3, 150) + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 50)))
                                 for _ in range(600)] + ["", "don't ’tis rock’n’roll 'quoted' it's'"]
    words_of = S.RegexWords().word_tokenize
    for start in range(0, len(texts), 97):
        batch = texts[start:start + 97]
        ref, ours = F._WordBatch(list(map(words_of, batch))), F._CompiledWordBatch(batch)
        assert np.array_equal(ours.per_doc(ours.lengths), ref.per_doc(ref.lengths))
        assert ours._flat is None  # the statistics make no string per word
        assert ours.words == ref.words
        for name in ("counts", "lengths", "doc", "starts", "codes", "offsets", "first_positions"):
            assert np.array_equal(getattr(ours, name), getattr(ref, name)), name
        kinds = F._WordKinds(set())
        assert ours.kinds().tolist() == [kinds[w] for w in ref.flat]


@pytest.mark.parametrize("min_stop_words", [None, 2])
def test_gopher_quality_with_regex_words_decides_as_datatrove(path, min_stop_words):
    """The docs profile's quality rules (RegexWords; compiled: words and word kinds from the kernels, or the
    stop words counted from the words where a rule needs them) decide as datatrove's filter."""
    texts = generated(21, 250) + crafted() + ["’tis a cat's ’ toy '", "é中 ² ٣ words of ¾ kinds"]
    quality = {**S.resolve_profiles({})["docs"]["gopher_quality"], "min_stop_words": min_stop_words,
               "min_doc_words": 3}
    ours, theirs = batch_decisions({"gopher_quality": quality, "word_tokenizer": "regex"}, texts)
    assert [(t[:40], o, r) for t, o, r in zip(texts, ours, theirs) if o != r] == []
    assert len({str(r) for r in theirs}) >= 3
