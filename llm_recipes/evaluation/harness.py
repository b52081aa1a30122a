"""lm-evaluation-harness's own tasks (HellaSwag, ARC-Easy, PIQA, LAMBADA, ...) scored inside the evaluate stage,
with item-level results so they get the same intervals and paired comparisons as every other task, and a
centred average over them in the spirit of the CORE metric (DCLM, used by nanochat).

The harness does the prompting, few-shot sampling and scoring exactly as it does for everyone else
(`lm_eval.evaluator.evaluate` with `log_samples`); this module only keeps each document's score. The centred
score of a document is `(score - chance) / (1 - chance)`, chance being 1 / number of choices for a
multiple-choice task and 0 for an open-ended one such as LAMBADA, so a model that guesses scores 0 on every
task and a perfect one 1, and tasks with 2 and 4 choices can be averaged.

Standard tasks download their datasets from the Hugging Face Hub the first time (then the datasets cache);
the shipped `llm_recipes/evaluation/lm_eval_tasks` tasks (english_cloze, python_docs_cloze, python_docs_mc)
are always on the search path and work offline.
"""

from __future__ import annotations

import difflib
import functools
import logging
from typing import Any

from .data import BUILTIN_DIR
from .models import EvalInputError

CORE = "harness_core"
# the per-document metric a task is centred on: length-normalised accuracy where the harness reports it
# (HellaSwag, ARC and PIQA are usually quoted by it), else plain accuracy
SCORE_METRICS = ("acc_norm", "acc")
KEPT_METRICS = ("acc", "acc_norm")


@functools.lru_cache(maxsize=4)
def task_manager(include_path: str | None = None):
    """lm_eval's task registry, with our shipped tasks (and the user's folder, if any) on its search path.
    Kept per path: indexing the harness's ~15,000 task files takes ~6 s."""
    from lm_eval.tasks import TaskManager

    paths = [str(BUILTIN_DIR)] + ([include_path] if include_path else [])
    return TaskManager(include_path=paths)


def check_task_names(names: list[str], manager) -> None:
    """Unknown names fail before any model or dataset is loaded, with the closest known names."""
    known = set(manager.all_tasks)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise EvalInputError(f"harness_tasks: {name!r} is not an lm-evaluation-harness task{hint} "
                                 "(lm_eval --tasks list shows them; a folder of your own task YAMLs goes in "
                                 "harness_include_path)")


def load_harness_task(name: str, manager, num_fewshot: int, seed: int):
    """The task object with its dataset loaded; a dataset that cannot be fetched is a clear error."""
    from lm_eval.tasks import get_task_dict

    try:
        task = get_task_dict([name], manager)[name]
    except Exception as e:  # datasets raises many kinds (offline, connection, missing config): name the task
        raise EvalInputError(
            f"harness_tasks: could not load the dataset of lm-evaluation-harness task {name!r}: "
            f"{type(e).__name__}: {e}. Standard tasks download their data from the Hugging Face Hub once "
            "(then it is cached); without Hub access use the shipped tasks or your own (harness_include_path)"
        ) from e
    if isinstance(task, dict):
        raise EvalInputError(f"harness_tasks: {name!r} is a group of tasks; list its tasks one by one")
    metrics = [m.get("metric") for m in task.config.metric_list or []]
    if not any(m in SCORE_METRICS for m in metrics):
        raise EvalInputError(f"harness_tasks: {name!r} is scored by {', '.join(map(str, metrics)) or 'nothing'}; "
                             f"only tasks scored by {' or '.join(SCORE_METRICS)} are supported")
    if num_fewshot:
        task.set_config(key="num_fewshot", value=num_fewshot)
    task.set_fewshot_seed(seed=seed)
    return task


def describe(task) -> dict[str, Any]:
    """What eval_results.json says about the task: its dataset, split, output type, shots and version."""
    config = task.config
    return {"dataset": config.dataset_path, "dataset_config": config.dataset_name,
            "split": config.test_split or config.validation_split, "output_type": config.output_type,
            "num_fewshot": config.num_fewshot or 0, "version": (config.metadata or {}).get("version")}


def evaluate_harness_task(model, tokenizer, name: str, task, batch_size: int, max_length: int | None,
                          limit: int | None) -> dict[str, Any]:
    """One task through the harness on an already loaded model; document-level scores kept for intervals."""
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM

    # HFLM warns that a model object (not a path) was passed and that it cannot tell our model type's
    # backend: both expected here, and noise in the stage's output
    logging.getLogger("lm_eval.models.huggingface").setLevel(logging.ERROR)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length,
              device=str(model.device), backend="causal")
    output = evaluate(lm=lm, task_dict={name: task}, limit=limit, log_samples=True, bootstrap_iters=0,
                      verbosity="WARNING")
    samples = [s for s in output["samples"][name] if s.get("filter", "none") == _first_filter(output, name)]
    samples.sort(key=lambda s: s["doc_id"])
    if not samples:
        raise EvalInputError(f"harness task {name!r} produced no scored documents (empty split or limit 0)")
    per_item: dict[str, list[float]] = {m: [float(s[m]) for s in samples] for m in KEPT_METRICS if m in samples[0]}
    score = next((m for m in SCORE_METRICS if m in per_item), None)
    if score is None:
        raise EvalInputError(f"harness task {name!r} reports none of {', '.join(SCORE_METRICS)} per document "
                             f"(it has {', '.join(sorted(k for k in samples[0] if k not in _SAMPLE_FIELDS))}); "
                             "only accuracy-scored tasks are supported")
    chance = [_chance(task, s) for s in samples]
    per_item["chance"] = chance
    per_item["centred"] = [(v - c) / (1 - c) for v, c in zip(per_item[score], chance)]
    result: dict[str, Any] = {m: sum(values) / len(values) for m, values in per_item.items()}
    result.update(n=len(samples), centred_on=score, per_item=per_item)
    return result


_SAMPLE_FIELDS = {"doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "filter", "metrics",
                  "doc_hash", "prompt_hash", "target_hash"}


def _first_filter(output, name: str) -> str:
    keys = [k.split(",", 1)[1] for k in output["results"][name] if "," in k]
    return "none" if "none" in keys or not keys else keys[0]


def _chance(task, sample) -> float:
    """1 / choices for a multiple-choice document (the harness makes one request per choice), else 0."""
    if task.config.output_type == "multiple_choice":
        return 1.0 / max(1, len(sample["arguments"]))
    return 0.0


def core_result(model_results: dict[str, dict[str, Any]], names: list[str]) -> dict[str, Any] | None:
    """The centred average over the harness tasks for one model, with pooled item-level values weighted so
    every task counts equally (each document of a task with n documents carries N / (T x n)): the mean of the
    pooled values is the mean of the task means, and a bootstrap over them gives its interval."""
    if not names or any("per_item" not in model_results.get(n, {}) for n in names):
        return None
    total = sum(len(model_results[n]["per_item"]["centred"]) for n in names)
    pooled: list[float] = []
    for name in names:
        values = model_results[name]["per_item"]["centred"]
        weight = total / (len(names) * len(values))
        pooled += [v * weight for v in values]
    per_task = {name: model_results[name]["centred"] for name in names}
    return {"centred": sum(pooled) / len(pooled), "n": total, "tasks": per_task, "per_item": {"centred": pooled}}
