"""Training and validation batches for the pretraining loop, from a clean dataset folder.

Two ways in, one sharding mechanism each (never both: sharding the data AND letting
`accelerator.prepare(dataloader)` shard it again gives each of two processes a quarter):

- `stream`: `packing.PackedStreamDataset` tokenizes and packs parquet rows on the fly and gives each
  process its own share of the rows itself; the loader is a plain DataLoader, not prepared.
- `shards`: `packing.pretokenize` writes memory-mapped token shards once (reused while the dataset and
  tokenizer are unchanged); `ShardSampler` hands each process every world_size-th row of a seeded
  permutation, so a global batch is the same rows whatever the number of processes.

Both report a `state_dict()` of where they are, saved in every checkpoint, so a resumed run continues
with the next unseen batch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..data.splits import evenly_spaced, split_files
from ..fileio import atomic_write_text
from . import packing


class DataError(ValueError):
    """A dataset that cannot feed pretraining (missing, empty, shorter than one sequence)."""


def parquet_files(dataset_path: str | os.PathLike, split: str) -> list[str]:
    files = split_files(dataset_path, split)
    if not files:
        raise DataError(
            f"dataset {str(dataset_path)!r} has no {split}/*.parquet files (expected the output folder of "
            f"`llm-recipes clean`, with train/ and validation/ parquet files)")
    return files


def load_split(dataset_path: str | os.PathLike, split: str, text_column: str, streaming: bool):
    from datasets import load_dataset

    files = parquet_files(dataset_path, split)
    dataset = load_dataset("parquet", data_files={split: files}, split=split, streaming=streaming)
    columns = dataset.column_names if dataset.column_names is not None else list(dataset.features or [])
    if columns and text_column not in columns:
        raise DataError(f"dataset {str(dataset_path)!r} split {split!r} has no column {text_column!r} "
                        f"(columns: {', '.join(columns)}); set text_column")
    return dataset


class ShardSampler:
    """Rows of a map-style dataset for one process: a permutation per epoch (seed + epoch), every
    world_size-th row from `rank`, whole batches only, resumable at any batch.

    Args:
        num_rows: rows in the dataset.
        batch_size: rows per batch of this process.
        rank: this process's index.
        world_size: number of processes.
        seed: base seed of the permutations.
        shuffle: permute rows each epoch (False: file order, for validation).
    """

    def __init__(self, num_rows: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True):
        self.num_rows, self.batch_size, self.rank, self.world_size = num_rows, batch_size, rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.batch_in_epoch = 0, 0
        self.batches_per_epoch = num_rows // (batch_size * world_size)

    def _order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_rows)
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.num_rows)

    def __iter__(self) -> Iterator[list[int]]:
        """Batches of row indices forever, epoch after epoch."""
        while True:
            mine = self._order()[self.rank::self.world_size]
            while self.batch_in_epoch < self.batches_per_epoch:
                start = self.batch_in_epoch * self.batch_size
                self.batch_in_epoch += 1
                yield mine[start:start + self.batch_size].tolist()
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])


def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([torch.as_tensor(np.asarray(row[key])).long() for row in rows])
            for key in ("input_ids", "position_ids", "labels")}


class TrainBatches:
    """Endless micro-batches for one process, with a resumable position."""

    def __init__(self, loader, source, mode: str):
        self.loader, self.source, self.mode = loader, source, mode
        self.epoch = 0
        self._iter = None

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.mode == "shards":
            if self._iter is None:
                self._iter = iter(self.loader)
            return next(self._iter)
        # stream: restart the dataset at its end with a new epoch (a new shuffle)
        for _ in range(2):
            if self._iter is None:
                self.source.set_epoch(self.epoch)
                self._iter = iter(self.loader)
            try:
                return next(self._iter)
            except StopIteration:
                self._iter, self.epoch = None, self.epoch + 1
        raise DataError("the training stream yielded no batch in a whole epoch: the dataset is shorter than "
                        "one batch of packed sequences; use more data, a smaller seq_len or a smaller batch")

    def state_dict(self) -> dict[str, Any]:
        if self.mode == "shards":
            return {"mode": "shards", "sampler": self.source.state_dict()}
        return {"mode": "stream", "epoch": self.epoch, "dataset": self.source.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("mode") != self.mode:
            raise DataError(
                f"checkpoint data state is for data_mode {state.get('mode')!r}, this run uses {self.mode!r}")
        if self.mode == "shards":
            self.source.load_state_dict(state["sampler"])
        else:
            self.epoch = state["epoch"]
            self.source.set_epoch(self.epoch)
            self.source.load_state_dict(state["dataset"])
        self._iter = None


def _fingerprint(files: list[str], tokenizer) -> str:
    """Identifies the inputs of pre-tokenized shards: the parquet files (name, size, mtime) and the vocabulary."""
    h = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        h.update(f"{os.path.abspath(f)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    h.update(str(tokenizer.bos_token_id).encode() + str(tokenizer.eos_token_id).encode())
    return h.hexdigest()


def token_shards(cfg, tokenizer, split: str, accelerator) -> Path:
    """Pre-tokenized shards of a split (written by the main process once, reused while inputs match)."""
    root = Path(cfg.tokenized_path or Path(cfg.output_dir) / "tokens")
    out = root / split
    files = parquet_files(cfg.dataset_path, split)
    fingerprint = _fingerprint(files, tokenizer)
    stamp = out / "source_fingerprint.txt"
    with accelerator.main_process_first():
        if accelerator.is_main_process and not (stamp.is_file() and stamp.read_text().strip() == fingerprint):
            import shutil

            shutil.rmtree(out, ignore_errors=True)
            dataset = load_split(cfg.dataset_path, split, cfg.text_column, streaming=False)
            packing.pretokenize(dataset, tokenizer, out, text_column=cfg.text_column, num_proc=cfg.tokenize_num_proc)

            atomic_write_text(stamp, fingerprint + "\n")
    return out


def corpus_tokens(cfg, tokenizer, accelerator) -> int | None:
    """Training tokens in the corpus (for the compute-budget dial): exact from the token shards (written now if
    they are not there yet), None in stream mode (counting would mean tokenizing everything first)."""
    if cfg.data_mode != "shards":
        return None
    meta = json.loads((token_shards(cfg, tokenizer, "train", accelerator) / "meta.json").read_text())
    return int(meta["num_tokens"])


def build_train_batches(cfg, tokenizer, accelerator) -> TrainBatches:
    """The training micro-batches of this process."""
    from torch.utils.data import DataLoader

    rank, world = accelerator.process_index, accelerator.num_processes
    batch = cfg.per_device_train_batch_size
    if cfg.data_mode == "shards":
        dataset = packing.TokenShardDataset(token_shards(cfg, tokenizer, "train", accelerator), cfg.seq_len)
        if len(dataset) < batch * world:
            raise DataError(
                f"dataset {cfg.dataset_path!r} has {len(dataset)} training sequences of seq_len {cfg.seq_len} "
                f"tokens, fewer than one global batch ({batch} x {world} processes): use more data or a smaller "
                f"seq_len / batch size")
        sampler = ShardSampler(len(dataset), batch, rank, world, seed=cfg.seed, shuffle=True)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.dataloader_num_workers,
                            collate_fn=collate)
        return TrainBatches(loader, sampler, "shards")
    stream = load_split(cfg.dataset_path, "train", cfg.text_column, streaming=True)
    dataset = packing.PackedStreamDataset(stream, tokenizer, cfg.seq_len, text_column=cfg.text_column,
                                          shuffle_buffer=cfg.shuffle_buffer, seed=cfg.seed, rank=rank,
                                          world_size=world)
    # num_workers=0: the dataset's state_dict then describes exactly what the loop has consumed
    loader = DataLoader(dataset, batch_size=batch, drop_last=True, num_workers=0, collate_fn=collate)
    return TrainBatches(loader, dataset, "stream")


def build_eval_batches(cfg, tokenizer, accelerator) -> list[dict[str, torch.Tensor]]:
    """eval_max_batches validation batches of this process (processes get disjoint rows), held in memory so every
    evaluation scores the same tokens: in shards mode rows spread evenly over the split, in stream mode its first
    rows (a stream is read in order)."""
    from torch.utils.data import DataLoader

    rank, world = accelerator.process_index, accelerator.num_processes
    batch = cfg.per_device_eval_batch_size or cfg.per_device_train_batch_size
    limit = None if cfg.eval_max_batches < 0 else cfg.eval_max_batches
    if cfg.data_mode == "shards":
        dataset = packing.TokenShardDataset(token_shards(cfg, tokenizer, "validation", accelerator), cfg.seq_len)
        rows = list(range(rank, len(dataset), world))
        if limit is not None:
            # rows spread evenly over the whole split, not its first ones: the split is in file order, which
            # groups documents by source (pydoc topics first, then one package after another), and the first
            # quarter of the quickstart's was 0.23 bits/byte easier than the whole (benchmarks/README.md)
            rows = evenly_spaced(rows, limit * batch)
        chunks = [rows[i:i + batch] for i in range(0, len(rows), batch)]
        batches = [collate([dataset[i] for i in chunk]) for chunk in chunks[:limit]]
    else:
        stream = load_split(cfg.dataset_path, "validation", cfg.text_column, streaming=True)
        dataset = packing.PackedStreamDataset(stream, tokenizer, cfg.seq_len, text_column=cfg.text_column,
                                              shuffle_buffer=0, seed=cfg.seed, rank=rank, world_size=world)
        batches = []
        for item in DataLoader(dataset, batch_size=batch, num_workers=0, collate_fn=collate):
            if limit is not None and len(batches) >= limit:
                break
            batches.append(item)
    if not batches:
        raise DataError(f"dataset {cfg.dataset_path!r}: the validation split has no full sequence of seq_len "
                        f"{cfg.seq_len} tokens for process {rank}; use more validation data or a smaller seq_len")
    return batches
