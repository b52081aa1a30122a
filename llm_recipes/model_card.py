"""The `model-index` block of a model folder's README.md (Hub model card metadata) for evaluation results.

`update_model_index(model_dir, results)` merges results into the card's YAML front matter and leaves the
rest of the card as it is; the push stage builds the full card around what is there. A result with the
same task, dataset (type, name, config, split) and metric replaces the old one; others are kept.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterable

from .fileio import atomic_write_text, read_json

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
        model_name: the name under `model-index`; default: the card's, else `readable_model_name(model_dir)`.

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
        name = model_name or readable_model_name(model_dir)
        card = ModelCard(f"---\nlibrary_name: transformers\n---\n\n# {name}\n\nEvaluation results are in the "
                         "`model-index` metadata above (written by `llm-recipes evaluate`).\n")
    data = card.data
    merged = {_key(r): r for r in (data.eval_results or [])}
    for r in new:
        merged[_key(r)] = r
    data.eval_results = list(merged.values())
    # model-index needs a name; keep the card's own when it has one
    if data.model_name in ("final", "model"):  # named after its folder by an earlier version
        data.model_name = None
    data.model_name = model_name or data.model_name or readable_model_name(model_dir)
    atomic_write_text(path, str(card))
    return path


# -- what made a model: the stages behind a model folder ------------------------------------------------

# what the built-in corpora are, for a card's reader who has never run llm_recipes
BUILTIN_DATA = {
    "python-docs": "python-docs: the documentation that ships with a Python installation (docstrings of the standard "
                   "library and of installed packages, and the pydoc topics), gathered offline by `llm-recipes gather`",
    "python-docs-preferences": "python-docs-preferences: the python-docs questions with their documented answer "
                               "preferred over the model's own earlier answer (the feedback loop of `llm-recipes dpo`)",
    "python-docs-kto": "python-docs-kto: python-docs answers marked good or bad, for `llm-recipes kto`",
    "python-docs-qa": "python-docs-qa: question/answer chats that `llm-recipes sft` builds from the cleaned python-docs "
                      "corpus (\"What does `os.path.join` do?\" answered by the first sentence of its docstring)",
}


def readable_model_name(model_dir: str | os.PathLike) -> str:
    """`runs/quickstart/dpo/final` -> `quickstart-dpo`: the stage that made it (as `serve` names it), after its run."""
    from .serving import default_model_name

    path, name = Path(model_dir).resolve(), default_model_name(model_dir)
    run = path.parent.parent.name if name != path.name else ""
    return f"{run}-{name}" if run else name


def readable_dataset_id(source: str) -> str:
    """A model-index dataset `type` for a source of ours: `builtin:english_cloze` -> `llm-recipes/english_cloze`,
    a local path -> `local/<grandparent>-<parent>-<name>` (the Hub wants an id, not a path of the machine that evaluated)."""
    if source.startswith("builtin:"):
        return "llm-recipes/" + source.split(":", 1)[1]
    path = Path(source)
    if path.is_absolute() or os.sep in source or path.exists():
        # three levels tell sft/data/heldout.jsonl from dpo/data/heldout.jsonl
        parts = [p for p in path.with_suffix("").parts[-3:] if p not in (os.sep, "")]
        return "local/" + "-".join(parts)
    return source


def _yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _is_hub_id(name: Any) -> bool:
    return isinstance(name, str) and name.count("/") == 1 and not Path(name).exists() and not name.startswith((".", "/"))


def lineage(model_dir: str | os.PathLike, limit: int = 12) -> list[dict[str, Any]]:
    """The stage folders that made a model, newest first, found through each stage's resolved config: a
    fine-tuning stage's `model_name_or_path`, pretraining's `dataset_path` / `init_from`, clean's `input_dir`.
    Each entry: stage, dir, config (resolved_config.yaml), run_info, complete (stage_complete.json)."""
    found, queue, seen = [], [Path(model_dir).resolve()], set()
    while queue and len(found) < limit:
        path = queue.pop(0)
        stage_dir = path.parent if (path / "config.json").is_file() and path.name in ("final", "model") else path
        if stage_dir in seen or not (stage_dir / "resolved_config.yaml").is_file():
            continue
        seen.add(stage_dir)
        config = _yaml(stage_dir / "resolved_config.yaml")
        run_info = read_json(stage_dir / "run_info.json") or {}
        found.append({"stage": run_info.get("stage") or stage_dir.name, "dir": stage_dir, "config": config,
                      "run_info": run_info, "complete": read_json(stage_dir / "stage_complete.json") or {}})
        for key in ("model_name_or_path", "init_from", "dataset_path", "input_dir"):
            value = config.get(key)
            if isinstance(value, str) and value and Path(value).exists():
                queue.append(Path(value).resolve())
    return found


def training_data(stages: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(Hub dataset ids for the card's `datasets` metadata, sentences describing every corpus used)."""
    hub_ids, lines = [], []
    for entry in stages:
        config, stage = entry["config"], entry["stage"]
        if stage == "gather":
            report = read_json(entry["dir"] / "gather_report.json") or {}
            counts = {s.get("name"): s for s in report.get("sources") or [] if isinstance(s, dict)}
            for source in config.get("sources") or []:
                if not isinstance(source, dict):
                    continue
                kind = source.get("type")
                name = source.get("name") or (f"hub:{source.get('dataset')}" if kind == "hub" else kind)
                count = counts.get(name) or {}
                size = (f" ({count['documents']:,} documents, {count['bytes'] / 1e6:.1f} MB)"
                        if isinstance(count.get("documents"), int) and isinstance(count.get("bytes"), int) else "")
                if kind == "hub" and _is_hub_id(source.get("dataset")):
                    hub_ids.append(source["dataset"])
                    lines.append(f"- Pretraining text: the Hub dataset `{source['dataset']}`{size}.")
                elif kind in BUILTIN_DATA:
                    lines.append(f"- Pretraining text: {BUILTIN_DATA[kind]}{size}.")
                elif kind == "files":
                    lines.append(f"- Pretraining text: local files ({', '.join(map(str, source.get('paths') or []))[:200]}){size}.")
                elif kind == "web":
                    lines.append(f"- Pretraining text: web pages{size}.")
        elif stage == "clean":
            report = read_json(entry["dir"] / "report.json") or {}
            if isinstance(report.get("output_documents"), int) and isinstance(report.get("input_documents"), int):
                lines.append(f"- Cleaned by `llm-recipes clean` (markup and boilerplate removed, quality filters, exact "
                             f"and near-duplicate removal, personal data scrubbed): {report['output_documents']:,} of "
                             f"{report['input_documents']:,} documents kept.")
        elif stage in ("sft", "dpo", "kto"):
            dataset = config.get("dataset_name")
            if _is_hub_id(dataset):
                hub_ids.append(dataset)
                lines.append(f"- {stage.upper()} data: the Hub dataset `{dataset}`.")
            elif dataset in BUILTIN_DATA:
                lines.append(f"- {stage.upper()} data: {BUILTIN_DATA[dataset]}.")
            elif dataset:
                lines.append(f"- {stage.upper()} data: `{Path(str(dataset)).name}` (a local file).")
    return sorted(set(hub_ids)), lines


