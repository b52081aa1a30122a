"""GPU pretraining throughput: MFU of the 124M preset (`gpt2-small`) at context 1024, bf16, compiled.

    python benchmarks/pretrain/gpu_mfu.py                       # one GPU
    python benchmarks/pretrain/gpu_mfu.py --batch 16 32 --no-compile
    # the code path, no GPU (tests):
    python benchmarks/pretrain/gpu_mfu.py --cpu --preset test --seq_len 64 --batch 2 --steps 6 --skip 2

Runs the real loop (`llm_recipes.training.loop.pretrain`) on Tiny Shakespeare with an 8K byte-level BPE
of ours; the model's vocabulary is GPT-2's padded size, 50304, so the output layer costs what GPT-2
small's does. Pre-tokenized shards,
attention across documents (`document_masking: false`, so SDPA takes its flash causal kernel). MFU is
the loop's own figure: (6N + 12 L H d T) FLOPs per token x tokens/s / the GPU's dense bf16 peak
(`llm_recipes.training.monitor.PEAK_BF16_FLOPS`). Steps before `--skip` (compilation, warmup) are left
out of the median. The result is printed and appended to benchmarks/pretrain/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SHARED = REPO.parent / "shared" / "data"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[16], help="rows per step; several: one run each")
    parser.add_argument("--preset", default="gpt2-small", help="model preset (the issue's figure: gpt2-small)")
    parser.add_argument("--seq_len", type=int, default=1024)
    parser.add_argument("--cpu", action="store_true", help="run on the CPU anyway (MFU n/a): checks the script")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--skip", type=int, default=40, help="steps left out of the median (compile, warmup)")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--text", type=Path, default=SHARED / "karpathy" / "tinyshakespeare" / "input.txt")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench-gpu-mfu")
    parser.add_argument("--results", type=Path, default=HERE / "results.jsonl")
    args = parser.parse_args(argv)

    import torch

    if not args.text.is_file():
        print(f"gpu_mfu: {args.text} not found (expected a text file, by default "
              "../shared/data/karpathy/tinyshakespeare/input.txt)", file=sys.stderr)
        return 2
    cuda = torch.cuda.is_available() and not args.cpu
    if not cuda and not args.cpu:
        print("gpu_mfu: no CUDA GPU here; this benchmark needs one (figure: not measured)", file=sys.stderr)
        return 2
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llm_recipes.tokenizer.bpe import save_tokenizer, train_bpe
    from llm_recipes.training import PretrainConfig
    from llm_recipes.training.loop import pretrain
    from llm_recipes.training.monitor import read_metrics

    text = args.text.read_text(encoding="utf-8")
    clean = args.work / "clean"
    for split, body in (("train", [text] * 8), ("validation", [text[:200_000]])):
        (clean / split).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"text": body}), clean / split / "part-00000.parquet")
    tokenizer = args.work / "tokenizer"
    if not (tokenizer / "tokenizer.json").is_file():
        save_tokenizer(train_bpe(text.splitlines(keepends=True), vocab_size=8192, model_max_length=1024), tokenizer)
    for batch in args.batch:
        out = args.work / f"run-b{batch}"
        shutil.rmtree(out, ignore_errors=True)
        cfg = PretrainConfig(
            output_dir=str(out), dataset_path=str(clean), tokenizer_path=str(tokenizer), data_mode="shards",
            tokenized_path=str(args.work / "tokens"), model_preset=args.preset, model_overrides={"vocab_size": 50304},
            seq_len=args.seq_len, per_device_train_batch_size=batch, max_steps=args.steps, warmup_steps=10,
            learning_rate=6e-4, bf16=cuda, torch_compile=args.compile, document_masking=False, logging_steps=5,
            eval_steps=0, eval_max_batches=2, save_steps=0, sample_prompts=[], report_to=["none"], seed=0)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        started = time.time()
        pretrain(cfg)
        logs = [r for r in read_metrics(out / "metrics.jsonl") if "mfu" in r and r["step"] > args.skip]
        mfus = sorted(r["mfu"] for r in logs if r["mfu"] is not None)
        tps = sorted(r["tokens_per_sec"] for r in logs)
        record = {
            "benchmark": "gpu-mfu-124M" if args.preset == "gpt2-small" else f"gpu-mfu-{args.preset}",
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "gpu": torch.cuda.get_device_name() if cuda else "cpu",
            "mfu_median": mfus[len(mfus) // 2] if mfus else None,
            "tokens_per_sec_median": tps[len(tps) // 2] if tps else None, "batch": batch, "seq_len": args.seq_len,
            "compile": args.compile, "steps": args.steps, "wall_s": round(time.time() - started, 1),
            "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if cuda else None,
            "torch": torch.__version__,
        }
        with open(args.results, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps(record, indent=2))
        mfu = record["mfu_median"]
        print(f"\nMFU {mfu:.1%} on {record['gpu']} at batch {batch}" if mfu is not None
              else f"\nMFU n/a on {record['gpu']} (not in the peak table, or no GPU)")
        print(f"appended to {args.results}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
