"""fastminhash.py gives datatrove's MinHash shingles and signatures bit for bit."""

import dataclasses

import numpy as np
import pytest

pytest.importorskip("datatrove")

from datatrove.data import Document  # noqa: E402
from datatrove.pipeline.dedup import MinhashConfig, MinhashDedupSignature  # noqa: E402
from datatrove.utils.hashing import HashConfig  # noqa: E402
from datatrove.utils.text import simplify_text  # noqa: E402

from llm_recipes.data import fastminhash  # noqa: E402
from llm_recipes.data.steps import WhitespaceWords, fast_minhash_signature  # noqa: E402

TEXTS = [
    "",
    "one",
    "two words",
    "The quick brown fox jumps over the lazy dog on Monday, 3 January 2024.",
    "Café naïve résumé — coöperate; Ångström 1,5 km, ½ cup, 2.718 and ٣٫١٤",
    "  Tabs\tand\n\nnewlines   everywhere!! (parentheses) [brackets] {braces} `code` os.path.join()  ",
    "Ελληνικά κείμενα με τόνους, русский текст с ё и й, 中文文本没有空格, עברית עם ניקוד: שָׁלוֹם",
    "a\u0301 e\u0308 combining marks at the end\u0301",
    "\u0301 leading mark, zero\u200bwidth space, non\u00a0breaking",
    "x " * 50 + "repeated shingles " * 20,
]


def reference_step(n: int) -> MinhashDedupSignature:
    config = MinhashConfig(n_grams=n, num_buckets=4, hashes_per_bucket=3, seed=7,
                           hash_config=HashConfig(precision=64, hash_fc="sha1"))
    step = MinhashDedupSignature(output_folder="/tmp/unused-minhash", config=config)
    step.word_tokenizer = WhitespaceWords()  # what our signature step splits simplified text with
    return step


@pytest.mark.parametrize("n", [1, 3, 5])
def test_shingles_and_signatures_equal_datatrove(n):
    reference = reference_step(n)
    for text in TEXTS:
        assert fastminhash.simplified(text, reference.config.norm_config) == simplify_text(
            text, reference.config.norm_config), text
        words = WhitespaceWords.word_tokenize(fastminhash.simplified(text, reference.config.norm_config))
        ours = fastminhash.sha1_shingles(words, n)
        theirs = reference.get_shingles(text)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, text
        assert np.array_equal(ours, theirs), text
        if theirs.size:
            assert reference.get_signature(ours) == reference.get_signature(theirs)


def test_our_signature_step_uses_the_fast_path_with_the_same_shingles(tmp_path):
    config = reference_step(3).config
    ours = fast_minhash_signature(str(tmp_path), config)
    assert fastminhash.fast_path_applies(ours)
    reference = reference_step(3)
    for text in TEXTS:
        shingles = reference.get_shingles(text)
        assert np.array_equal(ours.get_shingles(text), shingles), text
        if shingles.size:
            assert ours.get_signature(shingles) == reference.get_signature(shingles), text


def test_api_name_pattern_matches_as_the_plain_pattern():
    """steps._API_NAME is a faster spelling (possessive quantifiers, one \\b) of this plain pattern."""
    import re

    from llm_recipes.data.steps import _API_NAME

    plain = re.compile(r"`[^`\n]+`|\b[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+|\b[A-Za-z_]\w*(?=\()|\b\w*_\w+"
                       r"|\b[A-Z][a-z0-9]+[A-Z]\w*")
    texts = ["Use `os.path.join` or np.sum(a) with snake_case_name and CamelCase, e.g. i.e.", "a__ _ abc_ __x x_ _1",
             "ConvBnReLU2d.forward(x) torch.xpu.synchronize() `unclosed\n` ``double`` a.b.c. .x x. 3.14 _x.y",
             "ÅngströmUnit naïve_name Foo_Bar(1) HTTPServer Ab1Cd e_ f(g)(h) __init__ self.__dict__"]
    for text in texts:
        assert _API_NAME.findall(text) == plain.findall(text), text


def test_our_modulus_is_datatroves():
    """datatrove keeps its modulus private (`_mersenne_prime`): a change there must fail here."""
    from datatrove.pipeline.dedup import minhash

    assert int(fastminhash.MERSENNE_PRIME) == int(minhash._mersenne_prime)


