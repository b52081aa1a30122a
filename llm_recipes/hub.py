"""Publishing a model folder on the Hugging Face Hub: what to upload, the model card, the upload itself.

`prepare_upload` copies the files a Hub user needs (weights, our model code for `auto_map`, tokenizer,
generation config) into a staging folder, fixes the two settings training leaves wrong for inference
(`use_cache`, the end-of-turn `eos_token_id`) and renders README.md. `upload` sends the staging folder
as one commit with `huggingface_hub`, so the repository is never left half-updated.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .fileio import read_json

# what a model repository needs; everything else in a model folder (optimizer state, logs) stays home
UPLOAD_PATTERNS = ("config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json", "*.py",
                   "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model-*.bin", "*.pt", "*.pth", "*.ckpt")


class PushError(ValueError):
    """A model folder that is not ready to publish, or a Hub that refused it."""


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


def upload_files(model_dir: Path) -> list[Path]:
    """The files of model_dir that go to the Hub; raises PushError for a folder that is not a model."""
    if not model_dir.is_dir():
        raise PushError(f"model folder {str(model_dir)!r} does not exist")
    names = sorted(p.name for p in model_dir.iterdir() if p.is_file())
    chosen = [n for n in names if any(fnmatch.fnmatch(n, pat) for pat in UPLOAD_PATTERNS)]
    if "config.json" not in chosen:
        raise PushError(f"{str(model_dir)!r} has no config.json: not a model folder (expected e.g. "
                        "runs/quickstart/sft/final)")
    if not any(n.endswith(".safetensors") for n in chosen):
        pickled = [n for n in names if any(fnmatch.fnmatch(n, pat) for pat in PICKLE_WEIGHTS)]
        hint = f" (found pickle weights {pickled}: re-save with safe_serialization)" if pickled else ""
        raise PushError(f"{str(model_dir)!r} has no .safetensors weights{hint}")
    if "tokenizer.json" not in chosen and "tokenizer.model" not in chosen:
        raise PushError(f"{str(model_dir)!r} has no tokenizer (tokenizer.json): a Hub model must be usable on its own")
    check_auto_map(model_dir / "config.json")
    return [model_dir / n for n in chosen]


def check_auto_map(config_path: Path) -> None:
    """A RecipeGPT folder must name every Auto class a loader without llm_recipes uses: AutoConfig and
    AutoModelForCausalLM (transformers, pipeline) and AutoModel (vLLM's Transformers backend)."""
    from .model.configuration_recipe_gpt import AUTO_MAP

    config = read_json(config_path) or {}
    if config.get("model_type") != "recipe_gpt":
        return
    auto_map = config.get("auto_map") or {}
    missing = [name for name in AUTO_MAP if name not in auto_map]
    if missing:
        entries = ", ".join(f'"{name}": "{AUTO_MAP[name]}"' for name in missing)
        raise PushError(f"{str(config_path)!r}: auto_map lacks {', '.join(missing)} (it was saved by an older "
                        f"llm_recipes); without it, loaders that do not import llm_recipes (vLLM builds AutoModel) "
                        f"cannot build the model. Add {entries} to auto_map, or re-save the folder with "
                        "`AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir)` after `import llm_recipes`.")


def fix_inference_settings(staging: Path) -> list[str]:
    """Makes the staged config generate like a finished model: `use_cache` on (Trainer turns it off),
    `generation_config.eos_token_id` set (end of text and end of turn) and `max_new_tokens` within the context;
    returns what was changed."""
    from transformers import AutoTokenizer, GenerationConfig

    from .model import DEFAULT_MAX_NEW_TOKENS, fitting_max_new_tokens
    from .tokenization import end_of_turn_token_ids

    changes = []
    config_path = staging / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("use_cache") is not True:
        config["use_cache"] = True
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        changes.append("config.json: use_cache -> true")
    generation = (GenerationConfig.from_pretrained(staging) if (staging / "generation_config.json").is_file()
                  else GenerationConfig())
    generation_changes = []
    if generation.eos_token_id is None or generation.pad_token_id is None:
        tokenizer = AutoTokenizer.from_pretrained(staging)
        if generation.eos_token_id is None:
            eos = end_of_turn_token_ids(tokenizer)
            if not eos or eos[0] is None:
                raise PushError("the tokenizer has no eos token, so generation would never stop: set eos_token_id "
                                "in generation_config.json")
            generation.eos_token_id = eos if len(eos) > 1 else eos[0]
            generation_changes.append(f"eos_token_id -> {generation.eos_token_id}")
        if generation.pad_token_id is None and tokenizer.pad_token_id is not None:
            generation.pad_token_id = tokenizer.pad_token_id
            generation_changes.append(f"pad_token_id -> {generation.pad_token_id}")
    if generation.use_cache is False:
        generation.use_cache = True
        generation_changes.append("use_cache -> true")
    fitting = fitting_max_new_tokens(config.get("max_position_embeddings") or 2 * DEFAULT_MAX_NEW_TOKENS)
    if generation.max_new_tokens is None or generation.max_new_tokens > fitting:
        # pipeline() with the defaults would otherwise run past the context the model was trained on
        generation.max_new_tokens = fitting
        generation_changes.append(f"max_new_tokens -> {fitting}")
    if generation_changes:
        generation.save_pretrained(staging)
        changes += [f"generation_config.json: {change}" for change in generation_changes]
    return changes


def prepare_upload(model_dir: str | os.PathLike, staging: str | os.PathLike, info: CardInfo) -> list[str]:
    """Fills `staging` with exactly what will be uploaded (files + README.md); returns their names."""
    model_dir, staging = Path(model_dir), Path(staging)
    files = upload_files(model_dir)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for path in files:
        shutil.copy2(path, staging / path.name)
    if info.eval_results_path:
        if not Path(info.eval_results_path).is_file():
            raise PushError(f"eval_results {info.eval_results_path!r} does not exist (expected the eval_results.json "
                            "that `llm-recipes evaluate` writes)")
        shutil.copy2(info.eval_results_path, staging / "eval_results.json")
    changes = fix_inference_settings(staging)
    for change in changes:
        print(f"[push] fixed for inference: {change}")
    card = render_model_card(model_dir, staging, info)
    (staging / "README.md").write_text(card, encoding="utf-8")
    return sorted(p.name for p in staging.iterdir())


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
        from .training.monitor import read_metrics

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
    from .evaluation.report import HEADLINE

    if not path:
        return []
    data = read_json(Path(path))
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise PushError(f"eval_results {str(path)!r} is not an eval_results.json written by `llm-recipes evaluate`")
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

    from .model import DEFAULT_MAX_NEW_TOKENS, fitting_max_new_tokens
    from .model_card import lineage, readable_dataset_id, training_data, training_details

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


# -- upload ------------------------------------------------------------------------------------------

def resolve_token() -> str:
    """The Hub token from $HF_TOKEN or the `hf auth login` store; a PushError when there is none."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise PushError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a write token is needed)")
    return token


def upload(staging: str | os.PathLike, repo_id: str, private: bool = False, revision: str | None = None,
           commit_message: str = "Upload model with llm_recipes") -> dict[str, str]:
    """Creates the repo if needed and uploads every file of `staging` in one commit.

    Args:
        staging: folder prepared by `prepare_upload`.
        repo_id: "user/name".
        private: create the repository private (an existing repository keeps its visibility).
        revision: branch to commit to; default main.

    Returns:
        {"repo_url", "commit_url", "commit_oid"}
    """
    from huggingface_hub import CommitOperationAdd, HfApi, constants

    if constants.is_offline_mode():
        raise PushError("HF_HUB_OFFLINE is set, so the Hub cannot be reached: unset it to push, or use --dry_run true")
    staging = Path(staging)
    # HF_ENDPOINT is read at call time, so a self-hosted Hub or a local stand-in works without re-import
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=resolve_token())
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    operations = [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p))
                  for p in sorted(staging.iterdir()) if p.is_file()]
    commit = api.create_commit(repo_id=repo_id, operations=operations, commit_message=commit_message,
                               repo_type="model", revision=revision)
    return {"repo_url": str(repo_url), "commit_url": commit.commit_url, "commit_oid": commit.oid}
