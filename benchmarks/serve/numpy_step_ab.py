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

Other comparisons (`--compare`, one row each, the same alternation and CPU-time measure):

- `layout`: the numpy step as served (weights (in, out), `x @ W`) against the same step with every product's
  weight stored transposed, (out, in), and `W @ x` (OpenBLAS then takes its other gemv kernel), and against
  the lm_head alone transposed (the largest product: 256 x 4,096 on the quickstart model). The variants are the
  served step's source with its five product expressions rewritten (asserted present), on copies of the weights.
- `prefill`: one prompt's prefill as the engine ran it before (the transformers forward into a `DynamicCache`,
  last logits) against `StaticDecoder.prefill_alone` (numpy, into the static cache), over the load test's chat
  prompts (`throughput_ab.chat_prompt_ids`: 20-60 tokens); microseconds per prompt, the largest |logit
  difference|.
- `sampling`: one row's draw at temperature 0.8 with a seeded row's numbers (`Uniforms`): the batched path (`_draw`
  after the division and softmax of `_sample_plain`) against `_draw_one`, each right after a numpy decode step (as in
  the engine: the step's 17 MB of weights have just gone through the caches); the step's time is not counted.
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
    parser.add_argument("--compare", choices=["step", "layout", "prefill", "sampling"], default="step",
                        help="what to alternate: the torch and numpy steps (default), the numpy step's weight layout, "
                             "the prefill of one prompt, or one row's sampling (see above)")
    parser.add_argument("--json_out")
    args = parser.parse_args()
    if args.compare != "step":
        return OTHER[args.compare](args)
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


def alternate(variants: dict, calls, alternations: int) -> dict:
    """CPU (this thread) and wall microseconds per call of each variant over `calls` (a list of arguments), the
    variants alternated, the order flipped every other time."""
    times = {name: {"cpu": [], "wall": []} for name in variants}
    for alternation in range(alternations):
        order = list(variants) if alternation % 2 == 0 else list(variants)[::-1]
        for name in order:
            cpu, wall = time.thread_time(), time.perf_counter()
            for arguments in calls:
                variants[name](*arguments)
            times[name]["cpu"].append((time.thread_time() - cpu) / len(calls) * 1e6)
            times[name]["wall"].append((time.perf_counter() - wall) / len(calls) * 1e6)
    return times


def summary(times: dict, baseline: str) -> dict:
    """Medians and minima per variant; each variant's ratio baseline / variant per alternation (median, quartiles)."""
    row = {}
    for name, t in times.items():
        row[f"{name}_cpu_us_median"] = round(statistics.median(t["cpu"]), 1)
        row[f"{name}_cpu_us_min"] = round(min(t["cpu"]), 1)
        row[f"{name}_wall_us_median"] = round(statistics.median(t["wall"]), 1)
        if name != baseline:
            ratios = [b / v for b, v in zip(times[baseline]["cpu"], t["cpu"])]
            quartiles = statistics.quantiles(ratios, n=4)
            row[f"ratio_{baseline}_over_{name}_median"] = round(statistics.median(ratios), 3)
            row[f"ratio_{baseline}_over_{name}_quartiles"] = [round(quartiles[0], 3), round(quartiles[2], 3)]
    return row


def setup(args):
    torch.set_num_threads(args.threads)
    model, tokenizer = load_for_serving(args.model_path)
    decoder = StaticDecoder(model, 1, model.config.max_position_embeddings, one_row_step="numpy")
    assert decoder.one_row_step == "numpy", decoder.one_row_reason
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(model.config.vocab_size, (args.positions + 1,), generator=generator).tolist()
    return model, tokenizer, decoder, tokens


def base_row(args, model) -> dict:
    return {"bench": f"numpy_step_ab --compare {args.compare}", "model": args.model_path,
            "parameters": sum(p.numel() for p in model.parameters()), "alternations": args.alternations,
            "torch_threads": torch.get_num_threads(), "numpy": np.__version__, "torch": torch.__version__}


def compare_layout(args) -> None:
    import inspect

    from llm_recipes.serving import static_decode

    model, _, decoder, tokens = setup(args)
    weights, keys, values = decoder._numpy_arrays
    source = inspect.getsource(static_decode.numpy_decode_step_for)
    products = [('norm(x, layer["input_norm"]) @ layer["qkv"]', 'layer["qkv"] @ norm(x, layer["input_norm"])'),
                ('attended.reshape(q_size) @ layer["o"]', 'layer["o"] @ attended.reshape(q_size)'),
                ('norm(x, layer["post_norm"]) @ layer["gate_up"]', 'layer["gate_up"] @ norm(x, layer["post_norm"])'),
                ('(gate / (1 + np.exp(-gate)) * up) @ layer["down"]',
                 'layer["down"] @ (gate / (1 + np.exp(-gate)) * up)')]
    head = ('norm(x, weights["norm"]) @ weights["lm_head"]', 'weights["lm_head"] @ norm(x, weights["norm"])')

    def rewritten(replacements):
        text = source
        for before, after in replacements:
            assert text.count(before) == 1, before  # the served step changed: update this list
            text = text.replace(before, after)
        namespace = dict(vars(static_decode))
        exec(text, namespace)  # noqa: S102 - the served step's own source, products rewritten
        return namespace["numpy_decode_step_for"](model.config)

    def transposed(array):
        return np.ascontiguousarray(array.T)

    all_out_in = {**weights, "lm_head": transposed(weights["lm_head"]),
                  "layers": [{**layer, **{k: transposed(layer[k]) for k in ("qkv", "o", "gate_up", "down")}}
                             for layer in weights["layers"]]}
    steps = {"in_out": (static_decode.numpy_decode_step_for(model.config), weights),
             "out_in": (rewritten(products + [head]), all_out_in),
             "lm_head_out_in": (rewritten([head]), {**weights, "lm_head": all_out_in["lm_head"]})}
    variants = {name: (lambda position, step=step, w=w: step(w, keys, values, tokens[position], position))
                for name, (step, w) in steps.items()}
    difference = 0.0
    for position in range(args.positions + 1):
        expected = variants["in_out"](position)
        difference = max(difference, *(float(np.abs(variants[n](position) - expected).max()) for n in variants))
    times = alternate(variants, [(p,) for p in range(1, args.positions + 1)], args.alternations)
    record({**base_row(args, model), "positions": args.positions, "max_abs_logit_difference": difference,
            **summary(times, "in_out"), "load": os.getloadavg()}, args.json_out)


def compare_prefill(args) -> None:
    from throughput_ab import chat_prompt_ids  # benchmarks/serve/throughput_ab.py
    from transformers.cache_utils import DynamicCache

    from llm_recipes.model.modeling_recipe_gpt import CACHE_KEY

    model, tokenizer, decoder, _ = setup(args)
    prompts = [chat_prompt_ids(tokenizer, i) for i in range(16)]

    def forward(prompt):  # as `GenerationEngine._prefill` ran one prompt: cache, mask, positions, last logits
        ids = torch.tensor([prompt])
        cache = DynamicCache(config=model.config)
        return model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=torch.arange(len(prompt))[None],
                     use_cache=True, logits_to_keep=1, **{CACHE_KEY: cache}).logits[:, -1, :]

    variants = {"forward": forward, "numpy": decoder.prefill_alone}
    with torch.inference_mode():
        difference = max(float((forward(p) - decoder.prefill_alone(p)).abs().max()) for p in prompts)
        times = alternate(variants, [(p,) for p in prompts], args.alternations)
    record({**base_row(args, model), "prompt_tokens": [min(map(len, prompts)), max(map(len, prompts))],
            "max_abs_logit_difference": difference, **summary(times, "forward"), "load": os.getloadavg()},
           args.json_out)


