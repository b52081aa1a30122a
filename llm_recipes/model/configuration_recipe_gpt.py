"""Configuration of RecipeGPT, the decoder-only transformer that llm_recipes pretrains.

This file is copied next to every saved checkpoint (Hub remote code), so it imports only
transformers. Attribute names follow `LlamaConfig`, so tooling written for Llama (PEFT target
names, FSDP wrapping, the Llama export) reads it without glue.
"""

from transformers import PretrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

# The Auto classes a saved folder names for loaders without llm_recipes (Hub remote code). vLLM's Transformers
# backend builds `AutoModel.from_config(...)`, so the base model is listed too; transformers itself only writes
# the entry of the class being saved.
AUTO_MAP = {
    "AutoConfig": "configuration_recipe_gpt.RecipeGPTConfig",
    "AutoModel": "modeling_recipe_gpt.RecipeGPTModel",
    "AutoModelForCausalLM": "modeling_recipe_gpt.RecipeGPTForCausalLM",
}

# rope types whose `factor` stretches the trained context (transformers' RoPE utilities implement each)
_SCALED_ROPE_TYPES = ("linear", "dynamic", "yarn", "llama3")


class RecipeGPTConfig(PretrainedConfig):
    r"""
    Args:
        vocab_size (`int`): size of the token vocabulary (the tokenizer's `len()`, rounded up to a multiple of 64).
        hidden_size (`int`): width of the residual stream.
        intermediate_size (`int`): width of the SwiGLU MLP (about 8/3 of hidden_size keeps FLOPs equal to a 4x
            GELU MLP).
        num_hidden_layers (`int`): number of decoder layers.
        num_attention_heads (`int`): query heads; must divide hidden_size.
        num_key_value_heads (`int`, *optional*): key/value heads for grouped-query attention; must divide
            num_attention_heads. Defaults to num_attention_heads (plain multi-head attention).
        head_dim (`int`, *optional*): per-head width; defaults to hidden_size // num_attention_heads.
        max_position_embeddings (`int`): longest context the model is trained for.
        rope_theta (`float`): base of the rotary position embedding frequencies (kept as an argument for configs
            written before `rope_parameters`; it lands in `rope_parameters["rope_theta"]`).
        rope_parameters (`dict`, *optional*): transformers' RoPE description: `rope_type` (`default`, `linear`,
            `dynamic`, `yarn`, `llama3`), `rope_theta`, and for the scaled types `factor` (> 1: how many times
            the trained context is stretched) plus the type's own keys (`original_max_position_embeddings`,
            `beta_fast`, `low_freq_factor`, ...). Defaults to `{"rope_type": "default", "rope_theta": rope_theta}`.
        rms_norm_eps (`float`): epsilon of every RMSNorm.
        qk_norm (`bool`): RMSNorm on each query and key head before RoPE (stabilises training at higher
            learning rates; OLMo 2 / Qwen 3 style). Not representable in a Llama checkpoint.
        tie_word_embeddings (`bool`): share the input embedding with the output head.
        initializer_range (`float`): std of the normal init; residual output projections are further scaled
            by 1/sqrt(2 * num_hidden_layers) (GPT-2).
        attention_dropout (`float`): dropout on attention probabilities (0 for pretraining).
        hidden_dropout (`float`): dropout on the embeddings and on each block's attention and MLP output
            before it joins the residual stream (nanoGPT's `dropout`). 0 for pretraining on plenty of data;
            it helps when a small corpus is seen for many epochs. Training only: inference is unchanged, so
            the Llama export holds.
        use_cache (`bool`): return a KV cache from forward when generating.
    """

    model_type = "recipe_gpt"
    # the KV cache (named past_key_values before transformers 5.24)
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    def __init__(
        self,
        vocab_size: int = 4096,
        hidden_size: int = 256,
        intermediate_size: int = 704,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        max_position_embeddings: int = 512,
        rope_theta: float = 10000.0,
        rope_parameters: dict | None = None,
        rms_norm_eps: float = 1e-6,
        qk_norm: bool = False,
        tie_word_embeddings: bool = True,
        initializer_range: float = 0.02,
        attention_dropout: float = 0.0,
        hidden_dropout: float = 0.0,
        use_cache: bool = True,
        bos_token_id: int | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        **kwargs,
    ):
        if num_key_value_heads is None:
            num_key_value_heads = num_attention_heads
        if head_dim is None:
            if hidden_size % num_attention_heads != 0:
                raise ValueError(
                    f"RecipeGPTConfig: hidden_size ({hidden_size}) must be divisible by num_attention_heads "
                    f"({num_attention_heads}), or set head_dim explicitly"
                )
            head_dim = hidden_size // num_attention_heads
        if num_attention_heads % num_key_value_heads != 0:
            raise ValueError(
                f"RecipeGPTConfig: num_key_value_heads ({num_key_value_heads}) must divide num_attention_heads "
                f"({num_attention_heads}) for grouped-query attention"
            )
        if head_dim % 2 != 0:
            raise ValueError(f"RecipeGPTConfig: head_dim ({head_dim}) must be even for rotary embeddings")
        for name, value in (("vocab_size", vocab_size), ("hidden_size", hidden_size),
                            ("intermediate_size", intermediate_size), ("num_hidden_layers", num_hidden_layers),
                            ("max_position_embeddings", max_position_embeddings)):
            if int(value) <= 0:
                raise ValueError(f"RecipeGPTConfig: {name} must be a positive integer, got {value}")
        for name, value in (("attention_dropout", attention_dropout), ("hidden_dropout", hidden_dropout)):
            if not 0.0 <= float(value) < 1.0:
                raise ValueError(f"RecipeGPTConfig: {name} must be in [0, 1), got {value}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.max_position_embeddings = max_position_embeddings
        self.rope_parameters = _checked_rope_parameters(rope_parameters, rope_theta)
        self.rms_norm_eps = rms_norm_eps
        self.qk_norm = qk_norm
        self.initializer_range = initializer_range
        self.attention_dropout = attention_dropout
        self.hidden_dropout = hidden_dropout
        self.use_cache = use_cache
        self.hidden_act = "silu"  # SwiGLU; named like LlamaConfig for tools that read it
        # transformers 5 no longer keeps these on the base class: set them here or they are lost on save
        self.tie_word_embeddings = tie_word_embeddings
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        kwargs["auto_map"] = {**AUTO_MAP, **(kwargs.get("auto_map") or {})}
        # transformers' base class fills `rope_parameters` defaults (e.g. original_max_position_embeddings
        # for yarn/llama3) from these attributes and validates the type's keys
        super().__init__(**kwargs)


def _checked_rope_parameters(rope_parameters: dict | None, rope_theta: float) -> dict:
    """Our own check first, so a bad RoPE setting is an error naming it rather than a warning or a KeyError later."""
    params = dict(rope_parameters) if rope_parameters else {}
    if "type" in params and "rope_type" not in params:  # the pre-5.0 spelling
        params["rope_type"] = params.pop("type")
    params.setdefault("rope_type", "default")
    params.setdefault("rope_theta", float(rope_theta))
    rope_type = params["rope_type"]
    known = ("default", *_SCALED_ROPE_TYPES)
    if rope_type not in known or (rope_type != "default" and rope_type not in ROPE_INIT_FUNCTIONS):
        raise ValueError(f"RecipeGPTConfig: rope_parameters.rope_type {rope_type!r} is not one of {list(known)}")
    if rope_type in _SCALED_ROPE_TYPES:
        factor = params.get("factor")
        if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor <= 1:
            raise ValueError(
                f"RecipeGPTConfig: rope_parameters.factor must be a number > 1 for rope_type {rope_type!r} "
                f"(how many times the trained context is stretched), got {factor!r}"
            )
        params["factor"] = float(factor)
    if rope_type == "llama3":
        params.setdefault("low_freq_factor", 1.0)
        params.setdefault("high_freq_factor", 4.0)
    if float(params["rope_theta"]) <= 0:
        raise ValueError(f"RecipeGPTConfig: rope_parameters.rope_theta must be > 0, got {params['rope_theta']!r}")
    return params


__all__ = ["RecipeGPTConfig"]
