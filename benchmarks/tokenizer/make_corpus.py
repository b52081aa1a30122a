"""Writes a clean-stage-shaped corpus for the tokenizer benchmarks: docstrings of the installed Python
packages (read with `ast`, nothing imported), deduplicated, split 99/1 into train/ and validation/ parquet.

    python benchmarks/tokenizer/make_corpus.py --output /tmp/tok_corpus --megabytes 25

It stands in for `runs/quickstart/clean` so the benchmark does not depend on the gather/clean stages;
the text is the same kind (Python documentation prose and examples).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import site
import sys
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def docstrings(path: Path):
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError, RecursionError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            text = ast.get_docstring(node)
            if text and len(text) >= 200:
                yield text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--megabytes", type=float, default=25)
    args = parser.parse_args()
    roots = [Path(sysconfig.get_paths()["stdlib"])] + [Path(p) for p in site.getsitepackages()]
    seen, texts, size, limit = set(), [], 0, args.megabytes * 2**20
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            for text in docstrings(path):
                key = hashlib.sha1(text.encode("utf-8", "replace")).digest()
                if key in seen:
                    continue
                seen.add(key)
                texts.append(text)
                size += len(text.encode("utf-8", "replace"))
            if size >= limit:
                break
        if size >= limit:
            break
    # every 100th document to validation: spread over all packages, disjoint from train
    split = {"train": [t for i, t in enumerate(texts) if i % 100], "validation": texts[::100]}
    out = Path(args.output)
    for name, rows in split.items():
        (out / name).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"text": rows, "id": [f"{name}-{i}" for i in range(len(rows))]}),
                       out / name / "part-00000.parquet")
    print(f"wrote {len(split['train']):,} train + {len(split['validation']):,} validation documents, "
          f"{size / 2**20:.1f} MB, to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
