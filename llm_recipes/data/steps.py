"""The clean stage's datatrove pipeline steps, each keeping a tally of what it removed and changed.

Quality filtering applies datatrove's Gopher, C4 and FineWeb rules, by default through `fastfilters.py`
(the same rules and decisions at several times the speed; `engine: datatrove` in a profile runs
datatrove's own classes); near-dedup is datatrove's MinHash pipeline. What datatrove does not have
(per-source filter profiles, markup removal, our PII placeholders, whole-corpus exact dedup, n-gram
decontamination, a deterministic split with a report) is written here.

Every step counts documents and bytes in and out, removal reasons, and keeps a few removed examples;
the writer at the end of a task saves those tallies to `ledger/<stage>/<rank>.json`, from which the
report is built, so the report's counts are exactly what flowed through the pipeline.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import json
import re
from collections import Counter, defaultdict, deque
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup import MinhashDedupFilter, MinhashDedupSignature
from datatrove.utils.typeshelper import StatHints
from datatrove.utils.word_tokenizers import WordTokenizer

from ..fileio import atomic_open, atomic_write_json
from . import compiled, fastminhash, textops
from .documents import COLUMNS, iter_parquet_values, write_parquet_atomic
from .fastfilters import FAST_FILTERS, ChainWords

EXAMPLES_PER_REASON = 3
EXAMPLE_CHARS = 400

# ------------------------------------------------------------------------------------------- profiles
# Thresholds of the web profile are FineWeb's (Gopher quality + repetition, C4 line rules without the
# terminal-punctuation rule, FineWeb's own rules). The docs profile is for docstrings, READMEs and
# reference pages: short documents, code lines without final punctuation, symbol-heavy signatures.
# Under web thresholds ~96% of Python docstrings are dropped; see docs/data.md for the measurement.
PROFILES: dict[str, dict[str, Any]] = {
    "web": {
        "markup": "web",
        "gopher_repetition": {},
        "gopher_quality": {},
        "c4": {"filter_no_terminal_punct": False},
        "fineweb": {},
    },
    "docs": {
        "markup": "rest",
        "word_tokenizer": "regex",
        "gopher_repetition": {"dup_line_frac": 0.5, "dup_para_frac": 0.5, "dup_line_char_frac": 0.4,
                              "dup_para_char_frac": 0.4, "top_n_grams": [[2, 0.4], [3, 0.35], [4, 0.3]],
                              "dup_n_grams": [[5, 0.3], [6, 0.28], [7, 0.26], [8, 0.24], [9, 0.22], [10, 0.2]]},
        "gopher_quality": {"min_doc_words": 8, "max_doc_words": 100000, "min_avg_word_length": 2,
                           "max_avg_word_length": 14, "max_symbol_word_ratio": 0.5, "max_bullet_lines_ratio": 0.95,
                           "max_ellipsis_lines_ratio": 0.5, "max_non_alpha_words_ratio": 0.2, "min_stop_words": None},
        "c4": False,
        "fineweb": False,
        # templated docstrings (numpy's sum/prod/mean...) differ only in the API they document: near
        # duplicates must also name the same APIs (see ApiAwareMinhashSignature)
        "dedup_api_names": True,
    },
    # Articles and books (local files): real prose that the web thresholds drop for shapes that are not
    # boilerplate: code with braces (C4 drops the whole document), ingredient lists and speakers' names that
    # repeat (Gopher's 30% duplicated lines, FineWeb's 1% duplicated characters), short news briefs (< 50
    # words), verse. Boilerplate pages still fail Gopher's quality rules and FineWeb's punctuation rule.
    # Measured on generated articles, books, docstrings and boilerplate (profile_set.py, docs/data.md).
    "articles": {
        "markup": "web",
        "gopher_repetition": {"dup_line_frac": 0.5, "dup_line_char_frac": 0.4},
        "gopher_quality": {"min_doc_words": 20},
        "c4": False,
        "fineweb": {"char_duplicates_ratio": 0.2},
    },
    "books": {
        "markup": "none",
        "gopher_repetition": {"dup_line_frac": 0.5, "dup_line_char_frac": 0.4, "dup_para_frac": 0.5,
                              "dup_para_char_frac": 0.4},
        "gopher_quality": {"max_doc_words": None},  # a novel has more than Gopher's 100,000 words
        "c4": False,
        "fineweb": False,
    },
    "none": {"markup": "none", "gopher_repetition": False, "gopher_quality": False, "c4": False, "fineweb": False},
}
# `auto` in profile_for_source: the profile follows the document's file type (its `location`): books for
# .pdf/.epub/.docx, articles for local .md/.txt/.rst/.html files, web for everything else (WARC records
# and fetched pages, whose location is their URL; rows of jsonl/csv/parquet files; Hub datasets).
AUTO = "auto"
_BOOK_FILE = re.compile(r"\.(?:pdf|epub|docx)(?:#\d+)?$", re.I)
_ARTICLE_FILE = re.compile(r"^(?![a-z][a-z0-9+.-]*://).*\.(?:md|markdown|txt|text|rst|html?|xhtml)(?:#\d+)?$", re.I)
# How a profile's filters run: `fast` (fastfilters.py: datatrove's rules and thresholds, computed in one
# cheap pass, >= 99% the same decisions) or `datatrove` (datatrove's own filter classes, the reference).
ENGINES = ("fast", "datatrove")
DEFAULT_PROFILE_FOR_SOURCE = {"python-docs*": "docs", "*": AUTO}
FILTER_ORDER = ("gopher_repetition", "gopher_quality", "c4", "fineweb")


def resolve_profiles(overrides: dict | None) -> dict[str, dict[str, Any]]:
    """Built-in profiles with a recipe's `profiles:` merged in (a filter set to false is switched off)."""
    profiles = copy.deepcopy(PROFILES)
    for name, settings in (overrides or {}).items():
        if not isinstance(settings, dict):
            raise ValueError(f"profiles.{name} must be a mapping of filter -> settings (or false), got {settings!r}")
        base = profiles.setdefault(name, copy.deepcopy(PROFILES["none"]))
        for key, value in settings.items():
            if key not in ("markup", "word_tokenizer", "engine", "dedup_api_names", *FILTER_ORDER):
                raise ValueError(f"profiles.{name}: unknown key {key!r}; expected markup, word_tokenizer, engine, "
                                 f"dedup_api_names or one of {FILTER_ORDER}")
            if key == "engine" and value not in ENGINES:
                raise ValueError(f"profiles.{name}.engine must be one of {ENGINES}, got {value!r}")
            if key == "dedup_api_names" and not isinstance(value, bool):
                raise ValueError(f"profiles.{name}.dedup_api_names must be true or false, got {value!r}")
            if key == "word_tokenizer" and value not in ("spacy", "regex"):
                raise ValueError(f"profiles.{name}.word_tokenizer must be spacy or regex, got {value!r}")
            if key == "markup" and value not in ("web", "rest", "none"):
                raise ValueError(f"profiles.{name}.markup must be web, rest or none, got {value!r}")
            if key == "dedup_api_names":
                base[key] = value
            elif isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = {} if value is True else value
    return profiles


