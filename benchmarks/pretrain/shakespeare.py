"""CPU pretraining benchmark on Tiny Shakespeare: tokens/s and validation bits per byte after a fixed
wall-clock budget, with the model size fixed at nanoGPT's CPU config (4 layers, 4 heads, 128 wide,
context 64).

    python benchmarks/pretrain/shakespeare.py                 # the recorded configuration, 180 s
    python benchmarks/pretrain/shakespeare.py --budget 60 --vocab 1024 --learning_rate 2e-3

The 90/10 split is nanoGPT's (first 90% of the characters train, the rest validate). Each split is one
document; a byte-level BPE is trained on the train split only. Bits per byte = validation nats over all
predicted tokens / (ln 2 x their UTF-8 bytes), so it compares with character-level models. The budget
covers the training loop only (data preparation and the final evaluation are outside it). The result is
printed and appended to benchmarks/pretrain/results.jsonl with the load average at start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_INPUT = REPO.parent / "shared" / "data" / "karpathy" / "tinyshakespeare" / "input.txt"


def prepare(input_path: Path, work: Path, vocab: int) -> tuple[Path, Path]:
    """Writes the clean-stage layout (train/validation parquet) and a BPE tokenizer trained on train."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llm_recipes.tokenizer.bpe import save_tokenizer, train_bpe

    text = input_path.read_text(encoding="utf-8")
    n = len(text)
    train, val = text[: int(n * 0.9)], text[int(n * 0.9):]
    clean = work / "clean"
    for split, body in (("train", train), ("validation", val)):
        (clean / split).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"text": [body]}), clean / split / "part-00000.parquet")
    tok_dir = work / f"tokenizer-{vocab}"
    if not (tok_dir / "tokenizer.json").is_file():
        # split into lines so BPE sees many short sequences (one 1 MB string trains the same but slower)
        save_tokenizer(train_bpe(train.splitlines(keepends=True), vocab_size=vocab, model_max_length=64), tok_dir)
    return clean, tok_dir


