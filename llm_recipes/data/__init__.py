"""Data for llm_recipes: gathering text from sources and cleaning it (see docs/data.md).

`load_clean_splits(path)` is what other stages import to read the clean stage's output.
"""

from __future__ import annotations

import glob
import os


def load_clean_splits(path: str | os.PathLike):
    """Loads a clean stage's output folder as a `datasets.DatasetDict` with `train` and `validation`.

    Args:
        path: the clean stage's output_dir (holding train/*.parquet and validation/*.parquet).

    Returns:
        DatasetDict with columns text, id, source, location, title, license.
    """
    from datasets import load_dataset

    path = os.fspath(path)
    data_files = {}
    for split in ("train", "validation"):
        files = sorted(glob.glob(os.path.join(path, split, "*.parquet")))
        if not files:
            raise FileNotFoundError(f"{path}: no {split}/*.parquet; is this the output_dir of a finished clean stage?")
        data_files[split] = files
    return load_dataset("parquet", data_files=data_files)


__all__ = ["load_clean_splits"]