def build_filters(profile: dict[str, Any]) -> list[tuple[str, Any]]:
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    classes = {"gopher_repetition": GopherRepetitionFilter, "gopher_quality": GopherQualityFilter,
               "c4": C4QualityFilter, "fineweb": FineWebQualityFilter}
    if profile.get("engine", "fast") == "fast":
        classes = FAST_FILTERS
    filters = []
    for name in FILTER_ORDER:
        settings = profile.get(name)
        if settings is False or settings is None:
            continue
        kwargs = dict(settings)
        if profile.get("word_tokenizer") == "regex":
            kwargs.setdefault("language", RegexWords())
        for key in ("top_n_grams", "dup_n_grams"):
            if key in kwargs:
                kwargs[key] = tuple(tuple(x) for x in kwargs[key])
        try:
            filters.append((name, classes[name](**kwargs)))
        except TypeError as e:
            raise ValueError(f"filter {name}: {e}") from e
    shared = ChainWords()  # the fast filters of this chain split each prepared batch once
    for _, flt in filters:
        if isinstance(getattr(flt, "chain", None), ChainWords):
            flt.chain = shared
    return filters


def needs_english_words(profiles: dict[str, dict[str, Any]]) -> bool:
    """Whether some profile's fast filters split English words with spaCy (`fastfilters.SpacyWords`)."""
    return any(p.get("engine", "fast") == "fast" and p.get("word_tokenizer") != "regex"
               and any(p.get(name) not in (False, None) for name in FILTER_ORDER) for p in profiles.values())


