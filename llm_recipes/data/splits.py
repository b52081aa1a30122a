"""The clean stage's output, read in one place: `<clean>/train/*.parquet` and `<clean>/validation/*.parquet`
(columns text, id, source, location, title, license). The clean stage's `SplitWriter` (data/steps.py) is
its one writer; the tokenizer, pretraining, fine-tuning and evaluation read it through these functions.
"""

from __future__ import annotations

import glob
import os

SPLITS = ("train", "validation")


def split_files(folder: str | os.PathLike, split: str) -> list[str]:
    """The parquet files of one split of a clean folder, in order; [] when it has none."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return sorted(glob.glob(os.path.join(os.fspath(folder), split, "*.parquet")))


def is_clean_folder(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds a clean stage's train split."""
    return bool(split_files(folder, "train"))


def load_clean_splits(path: str | os.PathLike):
    """Loads a clean stage's output folder as a `datasets.DatasetDict` with `train` and `validation`.

    Raises:
        FileNotFoundError: a split without parquet files.
    """
    from datasets import load_dataset  # importing datasets costs ~1 s; this module is read by light callers too

    data_files = {}
    for split in SPLITS:
        files = split_files(path, split)
        if not files:
            raise FileNotFoundError(f"{os.fspath(path)}: no {split}/*.parquet; is this the output_dir of a "
                                    "finished clean stage?")
        data_files[split] = files
    return load_dataset("parquet", data_files=data_files)
