"""Plain text mixed into fine-tuning, so it keeps what pretraining taught: rows in SFT's packed batches, and
for the preference stages (DPO, KTO, ORPO) a language-model loss on a batch of text added to every step's loss.

Fine-tuning a small model on question/answer pairs alone moved its held-out text bits per byte up (the quickstart:
+0.11 bits/byte after 80 SFT steps, beyond the 95% interval): the answers' narrow style replaces the general text
model. Mixing pretraining text back in (a rehearsal/replay set, as in continual learning and in the "pretraining
mix" of InstructGPT's PPO-ptx) is the usual remedy. The text comes from the clean stage's *train* split (the
held-out bits per byte is measured on its validation split), tokenized as pretraining does (documents joined
with EOS), cut into rows of exactly max_length tokens that are trained with plain LM loss on every token.

For SFT the rows are added after TRL has tokenized and packed the fine-tuning data, in the same columns
(`input_ids`, `labels`, `seq_lengths`), so the Trainer's shuffled sampler puts both kinds into each batch. The
preference trainers' batches are pairs, so there the text is a second forward pass per step on its own batch,
weighted by `text_loss_weight` (the "-ptx" term of InstructGPT's PPO-ptx, on DPO's loss instead of PPO's).
"""

from __future__ import annotations

import random
from typing import Any

from ..data.splits import split_files
from .data import DatasetFormatError

PACKED_COLUMNS = ("input_ids", "labels", "seq_lengths")  # what TRL's packing leaves for padding-free training


def rows_for_fraction(fraction: float, fine_tuning_rows: int) -> int:
    """Text rows that make `fraction` of all rows when `fine_tuning_rows` packed rows of fine-tuning data exist."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"text_mix_fraction must be in [0, 1), got {fraction}")
    return round(fine_tuning_rows * fraction / (1.0 - fraction))


def text_rows(corpus_path: str, tokenizer, rows: int, max_length: int, seed: int = 42) -> list[list[int]]:
    """`rows` chunks of `max_length` tokens from the clean corpus's train split: documents in a seeded order,
    each followed by EOS, joined and cut (the last partial chunk is dropped).

    Raises:
        DatasetFormatError: no train split at `corpus_path`, or too little text for one row.
    """
    import pyarrow.parquet as pq

    files = split_files(corpus_path, "train")
    if not files:
        raise DatasetFormatError(f"text_mix_path {corpus_path!r} has no train/*.parquet: expected the clean stage's "
                                 "output folder (its train split is mixed into SFT as plain text)")
    documents = [t for f in files for t in pq.read_table(f, columns=["text"]).column("text").to_pylist() if t]
    random.Random(seed).shuffle(documents)
    end = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    chunks: list[list[int]] = []
    stream: list[int] = []
    batch = 64  # the fast tokenizer encodes a list in parallel; documents are read only until `rows` are full
    for start in range(0, len(documents), batch):
        for ids in tokenizer(documents[start:start + batch], add_special_tokens=False, verbose=False)["input_ids"]:
            stream += ids + end
        full = min(len(stream) // max_length, rows - len(chunks))
        chunks += [stream[i * max_length:(i + 1) * max_length] for i in range(full)]
        stream = stream[full * max_length:]
        if len(chunks) >= rows:
            break
    if rows and not chunks:
        raise DatasetFormatError(f"text_mix_path {corpus_path!r}: its train split holds fewer than {max_length} "
                                 "tokens, not one row of text to mix in")
    if len(chunks) < rows:
        print(f"[sft] text mix: the corpus gave {len(chunks)} rows of {max_length} tokens, not the {rows} asked for")
    return chunks


def mix_into(packed, chunks: list[list[int]], seed: int = 42):
    """`packed` (TRL's packed training Dataset) with one row per chunk added, labels = input_ids, shuffled."""
    from datasets import Dataset, concatenate_datasets

    missing = [c for c in PACKED_COLUMNS if c not in packed.column_names]
    if missing:
        raise ValueError(f"text mixing needs TRL's packed rows (columns {list(PACKED_COLUMNS)}), missing {missing}: "
                         "set packing: true")
    extra: dict[str, Any] = {"input_ids": chunks, "labels": [list(c) for c in chunks],
                             "seq_lengths": [[len(c)] for c in chunks]}
    text = Dataset.from_dict(extra).cast(packed.select_columns(list(PACKED_COLUMNS)).features)
    return concatenate_datasets([packed.select_columns(list(PACKED_COLUMNS)), text]).shuffle(seed=seed)


def with_text_loss(trainer_class: type, chunks: list[list[int]], weight: float, rows_per_step: int) -> type:
    """`trainer_class` (a TRL preference trainer) whose training loss is its own plus `weight` x the LM loss of
    `rows_per_step` text rows, taken from `chunks` in turn. The text loss is logged as `text_loss`."""
    import torch

    class TextLossTrainer(trainer_class):
        _text_position = 0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
            if not model.training:  # evaluation scores the preference loss alone
                return result
            start = self._text_position % len(chunks)
            rows = [chunks[(start + i) % len(chunks)] for i in range(rows_per_step)]
            self._text_position = start + rows_per_step
            ids = torch.tensor(rows, device=self.accelerator.device)
            text_loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            self._text_losses = getattr(self, "_text_losses", []) + [float(text_loss.detach())]
            loss = (result[0] if return_outputs else result) + weight * text_loss
            return (loss, result[1]) if return_outputs else loss

        def log(self, logs, *args, **kwargs):
            if getattr(self, "_text_losses", None) and "loss" in logs:
                logs["text_loss"] = sum(self._text_losses) / len(self._text_losses)
                self._text_losses = []
            return super().log(logs, *args, **kwargs)

    TextLossTrainer.__name__ = f"{trainer_class.__name__}WithTextLoss"
    return TextLossTrainer
