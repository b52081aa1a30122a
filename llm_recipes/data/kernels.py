"""numba kernels of the clean stage (loaded through `compiled.kernels()`, which names numba's cache directory
before this module imports numba). Each kernel is compiled for one signature when this module is imported,
or loaded from numba's cache: a worker never compiles. See compiled.py for what each computes and why."""

from __future__ import annotations

import numba
import numpy as np
from numba import boolean as b1
from numba import float64 as f64
from numba import int64 as i64
from numba import uint8 as u8
from numba import uint32 as u32
from numba import uint64 as u64

_MUL = 0x9E3779B97F4A7C15  # a multiplicative hash's odd factor: hits are confirmed, so it only spreads keys

_inline = numba.njit(cache=True, nogil=True)


def _kernel(signature):
    return numba.njit(signature, cache=True, nogil=True)


@_inline
def _slice_hash(codes, start, end):
    h = np.uint64(end - start)
    for j in range(start, end):
        h = (h ^ np.uint64(codes[j])) * np.uint64(_MUL)
    return h ^ (h >> np.uint64(29))


@_inline
def _same_codes(codes, a, b, length):
    for j in range(length):
        if codes[a + j] != codes[b + j]:
            return False
    return True


@_inline
def _table_size(count):
    size = 16
    while size < 2 * count:
        size *= 2
    return size


@_kernel(i64[::1](u32[::1], i64[::1], i64[::1], i64[::1]))
def first_positions(codes, offsets, starts, counts):
    """Each word's first position in its text: words are `codes[offsets[i]:offsets[i + 1]]`, text d holds
    words starts[d] .. starts[d] + counts[d] - 1; positions count from the batch's first word."""
    total = offsets.shape[0] - 1
    out = np.empty(total, np.int64)
    biggest = 0
    for d in range(counts.shape[0]):
        biggest = max(biggest, counts[d])
    slots = np.empty(_table_size(biggest), np.int64)
    for d in range(counts.shape[0]):
        size = _table_size(counts[d])
        mask = size - 1
        slots[:size] = -1
        for i in range(starts[d], starts[d] + counts[d]):
            a, b = offsets[i], offsets[i + 1]
            s = np.int64(_slice_hash(codes, a, b) & np.uint64(mask))
            while True:
                k = slots[s]
                if k < 0:
                    slots[s] = i
                    out[i] = i
                    break
                if offsets[k + 1] - offsets[k] == b - a and _same_codes(codes, offsets[k], a, b - a):
                    out[i] = k
                    break
                s = (s + 1) & mask
    return out


@_kernel(i64[::1](u32[::1], i64[::1], i64[::1], i64[::1], i64[::1], f64[::1], b1[::1],
                        i64[::1], f64[::1], i64[::1], f64[::1]))
