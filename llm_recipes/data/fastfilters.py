"""Gopher repetition, Gopher quality, C4 and FineWeb quality filters in one cheap pass per document.

The rules, thresholds, keyword arguments and removal reasons are datatrove's (0.10): each class here
takes exactly the keyword arguments of its datatrove counterpart, with datatrove's defaults (read from
datatrove's own signatures, so the two cannot drift), and answers `True` or `(False, reason)` like
datatrove's `filter(doc)`. What differs is the cost:

- words: datatrove runs spaCy's whole pipeline (tokenizer + sentencizer) on every document, which takes
  most of the filter time (~0.3 MB/s on Tiny Shakespeare paragraphs); here spaCy tokenizes each distinct
  whitespace-separated chunk once per worker and the words of a text are looked up (`SpacyWords`),
  giving the same words; the commonest chunk shapes (letters with an optional final mark, about half of
  the distinct chunks of English text) get spaCy's answer without spaCy, and spaCy skips the lexeme
  attributes it would compute for every new token (boundaries do not depend on them); a profile that
  names its own tokenizer (`word_tokenizer: regex`) gets it as is;
- the words of a text are computed once and shared by the filters that read them;
- Gopher's two filters decide a batch of documents at once (`prepare`, called by the quality step): the
  batch's words become numpy arrays, the top n-grams are counted over exact integer ranks of word n-grams,
  and the duplicated 5..10-gram scan (datatrove's, on the strings) runs only for documents where a bound
  computed with numpy exceeds the threshold (`_ngram_failures`); word kinds (punctuation only, has a
  letter) are looked up once per distinct word;
- C4 counts sentences (spaCy's sentencizer rule on the same tokens) only until it has the
  `min_num_sentences` it needs.

Decisions agree with datatrove's on >= 99% of documents per filter on the benchmark corpora
(`benchmarks/data/bench_filters.py`, which lists every disagreement by example).
"""

from __future__ import annotations

import inspect
import operator
import re
from collections import Counter
from functools import lru_cache
from itertools import chain
from typing import Any

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.filters.gopher_quality_filter import STOP_WORDS
from datatrove.utils.text import PUNCTUATION_SET, TERMINAL_PUNCTUATION
from datatrove.utils.typeshelper import Languages

from . import compiled

# -------------------------------------------------------------------------------------------- words

class SpacyWords:
    """English words exactly as datatrove's spaCy tokenizer gives them, at a fraction of the cost.

    spaCy tokenizes each whitespace-separated chunk on its own (prefixes, suffixes, infixes, exceptions),
    and datatrove drops the whitespace tokens; so a text's words are the concatenation of its chunks'
    tokens. Chunks repeat (Zipf), so each distinct chunk goes through spaCy once and is then looked up:
    the per-document work is a `str.split` and dictionary lookups, not building a spaCy Doc.
    """

    MAX_CACHE = 400_000  # distinct chunks kept (~100 MB at worst); the cache starts over when full

    def __init__(self):
        # spaCy takes ~1 s to import; only the worker that tokenizes English pays it, once
        with _torch_hidden():
            import spacy
            from spacy.lang.lex_attrs import is_punct
            from spacy.pipeline.sentencizer import Sentencizer

        self._nlp = spacy.blank("en")
        # token boundaries come from the tokenizer's special cases and affix patterns, never from lexeme
        # attributes (lower case, shape, like_num...), which spaCy computes for every new token string
        # and which took half the tokenizing time: without their getters a new string costs a hash
        self._nlp.vocab.lex_attr_getters = {}
        self._specials = frozenset(self._nlp.tokenizer.rules)
        self._cache: dict[str, tuple[str, ...]] = {}
        self.is_punct = is_punct
        self.sentence_ends = frozenset(Sentencizer.default_punct_chars)

    def chunk_tokens(self, chunks: list[str]) -> list[tuple[str, ...]]:
        cache = self._cache
        missing = set(chunks).difference(cache)
        if missing and len(cache) + len(missing) > self.MAX_CACHE:
            cache.clear()  # this text's chunks that were cached go too
            missing = set(chunks)
        if missing:
            hard = []
            for chunk in missing:
                tokens = self.simple_tokens(chunk)
                if tokens is None:
                    hard.append(chunk)
                else:
                    cache[chunk] = tokens
            if hard:
                # tokens are views into spaCy's string store: copy their text out before the zone closes,
                # so the store does not grow with every distinct chunk (the leak datatrove guards against too)
                with self._nlp.memory_zone():
                    for chunk in hard:
                        cache[chunk] = tuple(t.text for t in self._nlp.tokenizer(chunk))
        return list(map(cache.__getitem__, chunks))

    def simple_tokens(self, chunk: str) -> tuple[str, ...] | None:
        """spaCy's tokens of the commonest chunk shapes, known without running it; None for any other chunk.

        ASCII letters, optionally followed by one of `,;:!?` or by `.` after a lower-case letter. Why the
        answer is spaCy's: English has no `token_match`; none of its prefix patterns starts with, and none
        of its infix patterns lies between, ASCII letters, and its suffix patterns that end in letters need
        a digit or an apostrophe before them (units, currencies, 's); `,;:!?` are suffixes (LIST_PUNCT), and
        `.` is a suffix after a lower-case letter. So such a chunk is one token, or the word and its mark,
        unless the chunk or its word is a special case (`cannot` -> can not, `etc.`, `Mr.`), which goes to
        spaCy. The URL pattern only keeps a string whole, which these are already.
        """
        match = _SIMPLE_CHUNK.fullmatch(chunk)
        if match is None or chunk in self._specials:
            return None
        if match.end(1) == len(chunk):
            return (chunk,)
        word = match.group(1)
        return None if word in self._specials else (word, chunk[-1])

    def __call__(self, text: str) -> list[str]:
        return list(chain.from_iterable(self.chunk_tokens(text.split())))

    def count_sentences(self, text: str, limit: int) -> int:
        """Sentences in `text` as spaCy's sentencizer splits them (a sentence ends at a token from its list
        of terminal punctuation followed by a token that is not punctuation), counting no further than `limit`."""
        count, seen_end = 0, False
        for tokens in self.chunk_tokens(text.split()):
            for token in tokens:
                if not count:
                    count = 1
                is_end = token in self.sentence_ends
                if seen_end and not is_end and not self.is_punct(token):
                    count += 1
                    seen_end = False
                    if count >= limit:
                        return count
                elif is_end:
                    seen_end = True
        return count


