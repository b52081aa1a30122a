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
from pathlib import Path
from typing import Callable

from ..fileio import read_json
from ..model import DEFAULT_MAX_NEW_TOKENS, fitting_max_new_tokens
from ..model.configuration_recipe_gpt import AUTO_MAP
from ..tokenizer.bpe import end_of_turn_token_ids
from .model_card import CardInfo, render_model_card

# what a model repository needs; everything else in a model folder (optimizer state, logs) stays home
UPLOAD_PATTERNS = ("config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json", "*.py",
                   "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model-*.bin", "*.pt", "*.pth", "*.ckpt")


class PushError(ValueError):
    """A model folder that is not ready to publish, or a Hub that refused it."""


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


def prepare_upload(model_dir: str | os.PathLike, staging: str | os.PathLike, info: CardInfo,
                   start: Callable[[], object] | None = None) -> list[str]:
    """Fills `staging` with exactly what will be uploaded (files + README.md); returns their names. `start` is
    called once the model folder and the eval results have been checked, before staging changes."""
    model_dir, staging = Path(model_dir), Path(staging)
    files = upload_files(model_dir)
    if info.eval_results_path and not Path(info.eval_results_path).is_file():
        raise PushError(f"eval_results {info.eval_results_path!r} does not exist (expected the eval_results.json "
                        "that `llm-recipes evaluate` writes)")
    if start is not None:
        start()
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for path in files:
        shutil.copy2(path, staging / path.name)
    if info.eval_results_path:
        shutil.copy2(info.eval_results_path, staging / "eval_results.json")
    changes = fix_inference_settings(staging)
    for change in changes:
        print(f"[push] fixed for inference: {change}")
    card = render_model_card(model_dir, staging, info)
    (staging / "README.md").write_text(card, encoding="utf-8")
    return sorted(p.name for p in staging.iterdir())


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
