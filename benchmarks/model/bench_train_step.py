"""Training-step throughput of RecipeGPT: forward + backward + AdamW step, tokens per second.

    python benchmarks/model/bench_train_step.py                 # both sizes, CPU
    python benchmarks/model/bench_train_step.py --sizes nano    # just nanoGPT's CPU Shakespeare size

Sizes: `nano` = 4 layers, 4 heads, hidden 128, context 64, batch 12 (nanoGPT's CPU Shakespeare run);
`124m` = the gpt2-small preset (12 x 768, vocab 50304) at context 1024, batch 1.
Prints one JSON line per size and appends it to benchmarks/model/results.jsonl.
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

import llm_recipes  # noqa: F401
from llm_recipes.model import RecipeGPTConfig, RecipeGPTForCausalLM, config_from_preset

SIZES = {
    "nano": dict(config=lambda: RecipeGPTConfig(vocab_size=65, hidden_size=128, intermediate_size=384,
                                                num_hidden_layers=4, num_attention_heads=4,
                                                max_position_embeddings=64),
                 seq_len=64, batch=12, steps=30, warmup=5),
    "124m": dict(config=lambda: config_from_preset("gpt2-small"), seq_len=1024, batch=1, steps=4, warmup=1),
}


def bench(name: str, attn: str) -> dict:
    spec = SIZES[name]
    torch.manual_seed(0)
    config = spec["config"]()
    config._attn_implementation = attn
    model = RecipeGPTForCausalLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=False)
    ids = torch.randint(0, config.vocab_size, (spec["batch"], spec["seq_len"]))
    for _ in range(spec["warmup"]):
        model(ids, labels=ids, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    start = time.perf_counter()
    for _ in range(spec["steps"]):
        model(ids, labels=ids, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    tokens = spec["steps"] * spec["batch"] * spec["seq_len"]
    return {
        "size": name, "attn": attn, "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "seq_len": spec["seq_len"], "batch": spec["batch"], "steps": spec["steps"],
        "tokens_per_s": round(tokens / seconds, 1), "ms_per_step": round(1000 * seconds / spec["steps"], 1),
        "achieved_gflops": round(model.flops_per_token(spec["seq_len"]) * tokens / seconds / 1e9, 2),
        "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2), "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--attn", nargs="+", default=["sdpa", "eager"], choices=["sdpa", "eager"])
    args = parser.parse_args()
    out = Path(__file__).with_name("results.jsonl")
    for name in args.sizes:
        for attn in args.attn:
            result = bench(name, attn)
            print(json.dumps(result))
            with out.open("a") as f:
                f.write(json.dumps(result) + "\n")
    print(f"appended results to {out}")


if __name__ == "__main__":
    main()
