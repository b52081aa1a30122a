"""Keep rates of the clean stage's profiles on a generated corpus with known answers
(llm_recipes/data/profile_set.py: articles, books and docstrings to keep, boilerplate pages to drop).

    python benchmarks/data/bench_profiles.py [--per_kind 100]

Each document goes through the stage's repair and quality steps (Repair, ProfiledQuality) under the
default mapping (`auto`: by file type) and under each profile forced on every document. Appends a JSON line
to benchmarks/data/profile_results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from datatrove.data import Document

from llm_recipes.data import profile_set
from llm_recipes.data import steps as S

HERE = Path(__file__).resolve().parent


def keep_rates(rows: list[dict], mapping: dict) -> tuple[dict, dict]:
    profiles = S.resolve_profiles({})
    repair, quality = S.Repair(profiles, mapping), S.ProfiledQuality(profiles, mapping)
    kept, total, reasons = Counter(), Counter(), defaultdict(Counter)
    for r in rows:
        total[r["kind"]] += 1
        doc = Document(text=r["text"], id=r["id"], metadata={"source": r["source"], "location": r["location"]})
        result = repair.process(doc)
        if not isinstance(result, str):
            result = quality.process(result)
        if isinstance(result, str):
            reasons[r["kind"]][result] += 1
        else:
            kept[r["kind"]] += 1
    return ({k: round(kept[k] / total[k], 3) for k in profile_set.KINDS},
            {k: dict(v.most_common(3)) for k, v in reasons.items()})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per_kind", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", default=str(HERE / "profile_results.jsonl"))
    args = ap.parse_args(argv)
    rows = profile_set.labelled_rows(args.per_kind, args.seed)
    runs = {"default (auto by file type; python-docs: docs)": dict(S.DEFAULT_PROFILE_FOR_SOURCE)}
    runs.update({f"{name} on every document": {"*": name} for name in ("web", "articles", "books", "docs")})
    result = {"per_kind": args.per_kind, "seed": args.seed, "runs": {}}
    for label, mapping in runs.items():
        rates, reasons = keep_rates(rows, mapping)
        result["runs"][label] = {"kept": rates, "top_reasons": reasons}
        print(f"{label:50s} {rates}", flush=True)
    result.update({"load_avg": [round(x, 2) for x in os.getloadavg()],
                   "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
    with open(args.results, "a") as f:
        f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