def _torch_hidden():
    """spaCy's thinc imports torch whenever it is installed, only to note that it is (~3 s and ~300 MB per
    worker); the tokenizer never uses it. Importing spaCy with torch out of reach keeps data workers
    torch-free. Where torch is loaded already, nothing changes."""
    return compiled.imports_refused("torch", "by data workers")


_SIMPLE_CHUNK = re.compile(r"([A-Za-z]+)(?:[,;:!?]|(?<=[a-z])\.)?")


@lru_cache(maxsize=1)
def spacy_words() -> SpacyWords:
    return SpacyWords()


def word_splitter(language: Any):
    """`language` as datatrove's filters take it: English (spaCy's words, as datatrove splits English) or a
    datatrove WordTokenizer instance (used as it is, so a profile's own tokenizer gives identical words).
    The words of the last few texts are kept (`_words`); those of a prepared batch are kept by the chain
    (`ChainWords`), so the filters of a chain tokenize a document once."""
    if isinstance(language, str):
        if language != Languages.english:
            raise ValueError(f"the fast filters know English words only, got language={language!r}; "
                             "set `engine: datatrove` in the profile for other languages")
        return lambda text: _words(spacy_words(), text)
    return lambda text: _words(language, text)


class ChainWords:
    """The words of the batch last prepared by one chain of filters (`steps.build_filters` gives the filters
    of a profile one instance; a filter made alone has its own), so the second filter of a chain prepared
    with the same documents reuses the first's words and arrays instead of splitting the texts again."""

    def __init__(self):
        self.language: Any = None
        self.texts: list[str] = []
        self.batch: _WordBatch | None = None
        self.index: dict[int, int] = {}  # id(text) -> position; `texts` holds the texts, so ids are not reused

    def batch_of(self, language, texts: list[str], split) -> _WordBatch:
        """The words of `texts` as arrays: the last batch's when it is of the same texts (the same objects)
        split for the same language, otherwise split now with `split` and kept."""
        if (self.batch is None or self.language != language or len(self.texts) != len(texts)
                or not all(map(operator.is_, self.texts, texts))):
            self.language, self.texts = language, texts
            if getattr(language, "compiled_words", False) and compiled.kernels() is not None:
                self.batch = _CompiledWordBatch(texts)
            else:
                self.batch = _WordBatch(list(map(split, texts)))
            self.index = {id(t): i for i, t in enumerate(texts)}
        return self.batch

    def words_of(self, language, text: str) -> list[str] | None:
        """The words of `text` if it is one of the last batch's texts (split for the same language)."""
        if self.batch is not None and self.language == language:
            i = self.index.get(id(text))
            if i is not None and self.texts[i] is text:
                return self.batch.words[i]
        return None


# a few texts only: words kept longer (thousands of small strings from many batches) fragment the heap
@lru_cache(maxsize=4)
def _words(tokenizer, text: str) -> list[str]:
    return tokenizer(text) if isinstance(tokenizer, SpacyWords) else tokenizer.word_tokenize(text)


