"""Where text comes from: the python-docs corpus, local files, Hub datasets (streamed) and web pages.

A source is a mapping in the gather recipe, e.g.

    sources:
      - {type: python-docs, packages: [transformers, torch]}
      - {type: files, paths: ["notes/**/*.md", "crawl/*.warc.gz"]}
      - {type: hub, name: HuggingFaceFW/fineweb-edu, config: sample-10BT, split: train, max_mb: 50}
      - {type: web, urls: ["https://docs.python.org/3/tutorial/index.html"], sitemap: "..."}

`iter_source(spec)` yields, in a fixed order, document dicts (`text, id, source, location, title,
license`) or `Skipped(reason, location)` records for inputs that could not be used. The order is fixed
so that an interrupted gather can skip what it already wrote and continue.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..config import check_range, check_types
from .documents import Skipped
from .pydocs import iter_python_docs

SOURCE_TYPES = ("python-docs", "files", "hub", "web")
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".markdown")
HTML_SUFFIXES = (".html", ".htm", ".xhtml")
SNIFF_BYTES = 8192


@dataclass
class SourceSpec:
    """One entry of `sources:` in a gather recipe (see docs/data.md for every key)."""

    type: str
    name: str = ""
    weight: float = 1.0
    fraction: float = 1.0
    max_documents: int | None = None
    max_mb: float | None = None
    license: str = ""
    # python-docs
    packages: list[str] = field(default_factory=list)
    stdlib: bool = True
    topics: bool = True
    min_chars: int = 80
    # files
    paths: list[str] = field(default_factory=list)
    split_text: str = "none"
    # files (jsonl/json/csv/parquet) and hub
    text_column: str = "text"
    template: str = ""
    title_column: str = ""
    # hub
    dataset: str = ""
    config: str | None = None
    split: str = "train"
    data_files: Any = None
    revision: str | None = None
    # web
    urls: list[str] = field(default_factory=list)
    sitemap: str = ""
    timeout_s: float = 20.0
    max_page_bytes: int = 5 << 20
    min_delay_s: float = 1.0
    user_agent: str = "llm-recipes-gather/0.1 (+https://github.com/)"
    # files (html), web, WARC: how the main text of an HTML page is found
    html_extractor: str = "trafilatura"

    @classmethod
    def from_dict(cls, index: int, raw: Any) -> "SourceSpec":
        if not isinstance(raw, dict):
            raise ValueError(f"sources[{index}] must be a mapping with a 'type' key, got {raw!r}")
        if raw.get("type") not in SOURCE_TYPES:
            raise ValueError(f"sources[{index}]: 'type' must be one of {', '.join(SOURCE_TYPES)}, "
                             f"got {raw.get('type')!r}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"sources[{index}] ({raw['type']}): unknown key(s) {unknown}; "
                             f"known keys: {sorted(known)}")

        spec = cls(**check_types(raw, [cls], f"sources[{index}] ({raw['type']})"))  # a single path becomes a list
        if spec.type == "files" and not spec.paths:
            raise ValueError(f"sources[{index}] (files): needs 'paths' (files or glob patterns)")
        if spec.type == "hub" and not spec.dataset:
            raise ValueError(f"sources[{index}] (hub): needs 'dataset' (a Hub dataset id, a local folder, "
                             "or a builder such as 'json' with data_files)")
        if spec.type == "web" and not (spec.urls or spec.sitemap):
            raise ValueError(f"sources[{index}] (web): needs 'urls' or 'sitemap'")
        if spec.html_extractor not in HTML_EXTRACTORS:
            raise ValueError(f"sources[{index}]: 'html_extractor' must be one of {', '.join(HTML_EXTRACTORS)}, "
                             f"got {spec.html_extractor!r}")
        if spec.split_text not in ("none", "paragraphs", "lines"):
            raise ValueError(f"sources[{index}]: 'split_text' must be none, paragraphs or lines, "
                             f"got {spec.split_text!r}")
        try:
            check_range(spec, "fraction", 0, 1, low_open=True)
            check_range(spec, "weight", 0, low_open=True)
            for key in ("max_documents", "min_chars", "min_delay_s"):
                check_range(spec, key, 0)
            for key in ("max_mb", "timeout_s", "max_page_bytes"):
                check_range(spec, key, 0, low_open=True)
        except ValueError as e:
            raise ValueError(f"sources[{index}] ({spec.type}): {e}") from None
        if not spec.name:
            spec.name = f"hub:{spec.dataset}" if spec.type == "hub" else spec.type
        return spec


def keep_fraction(doc_id: str, fraction: float) -> bool:
    """Deterministic subsample: the same documents are kept on every run and machine."""
    if fraction >= 1:
        return True
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


def _doc(text: str, doc_id: str, spec: SourceSpec, location: str, title: str = "", license: str = "",
         note: str = "") -> dict:
    """A document row; `note` (not stored in the row) says what was done to use it, e.g. that its bytes were
    not valid UTF-8: gather counts notes in its report."""
    doc = {"text": text, "id": doc_id, "source": spec.name, "location": location, "title": title,
           "license": spec.license or license}
    if note:
        doc["note"] = note
    return doc


# ----------------------------------------------------------------------------------------------- python-docs

def iter_python_docs_source(spec: SourceSpec, num_proc: int) -> Iterator[dict | Skipped]:

    for record in iter_python_docs(spec.packages, stdlib=spec.stdlib, topics=spec.topics,
                                   min_chars=spec.min_chars, num_proc=num_proc):
        yield _doc(record.text, record.location, spec, record.location, record.title, record.license)


# ----------------------------------------------------------------------------------------------- local files

def decode_bytes(data: bytes) -> tuple[str | None, str]:
    """Decodes a file's bytes: UTF-8 first, then the best guess of charset_normalizer.

    Returns (text, "") for UTF-8, (text, note) for text in another encoding (the note names it, for the
    report), or (None, reason) for binary or undecodable input.
    """
    if b"\x00" in data[:SNIFF_BYTES] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return None, "binary file (NUL bytes)"
    try:
        return data.decode("utf-8-sig"), ""
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    matches = list(from_bytes(data[: 4 << 20]))
    if not matches:
        return None, "undecodable bytes (no text encoding fits)"
    # Single-byte code pages often fit equally well (cp1250 and cp1252 both decode French without
    # "chaos"); among the equally good, prefer cp1252, the web's default for Latin text (WHATWG).
    least = min(m.chaos for m in matches)
    tied = [m.encoding for m in matches if m.chaos == least]
    encoding = "cp1252" if "cp1252" in tied else tied[0]
    try:
        return data.decode(encoding), f"not valid UTF-8 (decoded as {encoding})"
    except (UnicodeDecodeError, LookupError):
        return None, f"undecodable bytes (guessed {encoding})"


def render_template(spec: SourceSpec, record: dict) -> str | None:
    """The text of a structured record: its text column, or the template filled from its columns."""
    if spec.template:
        try:
            return spec.template.format(**record)
        except (KeyError, IndexError, ValueError):
            return None
    value = record.get(spec.text_column)
    return value if isinstance(value, str) else None


# trafilatura: the closest to the page's main text (navigation, ads, footers dropped); resiliparse: ~35x
# faster (C++), keeps more of the page around the main text (benchmarks/README, "WARC reading and HTML")
HTML_EXTRACTORS = ("trafilatura", "resiliparse")


def html_to_text(html: str, url: str = "", extractor: str = "trafilatura") -> tuple[str, str]:
    """Main text and title of an HTML page (navigation, ads, footers dropped by trafilatura, or by
    resiliparse's main-content heuristics)."""
    if extractor == "resiliparse":
        from resiliparse.extract.html2text import extract_plain_text
        from resiliparse.parse.html import HTMLTree

        tree = HTMLTree.parse(html)
        return extract_plain_text(tree, main_content=True).strip(), (tree.title or "").strip()
    import trafilatura

    result = trafilatura.extract(html, url=url or None, output_format="json", with_metadata=True,
                                 include_comments=False, include_tables=True, favor_recall=True)
    if not result:
        return "", ""
    data = json.loads(result)
    return (data.get("text") or "").strip(), (data.get("title") or "").strip()


def _split_text(text: str, mode: str) -> list[str]:
    if mode == "paragraphs":
        import re

        return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    if mode == "lines":
        return [line.strip() for line in text.splitlines() if line.strip()]
    return [text]


def expand_paths(patterns: list[str], problems: list[tuple[str, str]] | None = None) -> list[str]:
    """The files that `patterns` (files, folders, globs with `**`) name, each once, sorted.

    Folders and `**` are walked following symbolic links, but a folder reached again (a link to one of its
    own parents) is not entered twice: it is appended to `problems` as a symlink loop, as are broken links.
    """
    import fnmatch

    files: set[str] = set()
    seen_real: set[str] = set()
    problems = [] if problems is None else problems

    def add(path: str) -> None:
        real = os.path.realpath(path)
        if real not in seen_real:  # one file reached through two links is read once
            seen_real.add(real)
            files.add(path)

    def walk(root: str, matches) -> None:
        visited: set[tuple[int, int]] = set()
        for folder, dirs, names in os.walk(root, followlinks=True):
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in visited:
                problems.append((folder, "symlink loop (folder already read)"))
                dirs[:] = []
                continue
            visited.add((st.st_dev, st.st_ino))
            for name in names:
                path = os.path.join(folder, name)
                if not os.path.exists(path):
                    problems.append((path, "broken symbolic link"))
                elif os.path.isfile(path) and matches(path):
                    add(path)

    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        if os.path.isdir(pattern):
            walk(pattern, lambda p: True)
        elif "**" in pattern:
            # walk from the folder before the first wildcard; `**/` also matches no folder at all
            root = pattern[: min(pattern.index(c) for c in "*?[" if c in pattern)].rsplit(os.sep, 1)[0] or "."
            shallow = pattern.replace("**" + os.sep, "")
            walk(root, lambda p: fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, shallow))
        else:
            for path in sorted(glob.glob(pattern)):
                if os.path.isfile(path):
                    add(path)
                elif os.path.islink(path) and not os.path.exists(path):
                    problems.append((path, "broken symbolic link"))
    return sorted(files)