class RegexWords(WordTokenizer):
    """A regular-expression word tokenizer for datatrove's filters.

    datatrove 0.10 tokenizes English with spaCy, which dominates filter time (~0.8 MB/s on 2 cores).
    Words and runs of punctuation as separate tokens, as spaCy produces for most text; used by the
    docs profile, where the word counts feed relaxed thresholds anyway.
    """

    _WORDS = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]+")
    # the same pattern for ASCII text, ~20% faster: among ASCII characters \w is exactly [A-Za-z0-9_] and
    # ’ cannot occur; \s stays Unicode's (an ASCII-mode \s would leave out \x1c-\x1f)
    _ASCII_WORDS = re.compile(r"[A-Za-z0-9_]+(?:'[A-Za-z0-9_]+)*|[^A-Za-z0-9_\s]+")
    _SENTENCES = re.compile(r"(?<=[.!?])\s+")
    # the fast filters split a batch's texts into these words with a compiled kernel (`kernels.regex_words`)
    compiled_words = True

    def __init__(self):
        super().__init__()

    def word_tokenize(self, text: str) -> list[str]:
        return (self._ASCII_WORDS if text.isascii() else self._WORDS).findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [s for s in self._SENTENCES.split(text) if s.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        spans, start = [], 0
        for sentence in self.sent_tokenize(text):
            start = text.index(sentence, start)
            spans.append((start, start + len(sentence)))
            start += len(sentence)
        return spans

    def __hash__(self):  # one instance per process is as good as another: load_word_tokenizer caches by it
        return hash(type(self))

    def __eq__(self, other):
        return type(other) is type(self)


def profile_for(source: str, mapping: dict[str, str], location: str = "") -> str:
    """The profile of a document: the first glob of `mapping` that its source matches; `auto` picks by the
    file type of its location (see AUTO)."""
    profile = _profile_for(source or "", tuple(mapping.items()))
    if profile != AUTO:
        return profile
    location = location or ""
    return "books" if _BOOK_FILE.search(location) else "articles" if _ARTICLE_FILE.match(location) else "web"


def profile_of(doc, mapping: dict[str, str]) -> str:
    """`profile_for` a datatrove Document, from its source and location metadata."""
    return profile_for(doc.metadata.get("source", ""), mapping, doc.metadata.get("location", ""))


@lru_cache(maxsize=4096)
def _profile_for(source: str, patterns: tuple[tuple[str, str], ...]) -> str:
    # asked for every document by two steps; matching the globs took half the repair time on short documents
    for pattern, profile in patterns:
        if fnmatch.fnmatchcase(source, pattern):
            return profile
    return "web"


# ------------------------------------------------------------------------------------------- tallies

class Tally:
    """Counts for one step in one task: documents/bytes in and out, removal reasons, examples."""

    def __init__(self, name: str):
        self.name = name
        self.reset()

    def reset(self):
        self.docs_in = self.bytes_in = self.docs_out = self.bytes_out = self.modified = 0
        self.removed: Counter = Counter()
        self.removed_bytes: Counter = Counter()
        self.extra: Counter = Counter()
        self.examples: dict[str, list[dict]] = {}

    def seen(self, doc: Document):
        self.docs_in += 1
        self.bytes_in += _nbytes(doc.text)

    def passed(self, doc: Document):
        self.docs_out += 1
        self.bytes_out += _nbytes(doc.text)

    def drop(self, doc: Document, reason: str, text: str | None = None):
        self.removed[reason] += 1
        self.removed_bytes[reason] += _nbytes(text if text is not None else doc.text)
        ex = self.examples.setdefault(reason, [])
        if len(ex) < EXAMPLES_PER_REASON:
            body = text if text is not None else doc.text
            ex.append({"id": doc.id, "source": doc.metadata.get("source", ""), "text": body[:EXAMPLE_CHARS]})

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.name, "docs_in": self.docs_in, "bytes_in": self.bytes_in, "docs_out": self.docs_out,
                "bytes_out": self.bytes_out, "modified": self.modified, "removed": dict(self.removed),
                "removed_bytes": dict(self.removed_bytes), "extra": dict(self.extra), "examples": self.examples}


def _nbytes(text: str) -> int:
    # asked twice per document by every step: an ASCII text's length is its size, without encoding a copy
    return len(text) if text.isascii() else len(text.encode("utf-8", "replace"))


class TallyStep(PipelineStep):
    """A pipeline step that keeps a Tally; subclasses implement `process(doc) -> doc | reason string`."""

    type = "llm-recipes"

    def __init__(self, name: str):
        super().__init__()
        self.name = name  # shown in datatrove's logs and stats
        self.tally = Tally(name)

    def process(self, doc: Document):  # pragma: no cover - abstract
        raise NotImplementedError

    def run(self, data, rank: int = 0, world_size: int = 1):
        for doc in data:
            self.tally.seen(doc)
            original = doc.text
            result = self.process(doc)
            if isinstance(result, str):
                self.tally.drop(doc, result, original)
                continue
            if doc.text != original:
                self.tally.modified += 1
            self.tally.passed(doc)
            yield doc


# ------------------------------------------------------------------------------------------- reading

