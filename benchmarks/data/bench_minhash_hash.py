"""Near-dedup with datatrove's SHA-1 shingles vs `minhash_shingle_hash: words` (a different hash): decisions and cost.

    python benchmarks/data/bench_minhash_hash.py --gathered /work/qs-ci3/gather \\
        --gathered /tmp/llm_recipes_bench_data/python-docs/gather --rounds 2

For each gather output, `llm-recipes clean` runs once per hash (interleaved, same settings otherwise, 2 workers),
and the documents each run keeps are compared: agreement = share of the documents that reach near-dedup (the
filter phase's survivors, identical in both runs) with the same keep/remove decision; the disagreeing ids are
listed. A second measure ignores which member of a duplicate cluster is kept (datatrove's union by size picks
it by the order the pairs arrive in): agreement on whether a document is in some duplicate pair at all
(`in_a_pair_agreement`, from the kept `.dups` files). With the docs profile's API-name keys (the default)
MinHash removes little from documentation;
`--clean_arg 'profiles={"docs": {"dedup_api_names": false}}'` compares MinHash alone. CPU s = the whole
process tree; the near-dedup phase's wall seconds come from the report.
Writes a JSON line per comparison to benchmarks/data/minhash_hash_results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_clean import children_cpu_s, clean_flags, run  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "minhash_hash_results.jsonl"


def clean(gathered: Path, out: Path, shingle_hash: str, args) -> dict:
    subprocess.run(["rm", "-rf", str(out)], check=True)
    cpu = children_cpu_s()
    seconds, peak = run([sys.executable, "-m", "llm_recipes.clean", "--input_dir", str(gathered), "--output_dir",
                         str(out), "--num_workers", str(args.workers), "--progress", "false",
                         "--minhash_shingle_hash", shingle_hash, "--keep_work", "true", *clean_flags(args)])
    cpu = children_cpu_s() - cpu
    report = json.loads((out / "report.json").read_text())
    import pyarrow.parquet as pq

    kept = {i for split in ("train", "validation") for f in sorted((out / split).glob("*.parquet"))
            for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()}
    near = next(s for s in report["steps"] if s["step"] == "near dedup")
    # documents in some duplicate pair (signature file, document), whichever of a cluster datatrove keeps: its
    # union by size picks the kept member by the order pairs arrive in, which another hash changes
    import numpy as np

    clustered = set()
    for dups in (out / "work" / "minhash" / "buckets").glob("*.dups"):
        pairs = np.frombuffer(dups.read_bytes(), dtype="<u4").reshape(-1, 4)
        clustered.update(map(tuple, pairs[:, :2].tolist()), map(tuple, pairs[:, 2:].tolist()))
    return {"cpu_s": round(cpu, 1), "mb": report["input_bytes"] / 2**20, "kept": kept, "near_in": near["docs_in"],
            "near_removed": near["docs_in"] - near["docs_out"],
            "clustered": clustered, "near_dedup_s": report["seconds"]["near_dedup"],
            "peak_pss_mb": round(peak / 2**20)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gathered", action="append", required=True, help="a gather output (repeat for several)")
    ap.add_argument("--work", default="/tmp/llm_recipes_bench_minhash_hash")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--clean_arg", action="append", help="key=value: a setting passed to every clean run, e.g. "
                    "'profiles={\"docs\": {\"dedup_api_names\": false}}' (MinHash alone: many more removals)")
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args()
    for _ in range(args.rounds):
        for gathered in map(Path, args.gathered):
            if not (gathered / "data").is_dir():
                raise SystemExit(f"--gathered {gathered}: expected a gather output with a data/ folder")
            runs = {h: clean(gathered.absolute(), Path(args.work) / h, h, args) for h in ("sha1", "words")}
            sha1, words = runs["sha1"], runs["words"]
            differ = sorted(sha1["kept"] ^ words["kept"])
            in_clusters = sha1["clustered"] ^ words["clustered"]
            result = {"input": str(gathered), "clean_args": args.clean_arg or [], "input_mb": round(sha1["mb"], 2),
                      "near_dedup_input": sha1["near_in"],
                      "removed_sha1": sha1["near_removed"], "removed_words": words["near_removed"],
                      "disagreements": len(differ),
                      "agreement": round(1 - len(differ) / max(sha1["near_in"], 1), 5),
                      "in_a_duplicate_pair": {h: len(r["clustered"]) for h, r in runs.items()},
                      "in_a_pair_disagreements": len(in_clusters),
                      "in_a_pair_agreement": round(1 - len(in_clusters) / max(sha1["near_in"], 1), 5),
                      "kept_only_by_sha1": [i for i in differ if i in sha1["kept"]][:20],
                      "kept_only_by_words": [i for i in differ if i in words["kept"]][:20],
                      "cpu_s": {h: r["cpu_s"] for h, r in runs.items()},
                      "mb_per_cpu_s": {h: round(r["mb"] / r["cpu_s"], 3) for h, r in runs.items()},
                      "near_dedup_wall_s": {h: r["near_dedup_s"] for h, r in runs.items()},
                      "peak_pss_mb": {h: r["peak_pss_mb"] for h, r in runs.items()},
                      "load_avg": [round(x, 2) for x in os.getloadavg()],
                      "commit": subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                                               text=True, cwd=Path(__file__).parent).stdout.strip(),
                      "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
            print(json.dumps(result), flush=True)
            with open(args.results, "a") as f:
                f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
