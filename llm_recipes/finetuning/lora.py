"""LoRA with PEFT: build the adapter config (checking its targets against the model), merge the trained
adapter back into a standalone checkpoint and save it like every other model folder."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

from ..fileio import atomic_directory
from ..model import fitting_max_new_tokens
from ..tokenizer.bpe import end_of_turn_token_ids, save_tokenizer


class LoraTargetError(ValueError):
    """A LoRA target_modules entry that matches no layer of the model."""


def linear_module_names(model) -> list[str]:
    """Distinct short names of the model's Linear layers (`q_proj`, `down_proj`, ...), output head excluded."""
    from torch import nn

    names = set()
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module is not output:
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def check_target_modules(model, target_modules: Sequence[str] | str) -> None:
    """Raises LoraTargetError naming each target that matches no module (PEFT matches a full name or a
    dotted suffix; a single string is a regex over full names)."""
    if target_modules == "all-linear" or list(target_modules) == ["all-linear"]:
        return
    module_names = [n for n, _ in model.named_modules() if n]
    available = linear_module_names(model)
    if isinstance(target_modules, str):
        if not any(re.fullmatch(target_modules, n) for n in module_names):
            raise LoraTargetError(f"LoRA target regex {target_modules!r} matches no module of the model; "
                                  f"linear layers are: {', '.join(available)} (or use 'all-linear')")
        return
    missing = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in module_names)]
    if missing:
        raise LoraTargetError(f"LoRA target_modules {missing} match no module of the model; "
                              f"linear layers are: {', '.join(available)} (or use 'all-linear')")


def build_lora_config(model, r: int = 16, alpha: int = 32, dropout: float = 0.05,
                      target_modules: Sequence[str] = ("all-linear",), modules_to_save: Sequence[str] | None = None,
                      use_rslora: bool = False, use_dora: bool = False):
    """A `peft.LoraConfig` for causal-LM training, its targets checked against `model`.

    Args:
        model: the model the adapter goes on (used to check the targets).
        r: rank of the update matrices.
        alpha: scaling numerator (the update is scaled by alpha / r, or alpha / sqrt(r) with rsLoRA).
        dropout: dropout on the adapter input.
        target_modules: module names (e.g. q_proj, v_proj) or ["all-linear"] (every Linear except the head).
        modules_to_save: modules trained in full and saved with the adapter (e.g. embed_tokens).
        use_rslora: rank-stabilised scaling.
        use_dora: weight-decomposed LoRA.
    """
    from peft import LoraConfig

    targets = list(target_modules)
    check_target_modules(model, targets)
    if r <= 0:
        raise ValueError(f"lora_r must be a positive integer, got {r}")
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none", task_type="CAUSAL_LM",
                      target_modules="all-linear" if targets == ["all-linear"] else targets,
                      modules_to_save=list(modules_to_save) if modules_to_save else None,
                      use_rslora=use_rslora, use_dora=use_dora)


def merge_adapter(model):
    """The base model with the adapter's update folded into its weights (a PEFT model in, a plain one out)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model


def save_model_folder(model, tokenizer, path: str | os.PathLike) -> Path:
    """Saves a standalone HF model folder atomically: safetensors, config (with auto_map for custom models),
    tokenizer, and a generation config that stops at the end of a chat turn and asks for no more new tokens
    than fit the context; `use_cache` back on (the
    Trainer turns it off while training)."""
    model.config.use_cache = True
    eos_ids = end_of_turn_token_ids(tokenizer)
    model.generation_config.eos_token_id = eos_ids if len(eos_ids) > 1 else eos_ids[0]
    if tokenizer.pad_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None:
        model.generation_config.bos_token_id = tokenizer.bos_token_id
    fitting = fitting_max_new_tokens(model.config.max_position_embeddings)
    if (model.generation_config.max_new_tokens or fitting + 1) > fitting:
        model.generation_config.max_new_tokens = fitting
    with atomic_directory(path) as tmp:
        model.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
    return Path(path)
