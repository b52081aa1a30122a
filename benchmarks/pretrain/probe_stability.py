"""How often the compute-budget dial's probe picks each depth, before and after a change to the probe or the rule.

    nice -n 10 python benchmarks/pretrain/probe_stability.py --repeats 10 --busy 0 1 \
        --out benchmarks/pretrain/probe_stability.jsonl

Each repeat is a fresh process, as a pretrain stage is: it picks its torch threads from the CPUs free (as the stage
does), runs the dial's probe (`measure_throughput` at the two depths the stage would time) and plans the quickstart's
budget (360 s, vocabulary 4,096, 6,008,417 corpus tokens) with it (`after`: `sizing.probe_and_plan`, which probes a
second time when the first line puts the plan beyond the probed depths; `ratio` and the picks by rule are from the
last probe). Variants, interleaved within each repeat (their
order alternating): `before` = sizing.py as of --before (a git commit: the code that ran the 3-seed comparison),
`after` = this checkout's. Each row also plans its probe with the other variant's rule, to separate the probe's part
from the rule's. `--busy K`: K competing busy processes (a Python spin loop each, at this process's niceness) run
during that condition. One JSON line per probe: load average, CPUs free, threads, the probe's step times, the
depth each rule picks.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SPIN = "while True: pass"


def load_variant(name: str, before: str):
    """sizing.py of this checkout, or as of commit `before` (imported inside llm_recipes.training, so that its
    relative imports resolve)."""
    if name == "after":
        from llm_recipes.training import sizing

        return sizing
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{before}:llm_recipes/training/sizing.py"],
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "sizing_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("llm_recipes.training._sizing_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def child(args) -> dict:
    """One probe in this (fresh) process, as `sizing.size_run` runs it on a CPU."""
    import torch

    from llm_recipes.runtime.threads import choose, free_cpus, usable_cpus

    free = free_cpus()
    torch.set_num_threads(choose(free))
    modules = {name: load_variant(name, args.before) for name in ("before", "after")}
    sizing = modules[args.variant]
    memory = sizing.available_memory("cpu")
    load_start = os.getloadavg()
    start = time.perf_counter()
    if hasattr(sizing, "probe_and_plan"):  # the stage's own probe-then-plan (with its re-probe)
        throughputs = []

        def probe(*a, **k):
            throughputs.append(sizing.measure_throughput(*a, **k))
            return throughputs[-1]

        sizing.probe_and_plan("cpu", args.budget, args.vocab, memory, args.unique_tokens, cpus=usable_cpus(),
                              probe=probe)
        throughput = throughputs[-1]
    else:  # the code of the 3-seed comparison: as its size_run did
        guess = sizing.fallback_throughput("cpu", "first guess", None, usable_cpus())
        first = sizing.plan_run(args.budget, args.vocab, guess, memory, args.unique_tokens)
        top, rows = first.shape["num_hidden_layers"], max(1, min(first.per_device_train_batch_size, 16))
        throughput = sizing.measure_throughput("cpu", args.vocab, [max(1, top // 2), max(2, top)], first.seq_len,
                                               rows)
        throughputs = [throughput]
    probe_s = time.perf_counter() - start
    picks = {}
    for rule, module in modules.items():
        t = module.Throughput(throughput.overhead_s, throughput.flops_per_s, "cpu", True, "probe")
        picks[rule] = module.plan_run(args.budget, args.vocab, t, memory, args.unique_tokens).depth
    points = sorted(throughput.probes, key=lambda p: p["depth"])
    return {"variant": args.variant, "busy": args.busy_now, "load_avg": list(load_start), "cpus_free": round(free, 2),
            "threads": torch.get_num_threads(), "probe_s": round(probe_s, 2), "probes": throughput.probes,
            "first_probes": throughputs[0].probes if len(throughputs) > 1 else None,
            "ratio": round(points[-1]["step_s"] / points[0]["step_s"], 3),
            "flops_per_s": float(f"{throughput.flops_per_s:.4g}"), "overhead_s": round(throughput.overhead_s, 5),
            "depth": picks[args.variant], "depth_by_rule": picks,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 1], help="competing busy processes, per condition")
    parser.add_argument("--before", default="a35f74c", help="git commit of the 'before' sizing.py")
    parser.add_argument("--budget", type=float, default=360.0)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--unique_tokens", type=float, default=6_008_417)
    parser.add_argument("--out", type=Path, help="append one JSON line per probe here")
    parser.add_argument("--variant", choices=["before", "after"], help=argparse.SUPPRESS)  # the child's
    parser.add_argument("--busy_now", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        print(json.dumps(child(args)), flush=True)
        return 0
    rows = []
    for busy in args.busy:
        spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(busy)]
        try:
            time.sleep(2 if busy else 0)
            for repeat in range(args.repeats):
                for variant in (("before", "after") if repeat % 2 == 0 else ("after", "before")):
                    out = subprocess.run(
                        [sys.executable, __file__, "--variant", variant, "--busy_now", str(busy), "--before",
                         args.before, "--budget", str(args.budget), "--vocab", str(args.vocab), "--unique_tokens",
                         str(args.unique_tokens)], check=True, capture_output=True, text=True).stdout
                    row = json.loads(out.strip().splitlines()[-1])
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if args.out:
                        with open(args.out, "a") as f:
                            f.write(json.dumps(row) + "\n")
        finally:
            for spinner in spinners:
                spinner.kill()
                spinner.wait()
    for busy in args.busy:
        for variant in ("before", "after"):
            picked = [r for r in rows if r["busy"] == busy and r["variant"] == variant]
            counts = Counter(r["depth"] for r in picked)
            ratios = sorted(r["ratio"] for r in picked)
            loads = [r["load_avg"][0] for r in picked]
            print(f"busy {busy}, {variant}: depths {dict(sorted(counts.items()))}, step-time ratio "
                  f"{ratios[0]:.2f}-{ratios[-1]:.2f}, load {min(loads):.2f}-{max(loads):.2f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
