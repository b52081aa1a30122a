"""CPU seconds of each clean phase, the whole stage in this one process (1 worker, default settings).

    PYTHONPATH=/work/main python benchmarks/data/bench_phase_cpu.py --input_dir /work/qs-dial/gather
    PYTHONPATH=. python benchmarks/data/bench_phase_cpu.py --input_dir /work/qs-dial/gather [--engine datatrove]

Run as a script (not `python -m`), so PYTHONPATH picks the checkout whose llm_recipes runs: two checkouts
compare phase by phase on the same input. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input_dir", required=True)
    ap.add_argument("--engine", choices=["fast", "datatrove"], default="fast",
                    help="quality-filter engine of the web and docs profiles (datatrove: its own filter classes)")
    args = ap.parse_args()

    import llm_recipes
    from llm_recipes.data import cleaning, executors

    phases: dict[str, float] = {}
    original = executors.PhaseRunner.run

    def timed_run(self, phase, *a, **k):
        start = time.process_time()
        original(self, phase, *a, **k)
        phases[phase] = round(time.process_time() - start, 2)

    executors.PhaseRunner.run = timed_run
    start = time.process_time()
    with tempfile.TemporaryDirectory() as out:
        profiles = {name: {"engine": args.engine} for name in ("web", "docs")}
        report = cleaning.clean(cleaning.CleanConfig(input_dir=args.input_dir, output_dir=out, num_workers=1,
                                                     progress=False, profiles=profiles))
    total = time.process_time() - start
    mb = report["input_bytes"] / 2**20
    print(json.dumps({"code": os.path.dirname(os.path.dirname(llm_recipes.__file__)), "engine": args.engine,
                      "input_mb": round(mb, 2),
                      "phases_cpu_s": phases, "total_cpu_s": round(total, 2), "mb_per_cpu_s": round(mb / total, 3),
                      "output_documents": report["output_documents"], "load_avg": os.getloadavg(),
                      "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}))


if __name__ == "__main__":
    main()
