"""Start cost of a data worker: a fresh Python that imports the clean stage's steps and readies the English
word splitter (what a local or Ray worker does before its first document), for this checkout and another
(--before, e.g. an older checkout), interleaved: wall seconds, peak RSS, whether torch got imported.

    python benchmarks/data/bench_worker_start.py --before /work/main --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKER = """
import json, resource, sys, time
start = time.time()
from llm_recipes.data import steps
from llm_recipes.data.fastfilters import spacy_words
spacy_words()("Warm the tokenizer up, once.")
print(json.dumps({"seconds": time.time() - start, "torch": "torch" in sys.modules,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(checkout: str) -> dict:
    env = {**os.environ, "PYTHONPATH": checkout}
    start = time.time()
    # run from the checkout: `python -c` puts the working directory first on sys.path, before PYTHONPATH
    done = subprocess.run([sys.executable, "-c", WORKER], env=env, capture_output=True, text=True, check=True,
                          cwd=checkout)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = time.time() - start
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, help="another checkout of llm_recipes to compare with")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    checkouts = {"before": args.before, "this": str(HERE.parents[1])}
    runs = {name: [] for name in checkouts}
    for _ in range(args.rounds):
        for name, path in checkouts.items():
            runs[name].append(measure(path))
    summary = {name: {"median_process_wall_s": round(sorted(r["process_wall_s"] for r in rs)[len(rs) // 2], 2),
                      "peak_rss_mb": round(max(r["peak_rss_mb"] for r in rs)), "torch": rs[0]["torch"]}
               for name, rs in runs.items()}
    summary.update({"load_avg": [round(x, 2) for x in os.getloadavg()],
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
    print(json.dumps(summary, indent=1))
    with open(HERE / "worker_start_results.jsonl", "a") as f:
        f.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
