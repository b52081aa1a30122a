"""Compiled kernels (numba) for the clean stage's per-word and per-n-gram work: the same values as the numpy
and Python paths, which run where numba is absent.

The kernels, each replacing work that costs a numpy or Python operation per word, n-gram or shingle:

- `first_positions`: each word's first position in its text (its exact id within the text), over the words of
  a batch of texts encoded as UTF-32 code points; a hash table per text whose hits are confirmed by comparing
  the code points, so ids are exact.
- `gopher_ngram_failures`: Gopher's word n-gram rules (top 2-4-gram character fractions, duplicated 5-10-gram
  character fractions) for a batch, computed as datatrove computes them for one text (`find_top_duplicate`,
  `find_all_duplicate`): the top n-gram is counted on word-id tuples (the commonest, the first seen among
  equals), the duplicated n-grams are datatrove's scan keyed by the n words' characters concatenated
  (compared character by character), and each fraction is the same float division compared with `>`.
- `sha1_ngrams`: datatrove's MinHash shingles with `hash_fc: sha1`, precision 64: for each word n-gram of a
  text, SHA-1 of its words joined by spaces in UTF-8, the digest's first 8 bytes read as a little-endian
  uint64 (`datatrove.utils.hashing.sha1_hash64`), bit for bit.
- `ascii_signature` / `shingle_signature`: a document's MinHash signature (its shingles XORed with its API-name
  key, each permuted and the minimum per permutation kept) as the shingles are made, without arrays of
  words, shingles or products; an ASCII text is split at whitespace and hashed in the same pass.
- `api_name_spans`: where the API-name pattern (`steps._API_NAME`, ASCII mode) matches an ASCII text, scanned as
  `findall` scans, without the regular expression engine's attempt at every position.
- `regex_words` / `word_kinds`: `RegexWords`' words of a batch of texts split from their code points straight
  into the batch's arrays, and Gopher quality's word kinds from a per-code-point class table
  (`fastfilters._CharClasses`), without a Python string per word.

Loading: numba is imported and the kernels loaded from numba's on-disk cache (compiled on the first run on a
machine: ~10 s once) only when the clean stage first needs them (`kernels()`); the clean driver loads them before
it forks its workers, which inherit them. The cache goes to `NUMBA_CACHE_DIR` where that is set, otherwise to
the user's cache directory (`runtime/numba_cache.py`), so a package installed read-only works.
`LLM_RECIPES_COMPILED=0` turns the kernels off (the numpy and Python paths run; benchmarks use it to compare the
two in one tree).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import os
import sys
from functools import lru_cache

from ..runtime.numba_cache import name_cache_dir


def enabled() -> bool:
    return os.environ.get("LLM_RECIPES_COMPILED", "1") != "0"


# A clean run over less gathered input than this (parquet bytes on disk; the text is ~3x more) takes the numpy
# paths: numba's import and the kernels' load cost ~0.8 CPU s and ~100 MB per run (measured on a 300-document
# run), and the kernels save ~0.16-0.2 CPU s per MB of text (quickstart corpus), so they pay from ~5 MB of text.
MIN_INPUT_BYTES = 3 * 2**19
_small_run = False


def use_for_run(input_bytes: int) -> bool:
    """Whether this process (and the workers it forks from now on) uses the kernels for a run over
    `input_bytes` of gathered parquet: not below MIN_INPUT_BYTES. Returns the answer."""
    global _small_run
    _small_run = input_bytes < MIN_INPUT_BYTES
    return not _small_run


def kernels():
    """The compiled kernels (the module `kernels`: `first_positions`, `gopher_ngram_failures`, `sha1_ngrams`, ...),
    or None where numba is not installed, LLM_RECIPES_COMPILED=0 or the run is small (`use_for_run`). Each is
    loaded from the cache (or compiled once) on the first call, so its first use costs nothing more."""
    return None if _small_run else _loaded()


@lru_cache(maxsize=1)
def _loaded():
    if not enabled():
        return None
    name_cache_dir()  # before numba is imported
    try:
        import numba  # noqa: F401
    except ImportError:
        return None
    with _scipy_linalg_hidden():
        from . import kernels as loaded  # compiles or loads each kernel as it is imported
    return loaded


class _Refuse(importlib.abc.MetaPathFinder):
    def __init__(self, package: str, why: str):
        self.package, self.why = package, why

    def find_spec(self, fullname, path, target=None):
        if fullname == self.package or fullname.startswith(self.package + "."):
            raise ModuleNotFoundError(f"{self.package} is not imported {self.why}", name=fullname)
        return None


@contextlib.contextmanager
def imports_refused(package: str, why: str):
    """Within this block, importing `package` (or a module under it) raises ModuleNotFoundError, so a library
    that imports it only to probe for it skips it; where it is loaded already, nothing changes."""
    if package in sys.modules:
        yield
        return
    finder = _Refuse(package, why)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def _scipy_linalg_hidden():
    """numba's CPU target, on its first compile or cache load, imports scipy.linalg wherever scipy is installed
    (~0.3 CPU s and ~40 MB), only to learn whether BLAS is there for np.dot and friends, which these kernels do
    not use. With scipy.linalg out of reach numba notes no BLAS in this process (a numba function that needs it
    fails to compile with numba's error; none here does)."""
    return imports_refused("scipy.linalg", "while loading the clean stage's kernels")