def sliding_window_bits_per_byte(model_dir: Path, clean: Path, seq_len: int, stride: int) -> dict:
    """Bits per byte of the validation split under the saved model, scored by our evaluation suite's
    sliding window (the number `llm-recipes evaluate` reports for this text)."""
    import pyarrow.parquet as pq
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import llm_recipes  # noqa: F401  (registers recipe_gpt with the Auto classes)
    from llm_recipes.evaluation.scoring import LMScorer, perplexity_summary

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    scorer = LMScorer(model, AutoTokenizer.from_pretrained(model_dir), batch_size=64, max_length=seq_len,
                      progress=False)
    texts = pq.read_table(clean / "validation").column("text").to_pylist()
    return {**perplexity_summary(scorer.score_texts(texts, stride=stride)), "stride": stride}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT)
    parser.add_argument("--budget", type=float, default=180.0, help="training seconds")
    parser.add_argument("--max_steps", type=int, default=None,
                        help="train this many steps instead of a time budget (for tuning on a busy machine)")
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--seq_len", type=int, default=64)
    parser.add_argument("--model", type=json.loads, default={},
                        help='JSON overrides of the model shape, e.g. \'{"num_hidden_layers": 6}\'')
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--warmup_steps", type=int, default=50)
    parser.add_argument("--schedule", default="cosine")
    parser.add_argument("--decay_ratio", type=float, default=0.2, help="schedule wsd: fraction spent decaying")
    parser.add_argument("--min_lr_ratio", type=float, default=0.0)
    parser.add_argument("--weight_decay", type=float, default=0.1)
    parser.add_argument("--max_grad_norm", type=float, default=1.0, help="gradient clipping (0: off)")
    parser.add_argument("--beta2", type=float, default=0.99)
    parser.add_argument("--optim", default="adamw", help="adamw or muon (see PretrainConfig.optim)")
    parser.add_argument("--eval_steps", type=int, default=0,
                        help="also evaluate every this many steps "
                             "(inside the budget; shows where validation bottoms out)")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (on CPUs with AMX/AVX512-BF16 matmuls)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model (its compile time counts against the budget; inductor's "
                             "on-disk cache makes a second run compile in seconds)")
    parser.add_argument("--eval_stride", type=int, default=None,
                        help="also score the validation text with a sliding window advancing this many tokens "
                             "(default seq_len / 2), as `llm-recipes evaluate --stride` does")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench-shakespeare")
    parser.add_argument("--results", type=Path, default=HERE / "results.jsonl")
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    if not args.input.is_file():
        print(f"shakespeare benchmark: {args.input} not found "
              "(expected ../shared/data/karpathy/tinyshakespeare/input.txt)",
              file=sys.stderr)
        return 2

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    clean, tok_dir = prepare(args.input, args.work, args.vocab)

    from llm_recipes.training import PretrainConfig
    from llm_recipes.training.loop import pretrain
    from llm_recipes.training.monitor import read_metrics

    out = args.work / f"run-v{args.vocab}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = PretrainConfig(
        output_dir=str(out), dataset_path=str(clean), tokenizer_path=str(tok_dir), data_mode="shards",
        tokenized_path=str(args.work / f"tokens-{args.vocab}"), model_preset="nano",
        model_overrides={"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
                         "num_key_value_heads": 4, "intermediate_size": 384, **args.model},
        seq_len=args.seq_len, per_device_train_batch_size=args.batch, max_steps=args.max_steps or 1_000_000,
        max_train_seconds=None if args.max_steps else args.budget,
        learning_rate=args.learning_rate, warmup_steps=args.warmup_steps, lr_scheduler_type=args.schedule,
        decay_ratio=args.decay_ratio, min_lr_ratio=args.min_lr_ratio, weight_decay=args.weight_decay,
        adam_beta2=args.beta2, max_grad_norm=args.max_grad_norm, optim=args.optim,
        eval_steps=args.eval_steps, eval_max_batches=-1, per_device_eval_batch_size=64, save_steps=0, logging_steps=50,
        sample_prompts=["ROMEO:"], sample_max_new_tokens=48, report_to=["none"], document_masking=False,
        outlier_zscore=0.0, seed=args.seed, torch_compile=args.compile, bf16=args.bf16)
    started = time.time()
    result = pretrain(cfg)
    wall = time.time() - started
    logs = [r for r in read_metrics(out / "metrics.jsonl") if "tokens_per_sec" in r]
    steady = sorted(r["tokens_per_sec"] for r in logs[1:]) or [0.0]
    sliding = sliding_window_bits_per_byte(out / "final", clean, args.seq_len, args.eval_stride or args.seq_len // 2)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    record = {
        "benchmark": "tinyshakespeare-cpu", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "val_bits_per_byte": round(result.eval_metrics["val_bits_per_byte"], 4),
        "val_loss_nats_per_token": round(result.eval_metrics["val_loss"], 4),
        # every validation token scored with at least seq_len - stride tokens of context, instead of the
        # disjoint windows above where the first tokens of each window have almost none
        "val_bits_per_byte_sliding": round(sliding["bits_per_byte"], 4), "eval_stride": sliding["stride"],
        "tokens_per_sec_median": round(steady[len(steady) // 2], 1),
        # the mean over the whole budget shows stalls that the median of logging windows hides
        "tokens_per_sec_mean": round(result.tokens / max(logs[-1]["elapsed"], 1e-9), 1) if logs else None,
        "steps": result.step, "train_tokens": result.tokens, "budget_s": None if args.max_steps else args.budget,
        "wall_s": round(wall, 1), "vocab": args.vocab, "batch": args.batch, "seq_len": args.seq_len,
        "model": args.model, "learning_rate": args.learning_rate, "warmup_steps": args.warmup_steps,
        "schedule": args.schedule, "decay_ratio": args.decay_ratio, "min_lr_ratio": args.min_lr_ratio,
        "weight_decay": args.weight_decay, "beta2": args.beta2, "max_grad_norm": args.max_grad_norm,
        "optim": args.optim, "seed": args.seed, "bf16": args.bf16, "compile": args.compile,
        "threads": torch.get_num_threads(),
        "load_avg_start": [round(x, 2) for x in load_start], "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        "machine": f"{platform.machine()} {os.cpu_count()} cores", "torch": torch.__version__,
        "sample": samples[-1]["prompt"] + samples[-1]["completion"], "note": args.note,
    }
    with open(args.results, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record, indent=2))
    print(f"\nval bits/byte {record['val_bits_per_byte']} (sliding window: {record['val_bits_per_byte_sliding']}) "
          f"after {record['budget_s'] or wall:.0f}s "
          f"({result.step} steps, {record['tokens_per_sec_median']:,.0f} tokens/s); appended to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
