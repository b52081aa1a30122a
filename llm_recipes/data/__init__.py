"""Data for llm_recipes: gathering text from sources and cleaning it (see docs/data.md).

`splits` is what other stages import to read the clean stage's output.
"""

from .splits import load_clean_splits, split_files

__all__ = ["load_clean_splits", "split_files"]