def file_kind(path: str) -> str:
    name = path.lower()
    for suffix in (".jsonl.gz", ".jsonl", ".ndjson", ".json", ".parquet", ".csv", ".warc.gz", ".warc", ".arc.gz",
                   ".pdf", ".epub", ".docx"):
        if name.endswith(suffix):
            return {".jsonl.gz": "jsonl", ".ndjson": "jsonl", ".arc.gz": "warc",
                    ".warc.gz": "warc"}.get(suffix, suffix[1:])
    if name.endswith(HTML_SUFFIXES):
        return "html"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    return "unknown"


def iter_files_source(spec: SourceSpec, max_doc_chars: int) -> Iterator[dict | Skipped]:
    problems: list[tuple[str, str]] = []
    files = expand_paths(spec.paths, problems)
    for location, reason in problems:
        yield Skipped(reason, location)
    if not files:
        yield Skipped("no file matches the pattern", ", ".join(spec.paths))
        return
    readers = {"text": lambda p: _iter_text_file(spec, p, "text", max_doc_chars),
               "html": lambda p: _iter_text_file(spec, p, "html", max_doc_chars),
               "jsonl": lambda p: _iter_jsonl(spec, p), "json": lambda p: _iter_json(spec, p, max_doc_chars),
               "csv": lambda p: _iter_csv(spec, p), "parquet": lambda p: _iter_parquet(spec, p),
               "warc": lambda p: iter_warc(spec, p)}
    for kind in ("pdf", "epub", "docx"):  # books and articles (books.py)
        readers[kind] = lambda p, kind=kind: _iter_book(spec, p, kind)
    for path in files:
        kind = file_kind(path)
        if kind == "unknown":
            yield Skipped("unsupported file type", path,
                          "expected .txt .md .rst .html .json .jsonl .csv .parquet .warc[.gz] .pdf .epub .docx")
            continue
        documents = 0
        try:
            for item in readers[kind](path):
                documents += isinstance(item, dict)
                yield item
        except Exception as e:  # noqa: BLE001  (one bad file never stops the gather: skip it, keep the rest)
            reason = TRUNCATED if isinstance(e, EOFError) or _gzip_truncated(path) else \
                "invalid UTF-8" if isinstance(e, UnicodeDecodeError) else "unreadable file"
            kept = f"; the {documents} documents read before it are kept" if documents else ""
            yield Skipped(reason, path, f"{type(e).__name__}: {e}"[:300] + kept)


