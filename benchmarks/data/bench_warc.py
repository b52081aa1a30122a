"""WARC reading and HTML main-text extraction: warcio + trafilatura (gather's readers) against fastwarc +
resiliparse, on the same WARC in the same process, interleaved; and how close their texts are.

    python benchmarks/data/bench_warc.py [--warc PATH] [--rounds 3]

The WARC is the one bench_filters.py builds from local HTML (the Rust book and reference, npm's docs),
written if missing. Times are CPU seconds of this process (MB/s per core of HTML read). Text agreement,
per page: the share of trafilatura's words (as a multiset) that resiliparse also gives (recall of
trafilatura's text) and the share of resiliparse's words that trafilatura also gives (how much more it
keeps: navigation, code blocks). Appends a JSON line to benchmarks/data/warc_results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_WARC = Path("/tmp/llm_recipes_bench_filters/warc/pages.warc.gz")


def warcio_pages(path: Path) -> list[tuple[str, bytes]]:
    from warcio.archiveiterator import ArchiveIterator

    pages = []
    with open(path, "rb") as f:
        for record in ArchiveIterator(f, arc2warc=True):
            if record.rec_type == "response":
                pages.append((record.rec_headers.get_header("WARC-Target-URI"), record.content_stream().read()))
    return pages


def fastwarc_pages(path: Path) -> list[tuple[str, bytes]]:
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    return [(record.headers.get("WARC-Target-URI"), record.reader.read())
            for record in ArchiveIterator(str(path), record_types=WarcRecordType.response)]


def trafilatura_texts(pages):
    sys.path.insert(0, str(HERE.parents[1]))
    from llm_recipes.data.sources import html_to_text

    return [html_to_text(body.decode("utf-8", "replace"), url)[0] for url, body in pages]


def resiliparse_texts(pages):
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    return [extract_plain_text(HTMLTree.parse_from_bytes(body, "utf-8"), main_content=True) for _, body in pages]


def overlap(reference: str, other: str) -> tuple[float, float]:
    a, b = Counter(reference.split()), Counter(other.split())
    common = sum((a & b).values())
    return common / max(sum(a.values()), 1), common / max(sum(b.values()), 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--warc", default=str(DEFAULT_WARC))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--results", default=str(HERE / "warc_results.jsonl"))
    args = ap.parse_args(argv)
    warc = Path(args.warc)
    if not warc.exists():
        subprocess.run([sys.executable, str(HERE / "bench_filters.py"), "--corpus", "warc", "--warc_mb", "4",
                        "--max_docs", "1", "--results", os.devnull], check=True)
    mb = warc.stat().st_size / 2**20
    best: dict[str, float] = {}
    texts = {}
    for _ in range(args.rounds):  # interleaved rounds; the best of each is the least disturbed by the load
        for name, read, extract in (("warcio+trafilatura", warcio_pages, trafilatura_texts),
                                    ("fastwarc+resiliparse", fastwarc_pages, resiliparse_texts)):
            start = time.process_time()
            pages = read(warc)
            read_s = time.process_time() - start
            texts[name] = extract(pages)
            total = time.process_time() - start
            best[f"{name} read"] = min(best.get(f"{name} read", 1e9), read_s)
            best[f"{name} total"] = min(best.get(f"{name} total", 1e9), total)
    html_mb = sum(len(b) for _, b in warcio_pages(warc)) / 2**20
    ref, new = texts["warcio+trafilatura"], texts["fastwarc+resiliparse"]
    pairs = [overlap(a, b) for a, b in zip(ref, new) if a.strip()]
    recall = sorted(p[0] for p in pairs)
    precision = sorted(p[1] for p in pairs)
    result = {"warc": str(warc), "warc_mb": round(mb, 2), "html_mb": round(html_mb, 2), "pages": len(ref),
              **{f"{k} s": round(v, 3) for k, v in best.items()},
              "trafilatura_html_mb_per_cpu_s": round(html_mb / best["warcio+trafilatura total"], 2),
              "resiliparse_html_mb_per_cpu_s": round(html_mb / best["fastwarc+resiliparse total"], 2),
              "text_chars": {"trafilatura": sum(map(len, ref)), "resiliparse": sum(map(len, new))},
              "recall_of_trafilatura_words": {"median": recall[len(recall) // 2], "p10": recall[len(recall) // 10],
                                              "mean": round(sum(recall) / len(recall), 3)},
              "resiliparse_words_in_trafilatura": {"median": precision[len(precision) // 2],
                                                   "p10": precision[len(precision) // 10],
                                                   "mean": round(sum(precision) / len(precision), 3)},
              "empty": {"trafilatura": sum(not t.strip() for t in ref),
                        "resiliparse": sum(not t.strip() for t in new)},
              "load_avg": [round(x, 2) for x in os.getloadavg()],
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(json.dumps(result, indent=1))
    with open(args.results, "a") as f:
        f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
