"""The same clean run on local processes and on a Ray cluster (a throwaway head on 127.0.0.1), side by side.

    python benchmarks/data/bench_cluster.py --shards 8 --documents 4000 --cpus 2

Writes a generated corpus (prose documents with near duplicates, and templated docstrings) in `--shards`
parquet shards, cleans it with `executor: local` (`--cpus` workers) and then `executor: ray` (a head with
`--cpus` CPUs, started and stopped here), checks that both kept the same documents with the same report
counts, and prints the wall times per phase. Appends one JSON line to benchmarks/data/cluster_results.jsonl.
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
from llm_recipes.data.executors import local_ray_head
from llm_recipes.data.neardup_set import near_duplicate_set

RESULTS = Path(__file__).resolve().parent / "cluster_results.jsonl"


def run(work: Path, name: str, cpus: int, cluster: dict) -> dict:
    """One clean of the corpus; `cluster`: the executor keys of the clean config."""
    load = os.getloadavg()[0]
    started = time.time()
    report = clean(CleanConfig(input_dir=str(work / "in"), output_dir=str(work / name), num_workers=cpus,
                               progress=False, **cluster))
    wall = time.time() - started
    ids = sorted(i for path in (work / name).glob("*/*.parquet") for i in pq.read_table(path)["id"].to_pylist())
    return {"wall_s": round(wall, 1), "phases_s": report["seconds"], "load_1min_at_start": round(load, 2),
            "ids": ids, "counts": {k: v for k, v in report.items() if k not in ("seconds", "mb_per_s")}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--documents", type=int, default=4000, help="about this many documents")
    parser.add_argument("--cpus", type=int, default=2, help="local workers = CPUs of the Ray head")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args(argv)
    dataset = near_duplicate_set(seed=1, scale=max(1, args.documents // 189))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        size = len(dataset.rows) // args.shards + 1
        for i in range(args.shards):
            write_parquet_atomic(work / "in" / "data" / f"{i:05d}.parquet", dataset.rows[i * size:(i + 1) * size])
        local = run(work, "local", args.cpus, {})
        with local_ray_head(work / "ray-head", num_cpus=args.cpus) as address:
            ray = run(work, "ray", args.cpus, dict(executor="ray", ray_address=address))
    same_ids, same_counts = local.pop("ids") == ray.pop("ids"), local.pop("counts") == ray.pop("counts")
    identical = same_ids and same_counts
    record = {"documents": len(dataset.rows), "shards": args.shards, "cpus": args.cpus, "identical": identical,
              "local": local, "ray": ray, "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{platform.machine()} {os.cpu_count()} cores"}
    print(json.dumps(record), flush=True)
    with open(args.results, "a") as f:
        f.write(json.dumps(record) + "\n")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
