"""gather: every source type, bad inputs skipped with reasons, caps and fractions, resume after a crash."""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import json
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from llm_recipes.data import gathering
from llm_recipes.data.gathering import gather

REPO = Path(__file__).resolve().parent.parent


def read_docs(out: Path) -> list[dict]:
    rows = []
    for f in sorted((out / "data").glob("*.parquet")):
        rows += pq.read_table(f).to_pylist()
    return rows


@contextlib.contextmanager
def serve_folder(folder: Path):
    """A static HTTP server on 127.0.0.1 serving `folder` (the stand-in for the web and the Hub)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


PROSE = ("The quick brown fox jumps over the lazy dog while the farmer watches from the porch. "
         "It was the best of times and the worst of times, as the old saying goes in the village.")


# ------------------------------------------------------------------------------------------- python-docs

def test_python_docs_titles_and_text(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "toypkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""Toy package for tests.\n\n'
                                     'It has a long enough module docstring to be kept by gather."""\n')
    (pkg / "geometry.py").write_text(
        'def area(w, h):\n'
        '    """Return the area of a rectangle.\n\n'
        '    The width and height are multiplied; both must be numbers.\n    """\n'
        'class Shape:\n'
        '    """A shape with a name and a colour, used to test qualified names."""\n'
        '    def scale(self, f):\n'
        '        """Scale the shape by a factor, keeping its centre where it was."""\n'
        '    def _hidden(self):\n'
        '        """Private helpers are not documentation for users, so they are skipped."""\n'
        'def short():\n    """Too short."""\n')
    (pkg / "broken.py").write_text("def oops(:\n")  # does not parse: skipped, not a crash
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    report = gather([{"type": "python-docs", "packages": ["toypkg", "no_such_package_xyz"], "stdlib": False,
                      "min_chars": 40}], tmp_path / "out", num_proc=1, progress=False)
    docs = {d["title"]: d for d in read_docs(tmp_path / "out")}
    assert "toypkg.geometry.area" in docs and "toypkg.geometry.Shape.scale" in docs
    assert "toypkg.geometry.Shape._hidden" not in docs and "toypkg.geometry.short" not in docs
    area = docs["toypkg.geometry.area"]
    assert area["text"].split("\n\n")[0] == "Return the area of a rectangle."  # first paragraph = summary
    assert area["location"] == "python:toypkg.geometry.area" and area["source"] == "python-docs"
    assert any(t.startswith("pydoc topic: ") for t in docs)
    assert report["documents"] == len(docs)


def test_python_docs_stdlib_has_real_modules():
    from llm_recipes.data.pydocs import iter_python_docs

    titles = {r.title for r in iter_python_docs(stdlib=True, topics=False, num_proc=1)}
    assert {"json.dumps", "collections.namedtuple", "builtins.sorted"} <= titles
    assert not any(t.startswith(("test.", "idlelib.", "tkinter.")) for t in titles)


# ------------------------------------------------------------------------------------------- local files

def make_warc(path: Path, html: bytes, broken_tail: bool = False, gzip: bool = False):
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=gzip)
        for i, (ctype, body) in enumerate([("text/html; charset=utf-8", html), ("image/png", b"\x89PNG....")]):
            headers = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.0")
            record = writer.create_warc_record(f"http://example.test/{i}", "response", payload=io.BytesIO(body),
                                               http_headers=headers)
            writer.write_record(record)
        if broken_tail:
            f.write(b"WARC/1.0\r\nWARC-Type: response\r\nContent-Length: 99999\r\n\r\ngarbage")


def page(title: str, body: str) -> str:
    return (f"<html><head><title>{title}</title></head><body>"
            "<nav><a href='/'>Home</a> | <a href='/x'>About</a></nav>"
            f"<article><h1>{title}</h1><p>{body}</p><p>{body}</p></article>"
            "<footer>Copyright 2024</footer></body></html>")