def gopher_ngram_failures(codes, offsets, ids, starts, counts, text_chars, decided,
                           top_ns, top_fracs, dup_ns, dup_fracs):
    """Per text: -1 when it passes every word n-gram rule, k when the k-th top n-gram rule fails first,
    len(top_ns) + k when the k-th duplicated n-gram rule does (texts already `decided` get -1). `ids` are
    `first_positions` (equal words of a text have equal ids); `text_chars` the texts' lengths in code points."""
    n_docs = counts.shape[0]
    out = np.full(n_docs, -1, np.int64)
    biggest = 0
    for d in range(n_docs):
        biggest = max(biggest, counts[d])
    slots = np.empty(_table_size(biggest), np.int64)
    tally = np.zeros(biggest + 1, np.int64)
    # a polynomial hash of every prefix of a text's characters, and the powers of its base: the hash of the
    # characters of any n words is then two products (prefix[b] - prefix[a] * power[b - a])
    longest = 0
    for d in range(n_docs):
        longest = max(longest, offsets[starts[d] + counts[d]] - offsets[starts[d]])
    prefix = np.empty(longest + 1, np.uint64)
    power = np.empty(longest + 1, np.uint64)
    power[0] = 1
    for j in range(longest):
        power[j + 1] = power[j] * np.uint64(_MUL)
    for d in range(n_docs):
        if decided[d]:
            continue
        s0, nw = starts[d], counts[d]
        c0 = offsets[s0]
        hashed = False
        size = _table_size(nw)
        mask = size - 1
        failed = False
        # top n-grams: datatrove counts the space-joined n-grams and takes the commonest, the first seen among
        # equal counts; words hold no whitespace, so equal joined strings are equal word tuples (equal ids)
        for r in range(top_ns.shape[0]):
            n = top_ns[r]
            if nw < n:
                continue
            slots[:size] = -1
            best, best_first = 0, 0
            for p in range(s0, s0 + nw - n + 1):
                h = np.uint64(n)
                for j in range(n):
                    h = (h ^ np.uint64(ids[p + j])) * np.uint64(_MUL)
                s = np.int64((h ^ (h >> np.uint64(29))) & np.uint64(mask))
                while True:
                    k = slots[s]
                    if k < 0:
                        slots[s] = p
                        k = p
                        tally[p - s0] = 0
                        break
                    same = True
                    for j in range(n):
                        if ids[k + j] != ids[p + j]:
                            same = False
                            break
                    if same:
                        break
                    s = (s + 1) & mask
                c = tally[k - s0] + 1
                tally[k - s0] = c
                if c > best or (c == best and k < best_first):
                    best, best_first = c, k
            length = offsets[best_first + n] - offsets[best_first] + n - 1  # the spaces between the words
            if (length * best) / text_chars[d] > top_fracs[r]:
                out[d] = r
                failed = True
                break
        if failed:
            continue
        # duplicated n-grams: datatrove's scan over the n-grams keyed by their words' characters concatenated
        # ("ab" + "c" repeats "a" + "bc"): a key seen before counts its characters and the scan jumps n words,
        # any other is remembered and the scan moves one word
        for r in range(dup_ns.shape[0]):
            n = dup_ns[r]
            if not hashed:
                prefix[0] = 0
                for j in range(offsets[s0 + nw] - c0):
                    prefix[j + 1] = prefix[j] * np.uint64(_MUL) + np.uint64(codes[c0 + j]) + np.uint64(1)
                hashed = True
            slots[:size] = -1
            repeated = 0
            p = s0
            while p < s0 + nw - n + 1:
                a, b = offsets[p], offsets[p + n]
                h = prefix[b - c0] - prefix[a - c0] * power[b - a]
                s = np.int64((h ^ (h >> np.uint64(29))) * np.uint64(_MUL) >> np.uint64(32) & np.uint64(mask))
                seen = False
                while True:
                    k = slots[s]
                    if k < 0:
                        slots[s] = p
                        break
                    if offsets[k + n] - offsets[k] == b - a and _same_codes(codes, offsets[k], a, b - a):
                        seen = True
                        break
                    s = (s + 1) & mask
                if seen:
                    repeated += b - a
                    p += n
                else:
                    p += 1
            if repeated / text_chars[d] > dup_fracs[r]:
                out[d] = top_ns.shape[0] + r
                break
    return out


@_inline
def _rotl(x, s):
    return ((x << s) | (x >> (32 - s))) & 0xFFFFFFFF


@_inline
def _bswap32(x):
    return ((x & 0xFF) << 24) | ((x & 0xFF00) << 8) | ((x >> 8) & 0xFF00) | (x >> 24)


