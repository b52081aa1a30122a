"""Turning documents into fixed-length training rows: packing on the fly or from pre-tokenized shards.

Layout of every row (both modes produce exactly the same rows for the same document order):

- Each document becomes `[BOS] + tokens + [EOS]` and documents are laid down one after another.
- Rows are BOS-aligned: every row starts with a BOS token, so the model never starts reading in the
  middle of a document without knowing it.
- A document that does not fit in the space left in the current row is split: its first tokens fill
  the row exactly, and the rest continues at the start of the next row(s) behind a fresh BOS (one extra
  token per split). No token is dropped and no row is padded; only the final partial row of a finite
  stream is dropped.
- `position_ids` restart at 0 at every BOS. With no `attention_mask`, transformers' `create_causal_mask`
  turns that into a block-diagonal causal mask, so packed documents do not attend to each other
  (train with `use_cache=False`).
- `labels` equal `input_ids` except at BOS tokens, which are -100: predicting a document's BOS would
  mean predicting across a document boundary (from the previous document's EOS) and the BOS of a
  continuation carries no information. EOS is learned, so the model learns to end documents.

`pack_documents` is the packing itself; `PackedStreamDataset` tokenizes a `datasets` stream on the fly
(shuffle buffer, one slice per rank, resumable); `pretokenize` + `TokenShardDataset` store the token
stream once as uint16/uint32 arrays and memory-map them, the fastest input for long runs.
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from ..fileio import atomic_open, atomic_write_json
from ..tokenizer.bpe import DocumentEncoder, tokenizer_sha256

IGNORE_INDEX = -100
SHARD_FORMAT_VERSION = 1


# --- the packing rule ---------------------------------------------------------------------------------


def row_arrays(input_ids: np.ndarray, bos_id: int) -> dict[str, np.ndarray]:
    """Builds the row dict from the token ids of one row: positions restart at each BOS, BOS is not a target.

    Args:
        input_ids: int array of one row; must start with BOS (every packed row does).
        bos_id: the BOS token id.
    """
    input_ids = np.asarray(input_ids, dtype=np.int64)
    index = np.arange(len(input_ids), dtype=np.int64)
    is_bos = input_ids == bos_id
    # index of the most recent BOS at or before each position
    last_start = np.maximum.accumulate(np.where(is_bos, index, 0))
    labels = input_ids.copy()
    labels[is_bos] = IGNORE_INDEX
    return {"input_ids": input_ids, "position_ids": index - last_start, "labels": labels}


class _Packer:
    """The state machine behind `pack_documents`: the current partial row, as a list of token ids."""

    def __init__(self, seq_len: int, bos_id: int, eos_id: int, row: list[int] | None = None):
        if seq_len < 2:
            raise ValueError(f"seq_len must be at least 2 (a BOS and one token), got {seq_len}")
        self.seq_len, self.bos_id, self.eos_id = seq_len, bos_id, eos_id
        self.row: list[int] = list(row or [])

    def add(self, tokens: list[int]) -> list[list[int]]:
        """Adds one document (token ids without BOS/EOS) and returns the rows it completed."""
        tokens = list(tokens)
        if tokens and tokens[0] == self.bos_id:
            tokens = tokens[1:]  # `tokenizer(text)` already starts with BOS: don't double it
        doc = [self.bos_id, *tokens, self.eos_id]
        done = []
        while doc:
            space = self.seq_len - len(self.row)
            if len(doc) <= space:
                self.row.extend(doc)
                doc = []
            else:
                # the head fills this row exactly; the rest goes on in the next row behind a new BOS
                self.row.extend(doc[:space])
                doc = [self.bos_id, *doc[space:]]
            if len(self.row) == self.seq_len:
                done.append(self.row)
                self.row = []
        return done

    def state(self) -> list[int]:
        return list(self.row)


def pack_documents(token_docs: Iterable[list[int]], seq_len: int, bos_id: int,
                   eos_id: int) -> Iterator[dict[str, np.ndarray]]:
    """Packs tokenized documents into rows of exactly `seq_len` tokens.

    Each document becomes `[BOS] + tokens + [EOS]` (a leading BOS already in `tokens` is not doubled).
    Documents are placed whole while they fit. A document that does not fit in the space left in the
    current row is split there: its first tokens complete the row, and the remaining tokens continue in
    the next row behind a new BOS (again split as often as needed, so a document longer than `seq_len`
    spans several rows). Every row therefore starts with BOS, no token is lost and no padding is used;
    the last, incomplete row of the input is dropped.

    Args:
        token_docs: token id lists, one per document, without BOS/EOS; they must not contain BOS.
        seq_len: tokens per row.
        bos_id: id of the BOS token (document start).
        eos_id: id of the EOS token (document end).

    Yields:
        dicts of int64 arrays of length seq_len: `input_ids`; `position_ids` (0 at every BOS, counting up
        within a document); `labels` (= input_ids, except -100 at every BOS).
    """
    packer = _Packer(seq_len, bos_id, eos_id)
    for tokens in token_docs:
        for row in packer.add(tokens):
            yield row_arrays(np.asarray(row, dtype=np.int64), bos_id)


def _to_torch(row: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in row.items()}


def _special_ids(tokenizer) -> tuple[int, int]:
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None or eos is None:
        raise ValueError("the tokenizer needs a bos_token and an eos_token for packing (ours has <|bos|> and <|eos|>)")
    return int(bos), int(eos)


def _check_text_column(dataset, text_column: str) -> None:
    names = getattr(dataset, "column_names", None)
    if names is not None and text_column not in names:
        raise ValueError(f"text column {text_column!r} not found in the dataset; its columns are {list(names)}")


# --- mode 1: on the fly over a datasets stream --------------------------------------------------------


class PackedStreamDataset(torch.utils.data.IterableDataset):
    """Tokenizes and packs a `datasets` dataset on the fly (see the module docstring for the row layout).

    Args:
        dataset: a `datasets.IterableDataset` (e.g. `load_dataset(..., streaming=True)`) or `datasets.Dataset`.
        tokenizer: a fast tokenizer with bos and eos tokens.
        seq_len: tokens per row.
        text_column: column holding the document text.
        shuffle_buffer: size of the `datasets` shuffle buffer (0 or None: keep the dataset's order). Shard
            order and buffer draws depend on `seed` and the epoch (`set_epoch`) only, so runs repeat exactly.
        seed: shuffle seed.
        rank: this process's index; with world_size > 1 the dataset is split with
            `datasets.distributed.split_dataset_by_node`, so each rank reads its own documents. Do not
            shard the resulting DataLoader again (`accelerator.prepare` with `dispatch_batches=False`
            and `split_batches=False` must get a DataLoader that it leaves unsharded).
        world_size: number of processes.
        batch_size: documents encoded per call of the Rust tokenizer.

    Yields `{"input_ids", "position_ids", "labels"}` as int64 tensors of length seq_len.

    Resume: `state_dict()` taken between rows and given to `load_state_dict()` on a fresh instance makes
    it continue with the next row. Without a shuffle buffer the rows are exactly those of an
    uninterrupted run. With one, `datasets` does not save the buffer's content and refills it on resume,
    so the order differs and up to about one buffer of documents can be skipped or repeated (a
    `datasets` limitation; our packing state itself is exact). A state saved after the last row says the
    epoch is finished: the resumed instance yields nothing until `set_epoch(next)`. The state lives in
    the process that iterates: use `num_workers=0`, or torchdata's `StatefulDataLoader`, which collects
    it from each worker.
    """

    def __init__(self, dataset, tokenizer, seq_len: int, text_column: str = "text",
                 shuffle_buffer: int | None = 10_000, seed: int = 0, rank: int = 0, world_size: int = 1,
                 batch_size: int = 128):
        import datasets
        from datasets.distributed import split_dataset_by_node

        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        _check_text_column(dataset, text_column)
        if isinstance(dataset, datasets.Dataset):
            if len(dataset) == 0:
                raise ValueError("the dataset is empty: nothing to pack")
            # several shards so that ranks and DataLoader workers get whole shards, and shuffling
            # permutes shard order as well as the buffer
            dataset = dataset.to_iterable_dataset(num_shards=max(1, min(len(dataset), 8 * world_size)))
        elif not isinstance(dataset, datasets.IterableDataset):
            raise TypeError(
                f"dataset must be a datasets.Dataset or datasets.IterableDataset, got {type(dataset).__name__}")
        if shuffle_buffer:
            dataset = dataset.shuffle(seed=seed, buffer_size=int(shuffle_buffer))
        if world_size > 1:
            dataset = split_dataset_by_node(dataset, rank=rank, world_size=world_size)
        self.dataset = dataset
        self.seq_len, self.text_column, self.batch_size = int(seq_len), text_column, int(batch_size)
        self.bos_id, self.eos_id = _special_ids(tokenizer)
        _Packer(self.seq_len, self.bos_id, self.eos_id)  # validates seq_len now rather than at first use
        self.encode = DocumentEncoder(tokenizer)
        self.epoch = 0
        self._state: dict[str, Any] | None = None  # position after the last row handed out
        self._resume: dict[str, Any] | None = None

    def set_epoch(self, epoch: int) -> None:
        """A new shuffle order per epoch (seed + epoch), the same on every run. A saved position that
        belongs to another epoch is dropped."""
        self.epoch = int(epoch)
        self.dataset.set_epoch(self.epoch)
        if self._state is not None and self._state["epoch"] != self.epoch:
            self._state = None
        if self._resume is not None and self._resume["epoch"] != self.epoch:
            self._resume = None

    def state_dict(self) -> dict[str, Any]:
        """Where the stream stands: the `datasets` position after the batch being packed, the texts of
        that batch not finished yet (the current one first), the partial row before the current
        document, and how many rows of the current document were already handed out."""
        if self._state is not None:
            return dict(self._state)
        if self._resume is not None:
            return dict(self._resume)
        return {"epoch": self.epoch, "dataset": None, "pending": [], "row": [], "rows_done": 0, "exhausted": False}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state = None
        self._resume = None
        self.set_epoch(state["epoch"])
        self._resume = dict(state)

    def _texts(self, examples: list[dict]) -> list[str]:
        texts = []
        for example in examples:
            if self.text_column not in example:
                raise ValueError(f"text column {self.text_column!r} not found in the dataset; "
                                 f"its columns are {sorted(example)}")
            texts.append(example[self.text_column] or "")
        return texts

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        resume, self._resume = self._resume, None
        if resume is not None and resume.get("exhausted"):
            self._state = resume  # this epoch was finished when the state was saved
            return
        packer = _Packer(self.seq_len, self.bos_id, self.eos_id)
        pending, skip_rows = [], 0
        if resume is not None and resume.get("dataset") is not None:
            self.dataset.load_state_dict(resume["dataset"])
            packer.row = list(resume["row"])
            pending, skip_rows = list(resume["pending"]), resume["rows_done"]
        examples = iter(self.dataset)
        while True:
            # the texts of a batch are kept until packed: re-reading them after a resume would give other
            # documents when a shuffle buffer is refilled
            if pending:
                texts, after, pending = pending, resume["dataset"], []
            else:
                texts = self._texts(list(itertools.islice(examples, self.batch_size)))
                if not texts:
                    break
                after = self.dataset.state_dict()
            docs = self.encode(texts)
            for j, doc in enumerate(docs):
                if not doc:
                    continue  # an empty document carries nothing to learn
                row_before = packer.state()
                rows = packer.add(doc)
                for k in range(skip_rows, len(rows)):
                    self._state = {"epoch": self.epoch, "dataset": after, "pending": texts[j:], "row": row_before,
                                   "rows_done": k + 1, "exhausted": False}
                    yield _to_torch(row_arrays(np.asarray(rows[k], dtype=np.int64), self.bos_id))
                skip_rows = 0
        # the rest of the last row is dropped; a state saved now says "epoch finished"
        self._state = {"epoch": self.epoch, "dataset": None, "pending": [], "row": [], "rows_done": 0,
                       "exhausted": True}


# --- mode 2: pre-tokenized, memory-mapped shards ------------------------------------------------------


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def pretokenize(dataset, tokenizer, output_dir: str | os.PathLike, text_column: str = "text",
                num_proc: int | None = None, shard_tokens: int = 2**25, batch_size: int = 1000,
                show_progress: bool = True) -> Path:
    """Tokenizes a dataset once into token shards for `TokenShardDataset`.

    Each shard `tokens-XXXXX.npy` is a NumPy array (uint16 when the vocabulary fits, else uint32) of
    documents laid end to end as `[BOS] + tokens + [EOS]`, in dataset order; `meta.json` records dtype,
    token and document counts, BOS/EOS ids and the tokenizer's sha256. Every file is written atomically
    and `meta.json` last. An interrupted run resumes after its last finished shard; a finished folder made
    with the same tokenizer and text column is returned as is; one made with another tokenizer is redone.

    Args:
        dataset: a `datasets.Dataset` or `datasets.IterableDataset` with a text column.
        tokenizer: a fast tokenizer with bos and eos tokens.
        output_dir: folder for the shards.
        text_column: column holding the document text.
        num_proc: worker processes that encode batches (each single-threaded; forked on Linux). None:
            encode in this process with the Rust tokenizer's own threads (all cores), usually as fast.
        shard_tokens: a shard is closed once it holds at least this many tokens (2**25 = 64 MB as uint16).
        batch_size: documents per encode call.
        show_progress: show a tqdm bar (documents/s) with the token count.

    Returns:
        output_dir as a Path.
    """
    import datasets
    from tqdm.auto import tqdm

    output_dir = Path(output_dir)
    _check_text_column(dataset, text_column)
    if not isinstance(dataset, (datasets.Dataset, datasets.IterableDataset)):
        raise TypeError(
            f"dataset must be a datasets.Dataset or datasets.IterableDataset, got {type(dataset).__name__}")
    bos, eos = _special_ids(tokenizer)
    dtype = _token_dtype(len(tokenizer))
    identity = {"format_version": SHARD_FORMAT_VERSION, "tokenizer_sha256": tokenizer_sha256(tokenizer),
                "text_column": text_column, "dtype": dtype.name, "bos_token_id": bos, "eos_token_id": eos}
    meta_path, progress_path = output_dir / "meta.json", output_dir / "progress.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if all(meta.get(k) == v for k, v in identity.items()):
            return output_dir
        print(f"pretokenize: {output_dir} holds shards of another tokenizer or column; tokenizing again")
        _remove_shards(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, Any]] = []
    if progress_path.is_file():
        progress = json.loads(progress_path.read_text(encoding="utf-8"))
        if all(progress.get(k) == v for k, v in identity.items()):
            shards = progress["shards"]
        else:
            _remove_shards(output_dir)
    docs_done = sum(s["num_documents_read"] for s in shards)
    total = len(dataset) if isinstance(dataset, datasets.Dataset) else None
    if docs_done:
        print(f"pretokenize: resuming after {len(shards)} finished shard(s), {docs_done:,} documents")
        dataset = dataset.skip(docs_done)

    encode = DocumentEncoder(tokenizer)
    started = time.perf_counter()

    def batches() -> Iterator[list[str]]:
        if isinstance(dataset, datasets.Dataset):
            for start in range(0, len(dataset), batch_size):
                yield [t or "" for t in dataset[start:start + batch_size][text_column]]
        else:
            for batch in dataset.iter(batch_size=batch_size):
                if text_column not in batch:
                    raise ValueError(
                        f"text column {text_column!r} not found in the dataset; its columns are {sorted(batch)}")
                yield [t or "" for t in batch[text_column]]

    def encoded() -> Iterator[tuple[int, list[list[int]]]]:
        if num_proc and num_proc > 1:
            import multiprocessing

            # fork where there is one (like DataLoader workers): a spawned worker would spend seconds
            # importing transformers. `tokenizers` notices the fork and runs single-threaded in the workers.
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            with context.Pool(num_proc, initializer=_init_worker, initargs=(encode,)) as pool:
                yield from pool.imap(_sized_encode, batches(), chunksize=1)
        else:
            for texts in batches():
                yield len(texts), encode(texts)

    pieces: list[np.ndarray] = []
    piece_tokens, piece_docs_read, piece_docs = 0, 0, 0
    bar = tqdm(total=total, initial=docs_done, desc="pretokenize", unit="doc", disable=not show_progress)

    def flush() -> None:
        nonlocal pieces, piece_tokens, piece_docs_read, piece_docs
        name = f"tokens-{len(shards):05d}.npy"
        with atomic_open(output_dir / name) as f:
            np.save(f, np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype))
        shards.append({"file": name, "num_tokens": piece_tokens, "num_documents": piece_docs,
                       "num_documents_read": piece_docs_read})
        atomic_write_json(progress_path, {**identity, "shards": shards})
        pieces, piece_tokens, piece_docs_read, piece_docs = [], 0, 0, 0

    for n_texts, ids in encoded():
        piece_docs_read += n_texts
        kept = [d for d in ids if d]  # empty documents are skipped, as in PackedStreamDataset
        if kept:
            lengths = np.fromiter((len(d) + 2 for d in kept), dtype=np.int64, count=len(kept))
            flat = np.empty(int(lengths.sum()), dtype=dtype)
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            flat[starts] = bos
            flat[starts + lengths - 1] = eos
            body = np.ones(len(flat), dtype=bool)
            body[starts] = False
            body[starts + lengths - 1] = False
            flat[body] = np.fromiter(itertools.chain.from_iterable(kept), dtype=np.int64, count=int(body.sum()))
            pieces.append(flat)
            piece_tokens += len(flat)
            piece_docs += len(kept)
        bar.update(n_texts)
        bar.set_postfix(tokens=f"{sum(s['num_tokens'] for s in shards) + piece_tokens:,}")
        if piece_tokens >= shard_tokens:
            flush()
    bar.close()
    if piece_docs + sum(s["num_documents"] for s in shards) == 0:
        raise ValueError(f"the dataset has no non-empty text in column {text_column!r}: nothing to tokenize")
    if piece_docs_read or not shards:
        flush()

    num_tokens = sum(s["num_tokens"] for s in shards)
    num_documents = sum(s["num_documents"] for s in shards)
    meta = {**identity, "vocab_size": len(tokenizer), "num_tokens": num_tokens, "num_documents": num_documents,
            "shards": [{k: s[k] for k in ("file", "num_tokens", "num_documents")} for s in shards],
            "seconds": round(time.perf_counter() - started, 3)}
    atomic_write_json(meta_path, meta)
    progress_path.unlink(missing_ok=True)
    if show_progress:
        print(f"pretokenize: wrote {num_tokens:,} tokens of {num_documents:,} documents in {len(shards)} shard(s) "
              f"({dtype.name}) to {output_dir}")
    return output_dir


_worker_encode = None


def _init_worker(encode) -> None:
    global _worker_encode
    _worker_encode = encode


def _sized_encode(texts: list[str]) -> tuple[int, list[list[int]]]:
    return len(texts), _worker_encode(texts)


def _remove_shards(folder: Path) -> None:
    for path in folder.glob("tokens-*.npy"):
        path.unlink()
    for name in ("meta.json", "progress.json"):
        (folder / name).unlink(missing_ok=True)


class TokenShardDataset(torch.utils.data.Dataset):
    """Packed rows read from `pretokenize` shards (memory-mapped, so start-up is instant and memory flat).

    The shards are read as one token stream in order and cut into rows by the same rule as
    `pack_documents` (see the module docstring), so the rows equal those of `PackedStreamDataset` over
    the same documents without a shuffle buffer. Shuffle rows with the DataLoader's sampler; split them
    across ranks with a `DistributedSampler` or `accelerator.prepare`.

    Args:
        path: a folder written by `pretokenize`.
        seq_len: tokens per row.
    """

    def __init__(self, path: str | os.PathLike, seq_len: int):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.path} is not a finished pretokenize folder (no meta.json)")
        self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        self.seq_len = int(seq_len)
        self.bos_id, self.eos_id = self.meta["bos_token_id"], self.meta["eos_token_id"]
        _Packer(self.seq_len, self.bos_id, self.eos_id)
        self._open()
        for array, s in zip(self.shards, self.meta["shards"]):
            if array.dtype.name != self.meta["dtype"] or len(array) != s["num_tokens"]:
                raise ValueError(f"{self.path / s['file']} does not match meta.json (dtype or length differ)")
        self.offsets = np.concatenate([[0], np.cumsum([len(a) for a in self.shards])]).astype(np.int64)
        self.starts, self.continued = self._index()

    def _open(self) -> None:
        self.shards = [np.load(self.path / s["file"], mmap_mode="r") for s in self.meta["shards"]]

    def __getstate__(self):
        # DataLoader workers started with spawn get the file names, not a copy of the mapped tokens
        return {k: v for k, v in self.__dict__.items() if k != "shards"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open()

    def _doc_starts(self) -> np.ndarray:
        starts = [np.flatnonzero(np.asarray(a) == self.bos_id) + off for a, off in zip(self.shards, self.offsets)]
        return np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)

    def _index(self) -> tuple[np.ndarray, np.ndarray]:
        """Start offset in the token stream of every row, and whether the row continues a split document
        (then a BOS is put in front and the row takes seq_len - 1 stream tokens)."""
        total, seq_len = int(self.offsets[-1]), self.seq_len
        doc_starts = set(self._doc_starts().tolist())
        starts, continued = [], []
        pos, cont = 0, False
        while True:
            take = seq_len - 1 if cont else seq_len
            if pos + take > total:
                break
            starts.append(pos)
            continued.append(cont)
            pos += take
            cont = pos not in doc_starts
        return np.asarray(starts, dtype=np.int64), np.asarray(continued, dtype=bool)

    def __len__(self) -> int:
        return len(self.starts)

    def _tokens(self, start: int, stop: int) -> np.ndarray:
        shard = bisect.bisect_right(self.offsets, start) - 1
        pieces = []
        while start < stop:
            local = start - self.offsets[shard]
            end = min(stop, self.offsets[shard + 1])
            pieces.append(np.asarray(self.shards[shard][local:local + (end - start)], dtype=np.int64))
            start, shard = end, shard + 1
        return np.concatenate(pieces)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} out of range for {len(self)} rows")
        start = int(self.starts[index])
        if self.continued[index]:
            ids = np.concatenate([[self.bos_id], self._tokens(start, start + self.seq_len - 1)])
        else:
            ids = self._tokens(start, start + self.seq_len)
        return _to_torch(row_arrays(ids, self.bos_id))

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])