# -------------------------------------------------------------------------------------------- helpers

def _datatrove_arguments(reference_class, kwargs: dict) -> dict[str, Any]:
    """kwargs bound against the datatrove class's signature, defaults filled in; a misspelled argument
    fails as it would in datatrove (TypeError)."""
    bound = inspect.signature(reference_class).bind(**kwargs)
    bound.apply_defaults()
    args = dict(bound.arguments)
    if args.pop("exclusion_writer", None) is not None:
        raise TypeError("the fast filters do not write excluded documents (exclusion_writer)")
    return args


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(number of repeated items, characters in the repeats): every occurrence after the first counts."""
    if len(items) < 2:  # a document of one line (or paragraph) repeats none
        return 0, 0
    counts = Counter(items)
    # all characters minus those of each item's first occurrence (sums in C, no loop over the counts)
    return len(items) - len(counts), sum(map(len, items)) - sum(map(len, counts))


def _joined_ngrams(words: list[str], n: int) -> list[str]:
    """Every word n-gram as its concatenated words (datatrove's key for duplicated n-grams)."""
    return list(map("".join, zip(*(words[i:] for i in range(n)))))


def _repeated_ngrams_exceed(grams: list[str], n: int, text_chars: int, frac: float) -> bool:
    """Whether the characters of n-grams (`grams`: every word n-gram, keyed by its concatenated words as
    datatrove keys them) that repeat an earlier n-gram, skipping past each repeat (Gopher's rule), exceed
    `frac` of the text."""
    counts = Counter(grams)
    # the scan counts only occurrences after a gram's first, so all of them together bound it: when
    # they stay within the limit (the common case), the scan cannot exceed it
    if not (sum(map(len, grams)) - sum(map(len, counts))) / text_chars > frac:
        return False
    # the scan (datatrove: at each position, a gram seen before counts and the scan jumps n ahead, any
    # other is remembered and the scan moves one ahead) visited only at grams that occur more than once: a
    # gram that occurs once is never "seen before", and remembering it changes nothing later
    seen, repeated, resume = set(), 0, 0
    for i in [i for i, gram in enumerate(grams) if counts[gram] > 1]:
        if i < resume:
            continue
        gram = grams[i]
        if gram in seen:
            repeated += len(gram)
            resume = i + n
        else:
            seen.add(gram)
    return repeated / text_chars > frac


class _FastFilter:
    """Common shape: `filter(doc) -> True | (False, reason)`, like datatrove's BaseFilter."""

    reference: Any = None  # the datatrove class whose arguments and decisions this reproduces

    def __init__(self, **kwargs):
        self.args = _datatrove_arguments(self.reference, kwargs)
        self.language = self.args.pop("language")
        self._split = word_splitter(self.language)
        self.chain = ChainWords()  # steps.build_filters gives the filters of one chain the same instance

    def words(self, text: str) -> list[str]:
        found = self.chain.words_of(self.language, text)
        return self._split(text) if found is None else found

    def filter(self, doc: Document) -> bool | tuple[bool, str]:  # pragma: no cover - abstract
        raise NotImplementedError


class _BatchFilter(_FastFilter):
    """A filter that decides many documents at once (numpy over the words of all of them): `prepare(docs)`
    decides a batch and `filter(doc)` answers from it; a document outside the prepared batch (or whose text
    changed since) is decided alone, the same way. A decision depends on the text only."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._prepared: dict[str, bool | tuple[bool, str]] = {}

    def prepare(self, docs: list[Document]) -> None:
        texts = [doc.text for doc in docs]
        self._prepared = dict(zip(texts, self.decide(texts)))

    def filter(self, doc):
        decision = self._prepared.get(doc.text)
        return self.decide([doc.text])[0] if decision is None else decision

    def decide(self, texts: list[str]) -> list[bool | tuple[bool, str]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def batch(self, texts: list[str]) -> _WordBatch:
        """The words of `texts` as arrays; the filters of one chain prepared with the same documents share it."""
        return self.chain.batch_of(self.language, texts, self._split)


class _WordBatch:
    """The words of a batch of texts as flat numpy arrays: position i is the i-th word of all texts together."""

    def __init__(self, words: list[list[str]]):
        self.words = words
        self.counts = np.fromiter(map(len, words), np.int64, len(words))
        self.total = int(self.counts.sum())
        self.flat = list(chain.from_iterable(words))
        self.lengths = np.fromiter(map(len, self.flat), np.int64, self.total)
        self.doc = np.repeat(np.arange(len(words)), self.counts)
        self.starts = np.concatenate(([0], np.cumsum(self.counts)[:-1])).astype(np.int64)
        self._first = self._codes = self._offsets = None

    @property
    def first_positions(self) -> np.ndarray:
        """Each word's first position in its text (an exact id of the word within the text)."""
        if self._first is None:
            k = compiled.kernels()
            if k is not None:
                self._first = k.first_positions(self.codes, self.offsets, self.starts, self.counts)
            else:
                self._first = np.fromiter(chain.from_iterable(map(_first_positions, self.words,
                                                                  self.starts.tolist())), np.int64, self.total)
        return self._first

    @property
    def codes(self) -> np.ndarray:
        """The code points of all words concatenated (uint32; word i is codes[offsets[i]:offsets[i + 1]]),
        writable as the compiled kernels take them."""
        if self._codes is None:
            joined = "".join(self.flat).encode("utf-32-le", "surrogatepass")
            self._codes = np.frombuffer(bytearray(joined), np.uint32)
        return self._codes

    @property
    def offsets(self) -> np.ndarray:
        """Characters before word i in the concatenated words (total + 1 values)."""
        if self._offsets is None:
            self._offsets = np.concatenate(([0], np.cumsum(self.lengths))).astype(np.int64)
        return self._offsets

    def per_doc(self, weights: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
        """Sum of `weights` (integers) over each text's words (those `where` is true), exactly."""
        doc = self.doc if where is None else self.doc[where]
        return np.bincount(doc, weights=weights, minlength=len(self.counts)).astype(np.int64)


class _CharClasses:
    """Each code point's class bits for the compiled word kernels (`kernels.WORD`, `SPACE`, `KEPT`, `ALPHA`):
    matched by \\w, by \\s, not in datatrove's punctuation set, a letter (`_HAS_ALPHA`). Asked of Python's own
    `re` and set, once per distinct code point as texts bring it (a table of all 1.1 million up front costs
    ~0.2 CPU s per process); 0 means not yet asked."""

    KNOWN = 16

    def __init__(self):
        self.table = np.zeros(0x110000, np.uint8)
        self._add(np.arange(128))

    def of(self, codes: np.ndarray) -> np.ndarray:
        """The table, with every code point of `codes` in it."""
        high = codes[codes >= 128]
        if high.size:
            high = np.unique(high)
            self._add(high[self.table[high] == 0])
        return self.table

    def _add(self, codes: np.ndarray) -> None:
        from . import kernels
        for code in codes.tolist():
            ch = chr(code)
            self.table[code] = (self.KNOWN | (kernels.WORD if _WORD_CHAR.match(ch) else 0)
                                | (kernels.SPACE if _SPACE_CHAR.match(ch) else 0)
                                | (0 if ch in PUNCTUATION_SET else kernels.KEPT)
                                | (kernels.ALPHA if _HAS_ALPHA.match(ch) else 0))


_WORD_CHAR, _SPACE_CHAR = re.compile(r"\w"), re.compile(r"\s")


@lru_cache(maxsize=1)
def _char_classes() -> _CharClasses:
    return _CharClasses()


class _CompiledWordBatch(_WordBatch):
    """The words of a batch split by the compiled kernel (`kernels.regex_words`, `RegexWords`' words exactly)
    straight into the arrays; the words as strings are made only if a filter asks for them."""

    def __init__(self, texts: list[str]):
        codes = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), np.uint32)
        self.classes = _char_classes().of(codes)
        ends = np.cumsum(np.fromiter(map(len, texts), np.int64, len(texts)))
        self._codes, self.lengths, self.counts = compiled.kernels().regex_words(codes, ends, self.classes)
        self.total = len(self.lengths)
        self.doc = np.repeat(np.arange(len(texts)), self.counts)
        self.starts = np.concatenate(([0], np.cumsum(self.counts)[:-1])).astype(np.int64)
        self._offsets = np.concatenate(([0], np.cumsum(self.lengths))).astype(np.int64)
        self._first = self._flat = self._words = None

    @property
    def flat(self) -> list[str]:
        if self._flat is None:
            joined = self._codes.tobytes().decode("utf-32-le", "surrogatepass")
            bounds = self._offsets.tolist()
            self._flat = [joined[a:b] for a, b in zip(bounds, bounds[1:])]
        return self._flat

    @property
    def words(self) -> list[list[str]]:
        if self._words is None:
            flat, bounds = self.flat, self.starts.tolist() + [self.total]
            self._words = [flat[a:b] for a, b in zip(bounds, bounds[1:])]
        return self._words

    def kinds(self) -> np.ndarray:
        """`_WordKinds`' KEPT and ALPHA bits of every word (STOP left out)."""
        return compiled.kernels().word_kinds(self._codes, self._offsets, self.classes)