@_inline
def _sha1_first8(buf, start, length, w):
    """SHA-1 (FIPS 180-4) of buf[start:start + length]; its digest's first 8 bytes as a little-endian integer.
    `w` is scratch for the message schedule (80 int64). Words are held in int64 and masked to 32 bits."""
    h0, h1, h2, h3, h4 = 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0
    blocks = (length + 8) // 64 + 1  # the message, a 0x80 byte, zeros, and its length in bits (8 bytes)
    for blk in range(blocks):
        # the block's 16 big-endian words: message bytes, then the padding byte, then zeros
        for t in range(16):
            w[t] = 0
        base = blk * 64
        for pos in range(max(0, min(64, length - base))):
            w[pos >> 2] |= np.int64(buf[start + base + pos]) << (24 - 8 * (pos & 3))
        if 0 <= length - base < 64:
            pos = length - base
            w[pos >> 2] |= 0x80 << (24 - 8 * (pos & 3))
        if blk == blocks - 1:
            bits = length * 8
            w[14] = (bits >> 32) & 0xFFFFFFFF
            w[15] = bits & 0xFFFFFFFF
        for t in range(16, 80):
            x = w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16]
            w[t] = ((x << 1) | (x >> 31)) & 0xFFFFFFFF
        a, b, c, d, e = h0, h1, h2, h3, h4
        for t in range(20):
            temp = (_rotl(a, 5) + ((b & c) | ((b ^ 0xFFFFFFFF) & d)) + e + 0x5A827999 + w[t]) & 0xFFFFFFFF
            e, d, c, b, a = d, c, _rotl(b, 30), a, temp
        for t in range(20, 40):
            temp = (_rotl(a, 5) + (b ^ c ^ d) + e + 0x6ED9EBA1 + w[t]) & 0xFFFFFFFF
            e, d, c, b, a = d, c, _rotl(b, 30), a, temp
        for t in range(40, 60):
            temp = (_rotl(a, 5) + ((b & c) | (b & d) | (c & d)) + e + 0x8F1BBCDC + w[t]) & 0xFFFFFFFF
            e, d, c, b, a = d, c, _rotl(b, 30), a, temp
        for t in range(60, 80):
            temp = (_rotl(a, 5) + (b ^ c ^ d) + e + 0xCA62C1D6 + w[t]) & 0xFFFFFFFF
            e, d, c, b, a = d, c, _rotl(b, 30), a, temp
        h0 = (h0 + a) & 0xFFFFFFFF
        h1 = (h1 + b) & 0xFFFFFFFF
        h2 = (h2 + c) & 0xFFFFFFFF
        h3 = (h3 + d) & 0xFFFFFFFF
        h4 = (h4 + e) & 0xFFFFFFFF
    return np.uint64(_bswap32(h0)) | (np.uint64(_bswap32(h1)) << np.uint64(32))


@_kernel(numba.types.Tuple((u64[::1], i64))(u8[::1], i64))
def sha1_ngrams(buf, n):
    """The shingles of a text's words joined by single spaces (`buf`, UTF-8): for each word n-gram, SHA-1 of
    its bytes (from its first word's first byte to its last word's last), first 8 bytes little-endian.
    Words are the runs between single spaces (an empty word between two spaces included), so the caller
    checks that the number of words found (the second value) is its own: a word holding a space would
    split in two."""
    words = 1
    for j in range(buf.shape[0]):
        if buf[j] == 32:
            words += 1
    bounds = np.empty(words + 1, np.int64)  # word i spans bounds[i] .. bounds[i + 1] - 1 (its space excluded)
    bounds[0] = 0
    i = 1
    for j in range(buf.shape[0]):
        if buf[j] == 32:
            bounds[i] = j + 1
            i += 1
    bounds[words] = buf.shape[0] + 1
    count = max(words - n + 1, 0)
    out = np.empty(count, np.uint64)
    w = np.empty(80, np.int64)
    for i in range(count):
        out[i] = _sha1_first8(buf, bounds[i], bounds[i + n] - 1 - bounds[i], w)
    return out, words


_PRIME = np.uint64((1 << 61) - 1)


@_inline
def _fold_minima(shingle, a, b, out):
    """out[j] = min(out[j], (shingle * a[j] + b[j]) mod 2**64 mod (2**61 - 1)) for every permutation j: the
    remainder folded without a division, as `fastminhash.permuted_minimum` computes it."""
    for j in range(a.shape[0]):  # branch-free, so that the loop runs in vector instructions
        y = shingle * a[j] + b[j]
        y = (y & _PRIME) + (y >> np.uint64(61))
        y = min(y, y - _PRIME)  # y - p wraps around (is larger) unless y >= p
        out[j] = min(out[j], y)


