"""The `model-index` block of a model folder's README.md (Hub model card metadata) for evaluation results.

`update_model_index(model_dir, results)` merges results into the card's YAML front matter and leaves the
rest of the card as it is; the push stage builds the full card around what is there. A result with the
same task, dataset (type, name, config, split) and metric replaces the old one; others are kept.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from .fileio import atomic_write_text

RESULT_KEYS = ("task_type", "dataset_type", "dataset_name", "metric_type", "metric_value")


def _as_eval_result(result: Any):
    from huggingface_hub import EvalResult

    if isinstance(result, EvalResult):
        return result
    if not isinstance(result, dict):
        raise TypeError(f"an eval result must be a huggingface_hub.EvalResult or a dict, got {type(result).__name__}")
    missing = [k for k in RESULT_KEYS if k not in result]
    if missing:
        raise ValueError(f"eval result {result!r} is missing {missing}; expected at least {', '.join(RESULT_KEYS)}")
    return EvalResult(**result)


def _key(result) -> tuple:
    return (result.task_type, result.dataset_type, result.dataset_name, result.dataset_config, result.dataset_split,
            result.metric_type, result.metric_config)


def update_model_index(model_dir: str | os.PathLike, results: Iterable[Any], model_name: str | None = None) -> Path:
    """Writes/merges `model-index` results into `model_dir/README.md`, atomically.

    Args:
        model_dir: the model folder (its README.md is created when missing).
        results: `huggingface_hub.EvalResult`s or dicts with EvalResult's fields (task_type, dataset_type,
            dataset_name, metric_type, metric_value, and optionally dataset_split, metric_name, source_name...).
        model_name: the name under `model-index`; default: the card's, else the folder's name.

    Returns:
        The README.md path.
    """
    from huggingface_hub import ModelCard

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder {str(model_dir)!r} does not exist")
    path = model_dir / "README.md"
    new = [_as_eval_result(r) for r in results]
    if path.is_file():
        card = ModelCard(path.read_text(encoding="utf-8"), ignore_metadata_errors=True)
    else:
        name = model_name or model_dir.resolve().name
        card = ModelCard(f"---\nlibrary_name: transformers\n---\n\n# {name}\n\nEvaluation results are in the "
                         "`model-index` metadata above (written by `llm-recipes evaluate`).\n")
    data = card.data
    merged = {_key(r): r for r in (data.eval_results or [])}
    for r in new:
        merged[_key(r)] = r
    data.eval_results = list(merged.values())
    # model-index needs a name; keep the card's own when it has one
    data.model_name = model_name or data.model_name or model_dir.resolve().name
    atomic_write_text(path, str(card))
    return path
