"""The `model-index` block of a model folder's README.md (Hub model card metadata) for evaluation results.

`update_model_index(model_dir, results)` merges results into the card's YAML front matter and leaves the
rest of the card as it is; the push stage builds the full card around what is there. A result with the
same task, dataset (type, name, config, split) and metric replaces the old one; others are kept.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from ..config import default_model_name
from ..evaluation.report import HEADLINE
from ..fileio import atomic_write_text, read_json
from ..model import DEFAULT_MAX_NEW_TOKENS, fitting_max_new_tokens
from ..training.monitor import read_metrics

RESULT_KEYS = ("task_type", "dataset_type", "dataset_name", "metric_type", "metric_value")


class CardError(ValueError):
    """Card input that cannot be used (an eval_results.json that `llm-recipes evaluate` did not write)."""


@dataclass
class CardInfo:
    """What the model card says beyond what the folder itself tells."""

    repo_id: str
    license: str = "apache-2.0"
    datasets: list[str] = field(default_factory=list)
    language: list[str] = field(default_factory=lambda: ["en"])
    base_model: str | None = None
    tags: list[str] = field(default_factory=list)
    eval_results_path: str | None = None
    intended_use: str | None = None
    limitations: str | None = None


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


def write_stage_card(folder: str | os.PathLike, metadata: dict[str, Any], body: list[str]) -> Path:
    """The README.md a training stage leaves in its model folder: Hub metadata (front matter) and the stage's
    lines. `evaluate` extends it with a `model-index` (`update_model_index`), `push` renders the publishing
    card from it (`render_model_card`): every card is written here."""
    path = Path(folder) / "README.md"
    front = yaml.safe_dump({k: v for k, v in metadata.items() if v is not None}, sort_keys=False).strip()
    atomic_write_text(path, "\n".join(["---", front, "---", "", *body]))
    return path


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
                   "library and of installed packages, and the pydoc topics), gathered offline by "
                   "`llm-recipes gather`",
    "python-docs-preferences": "python-docs-preferences: the python-docs questions with their documented answer "
                               "preferred over the model's own earlier answer (the feedback loop of "
                               "`llm-recipes dpo`)",
    "python-docs-kto": "python-docs-kto: python-docs answers marked good or bad, for `llm-recipes kto`",
    "python-docs-qa": "python-docs-qa: question/answer chats that `llm-recipes sft` builds from the cleaned "
                      "python-docs corpus (\"What does `os.path.join` do?\" answered by the first sentence of its "
                      "docstring)",
}


def readable_model_name(model_dir: str | os.PathLike) -> str:
    """`runs/quickstart/dpo/final` -> `quickstart-dpo`: the stage that made it (as `serve` names it), after its run."""
    path, name = Path(model_dir).resolve(), default_model_name(model_dir)
    run = path.parent.parent.name if name != path.name else ""
    return f"{run}-{name}" if run else name


def readable_dataset_id(source: str) -> str:
    """A model-index dataset `type` for a source of ours: `builtin:english_cloze` -> `llm-recipes/english_cloze`,
    a local path -> `local/<grandparent>-<parent>-<name>` (the Hub wants an id, not a path of the machine that
    evaluated)."""
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
    return (isinstance(name, str) and name.count("/") == 1 and not Path(name).exists()
            and not name.startswith((".", "/")))


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
                    paths = ", ".join(map(str, source.get("paths") or []))
                    lines.append(f"- Pretraining text: local files ({paths[:200]}){size}.")
                elif kind == "web":
                    lines.append(f"- Pretraining text: web pages{size}.")
        elif stage == "clean":
            report = read_json(entry["dir"] / "report.json") or {}
            if isinstance(report.get("output_documents"), int) and isinstance(report.get("input_documents"), int):
                lines.append(f"- Cleaned by `llm-recipes clean` (markup and boilerplate removed, quality filters, "
                             f"exact and near-duplicate removal, personal data scrubbed): "
                             f"{report['output_documents']:,} of "
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
        summary = (read_json(entry["dir"] / "train_summary.json")
                   or _last_trainer_record(entry["dir"] / "metrics.jsonl"))
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


# -- the model card ------------------------------------------------------------------------------------



def training_summary(model_dir: Path) -> list[str]:
    """Lines about how the model was made, from the files its stage left next to it."""
    lines = []
    config = read_json(model_dir / "config.json") or {}
    if config.get("model_type") == "recipe_gpt":
        lines.append(
            f"- Architecture: RecipeGPT (Llama-style decoder: RMSNorm, rotary embeddings, SwiGLU, grouped-query "
            f"attention), {config.get('num_hidden_layers')} layers, width {config.get('hidden_size')}, "
            f"{config.get('num_attention_heads')} heads ({config.get('num_key_value_heads')} key/value), context "
            f"{config.get('max_position_embeddings')} tokens, vocabulary {config.get('vocab_size')}"
            f"{', QK-norm' if config.get('qk_norm') else ''}.")
    elif config:
        lines.append(f"- Architecture: `{config.get('model_type')}` ({', '.join(config.get('architectures') or [])}).")
    stage_dir = model_dir.parent
    run_info = read_json(stage_dir / "run_info.json") or {}
    resolved = stage_dir / "resolved_config.yaml"
    if run_info.get("stage"):
        lines.append(f"- Last training stage: `llm-recipes {run_info['stage']}`"
                     + (" (its full configuration is below)." if resolved.is_file() else "."))
    metrics = stage_dir / "metrics.jsonl"
    if metrics.is_file():
        last = None
        for record in read_metrics(metrics):
            if any(k in record for k in ("loss", "train_loss", "eval_loss")):
                last = record
        if last:
            shown = {k: v for k, v in last.items() if isinstance(v, (int, float)) and k in
                     ("step", "tokens", "loss", "train_loss", "eval_loss", "val_loss", "learning_rate", "epoch")}
            if shown:
                lines.append("- Last logged metrics: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float)
                                                                   else f"{k} {v}" for k, v in shown.items()) + ".")
    versions = run_info.get("versions") or {}
    if versions:
        lines.append("- Software: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v) + ".")
    return lines


def find_eval_results(model_dir: Path) -> Path | None:
    """The eval_results.json of the same run that scored this model (`runs/<recipe>/evaluate/`), if any."""
    run_dir = model_dir.resolve().parent.parent
    for candidate in sorted(run_dir.glob("*/eval_results.json")):
        data = read_json(candidate)
        models = data.get("models") if isinstance(data, dict) else None
        if isinstance(models, dict) and any(
                isinstance(m, dict) and m.get("path") and Path(m["path"]).resolve() == model_dir.resolve()
                for m in models.values()):
            return candidate
    return None


def eval_results_table(path: str | os.PathLike | None, model_dir: Path) -> list[str]:
    """A markdown table of `eval_results.json` (written by `llm-recipes evaluate`); this model's row first. One
    column per headline metric, headed with its item count (`acc (n=20)`): counts are not columns of their own."""
    if not path:
        return []
    data = read_json(Path(path))
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise CardError(f"eval_results {str(path)!r} is not an eval_results.json written by `llm-recipes evaluate`")
    models, tasks = data["models"], data.get("tasks") or {}
    this = [n for n, m in models.items() if m.get("path") and Path(m["path"]).resolve() == model_dir.resolve()]
    order = this + [n for n in models if n not in this]
    columns = []
    for name in order:
        for task, metrics in (models[name].get("results") or {}).items():
            kind = (tasks.get(task) or {}).get("kind")
            wanted = [m for m, _ in HEADLINE.get(kind, [])] or [
                m for m, v in (metrics or {}).items() if isinstance(v, float) and m not in ("seconds", "chance")]
            for metric in wanted:
                if isinstance((metrics or {}).get(metric), (int, float)) and (task, metric) not in columns:
                    columns.append((task, metric))
    columns = columns[:10]  # a card table, not the full report (eval_results.json has everything)
    if not columns:
        return []

    def header(task: str, metric: str) -> str:
        info = tasks.get(task) or {}
        count = info.get("n")
        unit = "documents" if info.get("kind") == "perplexity" else "items"
        return f"{task} {metric}" + (f" ({count} {unit})" if isinstance(count, int) else "")

    lines = ["| model | " + " | ".join(header(t, m) for t, m in columns) + " |", "|---|" + "---:|" * len(columns)]
    for name in order:
        results = models[name].get("results") or {}
        cells = []
        for task, metric in columns:
            value = (results.get(task) or {}).get(metric)
            interval = ((results.get(task) or {}).get("intervals") or {}).get(metric)
            cell = f"{value:.4g}" if isinstance(value, (int, float)) else ""
            cells.append(f"{cell} [{interval[0]:.3g}, {interval[1]:.3g}]" if cell and interval else cell)
        label = f"**{name}** (this model)" if name in this else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def evaluation_verdicts(path: str | os.PathLike, model_dir: Path) -> list[str]:
    """What the paired comparisons in eval_results.json say about this model against the reference model, and
    the warnings about sets too small to tell."""
    data = read_json(Path(path)) or {}
    models, comparisons = data.get("models") or {}, data.get("comparisons") or {}
    this = [n for n, m in models.items() if m.get("path") and Path(m["path"]).resolve() == model_dir.resolve()]
    lines = []
    for name in this:
        for task, metrics in (comparisons.get("models") or {}).get(name, {}).items():
            for metric, d in metrics.items():
                low, high = d["interval"]
                lines.append(f"- {task} {metric} against {comparisons['reference']}: {d['difference']:+.4g} "
                             f"[{low:+.3g}, {high:+.3g}], {d['verdict']} (paired, {d['items']} items)")
    lines += [f"- Warning: {warning}" for warning in data.get("warnings") or []]
    return lines + [""] if lines else []


def model_index_table(eval_results: list) -> list[str]:
    """The card's own `model-index` results as a table, for a card pushed without an eval_results.json."""
    lines = ["| task | dataset | metric | value |", "|---|---|---|---:|"]
    for result in eval_results:
        value = result.metric_value
        shown = f"{value:.4g}" if isinstance(value, (int, float)) else str(value)
        lines.append(f"| {result.task_name or result.task_type} | {result.dataset_name} | "
                     f"{result.metric_name or result.metric_type} | {shown} |")
    return lines


