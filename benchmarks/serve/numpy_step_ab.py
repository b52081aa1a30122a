"""A one-row decode step written entirely in numpy, against the torch eager static step, in one process.

Why: numpy's OpenBLAS (one thread) did the quickstart model's 17 one-row matrix products in ~412 us where torch
took ~859 us, but mixing numpy products into the torch step was 1.35x slower (conversions between the two, two
thread pools). Here the whole step for one decoding row is numpy: the same weights and the same static KV cache
tensors, seen through `tensor.numpy()` (shared memory), so the torch step and this one stay interchangeable.
The numpy step is `static_decode.numpy_decode_step_for`, called as the engine calls it (`StaticDecoder.step` of a
decoder with `one_row_step="numpy"`: the token as an int, the logits back as a tensor); the torch step is the
same call on a decoder with `one_row_step="torch"`. Each decoder has its own cache, fed the same tokens.

Measured: microseconds per step over positions 1..`--positions` of one row (the step only), the two steps
alternated `--alternations` times (the order flipped every other time), CPU time of this thread and wall time;
the ratio torch / numpy of every alternation; the largest |logit difference| of the numpy step from the torch step
over the same positions and tokens. (The first row of numpy-step-2026-12-05.jsonl came from this script's
prototype, commit 5cdb7ad, which called the two step functions directly on one shared cache.)

    python benchmarks/serve/numpy_step_ab.py /work/qs-run/dpo/final --json_out rows.jsonl
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
from rows import record  # benchmarks/serve/rows.py (the script's folder is on sys.path)

from llm_recipes.serving.loading import load_for_serving
from llm_recipes.serving.static_decode import StaticDecoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_path")
    parser.add_argument("--positions", type=int, default=96)
    parser.add_argument("--alternations", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1,
                        help="decoding threads (torch's, and OpenBLAS's through the decoder); `llm-recipes serve` "
                             "takes 1 for a model under 10M parameters")
    parser.add_argument("--json_out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # before the decoders: the numpy one limits OpenBLAS to this many
    model, _ = load_for_serving(args.model_path)
    context = model.config.max_position_embeddings
    decoders = {name: StaticDecoder(model, 1, context, one_row_step=name) for name in ("torch", "numpy")}
    assert decoders["numpy"].one_row_step == "numpy", decoders["numpy"].one_row_reason
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(model.config.vocab_size, (args.positions + 1,), generator=generator).tolist()
    positions = range(1, args.positions + 1)

    def runner(decoder):
        def run(position):
            # length position + 1 (the engine asks for at least 2, for a compiled step; position 0 is not
            # decoded there, and here a length of 2 would let the torch step attend to an empty column)
            return decoder.step(torch.tensor([tokens[position]]), torch.tensor([position]), position + 1, position)
        return run

    variants = {name: runner(decoder) for name, decoder in decoders.items()}
    with torch.inference_mode():
        for run in variants.values():  # position 0 is the prompt's (prefilled in the engine, never decoded)
            run(0)
        difference = 0.0
        for position in positions:
            expected = variants["torch"](position)[0]
            difference = max(difference, float((variants["numpy"](position)[0] - expected).abs().max()))
        print(f"max |logit difference| numpy vs torch over positions 1-{args.positions}: {difference:.3g}")
        times = {name: {"cpu": [], "wall": []} for name in variants}
        for alternation in range(args.alternations):
            order = list(variants) if alternation % 2 == 0 else list(variants)[::-1]
            for name in order:
                cpu, wall = time.thread_time(), time.perf_counter()
                for position in positions:
                    variants[name](position)
                times[name]["cpu"].append((time.thread_time() - cpu) / len(positions) * 1e6)
                times[name]["wall"].append((time.perf_counter() - wall) / len(positions) * 1e6)
    ratios = [t / n for t, n in zip(times["torch"]["cpu"], times["numpy"]["cpu"])]
    quartiles = statistics.quantiles(ratios, n=4)
    record({
        "bench": "numpy_step_ab", "model": args.model_path,
        "parameters": sum(p.numel() for p in model.parameters()), "positions": args.positions,
        "alternations": args.alternations, "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__, "torch": torch.__version__, "max_abs_logit_difference": difference,
        **{f"{name}_cpu_us_median": round(statistics.median(t["cpu"]), 1) for name, t in times.items()},
        **{f"{name}_cpu_us_min": round(min(t["cpu"]), 1) for name, t in times.items()},
        **{f"{name}_wall_us_median": round(statistics.median(t["wall"]), 1) for name, t in times.items()},
        "ratio_torch_over_numpy_median": round(statistics.median(ratios), 3),
        "ratio_quartiles": [round(q, 3) for q in (quartiles[0], quartiles[2])],
        "ratios": [round(r, 3) for r in ratios], "load": os.getloadavg(),
    }, args.json_out)


if __name__ == "__main__":
    main()