def _iter_text_file(spec, path, kind, max_doc_chars):
    size = os.path.getsize(path)
    if spec.split_text == "none" and size > 4 * max_doc_chars:  # cheaper than reading a gigantic file to learn that
        yield Skipped("document too large", path, f"{size} bytes > 4 x max_doc_chars; use split_text: paragraphs")
        return
    with open(path, "rb") as f:
        data = f.read()
    text, note = decode_bytes(data)
    if text is None:
        yield Skipped(note, path)
        return
    title = ""
    if kind == "html":
        text, title = html_to_text(text, Path(path).resolve().as_uri(), spec.html_extractor)
    for i, part in enumerate(_split_text(text, spec.split_text)):
        doc_id = f"{path}#{i}" if spec.split_text != "none" else path
        yield _doc(part, doc_id, spec, path, title or Path(path).stem, note=note)


def _iter_book(spec, path, kind):
    from .books import iter_book  # books imports this module for its document rows

    return iter_book(spec, path, kind)


def _open_maybe_gz(path):
    if path.lower().endswith(".gz"):
        import gzip

        return gzip.open(path, "rb")
    return open(path, "rb")


def _iter_jsonl(spec, path):
    with _open_maybe_gz(path) as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(raw)
            except UnicodeDecodeError as e:
                yield Skipped("invalid UTF-8", where, str(e)[:200])
                continue
            except json.JSONDecodeError as e:
                yield Skipped("malformed JSON line", where, str(e)[:200])
                continue
            yield from _record_doc(spec, record, where)


