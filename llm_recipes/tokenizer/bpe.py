"""Training and packaging a byte-level BPE tokenizer with our special tokens and chat template.

The tokenizer is a standard `tokenizers` BPE model wrapped in `PreTrainedTokenizerFast`, saved with
`tokenizer_class: "PreTrainedTokenizerFast"` so transformers 4.x, 5.x and vLLM all load it.
"""

from __future__ import annotations

import json
import os
import site
import sys
from pathlib import Path
from typing import Iterable, Iterator

import yaml

# GPT-4's (cl100k) split pattern with digits split one by one: "2024" -> "2","0","2","4", which keeps
# numbers out of the merges and makes arithmetic tokens uniform (nanochat, Llama 3 split 1-3 digits).
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
BYTE_ALPHABET_SIZE = 256
# The tokenizer definition lives in the repository's top-level `tokenizer/` folder. An editable install
# (the README's) reads it there; a wheel installs a copy as data files under <prefix>/share/llm_recipes/
# (setup.cfg's data_files), which is where a non-editable install finds it.
REPO_ROOT = Path(__file__).resolve().parent.parent.parent
INSTALLED_DATA_DIRS = [Path(sys.prefix) / "share" / "llm_recipes", Path(site.getuserbase()) / "share" / "llm_recipes"]


def resolve_definition_dir(path: str | os.PathLike | None) -> Path:
    """The folder holding special_tokens.yaml and chat_template.jinja (default: `tokenizer`). A relative
    path is looked up in the working directory, then in the repository, then in the installed data files."""
    path = Path("tokenizer") if path is None else Path(path)
    candidates = [path] if path.is_absolute() else [path, REPO_ROOT / path, *(d / path for d in INSTALLED_DATA_DIRS)]
    for candidate in candidates:
        if (candidate / "special_tokens.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"tokenizer definition folder {str(path)!r} must contain special_tokens.yaml and chat_template.jinja "
        f"(looked in: {', '.join(str(c) for c in candidates)})"
    )


def load_definition(path: str | os.PathLike | None = None) -> tuple[dict, str]:
    """Returns (special tokens mapping, chat template text) from a tokenizer definition folder."""
    folder = resolve_definition_dir(path)
    specials = yaml.safe_load((folder / "special_tokens.yaml").read_text(encoding="utf-8"))
    for key in ("bos_token", "eos_token", "pad_token"):
        if not isinstance(specials.get(key), str):
            raise ValueError(f"{folder / 'special_tokens.yaml'}: missing {key!r}")
    template_path = folder / "chat_template.jinja"
    template = template_path.read_text(encoding="utf-8") if template_path.is_file() else None
    return specials, template


def check_vocab_size(vocab_size: int, specials: dict) -> int:
    """The vocabulary size rounded up to a multiple of 64; a ValueError when it cannot hold the 256 byte
    tokens plus the special tokens."""
    rounded = round_vocab_size(vocab_size)
    minimum = BYTE_ALPHABET_SIZE + len(special_token_list(specials))
    if int(vocab_size) <= 0 or rounded < minimum:
        raise ValueError(f"vocab_size {rounded} is too small: a byte-level BPE needs at least {BYTE_ALPHABET_SIZE} "
                         f"byte tokens plus {minimum - BYTE_ALPHABET_SIZE} special tokens = {minimum}")
    return rounded


def special_token_list(specials: dict) -> list[str]:
    """Special tokens in id order: bos, eos, pad, then the additional ones."""
    tokens = [specials["bos_token"], specials["eos_token"], specials["pad_token"]]
    tokens += [t for t in specials.get("additional_special_tokens", []) if t not in tokens]
    return tokens