def test_permuted_minimum_equals_the_modulo_of_the_wrapped_products():
    rng = np.random.default_rng(1)
    p = int(fastminhash.MERSENNE_PRIME)
    # random shingles, and (in the last column: a = 1, b = 7) sums 2**62 - 1 and 2**64 - 1, which the fold
    # leaves at p + 1 and p + 7
    shingles = np.concatenate([rng.integers(0, 2**64 - 1, size=(200, 1), dtype=np.uint64, endpoint=True),
                               np.array([[p], [2**62 - 8], [2**64 - 8], [2**64 - 1], [0], [1]], dtype=np.uint64)])
    a = np.concatenate([rng.integers(1, p, size=(1, 40), dtype=np.uint64), np.ones((1, 1), np.uint64)], axis=1)
    b = np.concatenate([rng.integers(0, p, size=(1, 40), dtype=np.uint64), np.array([[7]], np.uint64)], axis=1)
    shingles = np.concatenate([rng.integers(0, 2**64 - 1, size=(600, 1), dtype=np.uint64, endpoint=True), shingles])
    for rows in (shingles, shingles[-6:], shingles[-5:-4], shingles[-4:-3], shingles[-600:]):
        assert np.array_equal(fastminhash.permuted_minimum(rows, a, b), np.min((rows * a + b) % np.uint64(p), axis=0))


def test_simplified_follows_the_config_it_is_given_also_after_it_changes():
    config = MinhashConfig().norm_config
    text = "Café Ångström 1,5 km"
    assert fastminhash.simplified(text, config) == simplify_text(text, config)
    config.lowercase = False  # the same object, other settings: not an earlier answer
    assert fastminhash.simplified(text, config) == simplify_text(text, config)
    config.norm_unicode_diacritics = False
    assert fastminhash.simplified(text, config) == simplify_text(text, config)
    assert fastminhash._without_diacritics(MinhashConfig().norm_config) is fastminhash._without_diacritics(
        MinhashConfig().norm_config)  # equal settings share one entry


@pytest.mark.parametrize("settings", [{}, {"norm_weekdays": True, "norm_monthnames": True},
                                      {"lowercase": False, "norm_numbers": False, "norm_whitespace": False},
                                      {"remove_punctuation": False, "norm_unicode_diacritics": False}])
def test_simplified_words_are_the_words_of_simplify_text(settings):
    config = dataclasses.replace(MinhashConfig().norm_config, **settings)
    ascii_texts = ["".join(map(chr, range(128))), "Monday, 3 January 2024: 1,000.5 items\x1c\x1fend\v\f.",
                   "\tIt's   a\r\nTEST -- of (all) [the] {punctuation}! 12:30 pm #1 @home ~/x.py $5 50%"]
    for text in TEXTS + ascii_texts:
        assert fastminhash.simplified_words(text, config) == simplify_text(text, config).split(), text


def test_sorted_buckets_write_datatroves_duplicate_pairs_byte_for_byte(tmp_path):
    """Signatures of near-duplicate texts in three files (and an empty one): the same `.dups` files as
    datatrove's MinhashDedupBuckets, band by band; datatrove's own run where a band exceeds the limit."""
    from datatrove.pipeline.dedup import MinhashDedupBuckets

    config = reference_step(2).config
    rng = np.random.default_rng(3)
    base = [" ".join(f"w{x}" for x in rng.integers(0, 40, size=30)) for _ in range(12)]
    texts = base + [t.replace("w1 ", "w2 ", 1) for t in base] + base[:4] + ["w1 w2 w3"] * 3
    sigs = tmp_path / "sigs"
    shards = [texts[0::3], texts[1::3], texts[2::3], []]
    for rank, shard in enumerate(shards):
        step = MinhashDedupSignature(output_folder=str(sigs), config=config)
        step.run([Document(text=t, id=str(i)) for i, t in enumerate(shard)], rank=rank, world_size=len(shards))
    for limit in (fastminhash.SortedMinhashBuckets.max_band_bytes, 0):
        for cls, out in ((MinhashDedupBuckets, tmp_path / "theirs"),
                         (fastminhash.SortedMinhashBuckets, tmp_path / "ours")):
            step = cls(input_folder=str(sigs), output_folder=str(out), config=config)
            step.max_band_bytes = limit
            for band in range(config.num_buckets):
                step.run(rank=band, world_size=config.num_buckets)
        theirs = {p.name: p.read_bytes() for p in (tmp_path / "theirs").glob("*.dups")}
        assert theirs == {p.name: p.read_bytes() for p in (tmp_path / "ours").glob("*.dups")}
        assert len(theirs) == config.num_buckets and sum(map(len, theirs.values())) > 16 * 10  # pairs were found