class ShardReader(PipelineStep):
    """Task `rank` reads parquet file `files[rank]` (columns text, id + provenance) as datatrove Documents.

    Args:
        files: one parquet file per task.
        tallied: the steps of this pipeline whose tallies are reset at the start of each task.
        progress: show a per-task progress bar.
    """

    type = "llm-recipes"
    name = "read shard"

    def __init__(self, files: list[str], tallied: list[PipelineStep] | None = None, progress: bool = False,
                 desc: str = "clean"):
        super().__init__()
        self.files = list(files)
        self.tallied = tallied or []
        self.progress = progress
        self.desc = desc
        self.tally = Tally("read")

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        self.tally.reset()
        for step in self.tallied:
            step.tally.reset()
        path = self.files[rank]
        bar = None
        if self.progress:
            import pyarrow.parquet as pq
            from tqdm.auto import tqdm

            bar = tqdm(total=pq.ParquetFile(path).metadata.num_rows, unit="doc", leave=False, dynamic_ncols=True,
                       desc=f"{self.desc} shard {rank}", position=rank % 2, mininterval=1.0)
        tally = self.tally
        for i, (text, row_id, *rest) in enumerate(iter_parquet_values(path)):
            doc = Document(text=text, id=document_id(row_id, path, i), metadata=dict(zip(_METADATA, rest)))
            size = _nbytes(text)  # what tally.seen and tally.passed add, computed once
            tally.docs_in += 1
            tally.docs_out += 1
            tally.bytes_in += size
            tally.bytes_out += size
            if bar is not None:
                bar.update(1)
            yield doc
        if bar is not None:
            bar.close()


_METADATA = COLUMNS[2:]  # COLUMNS starts with text and id; the other columns are a document's metadata


def document_id(row_id: str, path: str, index: int) -> str:
    """A document's id: its `id` column, else its shard and row number."""
    return row_id or f"{Path(path).stem}/{index}"


# ------------------------------------------------------------------------------------------- repair

class Repair(TallyStep):
    """Unicode repair, markup removal by profile (HTML/markdown for web, reST roles for docs) and
    boilerplate-line removal. Documents left empty are dropped."""

    name = "repair"

    def __init__(self, profiles: dict, profile_map: dict, unicode: bool = True, markup: bool = True,
                 boilerplate: bool = True):
        super().__init__("repair")
        self.markup_of = {name: p.get("markup", "none") for name, p in profiles.items()}
        self.profile_map = profile_map
        self.unicode, self.markup, self.boilerplate = unicode, markup, boilerplate

    def process(self, doc: Document):
        text = doc.text
        if self.unicode:
            fixed = textops.repair_unicode(text)
            if fixed != text:
                self.tally.extra["unicode repaired"] += 1
            text = fixed
        mode = self.markup_of.get(profile_of(doc, self.profile_map), "none")
        if self.markup and mode == "web":
            if textops.looks_like_html(text):
                text = textops.strip_html(text)
                self.tally.extra["html extracted"] += 1
            stripped = textops.strip_markdown(text)
            if stripped != text:
                self.tally.extra["markdown removed"] += 1
            text = stripped
        elif self.markup and mode == "rest":
            stripped = textops.strip_rest_roles(text)
            if stripped != text:
                self.tally.extra["reST roles removed"] += 1
            text = stripped
        if self.boilerplate and mode == "web":
            text, n = textops.remove_boilerplate_lines(text)
            self.tally.extra["boilerplate lines removed"] += n
        text = textops.collapse_blank_lines(text)
        if not text:
            return "empty after repair"
        doc.text = text
        return doc


class LengthGate(TallyStep):
    """Drops documents outside [min_chars, max_chars]."""

    name = "length"

    def __init__(self, min_chars: int, max_chars: int):
        super().__init__("length")
        self.min_chars, self.max_chars = min_chars, max_chars

    def process(self, doc):
        if len(doc.text) < self.min_chars:
            return f"shorter than {self.min_chars} chars"
        if self.max_chars and len(doc.text) > self.max_chars:
            return f"longer than {self.max_chars} chars"
        return doc


class LanguageFilter(TallyStep):
    """Keeps documents whose language (langid.py's offline model, bundled with the package) is one of
    `languages` with probability >= min_score (FineWeb keeps English at >= 0.65)."""

    name = "language"
    SAMPLE_CHARS = 2000  # the first 2,000 characters decide: enough for a stable guess, bounded cost

    def __init__(self, languages: list[str], min_score: float = 0.65):
        super().__init__("language")
        self.languages, self.min_score = set(languages), min_score
        self._identifier = None

    def process(self, doc):
        if self._identifier is None:  # built lazily, in the worker process
            from langid.langid import LanguageIdentifier, model

            self._identifier = LanguageIdentifier.from_modelstring(model, norm_probs=True)
        language, score = self._identifier.classify(doc.text[: self.SAMPLE_CHARS])
        doc.metadata["language"], doc.metadata["language_score"] = language, round(float(score), 3)
        if language not in self.languages:
            return f"language {language}"
        if score < self.min_score:
            return f"language score below {self.min_score}"
        return doc


