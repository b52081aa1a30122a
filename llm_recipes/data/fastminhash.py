"""datatrove's MinHash shingles, computed with less Python per shingle: the same values, bit for bit.

datatrove 0.10's `MinhashDedupSignature.get_shingles` simplifies the text (`simplify_text`), splits it into
words, joins each word n-gram with spaces and hashes it with a Python call per n-gram
(`sha1_hash64`: `struct.unpack` of the digest's first 8 bytes), then builds the array with `np.fromiter`.
On python-docs that was most of the signature phase. Here:

- `simplify_text` runs as datatrove's does, except its last step (dropping combining marks after NFD),
  which datatrove does with a Python generator over every character of every text: for an ASCII text
  it changes nothing (NFD of ASCII is ASCII; ASCII has no combining mark) and is skipped; otherwise
  the marks are dropped by `str.translate` with a table that asks `unicodedata.category` once per
  distinct character;
- the n-gram digests are joined into one buffer whose first 8 bytes per digest numpy reads as little-endian
  uint64 (what `struct.unpack("<Q", digest[:8])` gives, one value at a time).

- an ASCII text's words (`simplified_words`) skip the whitespace pass too, which changes no word once the
  text is split at whitespace, and its punctuation becomes spaces through a bytes table.

The signature (permutations, minimum per hash, bands) is datatrove's computation, fed these shingles; the
signature step takes it for blocks of consecutive documents at once (`permuted_minima`), the same minima; with
the compiled kernels, for each document as its shingles are hashed (`signature_into`: one pass, ~0.045 CPU s per
MB less than words, shingles and blocks on the quickstart corpus).
`SortedMinhashBuckets` is datatrove's band index with one numpy sort per band instead of a heap merge.
tests/test_fastminhash.py checks equality with datatrove's `get_shingles`, signatures and `.dups` files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import unicodedata
from pathlib import Path

import numpy as np
from datatrove.pipeline.dedup import MinhashDedupBuckets
from datatrove.utils.text import (
    MONTHS_PATTERN,
    NUMBERS_PATTERN,
    PUNCTUATION_TRANS,
    WEEKDAYS_PATTERN,
    simplify_text,
)

from . import compiled

# datatrove's modulus of the MinHash permutations (its private `minhash._mersenne_prime`;
# tests/test_fastminhash.py checks the two are equal)
MERSENNE_PRIME = np.uint64((1 << 61) - 1)
_SHIFT = np.uint64(61)


def permuted_minimum(shingles: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`np.min((shingles * a + b) % MERSENNE_PRIME, axis=0)` as datatrove computes it (the products wrap
    modulo 2**64 first), without numpy's 64-bit division: modulo 2**61 - 1, y = (y >> 61) * 2**61 + (y & p)
    is congruent to (y >> 61) + (y & p), which is below 2 * p, so one conditional subtraction finishes it.
    Below a few hundred shingles numpy's call overheads outweigh the division, and the plain formula runs."""
    if len(shingles) < 500:
        return np.min((shingles * a + b) % MERSENNE_PRIME, axis=0)
    return _folded_minima(shingles, a, b, [0])[0]


def _folded_minima(shingles: np.ndarray, a: np.ndarray, b: np.ndarray, starts) -> np.ndarray:
    """The permutations folded modulo the Mersenne prime without a division (see `permuted_minimum`), for the
    consecutive row groups of `shingles` that begin at `starts`: one row of minima per group."""
    y = shingles * a
    y += b
    high = y >> _SHIFT
    y &= MERSENNE_PRIME
    y += high
    np.subtract(y, MERSENNE_PRIME, out=y, where=y >= MERSENNE_PRIME)
    return np.minimum.reduceat(y, starts, axis=0)