def round_vocab_size(vocab_size: int, multiple: int = 64) -> int:
    """Rounds up to a multiple of 64: embedding and output matmuls run faster on aligned sizes."""
    return ((int(vocab_size) + multiple - 1) // multiple) * multiple


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    definition_dir: str | os.PathLike | None = None,
    model_max_length: int = 2048,
    min_frequency: int = 2,
    max_document_chars: int | None = None,
    show_progress: bool = False,
    length: int | None = None,
    stats: dict | None = None,
):
    """Trains a byte-level BPE tokenizer from a stream of texts.

    Args:
        texts: documents; consumed once, as a stream.
        vocab_size: target size including special tokens, rounded up to a multiple of 64.
        definition_dir: folder with special_tokens.yaml and chat_template.jinja.
        model_max_length: context length written into tokenizer_config.json.
        min_frequency: a pair must occur this often to be merged.
        max_document_chars: documents are cut to this many characters (a few huge documents otherwise
            dominate the pair counts and the training memory).
        show_progress: show the `tokenizers` trainer's progress bars.
        length: number of documents, when known, for the progress bar's ETA.
        stats: a dict to fill with what was read: `documents`, `characters`, `bytes`.

    Lone surrogates in a text are replaced with U+FFFD (see `replace_lone_surrogates`); empty and
    non-string items are skipped.

    Returns:
        A `PreTrainedTokenizerFast` with bos/eos/pad tokens and the chat template set.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials, chat_template = load_definition(definition_dir)
    special_tokens = special_token_list(specials)
    vocab_size = check_vocab_size(vocab_size, specials)

    tokenizer = Tokenizer(models.BPE(byte_fallback=False))
    # split with the GPT-4 regex, then map bytes to printable characters (no unknown tokens possible)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )

    seen = chars = num_bytes = 0

    def stream() -> Iterator[str]:
        nonlocal seen, chars, num_bytes
        for text in texts:
            if not isinstance(text, str) or not text:
                continue
            if max_document_chars:
                text = text[:max_document_chars]
            try:
                size = len(text.encode("utf-8"))
            except UnicodeEncodeError:
                text = replace_lone_surrogates(text)
                size = len(text.encode("utf-8"))
            seen += 1
            chars += len(text)
            num_bytes += size
            yield text

    tokenizer.train_from_iterator(stream(), trainer=trainer, length=length)
    if stats is not None:
        stats.update(documents=seen, characters=chars, bytes=num_bytes)
    if seen == 0:
        raise ValueError("cannot train a tokenizer on an empty dataset: no non-empty text was given")

    # `tokenizer(text)` starts with BOS, like every pretraining document, so plain transformers usage
    # (pipeline, lm-eval) scores text the way the model saw it; chat templates add BOS themselves and are
    # tokenized without special tokens.
    bos = specials["bos_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=specials["bos_token"],
        eos_token=specials["eos_token"],
        pad_token=specials["pad_token"],
        additional_special_tokens=[t for t in special_tokens[3:]],
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    if chat_template:
        fast.chat_template = chat_template
    return fast


def save_tokenizer(tokenizer, output_dir: str | os.PathLike) -> Path:
    """save_pretrained, then make tokenizer_config.json loadable by transformers 4 and 5 and vLLM: pin
    `tokenizer_class` to PreTrainedTokenizerFast (transformers 5 writes "TokenizersBackend"), set
    `model_max_length`, and list the chat markers as `additional_special_tokens`."""
    output_dir = Path(output_dir)
    tokenizer.save_pretrained(output_dir)
    config_path = output_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["model_max_length"] = tokenizer.model_max_length
    # transformers 5 writes the chat markers as a list under "extra_special_tokens"; transformers 4 reads
    # that key as a dict of named tokens and fails to load ('list' object has no attribute 'keys').
    # "additional_special_tokens" is read by both.
    extra = config.get("extra_special_tokens")
    if isinstance(extra, list):
        config.pop("extra_special_tokens")
        config["additional_special_tokens"] = extra
    if tokenizer.chat_template and "chat_template" not in config and not (output_dir / "chat_template.jinja").exists():
        config["chat_template"] = tokenizer.chat_template
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return output_dir


END_OF_TURN_TOKEN = "<|im_end|>"  # ChatML's, closes every turn of our chat template


def end_of_turn_token_id(tokenizer) -> int | None:
    """The id of the end-of-turn token, or None when the tokenizer has none."""
    token_id = tokenizer.convert_tokens_to_ids(END_OF_TURN_TOKEN)
    return token_id if isinstance(token_id, int) and token_id != tokenizer.unk_token_id else None


def end_of_turn_token_ids(tokenizer) -> list[int]:
    """Token ids that end generation: end of text and end of a chat turn."""
    ids = [tokenizer.eos_token_id]
    im_end = end_of_turn_token_id(tokenizer)
    if im_end is not None and im_end not in ids:
        ids.append(im_end)
    return ids


# --- encoding documents for pretraining -----------------------------------------------------------


def replace_lone_surrogates(text: str) -> str:
    """Returns `text` as valid Unicode: lone surrogates (U+D800-U+DFFF, which no UTF-8 encoder accepts)
    become U+FFFD; surrogate pairs written as two code points become the character they encode.

    Python strings can hold lone surrogates (from `surrogateescape` file reads or broken JSON), but
    `tokenizers` rejects them with a bare "TextInputSequence must be str" TypeError, so every encoding
    path of ours replaces them instead of failing a long job on one bad document.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        # utf-16 with surrogatepass joins valid pairs; decoding with "replace" turns lone halves into U+FFFD
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