@_kernel(b1(numba.types.Array(u8, 1, "C", readonly=True), i64, u64, u64[::1], u64[::1], u64[::1]))
def ascii_signature(text, n, key, a, b, out):
    """The MinHash signature of an ASCII text already simplified (lower-cased, numbers and punctuation
    replaced): its words are the runs between ASCII whitespace (what `str.split` splits at: \\t-\\r, \\x1c-\\x1f
    and the space); each word n-gram joined by single spaces is hashed as `sha1_ngrams` does, XORed with `key`
    and permuted (`a`, `b`), and `out` gets the minimum per permutation. False (out untouched) when the text
    has fewer than n words: no shingle, no signature. One pass, no array of words, shingles or products."""
    size = text.shape[0]
    joined = np.empty(size + 1, np.uint8)
    bounds = np.empty(size // 2 + 2, np.int64)  # word i spans bounds[i] .. bounds[i + 1] - 2 of `joined`
    words = 0
    length = 0
    j = 0
    while j < size:
        c = text[j]
        if c == 32 or 9 <= c <= 13 or 28 <= c <= 31:
            j += 1
            continue
        bounds[words] = length
        words += 1
        while j < size:
            c = text[j]
            if c == 32 or 9 <= c <= 13 or 28 <= c <= 31:
                break
            joined[length] = c
            length += 1
            j += 1
        joined[length] = 32
        length += 1
    if words < n:
        return False
    bounds[words] = length
    for k in range(out.shape[0]):
        out[k] = np.uint64(0xFFFFFFFFFFFFFFFF)
    w = np.empty(80, np.int64)
    for i in range(words - n + 1):
        shingle = _sha1_first8(joined, bounds[i], bounds[i + n] - 1 - bounds[i], w) ^ key
        _fold_minima(shingle, a, b, out)
    return True


@_kernel(numba.void(u64[::1], u64, u64[::1], u64[::1], u64[::1]))
def shingle_signature(shingles, key, a, b, out):
    """The minimum per permutation of `shingles` XORed with `key` (at least one shingle), into `out`."""
    for k in range(out.shape[0]):
        out[k] = np.uint64(0xFFFFFFFFFFFFFFFF)
    for i in range(shingles.shape[0]):
        _fold_minima(shingles[i] ^ key, a, b, out)


@_inline
def _is_word(c):  # \w of an ASCII-mode pattern
    return (97 <= c <= 122) or (65 <= c <= 90) or (48 <= c <= 57) or c == 95


@_inline
def _is_name_start(c):  # [A-Za-z_]
    return (97 <= c <= 122) or (65 <= c <= 90) or c == 95


@_inline
def _word_end(text, j):
    while j < text.shape[0] and _is_word(text[j]):
        j += 1
    return j


@_kernel(i64[::1](numba.types.Array(u8, 1, "C", readonly=True)))
def api_name_spans(text):
    """Where `steps._API_NAME` in ASCII mode matches an ASCII text, as `findall` scans it: [start, end, start,
    end, ...]. The pattern, alternative by alternative: `[^`\\n]++` between backticks; then at a word start
    (\\b followed by a word character): a dotted name (an identifier, then one or more `.identifier`, each as
    long as its word run), an identifier before `(`, a word with an underscore after a letter-or-digit run
    (`[^\\W_]*+_\\w+`), a CamelCase word (`[A-Z][a-z0-9]++[A-Z]\\w*`); the last three end where the word run ends.
    No match starts inside a word run (\\b), so the scan jumps over a run that matches nothing."""
    size = text.shape[0]
    spans = np.empty(2 * size + 2, np.int64)
    found = 0
    i = 0
    while i < size:
        c = text[i]
        if c == 96:  # `[^`\n]++`: at least one character up to the next backtick, no newline between
            j = i + 1
            while j < size and text[j] != 96 and text[j] != 10:
                j += 1
            if j > i + 1 and j < size and text[j] == 96:
                spans[found] = i
                spans[found + 1] = j + 1
                found += 2
                i = j + 1
            else:
                i += 1
            continue
        if not _is_word(c) or (i > 0 and _is_word(text[i - 1])):
            i += 1
            continue
        e = _word_end(text, i)
        end = -1
        if _is_name_start(c):
            k = e  # (?:\.[A-Za-z_]\w*+)+, as many as there are
            while k + 1 < size and text[k] == 46 and _is_name_start(text[k + 1]):
                k = _word_end(text, k + 1)
            if k > e:
                end = k
            elif e < size and text[e] == 40:  # (?=\()
                end = e
        if end < 0:
            j = i  # [^\W_]*+ then _ then at least one word character
            while j < e and text[j] != 95:
                j += 1
            if j + 1 < e:
                end = e
        if end < 0 and 65 <= c <= 90:  # [A-Z][a-z0-9]++[A-Z]\w*
            j = i + 1
            while j < e and ((97 <= text[j] <= 122) or (48 <= text[j] <= 57)):
                j += 1
            if j > i + 1 and j < e and 65 <= text[j] <= 90:
                end = e
        if end < 0:
            i = e
            continue
        spans[found] = i
        spans[found + 1] = end
        found += 2
        i = end
    return spans[:found]


# bits of a code point's class (fastfilters.CharClasses): \w, \s, not punctuation (what Gopher's strip leaves),
# a letter ([^\W\d_])
WORD, SPACE, KEPT, ALPHA = 1, 2, 4, 8


@_kernel(numba.types.Tuple((u32[::1], i64[::1], i64[::1]))(numba.types.Array(u32, 1, "C", readonly=True), i64[::1],
                                                           u8[::1]))
def regex_words(codes, ends, classes):
    """`RegexWords`' words (`\\w+(?:['’]\\w+)*|[^\\w\\s]+`, scanned as findall scans) of texts given as code
    points, text d ending at ends[d]: a run of word characters, extended over each apostrophe followed by
    another run, or a run of characters neither word nor space. Returns the words' code points concatenated,
    each word's length and each text's number of words. `classes` holds every code point's class bits."""
    words = np.empty(codes.shape[0], np.uint32)
    lengths = np.empty(codes.shape[0], np.int64)
    counts = np.zeros(ends.shape[0], np.int64)
    found = 0
    filled = 0
    i = 0
    for d in range(ends.shape[0]):
        end = ends[d]
        while i < end:
            kind = classes[codes[i]] & (WORD | SPACE)
            if kind == SPACE:
                i += 1
                continue
            start = i
            i += 1
            if kind == WORD:
                while i < end and classes[codes[i]] & WORD:
                    i += 1
                while i + 1 < end and (codes[i] == 39 or codes[i] == 0x2019) and classes[codes[i + 1]] & WORD:
                    i += 2
                    while i < end and classes[codes[i]] & WORD:
                        i += 1
            else:
                while i < end and (classes[codes[i]] & (WORD | SPACE)) == 0:
                    i += 1
            for j in range(start, i):
                words[filled] = codes[j]
                filled += 1
            lengths[found] = i - start
            found += 1
            counts[d] += 1
    return words[:filled], lengths[:found], counts


@_kernel(i64[::1](u32[::1], i64[::1], u8[::1]))
def word_kinds(codes, offsets, classes):
    """Per word (codes[offsets[i]:offsets[i + 1]]): 1 when a character is not punctuation (Gopher's strip
    leaves something), plus 2 when one is a letter (`_WordKinds.KEPT`, `.ALPHA`)."""
    out = np.empty(offsets.shape[0] - 1, np.int64)
    for i in range(out.shape[0]):
        bits = 0
        for j in range(offsets[i], offsets[i + 1]):
            bits |= classes[codes[j]]
        out[i] = (1 if bits & KEPT else 0) | (2 if bits & ALPHA else 0)
    return out
