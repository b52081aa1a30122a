"""The static decode step alone, this tree's against an earlier commit's, in one process: their logits on the
same cache (equal or not), then CPU microseconds per step (this thread's `thread_time`) for one row, in 30
alternations of 100 steps each; prints the medians and the median of the per-alternation ratios, which hold
better than either median on a machine whose load moves.

    python benchmarks/serve/decode_step_ab.py runs/quickstart/dpo/final --before a35f74c
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import inspect
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rows import record  # benchmarks/serve/rows.py (the script's folder is on sys.path)

from llm_recipes.serving.loading import load_for_serving
from llm_recipes.serving.static_decode import StaticDecoder


def decoder_at(rev: str):
    """StaticDecoder of `rev`'s serving/static_decode.py (its relative imports made absolute)."""
    root = Path(__file__).resolve().parents[2]
    text = subprocess.run(["git", "show", f"{rev}:llm_recipes/serving/static_decode.py"], cwd=root, check=True,
                          capture_output=True, text=True).stdout.replace("from ..model", "from llm_recipes.model")
    path = Path(tempfile.mkdtemp()) / "static_decode_before.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("static_decode_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.StaticDecoder


def as_int(decoder, position: int) -> dict:
    """The `position` argument for a one-row step, where this decoder's step takes one (earlier ones did not)."""
    return {"position": position} if "position" in inspect.signature(decoder.step).parameters else {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_path")
    parser.add_argument("--before", required=True, help="git revision of the step to compare with")
    parser.add_argument("--alternations", type=int, default=30)
    parser.add_argument("--json_out")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the engine's setting for a small model
    model, _ = load_for_serving(args.model_path)
    decoders = {"after": StaticDecoder(model, 32, model.config.max_position_embeddings),
                "before": decoder_at(args.before)(model, 32, model.config.max_position_embeddings)}
    times = {name: [] for name in decoders}
    with torch.inference_mode():
        generator = torch.Generator().manual_seed(0)
        shape = decoders["after"].keys[0][:4, :, :60].shape
        cache = [torch.randn(shape, generator=generator) for _ in range(2 * len(decoders["after"].keys))]
        equal = True
        for batch in (1, 4):
            tokens = torch.randint(0, model.config.vocab_size, (batch,), generator=generator)
            positions = torch.tensor([59] + [40] * (batch - 1))
            logits = []
            for decoder in decoders.values():
                extra = as_int(decoder, 59) if batch == 1 else {}
                for i, (keys, values) in enumerate(zip(decoder.keys, decoder.values)):
                    keys[:4, :, :60], values[:4, :, :60] = cache[2 * i], cache[2 * i + 1]
                logits.append(decoder.step(tokens, positions, 60, **extra))
            equal &= torch.equal(*logits)
        tokens, positions = torch.tensor([5]), torch.tensor([40])
        # one row as the engine calls each step: with its position as an int where the step takes one
        steps = {name: functools.partial(decoder.step, tokens, positions, 41, **as_int(decoder, 40))
                 for name, decoder in decoders.items()}
        for step in steps.values():
            for _ in range(50):
                step()
        load = os.getloadavg()[0]
        for turn in range(args.alternations):
            for name in (list(decoders) if turn % 2 else list(decoders)[::-1]):
                start = time.thread_time()
                for _ in range(100):
                    steps[name]()
                times[name].append((time.thread_time() - start) / 100 * 1e6)
    ratios = [a / b for a, b in zip(times["after"], times["before"])]
    row = {"before": args.before, "logits_equal": bool(equal), "after_median_us": statistics.median(times["after"]),
           "before_median_us": statistics.median(times["before"]), "ratio_median": statistics.median(ratios),
           "ratio_quartiles": statistics.quantiles(ratios, n=4), "alternations": args.alternations,
           "loadavg_1min": [round(load, 2), round(os.getloadavg()[0], 2)]}
    record(row, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