def _last_trainer_record(path: Path) -> dict[str, Any]:
    """steps (and tokens where logged) from the last records of a TRL stage's metrics.jsonl."""
    from .training.monitor import read_metrics

    steps, tokens = None, None
    for record in read_metrics(path) if path.is_file() else []:
        steps = record.get("step", steps)
        tokens = record.get("num_tokens", tokens)
    return {"steps": int(steps) if isinstance(steps, (int, float)) else None,
            "tokens": int(tokens) if isinstance(tokens, (int, float)) else None}


def training_details(stages: list[dict[str, Any]]) -> list[str]:
    """One line per training stage: steps, tokens, wall time, hardware."""
    import datetime

    lines = []
    for entry in reversed(stages):  # oldest first, as it happened
        if entry["stage"] not in ("pretrain", "sft", "dpo", "kto"):
            continue
        summary = read_json(entry["dir"] / "train_summary.json") or _last_trainer_record(entry["dir"] / "metrics.jsonl")
        facts = []
        if isinstance(summary.get("steps"), int):
            facts.append(f"{summary['steps']:,} steps")
        if isinstance(summary.get("tokens"), int):
            facts.append(f"{summary['tokens']:,} tokens")
        started, finished = entry["run_info"].get("started_at"), entry["complete"].get("finished_at")
        if started and finished:
            with contextlib.suppress(ValueError):
                seconds = (datetime.datetime.fromisoformat(finished) - datetime.datetime.fromisoformat(started))
                facts.append(f"{seconds.total_seconds():,.0f} s wall time")
        if entry["run_info"].get("hardware"):
            facts.append(f"on {entry['run_info']['hardware']}")
        lines.append(f"- `llm-recipes {entry['stage']}`" + (": " + ", ".join(facts) if facts else "") + ".")
    return lines