# -------------------------------------------------------------------------------------------- filters

class FastGopherRepetition(_BatchFilter):
    """Gopher's repetition rules; the word n-gram rules of a prepared batch are decided together
    (`_ngram_failures`)."""

    from datatrove.pipeline.filters import GopherRepetitionFilter as reference

    _PARAGRAPHS = re.compile(r"\n{2,}")
    _LINES = re.compile(r"\n+")

    def decide(self, texts: list[str]) -> list[bool | tuple[bool, str]]:
        failures = list(map(self._line_failure, texts))
        a = self.args
        if a["top_n_grams"] or a["dup_n_grams"]:
            decided = np.fromiter((f is not None for f in failures), bool, len(failures))
            for i, failure in enumerate(_ngram_failures(self.batch(texts), texts, a["top_n_grams"] or (),
                                                        a["dup_n_grams"] or (), decided)):
                if failures[i] is None:
                    failures[i] = failure
        return [True if failure is None else (False, failure) for failure in failures]

    def _line_failure(self, text: str) -> str | None:
        a = self.args
        if not text:
            return "empty"
        # a text without a blank line is one paragraph, without a newline one line: no pattern scan for those
        paragraphs = self._PARAGRAPHS.split(text.strip()) if "\n\n" in text else [text.strip()]
        n_dup, dup_chars = _duplicates(paragraphs)
        if a["dup_para_frac"] and n_dup / len(paragraphs) > a["dup_para_frac"]:
            return "dup_para_frac"
        if a["dup_para_char_frac"] and dup_chars / len(text) > a["dup_para_char_frac"]:
            return "dup_para_char_frac"
        lines = self._LINES.split(text) if "\n" in text else [text]
        n_dup, dup_chars = _duplicates(lines)
        if a["dup_line_frac"] and n_dup / len(lines) > a["dup_line_frac"]:
            return "dup_line_frac"
        if a["dup_line_char_frac"] and dup_chars / len(text) > a["dup_line_char_frac"]:
            return "dup_line_char_frac"
        return None


