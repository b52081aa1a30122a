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
from typing import Any

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
    return [model_dir / n for n in chosen]


def fix_inference_settings(staging: Path) -> list[str]:
    """Makes the staged config generate like a finished model: `use_cache` on (Trainer turns it off) and
    `generation_config.eos_token_id` set (end of text and end of turn); returns what was changed."""
    from transformers import AutoTokenizer, GenerationConfig

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
    if generation.eos_token_id is None or generation.use_cache is False:
        tokenizer = AutoTokenizer.from_pretrained(staging)
        if generation.eos_token_id is None:
            eos = end_of_turn_token_ids(tokenizer)
            if not eos or eos[0] is None:
                raise PushError("the tokenizer has no eos token, so generation would never stop: set eos_token_id "
                                "in generation_config.json")
            generation.eos_token_id = eos if len(eos) > 1 else eos[0]
            changes.append(f"generation_config.json: eos_token_id -> {generation.eos_token_id}")
        if generation.use_cache is False:
            generation.use_cache = True
            changes.append("generation_config.json: use_cache -> true")
        if generation.pad_token_id is None and tokenizer.pad_token_id is not None:
            generation.pad_token_id = tokenizer.pad_token_id
        generation.save_pretrained(staging)
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

def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def training_summary(model_dir: Path) -> list[str]:
    """Lines about how the model was made, from the files its stage left next to it."""
    lines = []
    config = _read_json(model_dir / "config.json") or {}
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
    run_info = _read_json(stage_dir / "run_info.json") or {}
    resolved = stage_dir / "resolved_config.yaml"
    if run_info.get("stage"):
        lines.append(f"- Last training stage: `llm-recipes {run_info['stage']}`"
                     + (" (its full configuration is below)." if resolved.is_file() else "."))
    metrics = stage_dir / "metrics.jsonl"
    if metrics.is_file():
        last = None
        for line in metrics.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and any(k in record for k in ("loss", "train_loss", "eval_loss")):
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


def eval_results_table(path: str | os.PathLike | None, model_dir: Path) -> list[str]:
    """A markdown table of `eval_results.json` (written by `llm-recipes evaluate`); this model's row first."""
    if not path:
        return []
    data = _read_json(Path(path))
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise PushError(f"eval_results {str(path)!r} is not an eval_results.json written by `llm-recipes evaluate`")
    models = data["models"]
    this = [n for n, m in models.items() if m.get("path") and Path(m["path"]).resolve() == model_dir.resolve()]
    order = this + [n for n in models if n not in this]
    columns = []
    for name in order:
        for task, metrics in (models[name].get("results") or {}).items():
            for metric, value in (metrics or {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and metric != "seconds" \
                        and (task, metric) not in columns:
                    columns.append((task, metric))
    columns = columns[:8]  # a card table, not the full report (eval_results.json is uploaded too)
    if not columns:
        return []
    lines = ["| model | " + " | ".join(f"{t} {m}" for t, m in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for name in order:
        results = models[name].get("results") or {}
        cells = []
        for task, metric in columns:
            value = (results.get(task) or {}).get(metric)
            cells.append(f"{value:.4g}" if isinstance(value, (int, float)) else "")
        label = f"**{name}** (this model)" if name in this else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def render_model_card(model_dir: Path, staging: Path, info: CardInfo) -> str:
    """README.md with Hub metadata and the sections a model card should have.

    The `model-index` (evaluation results) already in model_dir/README.md, written by `llm-recipes
    evaluate`, is kept as it is; our metadata is merged around it.
    """
    from huggingface_hub import ModelCard, ModelCardData

    existing = model_dir / "README.md"
    data = ModelCardData()
    if existing.is_file():
        data = ModelCard(existing.read_text(encoding="utf-8"), ignore_metadata_errors=True).data
    config = _read_json(staging / "config.json") or {}
    custom_code = "auto_map" in config
    data.license = info.license or data.license
    data.datasets = sorted(set((data.datasets or []) + list(info.datasets))) or None
    data.language = info.language or data.language
    data.library_name = "transformers"
    data.pipeline_tag = "text-generation"
    data.base_model = info.base_model or data.base_model
    tags = list(data.tags or [])
    for tag in ["llm_recipes", config.get("model_type"), "text-generation", "custom_code" if custom_code else None,
                *info.tags]:
        if tag and tag not in tags:
            tags.append(tag)
    data.tags = tags
    if data.eval_results and not data.model_name:
        data.model_name = info.repo_id.split("/")[-1]

    name = info.repo_id.split("/")[-1]
    trust = ", trust_remote_code=True" if custom_code else ""
    chat = (staging / "chat_template.jinja").is_file() or "chat_template" in (
        _read_json(staging / "tokenizer_config.json") or {})
    body = [f"# {name}", "",
            f"A {'chat ' if chat else ''}language model built from scratch with "
            "llm_recipes on the Hugging Face stack (transformers, datasets, TRL).", ""]
    body += ["## Usage", "", "```python", "from transformers import pipeline", "",
             f'generator = pipeline("text-generation", model="{info.repo_id}"{trust})']
    if chat:
        body += ['messages = [{"role": "user", "content": "How do I join two paths in Python?"}]',
                 'print(generator(messages, max_new_tokens=128)[0]["generated_text"][-1]["content"])']
    else:
        body += ['print(generator("The os module", max_new_tokens=64)[0]["generated_text"])']
    body += ["```", ""]
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
    summary = training_summary(model_dir)
    if data.datasets:
        summary.insert(0, "- Training data: " + ", ".join(data.datasets) + ".")
    if summary:
        body += ["## Training", "", *summary, ""]
    table = eval_results_table(info.eval_results_path, model_dir)
    if table or data.eval_results:
        body += ["## Evaluation", ""]
        if table:
            body += ["From `eval_results.json` (`llm-recipes evaluate`):", "", *table, ""]
        if data.eval_results:
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
