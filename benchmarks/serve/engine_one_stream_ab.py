"""The engine alone (no HTTP, no engine process), one stream, source trees side by side in alternating rounds:
where a token's CPU time goes (the decode step, sampling and emitting, the worker thread in all) and tokens/s.

Each round runs every tree in a fresh process (PYTHONPATH=tree): 8 requests (`--requests`) of 100 sampled tokens
(temperature 0.8, a seed) one after another on the quickstart model; CPU times are the worker thread's own
(`thread_time`), which move less with the neighbours' load than wall time does. `--stub_step`: the numba step's
compiled call (`StaticDecoder.step_and_pick`) answers at once with one fixed token and logits, so the worker's time
per token is the engine's Python around the step alone (emitting, the loop), where a change of a fraction of a
microsecond shows.

    python benchmarks/serve/engine_one_stream_ab.py runs/quickstart/dpo/final --tree before=/work/main \\
        --tree after=. --tree after-2threads=.,threads=2 --rounds 3 --json_out engine-one-stream.jsonl
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import threading
import time

from rows import record  # benchmarks/serve/rows.py (the script's folder is on sys.path)


def child(model_path: str, threads: int, requests: int = 8, stub_step: bool = False) -> dict:
    from llm_recipes.serving.engine import GenerationEngine, GenerationRequest
    from llm_recipes.serving.loading import load_for_serving

    model, tokenizer = load_for_serving(model_path)
    engine = GenerationEngine(model, tokenizer.pad_token_id, max_batch_size=32, num_threads=threads)
    spent = collections.defaultdict(float)
    if stub_step:
        if engine._static.one_row_step != "numba":
            raise SystemExit(f"--stub_step needs the numba step; this engine: {engine.decode_path}")
        answer = engine._static.step_and_pick(7, 0, 0.8, 0.5)  # a real token and logits, returned from now on
        engine._static.step_and_pick = lambda token, position, temperature, uniform: answer

    def timed(obj, name, key):  # the worker thread's CPU time inside obj.name
        inner = getattr(obj, name)

        def wrapper(*args, **kwargs):
            start = time.thread_time()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[key] += time.thread_time() - start
        setattr(obj, name, wrapper)

    for name in ("step", "step_one", "step_and_pick"):  # the torch, numpy and numba steps (whichever the tree has)
        if hasattr(engine._static, name) and not stub_step:  # a stub's time is not worth two clock readings
            timed(engine._static, name, "step")
    timed(engine, "_sample_and_emit", "sample_and_emit")

    def one(tokens: int = 100) -> int:
        """One request; adds the worker thread's CPU time from its first token to its last to spent["worker"]."""
        done, count, clock = threading.Event(), [0], []

        def emit(event):  # on the worker thread: thread_time is its CPU clock
            clock.append(time.thread_time())
            if event[0] == "token":
                count[0] += 1
            else:
                done.set()
        engine.submit(GenerationRequest(list(range(5, 25)), tokens, emit, temperature=0.8, seed=1))
        done.wait(120)
        spent["worker"] += (clock[-2] - clock[0]) * count[0] / max(count[0] - 1, 1)  # per token, prefill left out
        return count[0]

    one()
    spent.clear()
    load = os.getloadavg()[0]
    start, tokens = time.perf_counter(), 0
    for _ in range(requests):
        tokens += one()
    wall = time.perf_counter() - start
    engine.shutdown()
    return {"threads": engine.num_threads, "requests": requests, "stub_step": stub_step, "tokens_per_s": tokens / wall,
            **{f"{k}_cpu_us_per_token": 1e6 * v / tokens for k, v in spent.items()},
            "loadavg_1min": [round(load, 2), round(os.getloadavg()[0], 2)]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_path")
    parser.add_argument("--tree", action="append", required=True, metavar="LABEL=TREE[,threads=N]")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=8, help="requests of 100 tokens per tree and round")
    parser.add_argument("--stub_step", action="store_true",
                        help="the numba step's compiled call answers at once: the engine's Python alone")
    parser.add_argument("--json_out")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # decoding threads, in the child process
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.model_path, args.child, args.requests, args.stub_step)))
        return 0
    trees = []
    for label, _, spec in (t.partition("=") for t in args.tree):
        tree, *options = spec.split(",")
        threads = int(options[0].removeprefix("threads=")) if options else 1
        trees.append((label, os.path.abspath(tree), threads))
    for round_ in range(1, args.rounds + 1):
        for label, tree, threads in trees if round_ % 2 else trees[::-1]:
            env = {**os.environ, "PYTHONPATH": tree}
            command = [sys.executable, __file__, args.model_path, "--tree", "x=.", "--child", str(threads),
                       "--requests", str(args.requests)] + ["--stub_step"] * args.stub_step
            out = subprocess.run(command, env=env, cwd=tree, capture_output=True, text=True, check=True)
            record({"round": round_, "tree": label, **json.loads(out.stdout.strip().splitlines()[-1])}, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