# Word n-grams of a batch of documents, as numpy arrays over the concatenated words of all of them.
# Position i is the n-gram of words i..i+n-1; it belongs to a document when all n words do.
_B = np.uint64(0x9E3779B97F4A7C15)  # odd: invertible modulo 2**64
_B_INV = np.uint64(pow(int(_B), -1, 2**64))
_DOC_MIX = np.uint64(0xC2B2AE3D27D4EB4F)


_SPREAD = np.uint64(0x9FB21C651E98DF25)  # odd: a multiplicative hash's factor


def _first_positions(words: list[str], start: int):
    """Each word's first position in `words`, counted from `start`."""
    return map({}.setdefault, words, range(start, start + len(words)))


def _maybe_repeated(keys: np.ndarray) -> np.ndarray:
    """Indices of the keys that may occur more than once: all that do, and the few others that share a
    bucket with another key (a bucket holding one key holds a key that occurs once). Counting buckets is one
    pass; only these candidates are then sorted."""
    bits = max(4, (8 * len(keys)).bit_length())
    buckets = ((keys.view(np.uint64) * _SPREAD) >> np.uint64(64 - bits)).astype(np.intp)
    return np.flatnonzero(np.bincount(buckets, minlength=1 << bits)[buckets] > 1)


def _exact_ranks(keys: np.ndarray) -> np.ndarray:
    """Ranks of int64 keys, all below 2 * len(keys): equal keys get the same rank, different keys different
    ranks (a key that occurs once keeps one of its own, len(keys) + its index)."""
    ranks = np.arange(len(keys), 2 * len(keys), dtype=np.int64)
    maybe = _maybe_repeated(keys)
    if maybe.size:
        ranks[maybe] = np.unique(keys[maybe], return_inverse=True)[1]
    return ranks


