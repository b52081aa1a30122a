"""How good is a trained tokenizer: compression on held-out text next to GPT-2's, vocabulary use, cost.

`tokenizer_report(...)` returns a plain dict (written as `tokenizer_report.json`); `report_markdown(...)`
turns it into `tokenizer_report.md`. Bytes per token is measured on the validation split, which the
tokenizer never saw: more bytes per token means shorter sequences for the same text, hence cheaper
training and a longer effective context.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from .bpe import DocumentEncoder

GPT2_TOKENIZER_DIR = "../shared/data/rasbt/gpt2_tokenizer"


class PeakMemory:
    """Measures resident memory while a block runs: the peak sampled every 20 ms, and the rise over the start.

    `tokenizers` trains in Rust, out of reach of tracemalloc, so we watch the process's RSS instead.
    """

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.start_mb = self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def rss_mb() -> float:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except OSError:  # not Linux: lifetime peak is the best we have
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, self.rss_mb())

    def __enter__(self) -> "PeakMemory":
        self.start_mb = self.peak_mb = self.rss_mb()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self.rss_mb())

    @property
    def rise_mb(self) -> float:
        return self.peak_mb - self.start_mb


def find_gpt2_tokenizer(path: str | os.PathLike | None = GPT2_TOKENIZER_DIR) -> Path | None:
    """The GPT-2 tokenizer folder (encoder.json + vocab.bpe, or tokenizer.json), looked up relative to
    the working directory and then to the repository; None where it is absent."""
    if not path:
        return None
    candidates = [Path(path)]
    if not Path(path).is_absolute():
        candidates.append(Path(__file__).resolve().parent.parent.parent / path)
    for folder in candidates:
        if (folder / "tokenizer.json").is_file() or (
                (folder / "encoder.json").is_file() and (folder / "vocab.bpe").is_file()):
            return folder
    return None


def load_reference_tokenizer(folder: Path):
    """A `tokenizers.Tokenizer` for a reference folder: GPT-2's original files or a tokenizer.json."""
    from tokenizers import ByteLevelBPETokenizer, Tokenizer

    if (folder / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(folder / "tokenizer.json"))
    # GPT-2's own files: byte-level BPE with its original regex and no prefix space
    return ByteLevelBPETokenizer(str(folder / "encoder.json"), str(folder / "vocab.bpe"))._tokenizer


def _count_tokens(tokenizer, texts: list[str], batch_size: int = 256) -> int:
    total = 0
    for start in range(0, len(texts), batch_size):
        for encoding in tokenizer.encode_batch_fast(texts[start:start + batch_size], add_special_tokens=False):
            total += len(encoding.ids)
    return total


def tokenizer_report(tokenizer, validation_texts: Iterable[str], *, training: dict[str, Any] | None = None,
                     reference_dir: str | os.PathLike | None = GPT2_TOKENIZER_DIR,
                     max_chars: int = 5_000_000) -> dict[str, Any]:
    """Measures a trained tokenizer on held-out text.

    Args:
        tokenizer: the trained `PreTrainedTokenizerFast`.
        validation_texts: held-out documents (read until `max_chars` characters).
        training: facts about training to include (seconds, documents, bytes, peak memory).
        reference_dir: a tokenizer to compare with (GPT-2 by default); skipped when absent.
        max_chars: characters of validation text to measure, to bound the report's time.

    Returns:
        A JSON-able dict: `tokenizer`, `training`, `validation` (bytes per token, round-trip check),
        `reference` (same text through the reference tokenizer, or why it is missing), `vocabulary`
        (share of the vocabulary used, most frequent and longest tokens), `examples`.
    """
    texts, chars = [], 0
    for text in validation_texts:
        if not text:
            continue
        texts.append(text)
        chars += len(text)
        if chars >= max_chars:
            break
    encode = DocumentEncoder(tokenizer)
    num_special = len(tokenizer.all_special_ids)
    report: dict[str, Any] = {
        "tokenizer": {"vocab_size": len(tokenizer), "special_tokens": tokenizer.all_special_tokens,
                      "model_max_length": tokenizer.model_max_length,
                      "has_chat_template": bool(tokenizer.chat_template)},
        "training": training or {},
    }
    if not texts:
        report["validation"] = {"documents": 0, "note": "no validation text: compression not measured"}
        report["reference"] = {"available": False, "reason": "no validation text"}
        report["vocabulary"] = {}
        report["examples"] = _examples(tokenizer)
        return report

    started = time.perf_counter()
    ids = []
    for start in range(0, len(texts), 256):
        ids.extend(encode(texts[start:start + 256]))
    encode_seconds = time.perf_counter() - started
    num_bytes = sum(len(t.encode("utf-8")) for t in texts)
    num_tokens = sum(len(x) for x in ids)
    exact = sum(tokenizer.decode(x) == t for x, t in zip(ids, texts))
    report["validation"] = {
        "documents": len(texts), "characters": chars, "bytes": num_bytes, "tokens": num_tokens,
        "bytes_per_token": round(num_bytes / max(num_tokens, 1), 4),
        "tokens_per_document": round(num_tokens / len(texts), 1),
        "encode_mb_per_s": round(num_bytes / 2**20 / max(encode_seconds, 1e-9), 2),
        "round_trip_exact": f"{exact}/{len(texts)}",
    }

    folder = find_gpt2_tokenizer(reference_dir)
    if folder is None:
        report["reference"] = {"available": False, "reason": f"reference tokenizer {str(reference_dir)!r} not found"}
    else:
        reference = load_reference_tokenizer(folder)
        ref_tokens = _count_tokens(reference, texts)
        report["reference"] = {
            "available": True, "name": folder.name, "path": str(folder), "vocab_size": reference.get_vocab_size(),
            "tokens": ref_tokens, "bytes_per_token": round(num_bytes / max(ref_tokens, 1), 4),
            # > 1: we need more tokens than the reference for the same text
            "token_ratio_ours_over_reference": round(num_tokens / max(ref_tokens, 1), 4),
        }

    counts = Counter(t for x in ids for t in x)
    learnable = len(tokenizer) - num_special
    special_ids = set(tokenizer.all_special_ids)
    used = sum(1 for t in counts if t not in special_ids)
    specials = set(tokenizer.all_special_tokens)
    vocab = {tok: i for tok, i in tokenizer.backend_tokenizer.get_vocab(with_added_tokens=False).items()
             if tok not in specials}
    longest = sorted(vocab, key=lambda tok: (-len(tokenizer.convert_tokens_to_string([tok])), vocab[tok]))[:15]
    report["vocabulary"] = {
        "learned_tokens": learnable,
        "used_on_validation": used,
        "used_fraction": round(used / max(learnable, 1), 4),
        "never_used": learnable - used,
        "most_frequent": [[tokenizer.decode([t]), n] for t, n in counts.most_common(20)],
        "longest": [tokenizer.convert_tokens_to_string([tok]) for tok in longest],
    }
    report["examples"] = _examples(tokenizer)
    return report


