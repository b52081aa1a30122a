"""Lower-precision weights for the one-row decode step, against llama.cpp at the same precision, in one process.

Does storing the matrices in fewer bits make our one-stream decode catch up with llama.cpp? Each lever is
measured beside llama.cpp on a GGUF of that precision, interleaved over `--rounds`:

- ours float32: the static decode step (`static_decode.StaticDecoder`) as served, `x @ W` on float32 weights;
- ours float16 weights: the same step with every matrix product through fbgemm's
  `quantized.linear_dynamic_fp16` (weights stored as float16, float32 activations and sums);
- ours int8 weights: through `torch._weight_int8pack_mm` (weight-only int8, one scale per output column,
  bfloat16 activations);
- llama.cpp (llama-cpp-python, one thread) on the F32, F16 and BF16 GGUFs (`llm-recipes export --to gguf
  --dtype ...`): microseconds between its tokens over `--tokens` sampled tokens.

Ours: microseconds per step over positions 1..96 of one row (the step only: no sampling, which llama.cpp's
figure includes). Also prints the largest logit difference of each variant from float32.

    python benchmarks/serve/one_row_precision.py runs/quickstart/dpo/final --gguf F32=a.gguf --gguf F16=b.gguf \\
        --gguf BF16=c.gguf --json_out rows.jsonl
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from rows import record  # benchmarks/serve/rows.py (the script's folder is on sys.path)

from llm_recipes.serving.loading import load_for_serving
from llm_recipes.serving.static_decode import StaticDecoder

PRODUCTS = ("qkv", "o", "gate_up", "down")


class Float16Weight:
    """`x @ self` through fbgemm's float16-weight linear (the weight transposed and packed once)."""

    def __init__(self, weight):  # (in, out), as the step keeps it
        self.packed = torch.ops.quantized.linear_prepack_fp16(weight.t().contiguous(), None)

    def __rmatmul__(self, x):
        return torch.ops.quantized.linear_dynamic_fp16(x, self.packed)


class Int8Weight:
    """`x @ self` through torch's weight-only int8 product (symmetric, one scale per output column)."""

    def __init__(self, weight):
        rows = weight.t().contiguous()  # (out, in)
        scales = rows.abs().amax(1) / 127
        self.weight = (rows / scales[:, None]).round().clamp(-127, 127).to(torch.int8)
        self.scales = scales.bfloat16()

    def __rmatmul__(self, x):
        return torch._weight_int8pack_mm(x.bfloat16(), self.weight, self.scales).float()


def with_products(weights: dict, kind) -> dict:
    """The step's weights with every matrix product's matrix wrapped in `kind`."""
    layers = [{k: kind(v) if k in PRODUCTS else v for k, v in layer.items()} for layer in weights["layers"]]
    return {**weights, "layers": layers, "lm_head": kind(weights["lm_head"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_path")
    parser.add_argument("--gguf", action="append", default=[], metavar="LABEL=FILE", help="llama.cpp on this GGUF")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--json_out")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as `llm-recipes serve` decodes a model of this size
    model, tokenizer = load_for_serving(args.model_path)
    decoder = StaticDecoder(model, 1, model.config.max_position_embeddings)
    step = decoder._eager_step
    variants = {"ours float32": decoder.weights, "ours float16 weights": with_products(decoder.weights, Float16Weight),
                "ours int8 weights": with_products(decoder.weights, Int8Weight)}
    token = torch.zeros(1, dtype=torch.long)

    def ours(weights) -> float:
        with torch.inference_mode():
            start = time.perf_counter()
            for position in range(1, 97):
                step(weights, decoder.keys, decoder.values, token, token, position + 1, position)
        return 1e6 * (time.perf_counter() - start) / 96

    import llama_cpp

    prompt = tokenizer(tokenizer.apply_chat_template(
        [{"role": "user", "content": "Question 1: how do I read a file line by line in Python? "}],
        add_generation_prompt=True, tokenize=False), add_special_tokens=False)["input_ids"]
    llamas = {f"llama.cpp {label}": llama_cpp.Llama(model_path=path, n_ctx=model.config.max_position_embeddings,
                                                   n_threads=1, n_threads_batch=1, verbose=False, seed=0)
              for label, _, path in (g.partition("=") for g in args.gguf)}

    def llama(llm) -> float:
        times = []
        for k, _ in enumerate(llm.generate(prompt, temp=0.8, reset=True)):
            times.append(time.perf_counter())
            if k + 1 == args.tokens:
                break
        return 1e6 * (times[-1] - times[0]) / (len(times) - 1)

    runs = {**{name: (lambda w=w: ours(w)) for name, w in variants.items()},
            **{name: (lambda llm=llm: llama(llm)) for name, llm in llamas.items()}}
    load = os.getloadavg()[0]
    timings = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            timings[name].append(run())
    with torch.inference_mode():
        reference = step(decoder.weights, decoder.keys, decoder.values, token, token, 5, 4)
        differences = {name: float((step(w, decoder.keys, decoder.values, token, token, 5, 4) - reference)
                                   .abs().max()) for name, w in variants.items()}
    for name, values in timings.items():
        record({"variant": name, "us_per_token_median": round(statistics.median(values)),
                "us_per_token_min": round(min(values)), "rounds": args.rounds,
                "max_logit_difference": differences.get(name), "model": args.model_path,
                "loadavg_1min": [round(load, 2), round(os.getloadavg()[0], 2)]}, args.json_out)


if __name__ == "__main__":
    main()
