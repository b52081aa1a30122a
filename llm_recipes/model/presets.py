"""Named model sizes, selectable from a recipe as `model_preset: <name>`.

Parameter counts are for the preset's default vocabulary; `config_from_preset(name, vocab_size=...)`
takes the tokenizer's vocabulary instead. SwiGLU width is ~8/3 x hidden (rounded to a multiple of 64),
which keeps the MLP's FLOPs equal to GPT-2's 4x GELU MLP.
"""

from __future__ import annotations

import inspect

from .configuration_recipe_gpt import RecipeGPTConfig

PRESETS: dict[str, dict] = {
    # ~0.4M parameters at vocab 4096 (0.26M of them the embedding): unit tests, the debug recipe
    "test": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256, vocab_size=4096),
    # nanoGPT's CPU Shakespeare size: 4 layers, 4 heads, 128 wide
    "nano": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=4, max_position_embeddings=256, vocab_size=4096),
    # ~6M at vocab 8192: the CPU quickstart
    "micro": dict(hidden_size=256, intermediate_size=704, num_hidden_layers=6, num_attention_heads=4,
                  num_key_value_heads=4, max_position_embeddings=512, vocab_size=8192),
    # GPT-2 small class: 12 x 768, ~124M at vocab 50304
    "gpt2-small": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                       num_key_value_heads=12, max_position_embeddings=1024, vocab_size=50304),
    # GPT-2 medium class: 24 x 1024, ~350M
    "gpt2-medium": dict(hidden_size=1024, intermediate_size=2752, num_hidden_layers=24, num_attention_heads=16,
                        num_key_value_heads=16, max_position_embeddings=1024, vocab_size=50304),
    # Llama-3.2-1B-like: 16 x 2048, GQA 32/8, ~1.1B at vocab 50304
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, max_position_embeddings=2048, rope_theta=500000.0, vocab_size=50304),
}


def config_from_preset(name: str, **overrides) -> RecipeGPTConfig:
    """A RecipeGPTConfig for a named size; keyword overrides (e.g. vocab_size) win over the preset."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; expected one of: {', '.join(PRESETS)}")
    # PretrainedConfig keeps any keyword as an attribute, so a misspelt override would be silently ignored
    known = set(inspect.signature(RecipeGPTConfig.__init__).parameters) - {"self", "kwargs"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown model setting(s) {', '.join(map(repr, unknown))}; "
                         f"expected any of: {', '.join(sorted(known))}")
    return RecipeGPTConfig(**{**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}})