class ProfiledQuality(TallyStep):
    """Runs the quality filters of each document's profile (Gopher/C4/FineWeb: fastfilters.py or datatrove's).

    Also measures, on a deterministic sample of documents whose profile is not `web`, what the web
    profile would have removed: the report shows why documentation needs its own thresholds.
    """

    name = "quality"

    def __init__(self, profiles: dict, profile_map: dict, compare_sample: float = 0.0):
        super().__init__("quality")
        self.profiles_cfg = profiles
        self.profile_map = profile_map
        self.compare_sample = compare_sample
        self._filters = None
        # the compiled kernels (numba, ~0.6 CPU s to import and load) are loaded where this step is made: local
        # workers, forked from the clean driver that makes it, inherit them instead of each loading its own
        if any(p.get("engine", "fast") == "fast" for p in profiles.values()):
            compiled.kernels()

    def filters(self, profile: str):
        if self._filters is None:
            self._filters = {name: build_filters(p) for name, p in self.profiles_cfg.items()}
        return self._filters[profile]

    BATCH = 256  # documents whose filters that decide in batches (FastGopherRepetition.prepare) decide together

    def run(self, data, rank: int = 0, world_size: int = 1):
        return super().run(self._prepared(data), rank, world_size)

    def _prepared(self, data):
        data = iter(data)
        while batch := list(islice(data, self.BATCH)):
            by_profile = defaultdict(list)
            for doc in batch:
                profile = self._profile(doc)
                by_profile[profile].append(doc)
                if self._compared(profile, doc):
                    by_profile["web"].append(doc)
            for profile, docs in by_profile.items():
                for _, flt in self.filters(profile):
                    if hasattr(flt, "prepare"):
                        flt.prepare(docs)
            yield from batch

    def _compared(self, profile: str, doc: Document) -> bool:
        """Whether the report's web comparison runs the web filters on this document too."""
        return bool(self.compare_sample) and profile != "web" and _sampled(doc.id, self.compare_sample)

    def profiles_met(self, files: list[str], enough=None) -> set[str]:
        """The profiles whose filters some document of `files` can go through: its own, and `web` for those
        the report's web comparison samples. Reads the id and provenance columns only, not the text.
        `enough(met)`: stop reading as soon as it holds for the profiles met so far (checked when one is added),
        so that a caller asking "is any of these met?" does not read a whole large corpus at start-up."""
        import pyarrow.parquet as pq

        met = set()
        for path in files:
            pf = pq.ParquetFile(path)
            columns = [c for c in ("id", "source", "location") if c in pf.schema_arrow.names]
            index = 0
            for batch in pf.iter_batches(batch_size=65536, columns=columns):
                data = batch.to_pydict()
                ids = data.get("id")
                for i in range(batch.num_rows):
                    doc = Document(text="", id=document_id(ids[i] if ids else "", path, index),
                                   metadata={k: data[k][i] or "" for k in ("source", "location") if k in data})
                    profile = self._profile(doc)
                    new = {profile, "web"} if self._compared(profile, doc) else {profile}
                    if not new <= met:
                        met |= new
                        if enough is not None and enough(met):
                            return met
                    index += 1
        return met

    def _profile(self, doc: Document) -> str:
        profile = profile_of(doc, self.profile_map)
        return profile if profile in self.profiles_cfg else "web"

    def _first_failure(self, profile: str, doc: Document) -> str | None:
        for name, flt in self.filters(profile):
            result = flt.filter(doc)
            ok, reason = (result, None) if not isinstance(result, tuple) else result
            if not ok:
                return f"{name}: {reason or 'failed'}"
        return None

    def process(self, doc):
        profile = self._profile(doc)
        self.tally.extra[f"profile {profile}: documents"] += 1
        if self._compared(profile, doc):
            probe = Document(text=doc.text, id=doc.id, metadata=dict(doc.metadata))
            self.tally.extra[f"profile {profile}: sampled for web comparison"] += 1
            failure = self._first_failure("web", probe)
            if failure:
                self.tally.extra[f"profile {profile}: web would drop"] += 1
                self.tally.extra[f"profile {profile}: web would drop by {failure.split(':')[0]}"] += 1
        failure = self._first_failure(profile, doc)
        if failure:
            self.tally.extra[f"profile {profile}: dropped"] += 1
            return f"[{profile}] {failure}"
        return doc


