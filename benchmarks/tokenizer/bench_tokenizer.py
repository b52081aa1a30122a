"""Tokenizer benchmarks: our stage's training time vs plain `tokenizers` BpeTrainer on the same data,
and encode throughput of both packing modes.

    python benchmarks/tokenizer/make_corpus.py --output /tmp/tok_corpus --megabytes 25
    python benchmarks/tokenizer/bench_tokenizer.py --corpus /tmp/tok_corpus --vocab_size 8192 --repeats 3

Training: runs alternate (plain, ours, plain, ours, ...) so that load from other processes hits both
alike; medians are reported. "plain" reads the parquet with pyarrow and trains a `tokenizers` BPE with
the same pre-tokenizer, special tokens and trainer settings; "ours (train)" is the stage's training step
(datasets stream + `train_bpe`); "ours (stage)" is the whole stage (train, save, report).

Packing: "stream" iterates `PackedStreamDataset` over the streamed parquet (tokenize + pack on the fly);
"pretokenize" writes the uint16 shards (Rust threads in one process; and with num_proc=2 worker
processes); "shards" reads every row of `TokenShardDataset` back.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def plain_bpe(files: list[str], vocab_size: int, max_document_chars: int) -> float:
    import pyarrow.parquet as pq
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from llm_recipes.tokenizer.bpe import SPLIT_PATTERN, load_definition, round_vocab_size, special_token_list

    started = time.perf_counter()
    texts = [t[:max_document_chars] for f in files
             for t in pq.read_table(f, columns=["text"]).column("text").to_pylist() if t]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=round_vocab_size(vocab_size), min_frequency=2,
                                  special_tokens=special_token_list(load_definition()[0]),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return time.perf_counter() - started


def ours_train(files: list[str], vocab_size: int, max_document_chars: int) -> float:
    from llm_recipes.tokenizer.bpe import text_stream, train_bpe

    started = time.perf_counter()
    texts, num_docs = text_stream(files, "text")
    train_bpe(texts, vocab_size, max_document_chars=max_document_chars, length=num_docs)
    return time.perf_counter() - started


def ours_stage(corpus: str, vocab_size: int, max_document_chars: int) -> float:
    from llm_recipes.train_tokenizer import TrainTokenizerConfig, run

    with tempfile.TemporaryDirectory() as out:
        cfg = TrainTokenizerConfig(output_dir=out, dataset_path=corpus, vocab_size=vocab_size,
                                   max_document_chars=max_document_chars, show_progress=False)
        started = time.perf_counter()
        run(cfg)
        return time.perf_counter() - started


def one_run(kind: str, corpus: str, vocab_size: int, max_document_chars: int) -> tuple[float, float]:
    """Each measurement in a fresh process: no warm caches or allocator state carried between runs.
    Returns (wall seconds, CPU seconds of user + system time over the timed call, all threads)."""
    code = (f"import bench_tokenizer as b, glob, os; files = sorted(glob.glob({corpus!r} + '/train/*.parquet'));"
            "t0 = os.times(); wall = b." + kind + "(" + ("files" if kind != "ours_stage" else repr(corpus))
            + f", {vocab_size}, {max_document_chars}); t1 = os.times();"
            "print(wall, (t1.user - t0.user) + (t1.system - t0.system))")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True, text=True,
                         check=True)
    wall, cpu = out.stdout.strip().splitlines()[-1].split()
    return float(wall), float(cpu)


def packing(corpus: str, tokenizer_dir: str, seq_len: int) -> dict:
    import datasets
    from transformers import AutoTokenizer

    from llm_recipes.training.packing import PackedStreamDataset, TokenShardDataset, pretokenize

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    files = sorted(str(p) for p in Path(corpus, "train").glob("*.parquet"))
    stream = datasets.load_dataset("parquet", data_files=files, split="train", streaming=True).select_columns(["text"])
    num_bytes = sum(len(t.encode("utf-8")) for batch in stream.iter(1000) for t in batch["text"] if t)
    mb = num_bytes / 2**20
    results = {"megabytes": round(mb, 1), "seq_len": seq_len}

    started = time.perf_counter()
    rows = sum(1 for _ in PackedStreamDataset(stream, tokenizer, seq_len, shuffle_buffer=10_000, seed=0))
    seconds = time.perf_counter() - started
    results["stream"] = {"seconds": round(seconds, 2), "mb_per_s": round(mb / seconds, 2), "rows": rows,
                         "tokens_per_s": round(rows * seq_len / seconds)}

    with tempfile.TemporaryDirectory() as out:
        table = datasets.load_dataset("parquet", data_files=files, split="train")  # map-style (Arrow cache)
        started = time.perf_counter()
        pretokenize(table, tokenizer, out, show_progress=False)
        seconds = time.perf_counter() - started
        results["pretokenize"] = {"seconds": round(seconds, 2), "mb_per_s": round(mb / seconds, 2)}
        with tempfile.TemporaryDirectory() as out2:
            started = time.perf_counter()
            pretokenize(table, tokenizer, out2, num_proc=2, show_progress=False)
            seconds = time.perf_counter() - started
            results["pretokenize_num_proc_2"] = {"seconds": round(seconds, 2), "mb_per_s": round(mb / seconds, 2)}
        started = time.perf_counter()
        shards = TokenShardDataset(out, seq_len)
        index_seconds = time.perf_counter() - started
        started = time.perf_counter()
        for i in range(len(shards)):
            shards[i]
        seconds = time.perf_counter() - started
        results["shards"] = {"open_seconds": round(index_seconds, 2), "read_seconds": round(seconds, 2),
                             "rows": len(shards), "tokens_per_s": round(len(shards) * seq_len / seconds),
                             "mb_per_s": round(mb / (seconds + index_seconds), 1)}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, help="a folder with train/*.parquet and validation/*.parquet")
    parser.add_argument("--vocab_size", type=int, default=8192)
    parser.add_argument("--max_document_chars", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seq_len", type=int, default=512)
    parser.add_argument("--skip_training", action="store_true")
    parser.add_argument("--skip_packing", action="store_true")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    results: dict = {"machine": os.uname().machine, "cpus": os.cpu_count(), "load_before": os.getloadavg()}
    if not args.skip_training:
        times: dict[str, list[float]] = {"plain_bpe": [], "ours_train": [], "ours_stage": []}
        cpu: dict[str, list[float]] = {k: [] for k in times}
        for r in range(args.repeats):
            for kind in times:
                wall, cpu_s = one_run(kind, args.corpus, args.vocab_size, args.max_document_chars)
                times[kind].append(wall)
                cpu[kind].append(cpu_s)
                print(f"repeat {r}: {kind} {wall:.2f} s wall, {cpu_s:.2f} s CPU", file=sys.stderr)
        med = {k: statistics.median(v) for k, v in times.items()}
        med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
        # CPU time barely moves with the load from other processes; wall time does
        results["training"] = {"runs_s": times, "median_s": med, "cpu_runs_s": cpu, "median_cpu_s": med_cpu,
                               "ratio_train_over_plain": round(med["ours_train"] / med["plain_bpe"], 3),
                               "ratio_stage_over_plain": round(med["ours_stage"] / med["plain_bpe"], 3),
                               "cpu_ratio_train_over_plain": round(med_cpu["ours_train"] / med_cpu["plain_bpe"], 3),
                               "cpu_ratio_stage_over_plain": round(med_cpu["ours_stage"] / med_cpu["plain_bpe"], 3)}
    if not args.skip_packing:
        with tempfile.TemporaryDirectory() as tok_dir:
            from llm_recipes.train_tokenizer import TrainTokenizerConfig, run

            run(TrainTokenizerConfig(output_dir=tok_dir, dataset_path=args.corpus, vocab_size=args.vocab_size,
                                     show_progress=False, compare_tokenizer=""))
            results["packing"] = packing(args.corpus, tok_dir, args.seq_len)
    results["load_after"] = os.getloadavg()
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main())