def test_every_file_type_and_bad_inputs(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.txt").write_text(PROSE)
    (d / "b.md").write_text("# Title\n\n" + PROSE)
    (d / "c.jsonl").write_text(json.dumps({"text": "first " + PROSE, "title": "T1"}) + "\n{not json\n"
                               + json.dumps({"body": "no text field"}) + "\n" + json.dumps({"text": ""}) + "\n")
    (d / "d.json").write_text(json.dumps([{"text": "json record " + PROSE}]))
    (d / "e.csv").write_text("text,title\n\"csv row, " + PROSE + "\",Row\n")
    import pyarrow as pa

    pq.write_table(pa.table({"text": ["parquet row " + PROSE]}), d / "f.parquet")
    (d / "g.html").write_text(page("Html Page", PROSE))
    make_warc(d / "h.warc", page("Warc Page", PROSE).encode(), broken_tail=True)
    (d / "latin1.txt").write_bytes(("Café crème, naïve façade. " + PROSE).encode("latin-1"))
    (d / "binary.txt").write_bytes(b"\x00\x01\x02\xff" * 100)
    (d / "empty.txt").write_text("   \n")
    (d / "huge.txt").write_text("word " * 3000)
    (d / "image.png").write_bytes(b"\x89PNG")
    (d / "corrupt.parquet").write_bytes(b"PAR1 not really")
    report = gather([{"type": "files", "paths": [str(d)]}], tmp_path / "out", max_doc_chars=10_000,
                    num_proc=1, progress=False)
    docs = read_docs(tmp_path / "out")
    texts = "\n".join(x["text"] for x in docs)
    for marker in ("first The quick", "json record", "csv row", "parquet row", "Café crème"):
        assert marker in texts
    html_docs = [x for x in docs if x["title"] in ("Html Page", "Warc Page")]
    assert len(html_docs) == 2 and all("Home" not in x["text"] and "quick brown fox" in x["text"] for x in html_docs)
    skipped = report["skipped"]
    assert skipped["malformed JSON line"] == 1
    assert skipped["record lacks the text field"] == 1
    assert skipped["binary file (NUL bytes)"] == 1
    assert skipped["empty document"] == 2  # empty.txt and the jsonl record with ""
    assert skipped["document too large"] == 1
    assert skipped["unsupported file type"] == 1
    assert skipped["unreadable file"] == 1  # corrupt parquet
    assert skipped["malformed WARC record"] == 1
    assert skipped["WARC record is not HTML or text"] == 1
    assert report["documents"] == len(docs) == 9
    assert all(set(x) == {"text", "id", "source", "location", "title", "license"} for x in docs)


def test_gzipped_warc_and_glob_patterns(tmp_path):
    """A crawl as Common Crawl ships it (.warc.gz, one gzip member per record) and paths given as globs."""
    d = tmp_path / "crawl"
    (d / "sub").mkdir(parents=True)
    make_warc(d / "sub" / "CC-1.warc.gz", page("Gzipped Page", PROSE).encode(), gzip=True)
    make_warc(d / "sub" / "CC-2.warc.gz", page("Second Page", PROSE).encode(), gzip=True)
    (d / "notes.txt").write_text("text outside the glob " + PROSE)
    report = gather([{"type": "files", "paths": [str(d / "**" / "*.warc.gz")]}], tmp_path / "out", num_proc=1,
                    progress=False)
    docs = read_docs(tmp_path / "out")
    assert sorted(x["title"] for x in docs) == ["Gzipped Page", "Second Page"]
    assert all("quick brown fox" in x["text"] and "Home" not in x["text"] for x in docs)
    assert report["skipped"]["WARC record is not HTML or text"] == 2  # the PNG record of each file


def test_resiliparse_extractor_on_html_files_and_warc(tmp_path):
    """html_extractor: resiliparse gives the page's text and title from HTML files and WARC records (the
    article, not the navigation); an unknown extractor is refused by name."""
    d = tmp_path / "in"
    d.mkdir()
    (d / "g.html").write_text(page("Html Page", PROSE))
    make_warc(d / "h.warc.gz", page("Warc Page", PROSE).encode(), gzip=True)
    gather([{"type": "files", "paths": [str(d)], "html_extractor": "resiliparse"}], tmp_path / "out", num_proc=1,
           progress=False)
    docs = read_docs(tmp_path / "out")
    assert sorted(x["title"] for x in docs) == ["Html Page", "Warc Page"]
    assert all(x["text"].count("quick brown fox") == 2 and "About" not in x["text"] for x in docs)
    with pytest.raises(ValueError, match="'html_extractor' must be one of trafilatura, resiliparse"):
        gather([{"type": "files", "paths": [str(d)], "html_extractor": "lynx"}], tmp_path / "out2")


# ------------------------------------------------------------------------------------------- Hub streaming

def test_hub_streaming_over_http_and_local_folder(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    rows = [{"question": f"What is {i}?", "answer": f"It is {i}.", "id": f"q{i}"} for i in range(5)]
    (served / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with serve_folder(served) as base:
        report = gather([{"type": "hub", "dataset": "json", "data_files": f"{base}/qa.jsonl", "split": "train",
                          "template": "Q: {question}\nA: {answer}", "max_documents": 3}],
                        tmp_path / "out", num_proc=1, progress=False)
    docs = read_docs(tmp_path / "out")
    assert [d["text"] for d in docs] == ["Q: What is 0?\nA: It is 0.", "Q: What is 1?\nA: It is 1.",
                                         "Q: What is 2?\nA: It is 2."]
    assert docs[0]["source"] == "hub:json" and docs[0]["id"] == "q0"
    assert report["sources"][0]["stopped_by_cap"] == "max_documents 3"
    # a local dataset folder streams through the same code path
    local = tmp_path / "local_ds"
    local.mkdir()
    (local / "train.jsonl").write_text("".join(json.dumps({"text": PROSE + str(i)}) + "\n" for i in range(4)))
    gather([{"type": "hub", "dataset": str(local), "text_column": "text"}], tmp_path / "out2",
           num_proc=1, progress=False)
    assert len(read_docs(tmp_path / "out2")) == 4


# ------------------------------------------------------------------------------------------- web

def test_web_robots_sitemap_size_cap(tmp_path):
    site = tmp_path / "site"
    (site / "private").mkdir(parents=True)
    (site / "robots.txt").write_text("User-agent: *\nDisallow: /private/\n")
    (site / "one.html").write_text(page("Page One", PROSE))
    (site / "two.html").write_text(page("Page Two", "Another page about gardens. " + PROSE))
    (site / "private" / "secret.html").write_text(page("Secret", PROSE))
    (site / "big.html").write_text(page("Big", PROSE * 400))
    with serve_folder(site) as base:
        (site / "sitemap.xml").write_text(
            '<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
            + "".join(f"<url><loc>{base}/{p}</loc></url>" for p in ("two.html", "private/secret.html", "big.html"))
            + "</urlset>")
        report = gather([{"type": "web", "urls": [f"{base}/one.html", f"{base}/missing.html"],
                          "sitemap": f"{base}/sitemap.xml", "min_delay_s": 0.05, "max_page_bytes": 20_000}],
                        tmp_path / "out", num_proc=1, progress=False)
    docs = read_docs(tmp_path / "out")
    assert sorted(d["title"] for d in docs) == ["Page One", "Page Two"]
    assert all(d["location"].startswith("http://127.0.0.1") for d in docs)
    assert report["skipped"] == {"disallowed by robots.txt": 1, "page too large": 1, "HTTP 404": 1}


def test_rate_limit_waits_between_requests(tmp_path):
    import time

    from llm_recipes.data.sources import PoliteFetcher

    (tmp_path / "p.html").write_text(page("P", PROSE))
    with serve_folder(tmp_path) as base:
        fetcher = PoliteFetcher("test-agent", 5, 10_000, min_delay_s=0.3)
        start = time.monotonic()
        for _ in range(3):
            body, _, reason = fetcher.fetch(f"{base}/p.html")
            assert body and not reason
        fetcher.close()
    # robots.txt + 3 pages = 4 requests to one host, at least 3 waits of 0.3 s
    assert time.monotonic() - start >= 0.9


# ------------------------------------------------------------------------------------------- mixing, resume, CLI

def test_weights_and_fraction(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.jsonl").write_text("".join(json.dumps({"text": f"{i} " + PROSE}) + "\n" for i in range(200)))
    (d / "b.jsonl").write_text("".join(json.dumps({"text": f"{i} " + PROSE}) + "\n" for i in range(200)))
    one_doc = len(("0 " + PROSE).encode())
    report = gather([{"type": "files", "paths": [str(d / "a.jsonl")], "name": "a", "weight": 3},
                     {"type": "files", "paths": [str(d / "b.jsonl")], "name": "b", "weight": 1, "fraction": 0.5}],
                    tmp_path / "out", total_mb=80 * one_doc / 2**20, num_proc=1, progress=False)
    a, b = report["sources"]
    assert 55 <= a["documents"] <= 60 and 17 <= b["documents"] <= 20  # 3:1 of an 80-document budget
    assert b["dropped_by_fraction"] > 0
    gather([{"type": "files", "paths": [str(d / "b.jsonl")], "name": "b", "fraction": 0.5}],
           tmp_path / "out2", num_proc=1, progress=False)
    ids = [r["id"] for r in read_docs(tmp_path / "out2")]
    assert 70 <= len(ids) <= 130 and ids == [r["id"] for r in read_docs(tmp_path / "out2")]


def test_interrupted_gather_resumes_without_losing_shards(tmp_path, monkeypatch):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.jsonl").write_text("".join(json.dumps({"text": f"doc {i} " + PROSE * 5}) + "\n" for i in range(120)))
    sources = [{"type": "files", "paths": [str(d / "a.jsonl")]}]
    gather(sources, tmp_path / "full", shard_mb=0.01, num_proc=1, progress=False)

    real = gathering.iter_source

    def crashing(*args, **kwargs):
        for i, item in enumerate(real(*args, **kwargs)):
            if i == 70:
                raise KeyboardInterrupt("simulated crash")
            yield item

    monkeypatch.setattr(gathering, "iter_source", crashing)
    with pytest.raises(KeyboardInterrupt):
        gather(sources, tmp_path / "resumed", shard_mb=0.01, num_proc=1, progress=False)
    kept = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "resumed" / "data").glob("*.parquet")}
    assert kept  # finished shards survive the crash
    monkeypatch.setattr(gathering, "iter_source", real)
    gather(sources, tmp_path / "resumed", shard_mb=0.01, num_proc=1, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "resumed" / "data").glob("*.parquet")}
    assert all(after[name] == mtime for name, mtime in kept.items())  # not rewritten
    assert [r["text"] for r in read_docs(tmp_path / "resumed")] == [r["text"] for r in read_docs(tmp_path / "full")]


def test_bad_source_specs_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="'type' must be one of"):
        gather([{"type": "ftp"}], tmp_path)
    with pytest.raises(ValueError, match="unknown key"):
        gather([{"type": "files", "paths": ["x"], "pathz": 1}], tmp_path)
    with pytest.raises(ValueError, match="needs 'dataset'"):
        gather([{"type": "hub"}], tmp_path)