def _ngram_failures(batch: _WordBatch, texts: list[str], top_n_grams, dup_n_grams,
                    decided: np.ndarray) -> list[str | None]:
    """Gopher's word n-gram rules for each document not `decided` yet (`batch` holds the words of `texts`):
    the first failing rule's reason (`top_{n}_gram`, `duplicated_{n}_n_grams`) or None, as datatrove decides.

    - top n-grams: datatrove counts the space-joined n-grams (words hold no whitespace, so equal strings
      are equal word tuples) and takes the commonest, the first seen among equals. Here a word tuple is an
      exact integer rank: a word's is its first position in its document, an n-gram's is computed from its
      (n-1)-gram's rank and its last word's (hashing only picks the candidates that are sorted).
    - duplicated n-grams: datatrove keys n-grams by their words concatenated without a separator (so
      "ab"+"c" repeats "a"+"bc") and scans them in order. Every occurrence the scan counts repeats an
      earlier equal string, and the occurrences it counts do not overlap, so the characters of the words
      covered by occurrences after a string's first bound the scan. The bound is computed over a hash of
      the concatenated characters (a polynomial over the code points, modulo 2**64, mixed with the
      document): equal strings have equal hashes, so hash classes only merge string classes and the hash
      bound is at least the string bound. Where it is within the threshold
      (almost every document) the rule passes, exactly; elsewhere datatrove's scan runs on the strings.
    """
    k = compiled.kernels()
    if k is not None:
        return _compiled_ngram_failures(k, batch, texts, top_n_grams, dup_n_grams, decided)
    failures: list[str | None] = [None] * len(texts)
    words, counts, total, lengths, doc = batch.words, batch.counts, batch.total, batch.lengths, batch.doc
    if not total:
        return failures
    offsets = np.concatenate(([0], np.cumsum(lengths)))  # characters before word i in the concatenated words
    left = counts[doc] - (np.arange(total) - batch.starts[doc])  # words from position i to its text's end
    text_chars = np.fromiter(map(len, texts), np.float64, len(texts))
    decided = decided.copy()

    # exact ranks of word n-grams (for the top n-grams): a word's rank is its first position in its document,
    # an n-gram's comes from its (n-1)-gram's rank and its last word's (pairs below (2 * total)**2 < 2**63)
    needed = max((n for n, _ in top_n_grams), default=0)
    ranks = {}
    if needed:
        ranks[1] = r1 = batch.first_positions
        for n in range(2, needed + 1):
            ranks[n] = _exact_ranks(ranks[n - 1][:-1] * (2 * total) + r1[n - 1:])
    for n, frac in top_n_grams:
        if total < n:
            continue
        rank = ranks[n]
        positions = np.flatnonzero(left[:len(rank)] >= n)
        if not positions.size:
            continue
        rank = rank[positions]
        count = np.bincount(rank)[rank]
        has = np.flatnonzero(counts >= n)  # documents with n-grams, in order; their n-grams are contiguous
        seg = np.concatenate(([0], np.cumsum(counts[has] - n + 1)[:-1]))
        top = np.maximum.reduceat(count, seg)
        at_top = np.where(count == np.repeat(top, counts[has] - n + 1), np.arange(len(count)), len(count))
        first = positions[np.minimum.reduceat(at_top, seg)]  # the commonest n-gram's first occurrence
        chars = (offsets[first + n] - offsets[first] + n - 1) * top
        failing = has[(chars / text_chars[has] > frac) & ~decided[has]]
        for d in failing:
            failures[d] = f"top_{n}_gram"
        decided[failing] = True
    if not dup_n_grams or decided.all():
        return failures

    # sum of code point j times B**(j+1), modulo 2**64 (numpy's unsigned arithmetic wraps), up to each word
    # start, and B**-(word start): the hash of the characters from word i to word i+n, whatever their
    # position, is (prefix[i+n] - prefix[i]) * inverse[i]. Arrays over characters are freed as soon as done.
    codes = np.frombuffer("".join(batch.flat).encode("utf-32-le", "surrogatepass"), "<u4").astype(np.uint64)
    powers = np.full(len(codes), _B, np.uint64)
    codes *= np.cumprod(powers, out=powers)
    del powers
    np.cumsum(codes, out=codes)
    prefix = np.where(offsets > 0, codes[np.maximum(offsets - 1, 0)], np.uint64(0))
    del codes
    power_of_length = np.cumprod(np.full(int(lengths.max()) + 1, _B_INV, np.uint64))
    power_of_length[1:] = power_of_length[:-1].copy()
    power_of_length[0] = 1  # _B_INV ** length
    inverse = np.concatenate(([np.uint64(1)], np.cumprod(power_of_length[lengths])))
    mixed_doc = (doc.astype(np.uint64) + np.uint64(1)) * _DOC_MIX
    for n, frac in dup_n_grams:
        positions = np.flatnonzero((left >= n) & ~decided[doc])
        if not positions.size:
            continue
        key = ((prefix[positions + n] - prefix[positions]) * inverse[positions]) ^ mixed_doc[positions]
        maybe = _maybe_repeated(key)  # the others occur once: first occurrences
        _, first = np.unique(key[maybe], return_index=True)
        later = np.ones(len(maybe), bool)
        later[first] = False
        # the n-grams the scan counts do not overlap (it jumps n words past each), so their characters are
        # at most those of the words covered by some later occurrence
        later = positions[maybe[later]]
        depth = np.cumsum(np.bincount(later, minlength=total + n) - np.bincount(later + n, minlength=total + n))
        covered = np.flatnonzero(depth[:total] > 0)
        bound = np.bincount(doc[covered], weights=lengths[covered], minlength=len(words))
        for d in np.flatnonzero(bound / np.maximum(text_chars, 1) > frac):
            if decided[d]:
                continue
            if _repeated_ngrams_exceed(_joined_ngrams(words[d], n), n, len(texts[d]), frac):
                failures[d] = f"duplicated_{n}_n_grams"
                decided[d] = True
    return failures


