"""The one writer of a model folder (`final/` of pretraining and of every fine-tuning stage): safetensors,
config (with `auto_map`, so it loads anywhere), tokenizer, a generation config fit for use, and the stage's
model card, written atomically. Readers load it with plain transformers (`AutoModelForCausalLM`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transformers import GenerationConfig

from ..fileio import atomic_directory
from ..model import fitting_max_new_tokens
from ..publishing.model_card import write_stage_card
from ..tokenizer.bpe import end_of_turn_token_ids, save_tokenizer

# how a newly pretrained model samples by default (fine-tuned models keep what their base had)
SAMPLING = {"do_sample": True, "temperature": 0.8, "top_k": 50}


def prepare_generation(model, tokenizer, fresh: bool = False) -> None:
    """`use_cache` back on (training turns it off) and a generation config that stops at the end of a chat
    turn, pads and starts with the tokenizer's tokens and asks for no more new tokens than fit the context.
    `fresh`: start from our sampling defaults instead of the model's own generation config."""
    model.config.use_cache = True
    generation = GenerationConfig(**SAMPLING) if fresh else model.generation_config
    eos_ids = end_of_turn_token_ids(tokenizer)
    generation.eos_token_id = eos_ids if len(eos_ids) > 1 else eos_ids[0]
    if tokenizer.pad_token_id is not None:
        generation.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None:
        generation.bos_token_id = tokenizer.bos_token_id
    fitting = fitting_max_new_tokens(model.config.max_position_embeddings)
    if (generation.max_new_tokens or fitting + 1) > fitting:
        generation.max_new_tokens = fitting
    model.generation_config = generation


def save_model_folder(model, tokenizer, path: str | os.PathLike, *, state_dict: dict | None = None,
                      card: tuple[dict[str, Any], list[str]] | None = None, fresh_generation: bool = False) -> Path:
    """Writes the model folder at `path` atomically (see the module docstring).

    Args:
        state_dict: the weights to save when they are not the model's own (a gathered or de-compiled state).
        card: (metadata, body lines) of the stage's README.md (`publishing.model_card.write_stage_card`).
        fresh_generation: see `prepare_generation`.
    """
    prepare_generation(model, tokenizer, fresh=fresh_generation)
    with atomic_directory(path) as tmp:
        model.save_pretrained(tmp, state_dict=state_dict)
        save_tokenizer(tokenizer, tmp)
        if card is not None:
            write_stage_card(tmp, *card)
    return Path(path)