def _sampled(doc_id: str, fraction: float) -> bool:
    digest = hashlib.blake2b(f"compare:{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


# ------------------------------------------------------------------------------------------- dedup

class ExactDedup(TallyStep):
    """Drops documents listed in `remove_dir/<rank>.json` (later copies of an identical text, over the
    whole corpus: the index is built from every task's hashes between stages)."""

    name = "exact dedup"

    def __init__(self, remove_dir: str):
        super().__init__("exact dedup")
        self.remove_dir = remove_dir

    def run(self, data, rank: int = 0, world_size: int = 1):
        path = Path(self.remove_dir) / f"{rank:05d}.json"
        self._drop = set(json.loads(path.read_text())) if path.exists() else set()
        self._index = -1
        yield from super().run(data, rank, world_size)

    def process(self, doc):
        self._index += 1
        return "exact duplicate" if self._index in self._drop else doc


def fast_minhash_signature(output_folder: str, config, profiles: dict | None = None,
                           profile_map: dict | None = None):
    """datatrove's MinHash signature step with whitespace word splitting and API-aware shingles.

    Shingles are built from `simplify_text` output (lower-cased, punctuation removed), where splitting
    on whitespace gives the same words as datatrove's spaCy tokenizer for English at a fraction of the
    cost; tokenization dominated the near-dedup phase. Documents whose profile has `dedup_api_names`
    get shingles keyed by the API names they mention (`ApiAwareMinhashSignature`).
    """
    step = ApiAwareMinhashSignature(output_folder=output_folder, config=config)
    compiled.kernels()  # loaded once here, in the driver, not in each forked worker (see ProfiledQuality)
    step.word_tokenizer = WhitespaceWords()
    profiles = profiles or {}
    step.keyed_profiles = {name for name, p in profiles.items() if p.get("dedup_api_names")}
    step.profile_map = dict(profile_map or DEFAULT_PROFILE_FOR_SOURCE)
    return step


class WhitespaceWords:
    @staticmethod
    def word_tokenize(text: str) -> list[str]:
        return text.split()


# API names in documentation: backticked code, dotted names (os.path.join), calls (sum(), snake_case and
# CamelCase identifiers. Plain words are not names, so editing the prose does not change the set.
# (One \b for the four word alternatives, and possessive quantifiers where giving characters back can never
# let the rest match; `[^\W_]*+_\w+` matches the same runs as `\w*_\w+`: a word run with an underscore followed
# by a word character. The same matches as the plain pattern, at half the time: the signature step's largest cost.)
_API_NAME = re.compile(r"`[^`\n]++`|\b(?:[A-Za-z_]\w*+(?:\.[A-Za-z_]\w*+)+|[A-Za-z_]\w*+(?=\()|[^\W_]*+_\w+"
                       r"|[A-Z][a-z0-9]++[A-Z]\w*)")
# The same pattern in ASCII mode, for ASCII texts (a third faster): on ASCII characters ASCII mode's \w, \W
# and \b are Unicode mode's, and the pattern has no \s, whose ASCII mode differs (\x1c-\x1f).
_API_NAME_ASCII = re.compile(_API_NAME.pattern, re.ASCII)


def api_names(text: str) -> set[str]:
    """The API names a documentation text mentions (`e.g` and `i.e` are not names)."""
    names = set()
    if text.isascii() and (kernels := compiled.kernels()) is not None:  # the same matches, scanned compiled
        spans = kernels.api_name_spans(np.frombuffer(text.encode("ascii"), np.uint8)).tolist()
        matches = {text[spans[i]:spans[i + 1]] for i in range(0, len(spans), 2)}
    else:
        matches = set((_API_NAME_ASCII if text.isascii() else _API_NAME).findall(text))
    for match in matches:  # each distinct match once: names repeat in a docstring
        name = match.strip("`").strip()
        if name and not ("." in name and max(map(len, name.split("."))) < 2):
            names.add(name)
    return names


def _names_key(names: set[str]) -> int:
    names = names - {""}
    if not names:
        return 0
    digest = hashlib.blake2b("\n".join(sorted(names)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class ApiAwareMinhashSignature(MinhashDedupSignature):
    """MinhashDedupSignature whose shingles, for documents of a `dedup_api_names` profile, are XORed with a
    hash of the set of API names the document mentions plus its title (python-docs: the qualified name).

    XOR with one key is a bijection, so two documents naming the same APIs keep exactly their Jaccard
    similarity (edited prose is still found), while documents naming different APIs share no shingle and
    never collide: templated docstrings (numpy's `sum`, `prod`, `mean`) all survive. Documents of other
    profiles, and docs that mention no API name, are shingled as datatrove does. The price: a copy whose
    edit adds or removes an API name is not found.
    """

    keyed_profiles: set = set()
    profile_map: dict = {}
    _key = 0

    def run(self, data, rank: int = 0, world_size: int = 1):
        def keyed(documents):
            for doc in documents:  # the base class shingles doc.text right after taking the document
                profile = profile_of(doc, self.profile_map)
                if profile in self.keyed_profiles:  # python-docs titles are qualified names (json.dumps)
                    self._key = _names_key(api_names(doc.text) | {doc.metadata.get("title") or ""})
                else:
                    self._key = 0
                yield doc

        if self.config.hash_config.precision != 64:
            return super().run(keyed(data), rank, world_size)  # writes signature files, yields nothing
        return self._write_sorted_signatures(keyed(data), rank)

    def _write_sorted_signatures(self, documents, rank: int):
        """datatrove's signature files byte for byte: datatrove packs one record per band and document
        (`struct.pack` and a file write each: ~20 per document), then reads each band's file back, sorts its
        records and writes them again. Here the signatures are collected in one array and each band's records
        sorted and written once (a task's signatures: 8 bytes x bands x hashes per document in memory)."""
        per_band, bands = self.config.hashes_per_bucket, self.config.num_buckets
        with self.track_time():
            signatures, numbers, pending = [], [], []
            fused = (compiled.kernels() is not None and fastminhash.fast_path_applies(self)
                     and isinstance(self.word_tokenizer, WhitespaceWords))
            if fused:  # each document's words, shingles and minima in one compiled pass: the same signatures
                signatures.append(self._compiled_signatures(documents, numbers))
            else:
                for number, doc in enumerate(documents):
                    self.stat_update(StatHints.total)
                    shingles = self.get_shingles(doc.text)
                    if shingles.size != 0:
                        pending.append(shingles)
                        numbers.append(number)
                        if len(pending) == 1024:  # the permutations of many documents at once, in blocks
                            signatures.append(fastminhash.permuted_minima(pending, *self.parameters))
                            pending = []
            if pending:
                signatures.append(fastminhash.permuted_minima(pending, *self.parameters))
            table = (np.concatenate(signatures) if signatures else np.zeros((0, bands * per_band), np.uint64)
                     ).reshape(len(numbers), bands, per_band)
            record = np.dtype([(f"field{i + 1}", "<u8") for i in range(per_band)] + [(f"field{per_band + 1}", "<u4")])
            for band in range(bands):
                records = np.empty(len(numbers), dtype=record)
                for i in range(per_band):
                    records[f"field{i + 1}"] = table[:, band, i]
                records[f"field{per_band + 1}"] = numbers
                records.sort(order=record.names)
                with self.output_folder.open(f"bucket_{band:03d}/{rank:05d}.minhash.sig", mode="wb") as out:
                    out.write(records.tobytes())
        return None  # as datatrove's step: it writes files and passes no documents on

    def _compiled_signatures(self, documents, numbers: list) -> np.ndarray:
        """The signature of each document that has shingles (their numbers appended to `numbers`), one row each,
        computed by `fastminhash.signature_into` (the permutations applied per shingle as it is hashed)."""
        a, b = (np.ascontiguousarray(p, dtype=np.uint64).reshape(-1) for p in self.parameters)
        rows = np.empty((1024, a.size), np.uint64)
        filled = 0
        norm, n, signature_into = self.config.norm_config, self.config.n_grams, fastminhash.signature_into
        for number, doc in enumerate(documents):
            self.stat_update(StatHints.total)
            if filled == len(rows):
                rows = np.concatenate([rows, np.empty_like(rows)])
            if signature_into(doc.text, norm, n, self._key, a, b, rows[filled]):
                numbers.append(number)
                filled += 1
        return rows[:filled]

    def get_shingles(self, text: str) -> np.ndarray:
        if fastminhash.fast_path_applies(self):  # the same shingles with less Python per n-gram
            if isinstance(self.word_tokenizer, WhitespaceWords):
                words = fastminhash.simplified_words(text, self.config.norm_config)
            else:
                words = self.word_tokenizer.word_tokenize(fastminhash.simplified(text, self.config.norm_config))
            shingles = fastminhash.sha1_shingles(words, self.config.n_grams)
        else:
            shingles = super().get_shingles(text)
        return np.bitwise_xor(shingles, np.uint64(self._key)) if self._key else shingles


    def get_signature(self, shingles: np.ndarray) -> list[list[int]]:
        """datatrove's signature (the same permutations and minimum), split into bands by a reshape instead of
        `np.split` (a quarter of the signature time on python-docs)."""
        a, b = self.parameters
        if self.config.hash_config.precision != 64:
            return super().get_signature(shingles)
        return fastminhash.permuted_minimum(shingles, a, b).astype(self.config.hash_config.np_dtype).reshape(
            self.config.num_buckets, -1).tolist()


class NearDedup(PipelineStep):
    """Wraps datatrove's MinhashDedupFilter to count and sample what it removes (it preserves order,
    so a document that goes in and does not come out before the next one was removed)."""

    type = "llm-recipes"
    name = "near dedup"

    def __init__(self, remove_folder: str):
        super().__init__()
        self.inner = MinhashDedupFilter(input_folder=remove_folder)
        self.tally = Tally("near dedup")

    def run(self, data, rank: int = 0, world_size: int = 1):
        pending: deque = deque()

        def feed():
            for doc in data:
                self.tally.seen(doc)
                pending.append(doc)
                yield doc

        for doc in self.inner.run(feed(), rank, world_size):
            while pending and pending[0] is not doc:
                self.tally.drop(pending.popleft(), "near duplicate (MinHash)")
            pending.popleft()
            self.tally.passed(doc)
            yield doc
        while pending:
            self.tally.drop(pending.popleft(), "near duplicate (MinHash)")


# ------------------------------------------------------------------------------------------- PII, decontamination

class ScrubPII(TallyStep):
    name = "pii"

    def __init__(self):
        super().__init__("pii")

    def process(self, doc):
        doc.text, counts = textops.scrub_pii(doc.text)
        for kind, n in counts.items():
            if n:
                self.tally.extra[f"{kind} replaced"] += n
        return doc


class Decontaminate(TallyStep):
    """Drops documents sharing a word n-gram with the evaluation sets (hashes in `ngram_file`)."""

    name = "decontaminate"

    def __init__(self, ngram_file: str, n: int):
        super().__init__("decontaminate")
        self.ngram_file, self.n = ngram_file, n
        self._grams = None

    def process(self, doc):
        if self._grams is None:
            import numpy as np

            self._grams = set(np.load(self.ngram_file).tolist())
        if not self._grams.isdisjoint(textops.ngram_hashes(doc.text, self.n)):
            return f"shares a {self.n}-gram with an evaluation set"
        return doc


# ------------------------------------------------------------------------------------------- writing

class IntermediateWriter(PipelineStep):
    """End of the filter stage: writes the task's documents (one parquet file per task, also when
    empty, so task `rank` of the next stage reads file `rank`), their exact-dedup hashes and the tallies."""

    type = "llm-recipes"
    name = "write filtered"

    def __init__(self, folder: str, ledger_dir: str, tallied: list):
        super().__init__()
        self.folder, self.ledger_dir, self.tallied = folder, ledger_dir, tallied

    def run(self, data, rank: int = 0, world_size: int = 1):
        import numpy as np

        rows, hashes = [], []
        for doc in data:
            rows.append(_row(doc))
            hashes.append(textops.text_hash(doc.text))
        write_parquet_atomic(Path(self.folder) / f"{rank:05d}.parquet", rows)

        with atomic_open(Path(self.folder) / f"{rank:05d}.hashes.npy") as f:
            np.save(f, np.array(hashes, dtype=np.uint64))
        save_ledger(self.ledger_dir, rank, self.tallied)
        return
        yield  # a generator, like every step


class SplitWriter(PipelineStep):
    """End of the final stage: assigns each document to train or validation by a hash of its id and
    writes parquet shards, flushing every `shard_bytes` so memory does not grow with the corpus."""

    type = "llm-recipes"
    name = "split and write"

    def __init__(self, output_dir: str, validation_fraction: float, seed: int, ledger_dir: str, tallied: list,
                 shard_bytes: int = 64 << 20):
        super().__init__()
        self.output_dir, self.validation_fraction, self.seed = output_dir, validation_fraction, seed
        self.ledger_dir, self.tallied, self.shard_bytes = ledger_dir, tallied, shard_bytes
        self.tally = Tally("split")

    def split_of(self, doc_id: str) -> str:
        digest = hashlib.blake2b(f"{self.seed}:{doc_id}".encode(), digest_size=8).digest()
        return "validation" if int.from_bytes(digest, "little") / 2**64 < self.validation_fraction else "train"

    def run(self, data, rank: int = 0, world_size: int = 1):
        self.tally.reset()
        buffers = {"train": [], "validation": []}
        sizes = {"train": 0, "validation": 0}
        parts = {"train": 0, "validation": 0}
        lengths = []

        def flush(split):
            if buffers[split]:
                write_parquet_atomic(Path(self.output_dir) / split / f"{rank:05d}-{parts[split]:03d}.parquet",
                                     buffers[split])
                parts[split] += 1
                buffers[split], sizes[split] = [], 0

        for doc in data:
            self.tally.seen(doc)
            self.tally.passed(doc)
            split = self.split_of(doc.id)
            self.tally.extra[f"{split} documents"] += 1
            self.tally.extra[f"{split} bytes"] += _nbytes(doc.text)
            lengths.append(len(doc.text))
            buffers[split].append(_row(doc))
            sizes[split] += _nbytes(doc.text)
            if sizes[split] >= self.shard_bytes:
                flush(split)
        for split in buffers:
            flush(split)
        save_ledger(self.ledger_dir, rank, [*self.tallied, self], lengths=length_histogram(lengths))
        return
        yield


def _row(doc: Document) -> dict:
    return {"text": doc.text, "id": doc.id, **{k: doc.metadata.get(k, "") for k in COLUMNS if k not in ("text", "id")}}


HIST_EDGES = [0, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 10**12]


def length_histogram(lengths: list[int]) -> list[int]:
    import bisect

    counts = [0] * (len(HIST_EDGES) - 1)
    for n in lengths:
        counts[min(bisect.bisect_right(HIST_EDGES, n) - 1, len(counts) - 1)] += 1
    return counts


def save_ledger(folder: str, rank: int, steps: list, **extra) -> None:
    atomic_write_json(Path(folder) / f"{rank:05d}.json", {"steps": [s.tally.to_dict() for s in steps], **extra})
