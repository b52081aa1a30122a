"""RecipeGPT -> a standard `LlamaForCausalLM` checkpoint, for engines that serve Llama (vLLM, TGI); llama.cpp
takes the GGUF file of `gguf_export`.

RecipeGPT was built to Llama's layout (pre-norm RMSNorm, rotary embeddings with the same half-split
rotation, SwiGLU, grouped-query attention, no biases, Llama's module names), so the weights map one to
one and only the config is rewritten. What Llama cannot express is refused with a clear message
instead of exported with different outputs: QK-norm (a per-head RMSNorm Llama does not have).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

from ..fileio import atomic_directory
from ..pipeline.envelope import RECORD_FILES

# files of a model folder that are not the model itself and carry over unchanged
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "vocab.json", "merges.txt")


class ExportError(ValueError):
    """A model that cannot be written as a Llama checkpoint with identical outputs."""


def llama_config_from(config):
    """The `LlamaConfig` that computes what a `RecipeGPTConfig` computes.

    Raises:
        ExportError: for settings Llama has no equivalent of.
    """
    from transformers import LlamaConfig

    if getattr(config, "model_type", None) != "recipe_gpt":
        raise ExportError(f"only RecipeGPT models (model_type 'recipe_gpt') can be exported to Llama; this one is "
                          f"{getattr(config, 'model_type', None)!r}")
    if config.qk_norm:
        raise ExportError("this model was trained with qk_norm=true (an RMSNorm on every query and key head), which "
                          "a Llama checkpoint cannot represent: exporting it would change its outputs. Serve it with "
                          "`llm-recipes serve`, or export a model trained with qk_norm=false.")
    return LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        head_dim=config.head_dim,
        hidden_act="silu",
        max_position_embeddings=config.max_position_embeddings,
        rms_norm_eps=config.rms_norm_eps,
        rope_parameters=dict(config.rope_parameters),  # the same RoPE, scaled types included: Llama computes them all
        tie_word_embeddings=bool(config.tie_word_embeddings),
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=0.0,
        initializer_range=config.initializer_range,
        use_cache=True,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )


def llama_state_dict(model) -> dict:
    """RecipeGPT parameters under Llama's names (they are the same names; checked, not assumed)."""
    state = {}
    for name, tensor in model.state_dict().items():
        if "rotary_emb" in name:  # recomputed from the config by both models
            continue
        state[name] = tensor.detach().clone()
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    return state


def export_to_llama(model_dir: str | os.PathLike, output_dir: str | os.PathLike, dtype: str | None = None,
                    start: Callable[[], object] | None = None) -> dict:
    """Writes `output_dir` as a plain Llama model folder (safetensors, config, generation config, tokenizer)
    and checks that Llama's logits equal RecipeGPT's on a probe batch.

    Args:
        model_dir: a RecipeGPT model folder (e.g. runs/quickstart/sft/final).
        output_dir: where the Llama folder goes (replaced atomically).
        dtype: "float32", "bfloat16" or "float16"; default: the checkpoint's dtype.

        start: called once every check has passed, before the folder is replaced (the stage envelope's
            start: its record files are carried into the new folder).

    Returns:
        a summary: parameters, max absolute logit difference, files written.
    """
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    import llm_recipes  # noqa: F401  (registers RecipeGPT)

    model_dir, output_dir = Path(model_dir), Path(output_dir)
    check_model_folder(model_dir, "Llama")
    source = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    llama_config = llama_config_from(source.config)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, None: None}[dtype]

    llama = LlamaForCausalLM(llama_config).eval()
    missing, unexpected = llama.load_state_dict(llama_state_dict(source), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and llama_config.tie_word_embeddings)]
    if missing or unexpected:
        raise ExportError(f"weights do not map onto Llama: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if llama_config.tie_word_embeddings:
        llama.tie_weights()
    max_diff = logits_difference(source, llama)
    if max_diff > 1e-4:
        raise ExportError(f"exported Llama logits differ from the original by {max_diff:.3g}; refusing to write")
    if torch_dtype is not None:
        llama = llama.to(torch_dtype)
    llama.generation_config = source.generation_config
    if start is not None:
        start()
    with atomic_directory(output_dir, keep=RECORD_FILES) as tmp:
        llama.save_pretrained(tmp)
        _add_legacy_rope_theta(tmp / "config.json", float(source.config.rope_parameters["rope_theta"]))
        for name in TOKENIZER_FILES:
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, tmp / name)
    return {"parameters": sum(p.numel() for p in llama.parameters()), "max_abs_logit_diff": max_diff,
            "files": sorted(p.name for p in output_dir.iterdir() if p.name not in RECORD_FILES)}


def check_model_folder(model_dir: Path, target: str) -> None:
    """Raises ExportError unless `model_dir` holds a RecipeGPT config."""
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise ExportError(f"model folder {str(model_dir)!r} has no config.json (expected a RecipeGPT model folder "
                          "such as runs/quickstart/sft/final)")
    model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    if model_type != "recipe_gpt":
        raise ExportError(f"{str(config_file)!r} has model_type {model_type!r}; only 'recipe_gpt' exports to {target}")


def _add_legacy_rope_theta(config_path: Path, rope_theta: float) -> None:
    """transformers 5 writes `rope_parameters`; llama.cpp's converter and older vLLM read `rope_theta`."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.setdefault("rope_theta", rope_theta)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def logits_difference(a, b, batch: int = 2, length: int = 24, seed: int = 0) -> float:
    """Largest absolute logit difference between two causal LMs on random token ids."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    length = min(length, a.config.max_position_embeddings)
    ids = torch.randint(0, a.config.vocab_size, (batch, length), generator=generator)
    with torch.inference_mode():
        return float((a(ids).logits.float() - b(ids).logits.float()).abs().max())