def test_cli_and_recipes(tmp_path):
    from llm_recipes.config import parse_config
    from llm_recipes.gather import GatherConfig, main

    for recipe in ("quickstart", "debug"):
        (cfg,) = parse_config([GatherConfig], ["--config", str(REPO / "recipes" / recipe / "gather.yaml")],
                              stage="gather")
        assert cfg.sources and cfg.output_dir.endswith("/gather")
    (tmp_path / "n.md").write_text(PROSE)
    out = tmp_path / "run"
    assert main(["--output_dir", str(out),
                 "--sources", json.dumps([{"type": "files", "paths": [str(tmp_path / "n.md")]}])]) == 0
    assert (out / "stage_complete.json").exists() and (out / "gather_report.json").exists()
    assert (out / "resolved_config.yaml").exists()
    from llm_recipes.cli import main as cli_main

    assert cli_main(["gather", "--output_dir", str(out), "--sources", "[{type: nope}]"]) == 2


# ----------------------------------------------------------------------------------------- one bad file never stops it

def test_truncated_compressed_files_are_skipped_and_rows_already_read_kept(tmp_path):
    """A .jsonl.gz cut mid-stream (EOFError inside gzip) and a .warc.gz cut mid-record: each is reported
    as truncated, its rows before the cut are kept, and the files after it are still read."""
    import gzip

    d = tmp_path / "in"
    d.mkdir()
    lines = "".join(json.dumps({"text": f"row {i} " + PROSE}) + "\n" for i in range(400)).encode()
    whole = gzip.compress(lines)
    (d / "a.jsonl.gz").write_bytes(whole[: len(whole) * 2 // 3])
    make_warc(d / "b.warc.gz", page("Warc Page", PROSE).encode(), gzip=True)
    warc = (d / "b.warc.gz").read_bytes()
    (d / "b.warc.gz").write_bytes(warc[:-40])
    (d / "c.txt").write_text("after the broken files " + PROSE)
    report = gather([{"type": "files", "paths": [str(d)]}], tmp_path / "out", num_proc=1, progress=False)
    texts = [x["text"] for x in read_docs(tmp_path / "out")]
    assert report["skipped"]["truncated or corrupt compressed file"] == 2
    from_jsonl = [t for t in texts if t.startswith("row ")]
    assert 0 < len(from_jsonl) < 400  # the rows before the cut
    assert any("after the broken files" in t for t in texts)
    assert any("quick brown fox" in t and not t.startswith(("row ", "after")) for t in texts)  # the warc page
    examples = report["sources"][0]["skipped_examples"]["truncated or corrupt compressed file"]
    assert any("a.jsonl.gz" in e and f"the {len(from_jsonl)} documents read before it are kept" in e for e in examples)


def test_any_exception_reading_a_file_skips_only_that_file(tmp_path, monkeypatch):
    from llm_recipes.data import sources

    d = tmp_path / "in"
    d.mkdir()
    (d / "a.csv").write_text("text\n\"first " + PROSE + "\"\n")
    (d / "b.txt").write_text("second " + PROSE)

    def broken_csv(spec, path):
        yield sources._doc("partial " + PROSE, "p", spec, path)
        raise KeyError("a bug or a library error nobody foresaw")

    monkeypatch.setattr(sources, "_iter_csv", broken_csv)
    report = gather([{"type": "files", "paths": [str(d)]}], tmp_path / "out", num_proc=1, progress=False)
    texts = " ".join(x["text"] for x in read_docs(tmp_path / "out"))
    assert "partial" in texts and "second" in texts
    assert report["skipped"] == {"unreadable file": 1}
    assert "KeyError" in report["sources"][0]["skipped_examples"]["unreadable file"][0]


def test_symlink_loops_are_detected_and_files_read_once(tmp_path):
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "a.txt").write_text("only once " + PROSE)
    (d / "sub" / "loop").symlink_to(d, target_is_directory=True)  # in/sub/loop -> in
    (d / "sub" / "loop2").symlink_to(d / "sub", target_is_directory=True)
    (d / "dangling.txt").symlink_to(d / "gone.txt")
    for paths in ([str(d)], [str(d / "**" / "*.txt")]):
        out = tmp_path / f"out{len(paths[0])}"
        report = gather([{"type": "files", "paths": paths}], out, num_proc=1, progress=False)
        assert [x["text"][:9] for x in read_docs(out)] == ["only once"]
        assert report["skipped"]["symlink loop (folder already read)"] >= 1
        assert report["skipped"]["broken symbolic link"] == 1


def test_invalid_utf8_is_counted_and_reported(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "latin1.txt").write_bytes(("Café crème, naïve façade. " + PROSE).encode("latin-1"))
    (d / "mixed.csv").write_bytes(b"text\n\"caf\xe9 " + PROSE.encode() + b"\"\n")
    (d / "rows.jsonl").write_bytes(json.dumps({"text": "good " + PROSE}).encode()
                                   + b"\n{\"text\": \"bad \xff\xfe\"}\n")
    report = gather([{"type": "files", "paths": [str(d)]}], tmp_path / "out", num_proc=1, progress=False)
    assert report["notes"] == {"not valid UTF-8 (decoded as cp1252)": 1,
                               "not valid UTF-8 (bad bytes replaced with U+FFFD)": 1}
    assert report["skipped"]["invalid UTF-8"] == 1  # the JSON line
    assert report["sources"][0]["note_examples"]["not valid UTF-8 (decoded as cp1252)"] == [str(d / "latin1.txt")]
    assert "Café crème" in " ".join(x["text"] for x in read_docs(tmp_path / "out"))
