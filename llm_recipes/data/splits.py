"""The clean stage's output, read in one place: `<clean>/train/*.parquet` and `<clean>/validation/*.parquet`
(columns text, id, source, location, title, license). The clean stage's `SplitWriter` (data/steps.py) is
its one writer; the tokenizer, pretraining, fine-tuning and evaluation read it through these functions.
"""

from __future__ import annotations

import glob
import os

import pyarrow.parquet as pq

SPLITS = ("train", "validation")


def split_files(folder: str | os.PathLike, split: str) -> list[str]:
    """The parquet files of one split of a clean folder, in order; [] when it has none."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return sorted(glob.glob(os.path.join(os.fspath(folder), split, "*.parquet")))


def evenly_spaced(items: list, count: int) -> list:
    """`count` items at even steps over the list (all of it when count >= len), in their order. How a sample of a
    split is taken: the clean stage writes documents in source order (one kind of documentation after another),
    so its first rows are a sample of one source."""
    if count >= len(items):
        return items
    return [items[i * len(items) // count] for i in range(count)]


def load_clean_splits(path: str | os.PathLike):
    """Loads a clean stage's output folder as a `datasets.DatasetDict` with `train` and `validation`. A split the
    clean stage left without documents (its one placeholder file has the columns and no rows) loads as an
    empty Dataset with those columns.

    Raises:
        FileNotFoundError: a split without parquet files.
    """
    # importing datasets costs ~1 s; this module is read by light callers too
    from datasets import Dataset, DatasetDict, load_dataset
    from datasets.table import InMemoryTable

    splits = {}
    for split in SPLITS:
        files = split_files(path, split)
        if not files:
            raise FileNotFoundError(f"{os.fspath(path)}: no {split}/*.parquet; is this the output_dir of a "
                                    "finished clean stage?")
        with_rows = [f for f in files if pq.read_metadata(f).num_rows]
        if with_rows:
            splits[split] = load_dataset("parquet", data_files={split: with_rows}, split=split)
        else:  # `datasets` cannot read a parquet file without rows
            splits[split] = Dataset(InMemoryTable(pq.read_table(files[0])))
    return DatasetDict(splits)
