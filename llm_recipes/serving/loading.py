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
    config, tokenizer = load_config_and_tokenizer(model_path, trust_remote_code)
    return load_model(model_path, config, trust_remote_code, dtype), tokenizer


def load_config_and_tokenizer(model_path: str | os.PathLike, trust_remote_code: bool = False):
    """The folder's (config, tokenizer), after `load_config`'s checks: what the HTTP process needs, the weights
    being the engine process's."""
    from transformers import AutoTokenizer

    config = load_config(model_path, trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=_remote(config.model_type,
                                                                                    trust_remote_code))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return config, tokenizer


def load_config(model_path: str | os.PathLike, trust_remote_code: bool = False):
    """The folder's model config, after checking it is a model folder whose code is built in, or remote code
    is allowed."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    import llm_recipes  # noqa: F401  (registers RecipeGPT with the Auto classes)

    path = Path(model_path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"model_path {str(path)!r} is not a model folder: no config.json there "
                             "(expected e.g. runs/quickstart/sft/final)")
    raw = json.loads(config_file.read_text(encoding="utf-8"))
    model_type = raw.get("model_type")
    if model_type not in CONFIG_MAPPING and not trust_remote_code:
        raise ModelLoadError(
            f"model type {model_type!r} in {str(config_file)!r} is not built into transformers or llm_recipes; "
            "serving it would run Python code shipped with the model. Re-run with --trust_remote_code true "
            "if you trust that code.")
    return AutoConfig.from_pretrained(path, trust_remote_code=_remote(model_type, trust_remote_code))


def _remote(model_type, trust_remote_code: bool) -> bool:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    # a known type never needs remote code, even when config.json carries an auto_map
    return bool(trust_remote_code and model_type not in CONFIG_MAPPING)


def load_model(model_path: str | os.PathLike, config, trust_remote_code: bool = False, dtype: str = "float32"):
    """The folder's weights as a causal LM in eval mode (`config` from `load_config_and_tokenizer`)."""
    from transformers import AutoModelForCausalLM

    import llm_recipes  # noqa: F401  (registers RecipeGPT with the Auto classes)

    remote = _remote(config.model_type, trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(model_path, config=config, dtype=torch_dtype(dtype),
                                                 trust_remote_code=remote)
    return model.eval()


def torch_dtype(name: str):
    """The torch dtype named by the serve config's `dtype`."""
    import torch

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(name)
    if dtype is None:
        raise ModelLoadError(f"dtype {name!r} is not supported; expected float32, bfloat16 or float16")
    return dtype


def context_window(config, tokenizer) -> int:
    """Longest sequence (prompt + answer) the model (its `config`) handles."""
    limits = [getattr(config, "max_position_embeddings", None)]
    max_len = getattr(tokenizer, "model_max_length", None)
    if isinstance(max_len, int) and max_len < 1_000_000:
        limits.append(max_len)
    limits = [int(x) for x in limits if x]
    if not limits:
        raise ModelLoadError("cannot tell the model's context window: set max_position_embeddings in config.json")
    return min(limits)
