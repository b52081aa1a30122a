"""Small builders for the evaluation tests: models with known answers and tiny eval files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def copy_model(src: Path, dst: Path) -> Path:
    """The session's tiny model is shared: tests that write a model card work on a copy."""
    shutil.copytree(src, dst)
    return dst


def uniform_model(tokenizer):
    """A tiny RecipeGPT whose logits are all equal: the final norm's weight is zero, so the last hidden
    state is zero and the (bias-free) head gives 0 for every token: p = 1/V everywhere."""
    import torch
    from conftest import make_tiny_config

    from llm_recipes.model import RecipeGPTForCausalLM

    torch.manual_seed(0)
    model = RecipeGPTForCausalLM(make_tiny_config(len(tokenizer))).eval()
    with torch.no_grad():
        model.model.norm.weight.zero_()
    return model


def memorizing_model(tokenizer, sentence: str, steps: int = 120):
    """A tiny RecipeGPT trained on one sentence (BOS + sentence + EOS) until it knows it by heart."""
    import torch
    from conftest import make_tiny_config

    from llm_recipes.model import RecipeGPTForCausalLM

    torch.manual_seed(0)
    model = RecipeGPTForCausalLM(make_tiny_config(len(tokenizer)))
    ids = ([tokenizer.bos_token_id] + tokenizer(sentence, add_special_tokens=False)["input_ids"]
           + [tokenizer.eos_token_id])
    batch = torch.tensor([ids])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return model, float(loss.detach())


def single_token_words(tokenizer, count: int) -> list[str]:
    """Words that encode to exactly one token after a space, so equal-logit models give every choice
    the same log-likelihood."""
    words = []
    for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        text = tokenizer.convert_tokens_to_string([token])
        word = text.strip()
        if (text.startswith(" ") and word.isalpha()
                and len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1):
            words.append(word)
        if len(words) == count:
            break
    return words