class DocumentEncoder:
    """Encodes document texts to token ids for pretraining: no special tokens added, and special-token
    strings that occur in the text (a docstring quoting "<|im_end|>") are encoded as plain text, so the
    only BOS/EOS/chat-marker ids in the training data are the ones the packer puts there.

    Args:
        tokenizer: a `PreTrainedTokenizerFast` (or anything with `backend_tokenizer`) or a `tokenizers.Tokenizer`.

    Calling the encoder with a list of texts returns a list of id lists (batched in Rust, on all cores
    unless TOKENIZERS_PARALLELISM=false). It pickles, so it can be sent to worker processes.
    """

    def __init__(self, tokenizer):
        from tokenizers import Tokenizer

        backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
        if not isinstance(backend, Tokenizer):
            raise TypeError(
                f"expected a fast tokenizer (tokenizers.Tokenizer backend), got {type(tokenizer).__name__}")
        self._json = backend.to_str()
        self._build()

    def _build(self) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_str(self._json)
        self._tok.no_truncation()
        self._tok.no_padding()
        self._tok.encode_special_tokens = True

    def __getstate__(self):
        return {"_json": self._json}

    def __setstate__(self, state):
        self._json = state["_json"]
        self._build()

    def __call__(self, texts: list[str]) -> list[list[int]]:
        try:
            encodings = self._tok.encode_batch_fast(texts, add_special_tokens=False)
        except TypeError:
            # only reached for a batch holding a lone surrogate (or a non-string): fix what can be fixed,
            # name what cannot
            fixed = []
            for i, text in enumerate(texts):
                if not isinstance(text, str):
                    raise TypeError(f"document {i} of the batch is {type(text).__name__}, expected str") from None
                fixed.append(replace_lone_surrogates(text))
            encodings = self._tok.encode_batch_fast(fixed, add_special_tokens=False)
        return [e.ids for e in encodings]


def tokenizer_sha256(tokenizer) -> str:
    """A fingerprint of the tokenizer (its full tokenizer.json): token shards record it so that shards made
    with another tokenizer are never mixed in."""
    import hashlib

    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    return hashlib.sha256(backend.to_str().encode("utf-8")).hexdigest()


def save_tokenizer_atomically(tokenizer, output_dir: str | os.PathLike) -> Path:
    """`save_tokenizer` into a temporary folder, then each file renamed into `output_dir`: a crash never
    leaves a half-written tokenizer.json behind (other files in output_dir are kept)."""
    import shutil
    import tempfile

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tokenizer.", dir=output_dir))
    try:
        save_tokenizer(tokenizer, tmp)
        # tokenizer.json last: it is the file loaders look for first
        for path in sorted(tmp.iterdir(), key=lambda p: p.name == "tokenizer.json"):
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            os.replace(path, output_dir / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output_dir


def text_stream(files: list[str], text_column: str = "text", max_chars: int = 0, seed: int = 0,
                batch_size: int = 1000) -> tuple[Iterator[str], int]:
    """Streams the texts of parquet files with `datasets` (never loading them whole).

    Args:
        files: parquet files.
        text_column: the column to read; checked in every file's schema up front.
        max_chars: stop after this many characters (0: read everything). With a cap, documents are
            sampled uniformly over all files (each kept with probability 1.25 x cap / total size, seeded),
            so the sample is not just the first files; by chance it can come out somewhat below the cap.
        seed: sampling seed.
        batch_size: rows read per Arrow batch.

    Returns:
        (iterator over texts, number of rows in the files).
    """
    import random

    import pyarrow.parquet as pq
    from datasets import load_dataset

    num_rows, column_bytes = 0, 0
    for file in files:
        schema = pq.read_schema(file)
        if text_column not in schema.names:
            raise ValueError(f"text column {text_column!r} not found in {file}; its columns are {schema.names}")
        metadata = pq.ParquetFile(file).metadata
        num_rows += metadata.num_rows
        for g in range(metadata.num_row_groups):
            group = metadata.row_group(g)
            for c in range(group.num_columns):
                if group.column(c).path_in_schema == text_column:
                    column_bytes += group.column(c).total_uncompressed_size
    if num_rows == 0:
        raise ValueError(f"the dataset is empty: {len(files)} parquet file(s) with 0 rows ({files[0]} ...)")
    # not datasets' shuffle: on a multi-file parquet stream it sleeps 5 s whenever iteration stops early
    keep = min(1.0, 1.25 * max_chars / max(column_bytes, 1)) if max_chars else 1.0
    dataset = load_dataset("parquet", data_files={"train": list(files)}, split="train", streaming=True)
    dataset = dataset.select_columns([text_column])

    def texts() -> Iterator[str]:
        rng, total = random.Random(seed), 0
        for batch in dataset.iter(batch_size=batch_size):
            for text in batch[text_column]:
                if text and (keep >= 1.0 or rng.random() < keep):
                    yield text
                    total += len(text)
                    if max_chars and total >= max_chars:
                        return

    return texts(), num_rows
