"""Near-dedup precision and recall on the generated near-duplicate set, for several MinHash settings.

    python benchmarks/data/bench_dedup.py --scale 4
    python benchmarks/data/bench_dedup.py --scale 1 --setting 3,20,3,api --setting 5,14,8,plain

A setting is `ngram,buckets,hashes_per_bucket,api|plain` (api: the docs profile keys shingles by the API
names a docstring mentions; plain: MinHash alone). Each runs the clean pipeline (dedup only: no quality
filters, no PII) on the set written in 4 shards and scores what it kept (llm_recipes/data/neardup_set.py).
Writes one JSON line per setting to benchmarks/data/dedup_results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from llm_recipes.data.cleaning import CleanConfig, clean
from llm_recipes.data.documents import write_parquet_atomic
from llm_recipes.data.neardup_set import near_duplicate_set, precision_recall

RESULTS = Path(__file__).resolve().parent / "dedup_results.jsonl"
SETTINGS = ("3,20,3,api", "3,20,3,plain", "3,14,8,api", "5,14,8,api", "5,20,3,api", "2,20,3,api", "3,10,5,api")


def kept_ids(folder: Path) -> set[str]:
    return {i for path in folder.glob("*/*.parquet") for i in pq.read_table(path, columns=["id"])["id"].to_pylist()}


def measure(setting: str, dataset, work: Path, shards: int = 4) -> dict:
    ngram, buckets, hashes, mode = setting.split(",")
    inp = work / "in"
    if not inp.exists():
        size = len(dataset.rows) // shards + 1
        for i in range(shards):
            write_parquet_atomic(inp / "data" / f"{i:05d}.parquet", dataset.rows[i * size:(i + 1) * size])
    out = work / setting.replace(",", "-")
    load = os.getloadavg()[0]
    started = time.time()
    report = clean(CleanConfig(
        input_dir=str(inp), output_dir=str(out), num_workers=2, progress=False, quality_filters=False, pii=False,
        compare_profiles_sample=0.0, minhash_ngram=int(ngram), minhash_buckets=int(buckets),
        minhash_hashes_per_bucket=int(hashes), profiles={"docs": {"dedup_api_names": mode == "api"}}))
    kept = kept_ids(out)
    return {"setting": setting, "documents": len(dataset.rows), "wall_s": round(time.time() - started, 1),
            "near_dedup_s": report["seconds"]["near_dedup"], "load_1min": round(load, 2),
            **{part: precision_recall(dataset, kept, None if part == "all" else part)
               for part in ("docs", "web", "all")}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=4, help="copies of the set with new APIs and pages")
    parser.add_argument("--setting", action="append", help=f"ngram,buckets,hashes,api|plain (default: {SETTINGS})")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args(argv)
    dataset = near_duplicate_set(seed=0, scale=args.scale)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        for setting in args.setting or SETTINGS:
            record = {**measure(setting, dataset, Path(tmp)), "commit": commit,
                      "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                      "machine": f"{platform.machine()} {os.cpu_count()} cores"}
            print(json.dumps(record), flush=True)
            with open(args.results, "a") as f:
                f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
