"""Loading a model folder for serving: our own model type without remote code, others only when asked."""

from __future__ import annotations

import json
import os
from pathlib import Path


class ModelLoadError(ValueError):
    """A model folder that cannot be served as asked (missing files, remote code not allowed)."""


def load_for_serving(model_path: str | os.PathLike, trust_remote_code: bool = False, dtype: str = "float32"):
    """Loads (model, tokenizer) from a local HF model folder.

    Args:
        model_path: folder with config.json, weights and a tokenizer.
        trust_remote_code: allow running the folder's own Python code (`auto_map`) for a model type
            transformers and llm_recipes do not know. RecipeGPT never needs it: importing llm_recipes
            registers the type, so its copied .py files are not executed.
        dtype: "float32", "bfloat16" or "float16".

    Returns:
        (model in eval mode, tokenizer)
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    import llm_recipes  # noqa: F401  (registers RecipeGPT with the Auto classes)

    path = Path(model_path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"model_path {str(path)!r} is not a model folder: no config.json there "
                             "(expected e.g. runs/quickstart/sft/final)")
    raw = json.loads(config_file.read_text(encoding="utf-8"))
    model_type = raw.get("model_type")
    known = model_type in CONFIG_MAPPING
    if not known and not trust_remote_code:
        raise ModelLoadError(
            f"model type {model_type!r} in {str(config_file)!r} is not built into transformers or llm_recipes; "
            "serving it would run Python code shipped with the model. Re-run with --trust_remote_code true "
            "if you trust that code.")
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise ModelLoadError(f"dtype {dtype!r} is not supported; expected float32, bfloat16 or float16")
    # a known type never needs remote code, even when config.json carries an auto_map
    remote = bool(trust_remote_code and not known)
    config = AutoConfig.from_pretrained(path, trust_remote_code=remote)
    model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=torch_dtype, trust_remote_code=remote)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=remote)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def context_window(model, tokenizer) -> int:
    """Longest sequence (prompt + answer) the model handles."""
    limits = [getattr(model.config, "max_position_embeddings", None)]
    max_len = getattr(tokenizer, "model_max_length", None)
    if isinstance(max_len, int) and max_len < 1_000_000:
        limits.append(max_len)
    limits = [int(x) for x in limits if x]
    if not limits:
        raise ModelLoadError("cannot tell the model's context window: set max_position_embeddings in config.json")
    return min(limits)
