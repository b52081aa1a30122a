"""Quality filters: our fast engine (llm_recipes/data/fastfilters.py) against datatrove's own filter classes,
on the same documents in the same run: MB/s per core, per-filter agreement, every disagreement by example.

    python benchmarks/data/bench_filters.py --corpus python-docs --corpus shakespeare --corpus warc

Each corpus is gathered once with `llm-recipes gather` (not timed) and repaired as the clean stage repairs it
(unicode, markup by profile; timed apart), so the filters see what they see in the stage. Then, in this one
process (one core), for each filter of the corpus's profile:

- agreement: datatrove's class and ours each decide every document on its own (C4 rewrites the text, so
  each gets a copy); a disagreement is printed with the document's start and both answers;
- speed: the profile's whole chain, as ProfiledQuality runs it (first failure stops), once per engine,
  timed with CPU seconds of this process (= MB/s per core); then ours once more over the same documents,
  with every chunk in its token cache (an upper bound for a worker deep into a corpus).

Corpora: python-docs (the standard library's docstrings and pydoc topics, docs profile; also under the web
profile, where the word tokenizer matters), shakespeare (Tiny Shakespeare paragraphs, web profile), warc (a
WARC file this script writes from local HTML pages (--html), extracted by gather, web profile).
Appends one JSON line per corpus and profile to benchmarks/data/filter_results.jsonl.
"""

from __future__ import annotations

import argparse
import copy
import glob
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
from datatrove.data import Document

from llm_recipes.data import steps as S

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "filter_results.jsonl"
# Local HTML that most of our machines have: the Rust book and reference, npm's docs.
DEFAULT_HTML = ["~/.rustup/toolchains/*/share/doc/rust/html/book/**/*.html",
                "~/.rustup/toolchains/*/share/doc/rust/html/reference/**/*.html",
                "/usr/lib/node_modules/npm/docs/output/**/*.html"]
PROFILE_OF = {"python-docs": ["docs", "web"], "shakespeare": ["web"], "warc": ["web"]}


