"""The clean folder's one reader (`data/splits.py`) on a finished clean stage whose validation split is empty."""

from __future__ import annotations

import pytest

from llm_recipes.data.cleaning import ensure_split_files
from llm_recipes.data.documents import write_parquet_atomic
from llm_recipes.data.splits import load_clean_splits

ROW = {"text": "hello world", "id": "a", "source": "s", "location": "", "title": "", "license": ""}


def test_an_empty_validation_split_loads_as_an_empty_dataset_with_the_columns(tmp_path):
    write_parquet_atomic(tmp_path / "train" / "00000.parquet", [ROW, {**ROW, "id": "b"}])
    ensure_split_files(tmp_path)  # what the clean stage leaves when no document went to validation
    splits = load_clean_splits(tmp_path)
    assert [r["id"] for r in splits["train"]] == ["a", "b"]
    assert len(splits["validation"]) == 0 and splits["validation"].column_names == list(ROW)


def test_a_folder_without_a_split_is_named(tmp_path):
    write_parquet_atomic(tmp_path / "train" / "00000.parquet", [ROW])
    with pytest.raises(FileNotFoundError, match="no validation/\\*.parquet"):
        load_clean_splits(tmp_path)