def _compiled_ngram_failures(k, batch: _WordBatch, texts: list[str], top_n_grams, dup_n_grams,
                             decided: np.ndarray) -> list[str | None]:
    """`_ngram_failures` by the compiled kernel (`kernels.gopher_ngram_failures`: datatrove's computation per
    text, on the words' code points and ids), the same reasons."""
    reasons = [f"top_{n}_gram" for n, _ in top_n_grams] + [f"duplicated_{n}_n_grams" for n, _ in dup_n_grams]
    text_chars = np.fromiter(map(len, texts), np.float64, len(texts))

    def rules(pairs):
        return (np.array([n for n, _ in pairs], np.int64), np.array([frac for _, frac in pairs], np.float64))

    failed = k.gopher_ngram_failures(batch.codes, batch.offsets, batch.first_positions, batch.starts, batch.counts,
                                     text_chars, np.ascontiguousarray(decided, bool),
                                     *rules(top_n_grams), *rules(dup_n_grams))
    return [None if r < 0 else reasons[r] for r in failed.tolist()]


class FastGopherQuality(_BatchFilter):
    """Gopher's quality rules; the word statistics of a prepared batch are counted together: each distinct
    word's properties (stop word included) are looked up once (`_WordKinds`) and summed per text with numpy."""

    from datatrove.pipeline.filters import GopherQualityFilter as reference

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.stop_words = set(STOP_WORDS if self.args["stop_words"] is None else self.args["stop_words"])
        self._kinds = _WordKinds(self.stop_words)  # this filter's stop words are one of the kinds

    def decide(self, texts: list[str]) -> list[bool | tuple[bool, str]]:
        batch = self.batch(texts)
        if len(self._kinds) > _WordKinds.MAX:
            self._kinds.clear()
        if isinstance(batch, _CompiledWordBatch) and not self.args["min_stop_words"]:
            kinds = batch.kinds()  # no STOP bits: no rule counts stop words
        else:
            kinds = np.fromiter(map(self._kinds.__getitem__, batch.flat), np.int64, batch.total)
        kept = (kinds & _WordKinds.KEPT) > 0  # a word made only of punctuation strips to nothing
        n_kept = batch.per_doc(None, kept)
        kept_chars = batch.per_doc(batch.lengths[kept], kept)
        n_alpha = batch.per_doc(None, (kinds & _WordKinds.ALPHA) > 0)
        # distinct stop words: stop words at their first position in their text
        stop = (kinds & _WordKinds.STOP) > 0
        n_stop = batch.per_doc(None, stop & (batch.first_positions == np.arange(batch.total)))
        return [self._decision(*row) for row in zip(texts, batch.counts.tolist(), n_kept.tolist(),
                                                    kept_chars.tolist(), n_alpha.tolist(), n_stop.tolist())]

    def _decision(self, text: str, n_words: int, n_kept: int, kept_chars: int, n_alpha: int, n_stop: int):
        a = self.args
        if a["min_doc_words"] and n_kept < a["min_doc_words"]:
            return False, "gopher_short_doc"
        if a["max_doc_words"] and n_kept > a["max_doc_words"]:
            return False, "gopher_long_doc"
        mean_length = kept_chars / n_kept if n_kept else float("nan")
        if a["min_avg_word_length"] and mean_length < a["min_avg_word_length"]:
            return False, "gopher_below_avg_threshold"
        if a["max_avg_word_length"] and mean_length > a["max_avg_word_length"]:
            return False, "gopher_above_avg_threshold"
        if not n_words:
            return False, "gopher_short_doc"
        if a["max_symbol_word_ratio"] and text.count("#") / n_words > a["max_symbol_word_ratio"]:
            return False, "gopher_too_many_hashes"
        ellipses = text.count("...") + text.count("…")
        if a["max_symbol_word_ratio"] and ellipses / n_words > a["max_symbol_word_ratio"]:
            return False, "gopher_too_many_ellipsis"
        # the line rules count lines starting with a bullet or ending with an ellipsis: a text holding
        # neither mark has none such, and its lines need not be split (the ratios are 0: the rules pass)
        bullets = "-" in text or "•" in text
        if bullets or ellipses:
            lines = text.splitlines()
            if bullets and a["max_bullet_lines_ratio"] and lines and sum(
                    map(_STARTS_BULLET, map(str.lstrip, lines))) / len(lines) > a["max_bullet_lines_ratio"]:
                return False, "gopher_too_many_bullets"
            if ellipses and a["max_ellipsis_lines_ratio"] and lines and sum(
                    map(_ENDS_ELLIPSIS, map(str.rstrip, lines))) / len(lines) > a["max_ellipsis_lines_ratio"]:
                return False, "gopher_too_many_end_ellipsis"
        if a["max_non_alpha_words_ratio"] and n_alpha / n_words < a["max_non_alpha_words_ratio"]:
            return False, "gopher_below_alpha_threshold"
        if a["min_stop_words"] and n_stop < a["min_stop_words"]:
            return False, "gopher_enough_stop_words"
        return True


