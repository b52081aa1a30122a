"""`llm-recipes train-tokenizer`: train a byte-level BPE tokenizer with our chat template on the cleaned text.

    llm-recipes train-tokenizer --config recipes/quickstart/train_tokenizer.yaml
    llm-recipes train-tokenizer --dataset_path runs/quickstart/clean --output_dir runs/my/tokenizer --vocab_size 16384

Reads `train/*.parquet` of the clean stage as a stream, trains with `tokenizers`, saves a tokenizer folder
that `AutoTokenizer.from_pretrained` loads, and writes `tokenizer_report.{md,json}` measured on
`validation/*.parquet` (compared with GPT-2's tokenizer where its files are available).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .cli import entry_point
from .config import check_range, parse_config
from .data.splits import split_files
from .fileio import atomic_write_json, atomic_write_text
from .pipeline.envelope import StageRun
from .tokenizer.bpe import check_vocab_size, load_definition, save_tokenizer_atomically, text_stream, train_bpe
from .tokenizer.report import PeakMemory, report_markdown, tokenizer_report


@dataclass
class TrainTokenizerConfig:
    output_dir: str = field(default="runs/default/tokenizer",
                            metadata={"help": "Folder for the tokenizer files and the report."})
    dataset_path: str = field(default="runs/default/clean", metadata={
        "help": "Output folder of the clean stage (train/*.parquet, validation/*.parquet), or a folder of "
                "*.parquet files (then there is no validation split)."})
    text_column: str = field(default="text", metadata={"help": "Column that holds the document text."})
    vocab_size: int = field(default=8192, metadata={
        "help": "Vocabulary size including special tokens; rounded up to a multiple of 64. At least 256 bytes "
                "+ specials."})
    min_frequency: int = field(default=2, metadata={"help": "A pair must occur this often to become a merge."})
    max_document_chars: int = field(default=20_000, metadata={
        "help": "Documents are cut to this many characters for training (0: no cap); bounds memory and keeps "
                "a few huge documents from dominating the merges."})
    max_train_chars: int = field(default=0, metadata={
        "help": "Stop reading training text after about this many characters (0: all). With a cap, documents "
                "are sampled uniformly over all files (seed)."})
    model_max_length: int = field(default=2048, metadata={
        "help": "Context length written to tokenizer_config.json (the model's max_position_embeddings)."})
    tokenizer_definition_dir: str = field(default="tokenizer", metadata={
        "help": "Folder with special_tokens.yaml and chat_template.jinja (a relative path is looked up in the working "
                "directory, the repository, then the copy a non-editable install puts under "
                "<prefix>/share/llm_recipes)."})
    report_max_chars: int = field(default=5_000_000, metadata={
        "help": "Characters of validation text measured for the report."})
    compare_tokenizer: str = field(default="../shared/data/rasbt/gpt2_tokenizer", metadata={
        "help": "Tokenizer folder to compare with in the report (GPT-2's encoder.json + vocab.bpe, or a "
                "tokenizer.json); skipped when absent. Empty: no comparison."})
    seed: int = field(default=42, metadata={
        "help": "Shuffle seed for sampling documents when max_train_chars is set."})
    show_progress: bool = field(default=True, metadata={"help": "Show progress bars."})


def config_classes() -> tuple[type, ...]:
    return (TrainTokenizerConfig,)


def main(argv: list[str] | None = None) -> int:
    (cfg,) = parse_config(config_classes(), argv, stage="train-tokenizer")
    try:
        run(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"llm-recipes train-tokenizer: error: {e}", file=sys.stderr)
        return 1
    return 0


def run(cfg: TrainTokenizerConfig) -> Path:
    """Trains, saves and reports; returns the output folder."""
    for key, low in (("max_document_chars", 0), ("max_train_chars", 0), ("report_max_chars", 0),
                     ("model_max_length", 1), ("min_frequency", 1)):
        check_range(cfg, key, low)
    output_dir = Path(cfg.output_dir)

    # Load the data (a refused run leaves a previous tokenizer and its completion marker as they were)
    train_files, validation_files = clean_data_files(cfg.dataset_path)
    texts, num_docs = text_stream(train_files, cfg.text_column, max_chars=cfg.max_train_chars, seed=cfg.seed)
    specials, _ = load_definition(cfg.tokenizer_definition_dir)  # a missing definition folder fails now
    check_vocab_size(cfg.vocab_size, specials)
    run = StageRun("train-tokenizer", output_dir, cfg)
    run.start()
    print(f"train-tokenizer: training a {cfg.vocab_size}-token BPE on {len(train_files)} file(s), "
          f"{num_docs:,} documents"
          + (f" (a sample of about {cfg.max_train_chars:,} characters)" if cfg.max_train_chars else ""))

    # Train
    stats: dict = {}
    started = time.perf_counter()
    with PeakMemory() as memory:
        tokenizer = train_bpe(texts, cfg.vocab_size, definition_dir=cfg.tokenizer_definition_dir,
                              model_max_length=cfg.model_max_length, min_frequency=cfg.min_frequency,
                              max_document_chars=cfg.max_document_chars or None, show_progress=cfg.show_progress,
                              length=None if cfg.max_train_chars else num_docs, stats=stats)
    seconds = time.perf_counter() - started
    training = {**stats, "seconds": round(seconds, 2), "peak_rss_mb": round(memory.peak_mb, 1),
                "rss_rise_mb": round(memory.rise_mb, 1), "train_files": len(train_files)}
    save_tokenizer_atomically(tokenizer, output_dir)

    # Report
    validation = None
    if validation_files:
        validation, _ = text_stream(validation_files, cfg.text_column)
    report = tokenizer_report(tokenizer, validation or [], training=training,
                              reference_dir=cfg.compare_tokenizer or None, max_chars=cfg.report_max_chars)
    atomic_write_json(output_dir / "tokenizer_report.json", report)
    atomic_write_text(output_dir / "tokenizer_report.md", report_markdown(report))
    run.complete(vocab_size=len(tokenizer), seconds=training["seconds"])

    val = report.get("validation", {})
    ref = report.get("reference", {})
    summary = f"{len(tokenizer):,} tokens, trained in {seconds:.1f} s on {stats['bytes'] / 2**20:.1f} MB"
    if val.get("documents"):
        summary += f"; {val['bytes_per_token']} bytes/token on validation"
        if ref.get("available"):
            summary += f" ({ref['name']}: {ref['bytes_per_token']})"
    print(f"train-tokenizer: {summary}")
    print(f"train-tokenizer: wrote tokenizer.json, tokenizer_config.json, chat_template.jinja, "
          f"tokenizer_report.md/.json to {output_dir}")
    return output_dir


def clean_data_files(dataset_path: str) -> tuple[list[str], list[str]]:
    """The train and validation parquet files of a clean-stage folder (or of a plain folder of parquet files)."""
    folder = Path(dataset_path)
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset_path {dataset_path!r} is not a folder (expected the clean stage's output "
                                "with train/*.parquet and validation/*.parquet)")
    train, validation = split_files(folder, "train"), split_files(folder, "validation")
    if not train:
        train = sorted(str(p) for p in folder.glob("*.parquet"))
    if not train:
        raise FileNotFoundError(f"dataset_path {dataset_path!r} holds no train/*.parquet (nor *.parquet) files")
    return train, validation


if __name__ == "__main__":
    sys.exit(entry_point("train-tokenizer", main))
