"""The engine alone (no HTTP), its sampler A/B in one process: the inverse-CDF draw (`engine._draw`) against
torch.multinomial (what it replaced), alternating rounds; 32 seeded rows x 48 tokens. Prints tokens/s and this
process's CPU microseconds per token for each. (One stream no longer reaches `_draw`: it draws through `_draw_one`
or the numba step's draw, so the 1-row figures of 2026-12-05 05:55 are not measured here any more.)

    python benchmarks/serve/engine_sampling_ab.py runs/quickstart/dpo/final
"""

import json
import os
import sys
import threading
import time

import torch

from llm_recipes.serving import engine as E
from llm_recipes.serving.loading import load_for_serving

new_draw = E._draw


def old_draw(probs, uniforms):
    """The sampler before: torch.multinomial, one call per seeded row (every row here is seeded; the rows' own
    generators are not reachable from `_draw`'s arguments any more, so torch's global one draws: the same cost, and
    the same distribution)."""
    return [int(torch.multinomial(probs[j], 1)) for j in range(len(uniforms))]


model, tok = load_for_serving(sys.argv[1])
engine = E.GenerationEngine(model, tok.pad_token_id, max_batch_size=32)
prompts = [tok(f"Question {i}: how do I read a file line by line in Python? " * (1 + i % 3))["input_ids"]
           for i in range(32)]


def run(rows, n):
    dones = [threading.Event() for _ in range(rows)]
    t, c = time.perf_counter(), time.process_time()
    for i in range(rows):
        engine.submit(E.GenerationRequest(prompts[i], n, lambda e, d=dones[i]: e[0] in ("done", "error") and d.set(),
                                          temperature=0.8, seed=i, stop_ids=frozenset()))
    for d in dones:
        d.wait()
    return rows * n / (time.perf_counter() - t), 1e6 * (time.process_time() - c) / (rows * n)


run(4, 8)  # warm-up
res = {"multinomial": [], "inverse-cdf": []}
for r in range(3):
    for name, f in (("multinomial", old_draw), ("inverse-cdf", new_draw))[:: 1 if r % 2 == 0 else -1]:
        E._draw = f
        load = os.getloadavg()[0]
        res[name].append({"32 rows: tok/s, cpu us/token": [round(x) for x in run(32, 48)], "load": round(load, 1)})
print(json.dumps(res))
engine.shutdown()