class _WordKinds(dict):
    """word -> bit flags, computed once per distinct word: KEPT (something is left after stripping
    punctuation, as Gopher counts words), ALPHA (holds a letter) and STOP (one of `stop_words`)."""

    KEPT, ALPHA, STOP = 1, 2, 4
    MAX = 100_000  # distinct words remembered (~15 MB); the table starts over when full

    def __init__(self, stop_words: set[str]):
        super().__init__()
        self.stop_words = stop_words

    def __missing__(self, word: str) -> int:
        value = ((self.KEPT if word.strip(_PUNCT_CHARS) else 0) | (self.ALPHA if _HAS_ALPHA.search(word) else 0)
                 | (self.STOP if word in self.stop_words else 0))
        self[word] = value
        return value


_STARTS_BULLET = operator.methodcaller("startswith", ("•", "-"))
_ENDS_ELLIPSIS = operator.methodcaller("endswith", ("...", "…"))


_PUNCT_CHARS = "".join(PUNCTUATION_SET)
_HAS_ALPHA = re.compile(r"[^\W\d_]")  # str.isalpha's letters, as a search


class FastC4Quality(_FastFilter):
    """C4's line rules. Like datatrove's, it rewrites `doc.text` to the kept lines when the document passes."""

    from datatrove.pipeline.filters import C4QualityFilter as reference

    _CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
    _POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
    _END = (".", "?", "!", '"', "'")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if not self.args["split_paragraph"]:
            raise TypeError("the fast C4 filter splits lines only (split_paragraph=True); "
                            "set `engine: datatrove` in the profile for sentence splitting")

    def filter(self, doc):
        a = self.args
        needed = a["min_num_sentences"]
        sentences, kept = 0, []
        for line in doc.text.splitlines():
            line = line.strip()
            words = line.split()
            if a["max_word_length"] != -1 and any(len(w) > a["max_word_length"] for w in words):
                continue
            if a["remove_citations"]:
                line = self._CITATION.sub("", line)
            if a["filter_no_terminal_punct"] and (not line.endswith(self._END) or line.endswith("...")):
                continue
            if len(words) < a["min_words_per_line"]:
                continue
            lower = line.lower()
            if a["filter_lorem_ipsum"] and "lorem ipsum" in lower:
                return False, "lorem_ipsum"
            if a["filter_javascript"] and "javascript" in lower:
                continue
            if a["filter_curly_bracket"] and "{" in line:
                return False, "curly_bracket"
            if a["filter_policy"] and any(p in lower for p in self._POLICY):
                continue
            if needed != -1 and sentences < needed:
                sentences += spacy_words().count_sentences(line, needed - sentences)
            kept.append(line)
        if sentences < needed:
            return False, "too_few_sentences"
        doc.text = "\n".join(kept).strip()
        return True


class FastFineWebQuality(_FastFilter):
    from datatrove.pipeline.filters import FineWebQualityFilter as reference

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.stop_chars = tuple(TERMINAL_PUNCTUATION if self.args["stop_chars"] is None else self.args["stop_chars"])

    def filter(self, doc):
        a, text = self.args, doc.text
        lines = [line for line in text.split("\n") if line.strip()]
        if not lines:
            return False, "empty"
        ratio = sum(1 for line in lines if line.endswith(self.stop_chars)) / len(lines)
        if ratio < a["line_punct_thr"] and not (ratio == 0 and a["line_punct_exclude_zero"]):
            return False, "line_punct_ratio"
        if sum(1 for line in lines if len(line) <= a["short_line_length"]) / len(lines) > a["short_line_thr"]:
            return False, "short_line_ratio"
        if _duplicates(lines)[1] / len(text.replace("\n", "")) > a["char_duplicates_ratio"]:
            return False, "char_dup_ratio"
        words = self.words(text)
        if not words or text.count("\n") / len(words) > a["new_line_ratio"]:
            return False, "list_ratio"
        return True


FAST_FILTERS = {"gopher_repetition": FastGopherRepetition, "gopher_quality": FastGopherQuality,
                "c4": FastC4Quality, "fineweb": FastFineWebQuality}