def compare_sampling(args) -> None:
    from llm_recipes.serving.engine import Uniforms, _draw, _draw_one

    model, _, decoder, tokens = setup(args)
    uniforms = Uniforms(torch.Generator().manual_seed(0), torch.device("cpu"))  # a seeded row's numbers
    spent = {"cpu": 0.0}

    def after_step(position):  # a step as the engine's, its time taken out of the variant's
        cpu = time.thread_time()
        logits = decoder.step(torch.tensor([tokens[position]]), None, position + 1, position)
        spent["cpu"] += time.thread_time() - cpu
        return logits

    def batched(position):
        logits = after_step(position)
        temperatures = torch.tensor([0.8])
        return _draw(torch.softmax(logits.float() / temperatures[:, None], dim=-1), [uniforms.next()])[0]

    def alone(position):
        return _draw_one(after_step(position)[0], 0.8, uniforms.next())

    variants = {"batched": batched, "draw_one": alone}
    calls = [(p,) for p in range(1, args.positions + 1)]
    times = {name: {"cpu": [], "wall": []} for name in variants}
    with torch.inference_mode():
        for alternation in range(args.alternations):
            for name in (list(variants) if alternation % 2 == 0 else list(variants)[::-1]):
                spent["cpu"], cpu, wall = 0.0, time.thread_time(), time.perf_counter()
                for arguments in calls:
                    variants[name](*arguments)
                times[name]["cpu"].append((time.thread_time() - cpu - spent["cpu"]) / len(calls) * 1e6)
                times[name]["wall"].append((time.perf_counter() - wall) / len(calls) * 1e6)  # step included
    record({**base_row(args, model), "positions": args.positions, **summary(times, "batched"),
            "note": "cpu: the draw only (the step before it subtracted); wall: step and draw",
            "load": os.getloadavg()}, args.json_out)


OTHER = {"layout": compare_layout, "prefill": compare_prefill, "sampling": compare_sampling}


if __name__ == "__main__":
    main()