def _examples(tokenizer) -> dict[str, Any]:
    sample = ("def read_file(path):\n    \"\"\"Return the contents of a file as text.\"\"\"\n"
              "    return open(path).read()  # 2024")
    pieces = [tokenizer.decode([t]) for t in tokenizer(sample, add_special_tokens=False)["input_ids"]]
    messages = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "What is 2+2?"},
                {"role": "assistant", "content": "4."}, {"role": "user", "content": "Thanks!"},
                {"role": "assistant", "content": "You're welcome."}]
    out: dict[str, Any] = {"text": sample, "pieces": pieces}
    if tokenizer.chat_template:
        rendered = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                                 return_assistant_tokens_mask=True)
        ids, mask = rendered["input_ids"], rendered["assistant_masks"]
        out["chat"] = tokenizer.apply_chat_template(messages, tokenize=False)
        out["chat_assistant_tokens"] = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    return out


def report_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown, for people."""
    tok, train, val = report["tokenizer"], report.get("training", {}), report.get("validation", {})
    ref, vocab = report.get("reference", {}), report.get("vocabulary", {})
    lines = ["# Tokenizer report", "",
             f"Byte-level BPE, {tok['vocab_size']:,} tokens ({len(tok['special_tokens'])} special: "
             f"{', '.join(f'`{t}`' for t in tok['special_tokens'])}), "
             f"model_max_length {tok['model_max_length']:,}.", ""]
    if train:
        lines += ["## Training", "", "| | |", "|---|---|"]
        for key, label in [("documents", "documents"), ("bytes", "bytes"), ("seconds", "time (s)"),
                           ("peak_rss_mb", "peak memory (RSS, MB)"),
                           ("rss_rise_mb", "memory rise while training (MB)")]:
            if key in train:
                value = train[key]
                lines.append(f"| {label} | {value:,} |" if isinstance(value, int) else f"| {label} | {value} |")
        lines.append("")
    lines += ["## Compression on the validation split", ""]
    if not val.get("documents"):
        lines += [val.get("note", "no validation text"), ""]
    else:
        lines += [f"{val['documents']:,} documents, {val['bytes']:,} bytes; decode(encode(text)) == text for "
                  f"{val['round_trip_exact']} documents.", "",
                  "| tokenizer | vocab | tokens | bytes/token |", "|---|---:|---:|---:|",
                  f"| ours | {tok['vocab_size']:,} | {val['tokens']:,} | {val['bytes_per_token']} |"]
        if ref.get("available"):
            lines.append(f"| {ref['name']} | {ref['vocab_size']:,} | {ref['tokens']:,} | {ref['bytes_per_token']} |")
            lines += ["", f"Ours needs {ref['token_ratio_ours_over_reference']}x the tokens of {ref['name']} "
                      "on this text (a smaller vocabulary compresses less; a vocabulary trained on this domain "
                      "compresses more)."]
        else:
            lines += ["", f"No comparison: {ref.get('reason', 'reference tokenizer unavailable')}."]
        lines += ["", "## Vocabulary", "",
                  f"{vocab['used_on_validation']:,} of {vocab['learned_tokens']:,} learned tokens "
                  f"({vocab['used_fraction']:.1%}) occur in the validation text; "
                  f"{vocab['never_used']:,} never do.", "",
                  "Most frequent: " + ", ".join(f"`{t!r}` ({n:,})" for t, n in vocab["most_frequent"][:12]), "",
                  "Longest: " + ", ".join(f"`{t!r}`" for t in vocab["longest"][:10]), ""]
    examples = report.get("examples", {})
    if examples:
        lines += ["## Examples", "", "```", examples["text"], "```", "",
                  " | ".join(f"`{p!r}`" for p in examples["pieces"]), ""]
        if "chat" in examples:
            lines += ["Chat template (assistant tokens, the ones trained on: "
                      f"`{examples['chat_assistant_tokens']!r}`):", "", "```", examples["chat"], "```", ""]
    return "\n".join(lines)
