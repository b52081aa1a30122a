"""LoRA with PEFT: build the adapter config (checking its targets against the model), merge the trained
adapter back into a standalone checkpoint and save it like every other model folder."""

from __future__ import annotations

import re
from typing import Sequence


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