def test_our_signature_step_writes_datatroves_signature_files_byte_for_byte(tmp_path):
    """Signatures collected per task and each band sorted once: the same `.minhash.sig` files as datatrove's
    step (which packs a record per band and document, then sorts each file), with texts too short for a
    shingle skipped, a text that repeats, and an empty task."""
    config = reference_step(3).config
    rng = np.random.default_rng(5)
    texts = [" ".join(f"w{x}" for x in rng.integers(0, 30, size=int(rng.integers(1, 40)))) for _ in range(60)]
    texts += TEXTS + texts[:5]
    for rank, shard in enumerate([texts, []]):
        docs = [Document(text=t, id=str(i)) for i, t in enumerate(shard)]
        reference = MinhashDedupSignature(output_folder=str(tmp_path / "theirs"), config=config)
        reference.word_tokenizer = WhitespaceWords()
        reference.run(docs, rank=rank, world_size=2)
        fast_minhash_signature(str(tmp_path / "ours"), config).run(docs, rank=rank, world_size=2)
    theirs = {p.relative_to(tmp_path / "theirs"): p.read_bytes() for p in (tmp_path / "theirs").rglob("*.sig")}
    ours = {p.relative_to(tmp_path / "ours"): p.read_bytes() for p in (tmp_path / "ours").rglob("*.sig")}
    assert len(theirs) == 2 * config.num_buckets and sum(map(len, theirs.values())) > 60 * 28
    assert ours == theirs


def test_permuted_minima_of_many_documents_equal_each_documents_minimum():
    """Blocks of several documents (and documents longer than a block, taken a block at a time) give each
    document's own `permuted_minimum`, whatever the block size."""
    rng = np.random.default_rng(3)
    p = int(fastminhash.MERSENNE_PRIME)
    a = rng.integers(1, p, size=(1, 12), dtype=np.uint64)
    b = rng.integers(0, p, size=(1, 12), dtype=np.uint64)
    sizes = [1, 2, 7, 500, 3, 64, 65, 1, 1025, 200, 130, 4000, 1, 9, 63]
    docs = [rng.integers(0, 2**64 - 1, size=(n, 1), dtype=np.uint64, endpoint=True) for n in sizes]
    docs.append(np.array([[2**64 - 1], [p], [0]], dtype=np.uint64))
    expected = np.array([fastminhash.permuted_minimum(d, a, b) for d in docs])
    for rows in (1, 64, 128, 1024, 10**6):
        assert np.array_equal(fastminhash.permuted_minima(docs, a, b, rows=rows), expected), rows
    assert fastminhash.permuted_minima([], a, b).shape == (0, 12)
    with pytest.raises(ValueError, match="without shingles"):
        fastminhash.permuted_minima([docs[0], np.zeros((0, 1), np.uint64)], a, b)


def test_api_names_of_ascii_texts_are_the_unicode_patterns():
    """ASCII texts take `_API_NAME` compiled in ASCII mode: the same matches as the Unicode pattern, every
    ASCII character included (\\x1c-\\x1f, which only Unicode mode's \\s counts as space, among them)."""
    import random

    from llm_recipes.data import steps

    rng = random.Random(4)
    alphabet = [chr(c) for c in range(128)] + list("aZ_(.`") * 20
    texts = ["".join(map(chr, range(128))), "Use `os.path.join` or np.sum(a) with snake_case and CamelCase, e.g.",
             *("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 300))) for _ in range(300))]
    for text in texts:
        assert text.isascii()
        assert steps._API_NAME_ASCII.findall(text) == steps._API_NAME.findall(text), text