def _record_doc(spec, record, where, note=""):
    if not isinstance(record, dict):
        yield Skipped("record is not an object", where)
        return
    text = render_template(spec, record)
    if text is None:
        wanted = f"template {spec.template!r}" if spec.template else f"string column {spec.text_column!r}"
        yield Skipped("record lacks the text field", where, f"expected {wanted}")
        return
    title = str(record.get(spec.title_column) or "") if spec.title_column else str(record.get("title") or "")
    yield _doc(text, str(record.get("id") or where), spec, where, title, str(record.get("license") or ""), note)


def _iter_json(spec, path, max_doc_chars):
    if os.path.getsize(path) > 64 * max_doc_chars:
        yield Skipped("JSON file too large to load whole", path, "use JSON Lines (.jsonl) for big data")
        return
    text, note = decode_bytes(Path(path).read_bytes())
    if text is None:
        yield Skipped(note, path)
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        yield Skipped("malformed JSON file", path, str(e)[:200])
        return
    records = data if isinstance(data, list) else data.get("data", [data]) if isinstance(data, dict) else None
    if not isinstance(records, list):
        yield Skipped("JSON is neither a list of records nor a record", path)
        return
    for i, record in enumerate(records):
        yield from _record_doc(spec, record, f"{path}[{i}]", note)


def _iter_csv(spec, path):
    csv.field_size_limit(sys.maxsize if sys.maxsize < 2**63 else 2**31 - 1)
    with open(path, "rb") as fb:
        head = fb.read(SNIFF_BYTES)
    _, reason = decode_bytes(head)
    if reason and "binary" in reason:
        yield Skipped(reason, path)
        return
    note = "" if _is_utf8(path) else "not valid UTF-8 (bad bytes replaced with U+FFFD)"
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        for i, record in enumerate(csv.DictReader(f)):
            yield from _record_doc(spec, record, f"{path}:{i + 2}", note)


def _is_utf8(path: str) -> bool:
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as f:
        try:
            while block := f.read(1 << 20):
                decoder.decode(block)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return False
    return True


def _iter_parquet(spec, path):
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    n = 0
    for batch in pf.iter_batches(batch_size=256):
        for record in batch.to_pylist():
            yield from _record_doc(spec, record, f"{path}[{n}]")
            n += 1


