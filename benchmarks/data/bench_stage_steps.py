"""Where the clean stage's CPU goes, step by step, per MB of input (one process, CPU seconds).

    python benchmarks/data/bench_stage_steps.py --input_dir /work/qs-dial/gather --label quickstart-docs
    python benchmarks/data/bench_stage_steps.py --input_dir /tmp/llm_recipes_bench_data/warc/gather --label warc

Runs the stage's own steps (steps.py, default settings) over a gather output in one process, each step
over the whole corpus before the next, and times each with `time.process_time`: reading the parquet
shards into Documents, repair, the quality filters of each document's profile (with the report's web
comparison sample), the filter phase's writer work (exact-dedup hash + parquet write), MinHash
signatures (shingles + signature, no file writes), PII scrubbing and the split writer's hash. What it
leaves out is per-run fixed cost (starting Python and workers, imports, datatrove's task bookkeeping,
MinHash buckets and clustering, the report): `bench_clean.py` measures the whole stage. Writes one JSON
line per run to benchmarks/data/steps_results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "steps_results.jsonl"


def timed(label: str, timings: dict, fn):
    start = time.process_time()
    out = fn()
    timings[label] = round(time.process_time() - start, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input_dir", required=True, help="a gather output (data/*.parquet)")
    ap.add_argument("--label", default="", help="corpus name in the results")
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args(argv)

    from datatrove.data import Document
    from datatrove.pipeline.dedup import MinhashConfig
    from datatrove.utils.hashing import HashConfig

    from llm_recipes.data import steps as S
    from llm_recipes.data import textops
    from llm_recipes.data.cleaning import CleanConfig, input_files
    from llm_recipes.data.documents import write_parquet_atomic
    from llm_recipes.data.fastfilters import spacy_words

    cfg = CleanConfig(input_dir=args.input_dir)
    files = input_files(args.input_dir)
    profiles = S.resolve_profiles({})
    mapping = dict(S.DEFAULT_PROFILE_FOR_SOURCE)
    timings: dict[str, float] = {}
    timed("ready spaCy (once per worker)", timings, spacy_words)

    reader = S.ShardReader(files)
    docs = timed("read parquet", timings,
                 lambda: [doc for rank in range(len(files)) for doc in reader.run(rank=rank)])
    documents_in = len(docs)
    mb = sum(S._nbytes(d.text) for d in docs) / 2**20
    repair = S.Repair(profiles, mapping, cfg.unicode_repair, cfg.remove_markup, cfg.remove_boilerplate)
    docs = timed("repair", timings, lambda: list(repair.run(docs)))
    docs = timed("length", timings, lambda: list(S.LengthGate(cfg.min_chars, cfg.max_chars).run(docs)))
    quality = S.ProfiledQuality(profiles, mapping, cfg.compare_profiles_sample)
    quality.filters("web")  # built outside the timing, as a worker does once
    docs = timed("quality filters", timings, lambda: list(quality.run(docs)))
    with tempfile.TemporaryDirectory() as tmp:
        def write():
            rows = [S._row(d) for d in docs]
            hashes = [textops.text_hash(d.text) for d in docs]
            write_parquet_atomic(Path(tmp) / "filtered.parquet", rows)
            return hashes
        timed("filter writer (hash + parquet)", timings, write)
    mh = MinhashConfig(n_grams=cfg.minhash_ngram, num_buckets=cfg.minhash_buckets,
                       hashes_per_bucket=cfg.minhash_hashes_per_bucket, seed=cfg.seed,
                       hash_config=HashConfig(precision=64, hash_fc="sha1"))
    signature = S.fast_minhash_signature("/tmp/unused-minhash", mh, profiles, mapping)

    def signatures():
        out = []
        for doc in docs:
            profile = S.profile_of(doc, signature.profile_map)
            signature._key = S._names_key(S.api_names(doc.text) | {doc.metadata.get("title") or ""}) \
                if profile in signature.keyed_profiles else 0
            shingles = signature.get_shingles(doc.text)
            if shingles.size:
                out.append(signature.get_signature(shingles))
        return out
    timed("MinHash signatures", timings, signatures)
    copies = [Document(text=d.text, id=d.id, metadata=d.metadata) for d in docs]
    timed("PII", timings, lambda: list(S.ScrubPII().run(copies)))
    splitter = S.SplitWriter("/tmp/unused-split", cfg.validation_fraction, cfg.seed, "/tmp/unused-ledger", [])
    timed("split hash", timings, lambda: [splitter.split_of(d.id) for d in copies])
    per_mb = {k: round(v / mb, 3) for k, v in timings.items() if not k.startswith("ready")}
    marginal = sum(per_mb.values())
    result = {"corpus": args.label or args.input_dir, "input_mb": round(mb, 2), "documents_in": documents_in,
              "documents_after_filters": len(docs), "cpu_s": timings, "cpu_s_per_mb": per_mb,
        "steps_mb_per_cpu_s": round(1 / marginal, 3) if marginal else None,
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "commit": subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                                 cwd=HERE).stdout.strip(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(json.dumps(result, indent=1), flush=True)
    with open(args.results, "a") as f:
        f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