def render_model_card(model_dir: Path, staging: Path, info: CardInfo) -> str:
    """README.md with Hub metadata and the sections a model card should have.

    The `model-index` (evaluation results) already in model_dir/README.md, written by `llm-recipes
    evaluate`, is kept, with a readable model name and dataset ids; our metadata is merged around it.
    """
    from huggingface_hub import ModelCard, ModelCardData

    existing = model_dir / "README.md"
    data = ModelCardData()
    if existing.is_file():
        data = ModelCard(existing.read_text(encoding="utf-8"), ignore_metadata_errors=True).data
    config = read_json(staging / "config.json") or {}
    custom_code = "auto_map" in config
    stages = lineage(model_dir)
    hub_datasets, data_lines = training_data(stages)
    name = info.repo_id.split("/")[-1]
    data.license = info.license or data.license
    data.datasets = sorted(set((data.datasets or []) + list(info.datasets) + hub_datasets)) or None
    data.language = info.language or data.language
    data.library_name = "transformers"
    data.pipeline_tag = "text-generation"
    data.base_model = info.base_model or data.base_model
    tags = [t for t in (data.tags or []) if t != "llm_recipes"]  # one spelling: the Hub's usual hyphen
    for tag in ["llm-recipes", config.get("model_type"), "text-generation", "custom_code" if custom_code else None,
                *info.tags]:
        if tag and tag not in tags:
            tags.append(tag)
    data.tags = tags
    if data.eval_results:
        data.model_name = name  # evaluate named it after its folder ("final"); on the Hub it is the repository
        for result in data.eval_results:
            result.dataset_type = readable_dataset_id(result.dataset_type)

    trust = ", trust_remote_code=True" if custom_code else ""
    max_new_tokens = fitting_max_new_tokens(config.get("max_position_embeddings") or 2 * DEFAULT_MAX_NEW_TOKENS, 128)
    chat = (staging / "chat_template.jinja").is_file() or "chat_template" in (
        read_json(staging / "tokenizer_config.json") or {})
    body = [f"# {name}", "",
            f"A {'chat ' if chat else ''}language model built from scratch with "
            "llm_recipes on the Hugging Face stack (transformers, datasets, TRL).", ""]
    body += ["## Usage", "", "```python", "from transformers import pipeline", "",
             f'generator = pipeline("text-generation", model="{info.repo_id}"{trust})']
    if chat:
        body += ['messages = [{"role": "user", "content": "How do I join two paths in Python?"}]',
                 f'print(generator(messages, max_new_tokens={max_new_tokens})[0]["generated_text"][-1]["content"])']
    else:
        body += [f'print(generator("The os module", max_new_tokens={max_new_tokens})[0]["generated_text"])']
    body += ["```", ""]
    if config.get("max_position_embeddings"):
        body += [f"The model reads at most {config['max_position_embeddings']} tokens (prompt and answer together); "
                 f"its generation config asks for {max_new_tokens} new tokens or fewer.", ""]
    if custom_code:
        body += ["The model type is not built into transformers: its code ships in this repository "
                 "(`auto_map` in config.json), hence `trust_remote_code=True`. Where the `llm_recipes` package is "
                 "installed, `import llm_recipes` registers the model and no remote code runs. "
                 "A plain Llama copy can be made with `llm-recipes export DIR --to llama`.", ""]
    body += ["## Intended use", "", info.intended_use or (
        "Research and teaching: a small model that shows every step of building a language model. It can answer "
        "and continue text in the domain it was trained on; it is not meant for decisions that matter or as a "
        "source of facts."), ""]
    body += ["## Limitations", "", info.limitations or (
        "A small model trained on little data: it makes up facts, code and API names with confidence, repeats "
        "itself, and knows little outside its training text. It has had no safety training beyond what its "
        "fine-tuning data teaches; its output can be wrong or inappropriate. Check everything it says."), ""]
    extra_data = [f"- Also named by the publisher: `{d}`." for d in info.datasets if d not in hub_datasets]
    if data_lines or extra_data:
        body += ["## Training data", "", *data_lines, *extra_data, ""]
    summary = training_summary(model_dir) + training_details(stages)
    if summary:
        body += ["## Training", "", *summary, ""]
    results_path = info.eval_results_path or find_eval_results(model_dir)
    table = eval_results_table(results_path, model_dir)
    if table or data.eval_results:
        body += ["## Evaluation", ""]
        if table:
            body += ["From `eval_results.json` (`llm-recipes evaluate`; item counts in the column heads, 95% "
                     "intervals in brackets, bootstrap over the items):", "", *table, ""]
            body += evaluation_verdicts(results_path, model_dir)
        elif data.eval_results:
            body += ["From this card's `model-index` metadata (`llm-recipes evaluate`):", "",
                     *model_index_table(data.eval_results), ""]
        if table and data.eval_results:
            body += [f"{len(data.eval_results)} result(s) are also in this card's `model-index` metadata.", ""]
    resolved = model_dir.parent / "resolved_config.yaml"
    if resolved.is_file():
        body += ["## Training configuration", "", "<details><summary>resolved_config.yaml</summary>", "",
                 "```yaml", resolved.read_text(encoding="utf-8").strip(), "```", "", "</details>", ""]
    card = ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n" + "\n".join(body))
    return str(card)