def _bench_clean():
    spec = importlib.util.spec_from_file_location("bench_clean", HERE / "bench_clean.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_warc(patterns: list[str], out: Path, max_mb: float) -> int:
    """A WARC file of HTTP responses, one per local HTML page (deduplicated by content), up to max_mb."""
    from io import BytesIO

    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    paths = sorted({p for pattern in patterns for p in glob.glob(os.path.expanduser(pattern), recursive=True)})
    if not paths:
        raise SystemExit(f"no local HTML found under {patterns}; pass --html GLOB")
    out.parent.mkdir(parents=True, exist_ok=True)
    seen, total, tmp = set(), 0, out.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for path in paths:
            body = Path(path).read_bytes()
            if body in seen:
                continue
            seen.add(body)
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            # an http URL: warcio parses HTTP headers (the content type gather reads) only for http(s) records
            url = f"http://localhost/{path.lstrip('/')}"
            writer.write_record(writer.create_warc_record(url, "response", payload=BytesIO(body),
                                                          http_headers=headers))
            total += len(body)
            if total > max_mb * 2**20:
                break
    tmp.replace(out)
    return len(seen)


def gathered_texts(corpus: str, work: Path, args) -> tuple[list[dict], float | None]:
    """The corpus's gathered rows, and the wall seconds of `llm-recipes gather` when it ran now (for the
    WARC corpus that is reading the WARC and extracting each page's main text, plus the process start)."""
    gathered, gather_s = work / corpus / "gather", None
    if not (gathered / "stage_complete.json").exists():
        if corpus == "warc":
            warc = work / corpus / "pages.warc.gz"
            n = write_warc(args.html or DEFAULT_HTML, warc, args.warc_mb)
            print(f"warc: wrote {n} pages to {warc}", flush=True)
            spec = [{"type": "files", "paths": [str(warc)]}]
        else:
            spec = _bench_clean().sources(corpus, [])
        start = time.time()
        done = subprocess.run([sys.executable, "-m", "llm_recipes.gather", "--output_dir", str(gathered),
                               "--sources", json.dumps(spec), "--overwrite_output_dir", "true"],
                              capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"gather of {corpus} failed:\n{done.stderr[-2000:]}")
        gather_s = round(time.time() - start, 1)
    rows = []
    for path in sorted((gathered / "data").glob("*.parquet")):
        rows += pq.read_table(path, columns=["text", "id", "source"]).to_pylist()
    return rows, gather_s


def repaired(rows: list[dict], profile: str) -> tuple[list[Document], float]:
    """The documents as the quality step receives them: Repair with this profile's markup mode."""
    profiles = S.resolve_profiles({})
    repair = S.Repair(profiles, {"*": profile})
    start = time.process_time()
    docs = list(repair.run(Document(text=r["text"], id=r["id"] or str(i), metadata={"source": r["source"]})
                           for i, r in enumerate(rows)))
    return docs, time.process_time() - start


def batches(docs: list[Document]):
    """The documents in the batches the stage's quality step decides together (filters with `prepare`, the
    fast Gopher filters, decide a batch at once, as in `steps.ProfiledQuality`)."""
    for i in range(0, len(docs), S.ProfiledQuality.BATCH):
        yield docs[i:i + S.ProfiledQuality.BATCH]


def chain_seconds(filters, docs: list[Document]) -> tuple[float, list[str | None]]:
    """CPU seconds of one engine's chain over copies of the documents, and its first failure per document."""
    copies = [Document(text=d.text, id=d.id) for d in docs]
    start = time.process_time()
    outcome = []
    for batch in batches(copies):
        for _, flt in filters:
            if hasattr(flt, "prepare"):
                flt.prepare(batch)
        for doc in batch:
            failure = None
            for name, flt in filters:
                result = flt.filter(doc)
                if result is not True and not (isinstance(result, tuple) and result[0]):
                    failure = f"{name}: {result[1] if isinstance(result, tuple) else 'failed'}"
                    break
            outcome.append(failure)
    return time.process_time() - start, outcome


def decisions(flt, docs: list[Document]) -> list[tuple[bool, str]]:
    """One filter's decision on (a copy of) each document, batch by batch as the stage decides."""
    out = []
    for batch in batches([Document(text=d.text, id=d.id) for d in docs]):
        if hasattr(flt, "prepare"):
            flt.prepare(batch)
        for doc in batch:
            result = flt.filter(doc)
            out.append((True, "") if result is True or (isinstance(result, tuple) and result[0]) else
                       (False, result[1] if isinstance(result, tuple) else "failed"))
    return out


def bench(corpus: str, profile_name: str, docs: list[Document], repair_s: float, show: int) -> dict:
    mb = sum(len(d.text.encode()) for d in docs) / 2**20
    profile = S.resolve_profiles({})[profile_name]
    reference = S.build_filters({**copy.deepcopy(profile), "engine": "datatrove"})
    fast = S.build_filters({**copy.deepcopy(profile), "engine": "fast"})
    for filters in (reference, fast):  # load spaCy and friends outside the timing, as a worker does once
        chain_seconds(filters, docs[:20])
    ref_s, ref_out = chain_seconds(reference, docs)
    fast_s, fast_out = chain_seconds(fast, docs)
    # again, every whitespace chunk now in the spaCy token cache: an upper bound for a worker that has
    # cleaned a lot already, not a corpus figure
    fast_again_s, _ = chain_seconds(fast, docs)
    per_filter = {}
    for (name, ref_flt), (_, fast_flt) in zip(reference, fast):
        disagreements = []
        for doc, a, b in zip(docs, decisions(ref_flt, docs), decisions(fast_flt, docs)):
            if a[0] != b[0]:
                disagreements.append({"id": doc.id, "datatrove": a[1] or "keep", "fast": b[1] or "keep",
                                      "text": doc.text[:160]})
        per_filter[name] = {"agreement": round(1 - len(disagreements) / max(len(docs), 1), 5),
                            "disagreements": len(disagreements), "examples": disagreements[:show]}
    chain_agree = sum((a is None) == (b is None) for a, b in zip(ref_out, fast_out)) / max(len(docs), 1)
    return {"corpus": corpus, "profile": profile_name, "documents": len(docs), "mb": round(mb, 3),
            "repair_mb_per_cpu_s": round(mb / repair_s, 2) if repair_s else None,
            "datatrove_mb_per_cpu_s": round(mb / ref_s, 3), "fast_mb_per_cpu_s": round(mb / fast_s, 3),
            "fast_second_pass_mb_per_cpu_s": round(mb / fast_again_s, 3),
            "speedup": round(ref_s / fast_s, 1), "kept_datatrove": sum(o is None for o in ref_out),
            "kept_fast": sum(o is None for o in fast_out), "chain_agreement": round(chain_agree, 5),
            "per_filter": per_filter}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", action="append", choices=sorted(PROFILE_OF), required=True)
    ap.add_argument("--work", default="/tmp/llm_recipes_bench_filters")
    ap.add_argument("--html", action="append", help="glob of local HTML pages for the warc corpus (repeatable)")
    ap.add_argument("--warc_mb", type=float, default=8.0, help="stop adding pages to the WARC past this size")
    ap.add_argument("--max_docs", type=int, default=0, help="use only the first N documents (0: all)")
    ap.add_argument("--show", type=int, default=5, help="disagreements printed per filter")
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args(argv)
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    for corpus in args.corpus:
        rows, gather_s = gathered_texts(corpus, Path(args.work), args)
        if args.max_docs:
            rows = rows[: args.max_docs]
        for profile in PROFILE_OF[corpus]:
            docs, repair_s = repaired(rows, profile)
            result = bench(corpus, profile, docs, repair_s, args.show)
            result.update({"gather_wall_s": gather_s, "load_avg": [round(x, 2) for x in os.getloadavg()],
                           "commit": commit,
                           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": os.cpu_count()})
            print(json.dumps(result, ensure_ascii=False, indent=1), flush=True)
            with open(args.results, "a") as f:
                f.write(json.dumps(result, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