def iter_warc(spec, path):
    """HTML responses of a WARC file, main text extracted; a corrupt record ends that file with a count."""
    from warcio.archiveiterator import ArchiveIterator

    documents = 0
    with open(path, "rb") as f:
        try:
            for record in ArchiveIterator(f, arc2warc=True):
                if record.rec_type != "response":
                    continue
                url = record.rec_headers.get_header("WARC-Target-URI") or ""
                where = f"{path}#{url}"
                ctype = (record.http_headers.get_header("Content-Type") if record.http_headers else "") or ""
                if "html" not in ctype.lower() and "text/plain" not in ctype.lower():
                    yield Skipped("WARC record is not HTML or text", where, ctype[:80])
                    continue
                body = record.content_stream().read(spec.max_page_bytes + 1)
                if len(body) > spec.max_page_bytes:
                    yield Skipped("page too large", where, f"> {spec.max_page_bytes} bytes")
                    continue
                html, note = decode_bytes(body)
                if html is None:
                    yield Skipped(note, where)
                    continue
                text, title = html_to_text(html, url, spec.html_extractor) if "html" in ctype.lower() \
                    else (html, "")
                documents += 1
                yield _doc(text, url or where, spec, url or where, title, note=note)
        except Exception as e:  # noqa: BLE001  (warcio raises AttributeError/TypeError on truncated input too)
            if _gzip_truncated(path):
                yield Skipped(TRUNCATED, path,
                              f"{type(e).__name__}; the {documents} documents before the cut are kept")
            else:
                yield Skipped("malformed WARC record", path, f"{type(e).__name__}: {e}"[:200])
            return
    # warcio ends quietly at some cuts (inside a gzip member's header or data): check the stream itself
    if _gzip_truncated(path):
        yield Skipped(TRUNCATED, path, f"the {documents} documents before the cut are kept")


TRUNCATED = "truncated or corrupt compressed file"


def _gzip_truncated(path: str) -> bool:
    """Whether a .gz file's compressed stream is cut short or corrupt (read through to find out)."""
    import gzip
    import zlib

    if not path.lower().endswith(".gz"):
        return False
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 20):
                pass
    except (EOFError, zlib.error, gzip.BadGzipFile):
        return True
    except OSError:
        return False
    return False


# ----------------------------------------------------------------------------------------------- Hub datasets

def iter_hub_source(spec: SourceSpec) -> Iterator[dict | Skipped]:
    """Streams a dataset: a Hub id, a local folder, or a builder (`json`, `parquet`, `text`) with data_files."""
    from datasets import load_dataset

    kwargs = {"streaming": True, "split": spec.split}
    if spec.config:
        kwargs["name"] = spec.config
    if spec.data_files:
        kwargs["data_files"] = spec.data_files
    if spec.revision:
        kwargs["revision"] = spec.revision
    dataset = load_dataset(spec.dataset, **kwargs)
    for i, record in enumerate(dataset):
        yield from _record_doc(spec, record, f"{spec.dataset}/{spec.split}[{i}]")


# ----------------------------------------------------------------------------------------------- web pages