def permuted_minima(shingle_arrays: list[np.ndarray], a: np.ndarray, b: np.ndarray, rows: int = 1024) -> np.ndarray:
    """`permuted_minimum` of each array of `shingle_arrays` (none empty), one row each, the same values.

    Most documents have a few hundred shingles or fewer, where one numpy computation per document is mostly
    call overhead and 64-bit division: here the shingles of consecutive documents are stacked into blocks of
    about `rows` rows (a block's (rows x hashes) products stay in cache) and each block's minima are taken per
    document with `np.minimum.reduceat`; a document with more shingles is taken `rows` at a time.
    Signature step, quickstart corpus: 0.049 -> 0.031 CPU s/MB for the permutations."""
    out = np.empty((len(shingle_arrays), a.shape[-1]), dtype=np.uint64)
    group: list[np.ndarray] = []
    first = size = 0

    def flush():
        nonlocal group, size
        if group:
            lengths = np.fromiter(map(len, group), np.int64, len(group))
            starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
            out[first:first + len(group)] = _folded_minima(np.concatenate(group), a, b, starts)
        group, size = [], 0

    for i, shingles in enumerate(shingle_arrays):
        if not len(shingles):
            raise ValueError("permuted_minima: a document without shingles has no signature")
        if size + len(shingles) > rows:
            flush()
        if not group:
            first = i
        if len(shingles) > rows:
            out[i] = np.min([_folded_minima(shingles[j:j + rows], a, b, [0])[0]
                             for j in range(0, len(shingles), rows)], axis=0)
            first = i + 1
            continue
        group.append(shingles)
        size += len(shingles)
    flush()
    return out


class _DropCombiningMarks(dict):
    """A `str.translate` table: characters of category Mn map to None (removed), others to themselves;
    each character's category is looked up once and remembered."""

    def __missing__(self, code: int):
        value = None if unicodedata.category(chr(code)) == "Mn" else code
        self[code] = value
        return value


_DROP_MN = _DropCombiningMarks()


def simplified(text: str, config) -> str:
    """`datatrove.utils.text.simplify_text(text, config)`, the same string."""
    if not config.norm_unicode_diacritics:
        return simplify_text(text, config)
    text = simplify_text(text, _without_diacritics(config))
    if text.isascii():
        return text
    return unicodedata.normalize("NFD", text).translate(_DROP_MN).strip()


# datatrove's punctuation-to-space table for ASCII text, as a bytes table (bytes.translate is several times
# faster than str.translate with a dict)
_ASCII_PUNCTUATION = bytes.maketrans(bytes(c for c in PUNCTUATION_TRANS if c < 128),
                                     bytes(PUNCTUATION_TRANS[c] for c in PUNCTUATION_TRANS if c < 128))


def simplified_words(text: str, config) -> list[str]:
    """`simplify_text(text, config).split()`, the same words. An ASCII text takes datatrove's steps in its
    order except two that change no word of it: whitespace normalization (runs of whitespace become one
    space; `split` splits at the same characters: both use str.isspace) and diacritics removal (NFD of
    ASCII is ASCII, with no combining marks); its punctuation becomes spaces with a bytes table."""
    if not text.isascii():
        return simplified(text, config).split()
    return _ascii_simplified(text, config).decode("ascii").split()


def _ascii_simplified(text: str, config) -> bytes:
    """An ASCII text through `simplified_words`' steps (all but the split), as ASCII bytes."""
    if config.lowercase:
        text = text.lower()
    if config.norm_numbers:
        text = NUMBERS_PATTERN.sub("0", text)
    if config.norm_weekdays:
        text = WEEKDAYS_PATTERN.sub("WEEKDAY", text)
    if config.norm_monthnames:
        text = MONTHS_PATTERN.sub("MONTH", text)
    if config.remove_punctuation:
        return text.encode("ascii").translate(_ASCII_PUNCTUATION)
    return text.encode("ascii")


