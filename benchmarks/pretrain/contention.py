"""Training tokens/s of the quickstart-size model with 0, 1 and 2 busy processes beside it, for the automatic
thread choice (llm_recipes/runtime/threads.py) against fixed 2 and 1 threads: does a shared machine keep its fair
share?

    python benchmarks/pretrain/contention.py --steps 40 --out benchmarks/pretrain/contention.jsonl

Each row: hogs, threads setting, threads used, tokens/s over the timed steps (after 5 warm-up steps). The model
is a random 4 x 256 RecipeGPT at vocabulary 4,096 trained on random ids, 16 x 128 tokens per step: the same
shapes as the quickstart, without its data pipeline.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def tokens_per_second(threads: str, steps: int) -> tuple[int, float]:
    import torch

    from llm_recipes.model import config_from_preset
    from llm_recipes.model.modeling_recipe_gpt import RecipeGPTForCausalLM
    from llm_recipes.runtime.threads import ThreadGovernor

    if threads == "auto":
        governor = ThreadGovernor("benchmark", lambda message: None)
    else:
        torch.set_num_threads(int(threads))
        governor = None
    torch.manual_seed(0)
    model = RecipeGPTForCausalLM(config_from_preset("micro", num_hidden_layers=4, vocab_size=4096,
                                                    max_position_embeddings=128))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 4096, (16, 128))
    timed, start = 0, None
    for step in range(steps + 5):
        if step == 5:
            start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 5:
            timed += ids.numel()
        if governor is not None and step % 10 == 9:
            governor.recheck()
    return torch.get_num_threads(), timed / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--hogs", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", nargs="+", default=["auto", "2", "1"])
    parser.add_argument("--out", default=None, help="append one JSON line per measurement here")
    parser.add_argument("--one", nargs=2, metavar=("THREADS", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:  # a fresh interpreter per measurement: torch's thread pool is set once per process
        used, rate = tokens_per_second(args.one[0], int(args.one[1]))
        print(json.dumps({"threads_used": used, "tokens_per_sec": round(rate, 1)}))
        return 0
    rows = []
    for hogs in args.hogs:
        procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]
        try:
            time.sleep(1.0)
            for threads in args.threads:
                done = subprocess.run([sys.executable, __file__, "--one", threads, str(args.steps)], check=True,
                                      capture_output=True, text=True, timeout=900)
                row = {"hogs": hogs, "threads": threads, **json.loads(done.stdout.strip().splitlines()[-1])}
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps({**row, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
        print(f"contention: wrote {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