class PoliteFetcher:
    """HTTP fetching that respects robots.txt, waits between requests to a host and caps page size.

    Args:
        user_agent: sent with every request and matched against robots.txt rules.
        timeout_s: connect/read timeout per request.
        max_page_bytes: pages larger than this are abandoned mid-download.
        min_delay_s: least time between two requests to one host (a robots.txt Crawl-delay that is
            longer wins).
    """

    def __init__(self, user_agent: str, timeout_s: float, max_page_bytes: int, min_delay_s: float):
        import httpx

        self.user_agent = user_agent
        self.max_page_bytes = max_page_bytes
        self.min_delay_s = min_delay_s
        self.client = httpx.Client(timeout=timeout_s, follow_redirects=True, headers={"User-Agent": user_agent})
        self._robots: dict[str, Any] = {}
        self._last: dict[str, float] = {}

    def close(self):
        self.client.close()

    def _host(self, url: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}"

    def _wait(self, host: str) -> None:
        import time

        delay = self.min_delay_s
        robots = self._robots.get(host)
        if robots is not None and robots is not False:
            delay = max(delay, float(robots.crawl_delay(self.user_agent) or 0))
        wait = self._last.get(host, 0) + delay - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._last[host] = time.monotonic()

    def allowed(self, url: str) -> bool:
        """robots.txt: a missing file (4xx) allows everything; an unreachable one (5xx, error) allows nothing."""
        from urllib.robotparser import RobotFileParser

        host = self._host(url)
        if host not in self._robots:
            self._wait(host)
            parser = RobotFileParser()
            try:
                response = self.client.get(f"{host}/robots.txt")
                if response.status_code >= 500:
                    parser.disallow_all = True
                elif response.status_code >= 400:
                    parser.allow_all = True
                else:
                    parser.parse(response.text.splitlines())
            except Exception:
                parser.disallow_all = True
            self._robots[host] = parser
        return self._robots[host].can_fetch(self.user_agent, url)

    def fetch(self, url: str) -> tuple[bytes | None, str, str]:
        """Returns (body, content type, "") or (None, "", reason)."""
        import httpx

        if not self.allowed(url):
            return None, "", "disallowed by robots.txt"
        self._wait(self._host(url))
        try:
            with self.client.stream("GET", url) as response:
                if response.status_code != 200:
                    return None, "", f"HTTP {response.status_code}"
                ctype = response.headers.get("content-type", "")
                declared = int(response.headers.get("content-length") or 0)
                if declared > self.max_page_bytes:
                    return None, ctype, "page too large"
                chunks, total = [], 0
                for chunk in response.iter_bytes():
                    total += len(chunk)
                    if total > self.max_page_bytes:
                        return None, ctype, "page too large"
                    chunks.append(chunk)
                return b"".join(chunks), ctype, ""
        except httpx.TimeoutException:
            return None, "", "timeout"
        except httpx.HTTPError as e:
            return None, "", f"fetch error ({type(e).__name__})"


def sitemap_urls(fetcher: PoliteFetcher, url: str, depth: int = 0) -> Iterator[str | Skipped]:
    """Page URLs of a sitemap (following sitemap indexes two levels deep)."""
    import xml.etree.ElementTree as ET

    body, _, reason = fetcher.fetch(url)
    if body is None:
        yield Skipped(f"sitemap not fetched: {reason}", url)
        return
    try:
        root = ET.fromstring(body)
    except ET.ParseError as e:
        yield Skipped("malformed sitemap XML", url, str(e)[:200])
        return
    tag = root.tag.rsplit("}", 1)[-1]
    locs = [el.text.strip() for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "loc" and el.text]
    if tag == "sitemapindex" and depth < 2:
        for loc in locs:
            yield from sitemap_urls(fetcher, loc, depth + 1)
    else:
        yield from locs


def iter_web_source(spec: SourceSpec) -> Iterator[dict | Skipped]:
    fetcher = PoliteFetcher(spec.user_agent, spec.timeout_s, spec.max_page_bytes, spec.min_delay_s)
    try:
        urls: list = list(spec.urls)
        if spec.sitemap:
            urls += list(sitemap_urls(fetcher, spec.sitemap))
        seen = set()
        for url in urls:
            if isinstance(url, Skipped):
                yield url
                continue
            if url in seen:
                continue
            seen.add(url)
            body, ctype, reason = fetcher.fetch(url)
            if body is None:
                yield Skipped(reason, url)
                continue
            text, note = decode_bytes(body)
            if text is None:
                yield Skipped(note, url)
                continue
            title = ""
            if "html" in ctype.lower() or text.lstrip()[:1] == "<":
                text, title = html_to_text(text, url, spec.html_extractor)
            elif not ctype.lower().startswith("text/"):
                yield Skipped("not an HTML or text page", url, ctype[:80])
                continue
            yield _doc(text, url, spec, url, title, note=note)
    finally:
        fetcher.close()


def iter_source(spec: SourceSpec, max_doc_chars: int, num_proc: int = 1) -> Iterator[dict | Skipped]:
    """The documents of one source, in a fixed order, with skipped inputs in between."""
    if spec.type == "python-docs":
        return iter_python_docs_source(spec, num_proc)
    if spec.type == "files":
        return iter_files_source(spec, max_doc_chars)
    if spec.type == "hub":
        return iter_hub_source(spec)
    return iter_web_source(spec)