def signature_into(text: str, config, n: int, key: int, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> bool:
    """With the compiled kernels: the permuted minima of `sha1_shingles(simplified_words(text, config), n)`
    XORed with `key` (`a`, `b`: the permutations, flat), written into `out` (uint64, one per permutation);
    False where the text has fewer than n words (no shingle: no signature). An ASCII text is split, hashed and
    permuted in one compiled pass (`kernels.ascii_signature`); another takes the words and shingles here."""
    k = compiled.kernels()
    if text.isascii():
        return k.ascii_signature(np.frombuffer(_ascii_simplified(text, config), np.uint8), n, np.uint64(key), a, b,
                                 out)
    shingles = sha1_shingles(simplified_words(text, config), n)
    if not len(shingles):
        return False
    k.shingle_signature(shingles.reshape(-1), np.uint64(key), a, b, out)
    return True


_NO_DIACRITICS: dict = {}


def _without_diacritics(config):
    """`config` with `norm_unicode_diacritics=False`, made once per distinct setting. The key is the
    settings themselves (TextNormConfig is a mutable dataclass, not hashable): equal settings share an
    entry, and a config changed after its first use gets a new one."""
    key = (type(config), tuple(vars(config).items()))
    replaced = _NO_DIACRITICS.get(key)
    if replaced is None:
        replaced = _NO_DIACRITICS[key] = dataclasses.replace(config, norm_unicode_diacritics=False)
    return replaced


def sha1_shingles(words: list[str], n: int) -> np.ndarray:
    """datatrove's shingles with `hash_fc: sha1`, precision 64: uint64 array of shape (n-grams, 1)."""
    if len(words) < n:
        return np.zeros((0, 1), dtype=np.uint64)
    k = compiled.kernels()
    if k is not None and n >= 1:
        # compiled: every n-gram's SHA-1 over the words joined once (an n-gram is a slice of the joined bytes);
        # the kernel splits at single spaces, so a count other than len(words) means a word held a space
        shingles, found = k.sha1_ngrams(np.frombuffer(bytearray(" ".join(words).encode("utf-8")), np.uint8), n)
        if found == len(words):
            return shingles.reshape((-1, 1))
    grams = map(" ".join, zip(*(words[i:] for i in range(n)))) if n > 1 else iter(words)
    sha1 = hashlib.sha1
    # whole digests joined, their first 8 bytes picked by numpy: one slice less per n-gram (~15% of this)
    digests = b"".join([sha1(gram.encode("utf-8")).digest() for gram in grams])
    first8 = np.frombuffer(digests, dtype=np.uint8).reshape((-1, 20))[:, :8]
    return np.ascontiguousarray(first8).view("<u8").astype(np.uint64)


def fast_path_applies(step) -> bool:
    """Whether a MinhashDedupSignature's configuration is one `sha1_shingles` reproduces."""
    hash_config = step.config.hash_config
    return hash_config.hash_fc == "sha1" and hash_config.precision == 64


class SortedMinhashBuckets(MinhashDedupBuckets):
    """datatrove's MinhashDedupBuckets (one task per band, no index), writing the same `.dups` file byte for
    byte, with a band's signature files merged by one numpy sort instead of a heap of Python objects (a
    dataclass comparison per step; most of that phase's time).

    datatrove merges the band's sorted files in the order of (signature, file index, document) and writes
    each record whose signature equals the previous record's as the pair (previous file stem, previous
    document, file stem, document). Here the records of all files are sorted by the same keys with
    `np.lexsort` and the equal neighbours written at once. A band's records are held in memory, so a band
    larger than `max_band_bytes` on disk (or an index, or several tasks per band) goes to datatrove's own
    streaming merge.
    """

    max_band_bytes = 256 * 2**20

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        sig_files = self.input_folder.list_files(subdirectory=f"bucket_{rank:03d}")
        if (self.index_folder is not None or world_size != self.config.num_buckets
                or self.config.hash_config.precision != 64
                or sum(self.input_folder.size(name) for name in sig_files) > self.max_band_bytes):
            return super().run(data, rank, world_size)
        with self.track_time():
            per_band = self.config.hashes_per_bucket
            record = np.dtype([(f"h{i}", "<u8") for i in range(per_band)] + [("doc", "<u4")])
            hashes, docs, files, stems = [], [], [], []
            for index, name in enumerate(sig_files):
                with self.input_folder.open(name, mode="rb") as f:
                    records = np.frombuffer(f.read(), dtype=record)
                hashes.append(np.stack([records[f"h{i}"] for i in range(per_band)], axis=1) if len(records)
                              else np.zeros((0, per_band), np.uint64))
                docs.append(records["doc"])
                files.append(np.full(len(records), index, np.int64))
                stems.append(np.full(len(records), int(Path(name).name.removesuffix(".minhash.sig")), np.uint32))
            with self.output_folder.open(f"{rank:05d}_00.dups", mode="wb") as out:
                if not hashes or not sum(map(len, docs)):
                    return
                hashes, docs = np.concatenate(hashes), np.concatenate(docs)
                files, stems = np.concatenate(files), np.concatenate(stems)
                order = np.lexsort((docs, files, *(hashes[:, i] for i in reversed(range(per_band)))))
                hashes, docs, stems = hashes[order], docs[order], stems[order]
                same = np.flatnonzero((hashes[1:] == hashes[:-1]).all(axis=1)) + 1
                if same.size:
                    pairs = np.stack([stems[same - 1], docs[same - 1], stems[same], docs[same]], axis=1)
                    out.write(pairs.astype("<u4").tobytes())
                    self.stat_update("total_matches", value=int(same.size))
