"""RecipeGPT: the decoder-only transformer that llm_recipes pretrains, in one file, top to bottom.

Deviations from GPT-2 (the same choices as Llama 3 / nanochat / modded-nanogpt):
- RMSNorm instead of LayerNorm, pre-norm, no biases anywhere;
- rotary position embeddings instead of learned positions, with transformers' scaled variants (linear,
  dynamic NTK, YaRN, llama3) for longer contexts;
- SwiGLU MLP instead of GELU;
- grouped-query attention (num_key_value_heads <= num_attention_heads);
- optional RMSNorm on queries and keys (qk_norm);
- tied input/output embeddings by default.

This file is copied next to every saved checkpoint (Hub remote code): it imports only torch,
transformers and its sibling configuration file. Module names match Llama's (`q_proj` ... `down_proj`,
`input_layernorm`, `embed_tokens`, `lm_head`) so PEFT, FSDP wrapping and the Llama export need no glue.
It behaves as transformers' own models do where their test suite looks: hidden states and attentions
through transformers' output-capturing hooks, tuples with `return_dict=False`, `rope_parameters`.
"""

import dataclasses
from collections.abc import Callable

import torch
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.output_capturing import capture_outputs

from .configuration_recipe_gpt import RecipeGPTConfig

# transformers 5.24 renamed the KV cache argument and output field from `past_key_values` to `cache`. This
# file runs as Hub remote code under whatever version the user has, so it speaks the installed one's name.
CACHE_KEY = "cache" if "cache" in {f.name for f in dataclasses.fields(BaseModelOutputWithPast)} else "past_key_values"


def accepts_old_cache_name(forward: Callable) -> Callable:
    """From transformers 5.24, `past_key_values=` still works in forward, renamed to `cache` with a deprecation
    warning (as in transformers' own models). Before 5.24 `past_key_values` is the name generate uses: the
    forward reads it from its kwargs without a warning."""
    if CACHE_KEY == "cache":
        return deprecate_kwarg("past_key_values", version="5.40.0", new_name="cache")(forward)
    return forward


def rms_norm(hidden_states: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # normalise in float32 even under bf16 autocast: the mean of squares loses precision otherwise
    # (the casts are skipped when the input is float32 already: the same values, two fewer operations for a
    # one-row decode step, where each operation's dispatch costs more than its arithmetic)
    input_dtype = hidden_states.dtype
    if input_dtype != torch.float32:
        hidden_states = hidden_states.to(torch.float32)
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    hidden_states = hidden_states * torch.rsqrt(variance + eps)
    return weight * (hidden_states if input_dtype == torch.float32 else hidden_states.to(input_dtype))


class RecipeGPTRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return rms_norm(hidden_states, self.weight, self.variance_epsilon)


class RecipeGPTRotaryEmbedding(nn.Module):
    """Rotary embeddings (RoPE), with transformers' scaled variants (`config.rope_parameters["rope_type"]`:
    linear, dynamic NTK, YaRN, llama3) from its RoPE utilities. `inv_freq` is a non-persistent buffer, so it is
    not in the checkpoint: transformers' `_init_weights` recomputes it after `from_pretrained` (which builds the
    model on the meta device) from `rope_type` and `compute_default_rope_parameters`."""

    def __init__(self, config: RecipeGPTConfig):
        super().__init__()
        self.config = config
        # read by `dynamic_rope_update`: the dynamic type grows its frequencies past the trained context
        self.max_seq_len_cached = config.max_position_embeddings
        self.original_max_seq_len = config.max_position_embeddings
        self.rope_type = config.rope_parameters["rope_type"]
        rope_init_fn = self.compute_default_rope_parameters
        if self.rope_type != "default":
            rope_init_fn = ROPE_INIT_FUNCTIONS[self.rope_type]
        inv_freq, self.attention_scaling = rope_init_fn(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config: RecipeGPTConfig, *args, **kwargs) -> tuple[torch.Tensor, float]:
        dim = config.head_dim
        # theta_i = base^(-2i/d), i = 0 .. d/2-1
        base = config.rope_parameters["rope_theta"]
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        return inv_freq, 1.0

    @torch.no_grad()
    @dynamic_rope_update
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # angles in float32 even under autocast: positions up to thousands times small frequencies
        device_type = x.device.type if x.device.type != "mps" else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            freqs = position_ids[..., None].float() * self.inv_freq.float()  # (B, T, hd/2)
            emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, hd)
            cos = emb.cos() * self.attention_scaling  # YaRN scales attention through cos/sin
            sin = emb.sin() * self.attention_scaling
        return cos.to(x.dtype), sin.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, hd): broadcast over heads
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


class RecipeGPTMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: RecipeGPTConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.down_proj._is_residual_projection = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, n_kv, T, hd) -> (B, n_kv * n_rep, T, hd): each key/value head serves n_rep query heads."""
    batch, num_key_value_heads, seq_len, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, seq_len, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, seq_len, head_dim)


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    key_states = repeat_kv(key, module.num_key_value_groups)
    value_states = repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling  # (B, nh, T, S)
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states)  # (B, nh, T, hd)
    return attn_output.transpose(1, 2).contiguous(), attn_weights  # (B, T, nh, hd)


class RecipeGPTAttention(nn.Module):
    """Causal grouped-query self-attention; the kernel (eager, sdpa, flash, flex) comes from
    `config._attn_implementation` through transformers' attention interface."""

    def __init__(self, config: RecipeGPTConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        self.q_proj = nn.Linear(config.hidden_size, config.num_attention_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(config.num_attention_heads * self.head_dim, config.hidden_size, bias=False)
        self.o_proj._is_residual_projection = True
        if config.qk_norm:
            self.q_norm = RecipeGPTRMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = RecipeGPTRMSNorm(self.head_dim, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]  # (B, T)
        hidden_shape = (*input_shape, -1, self.head_dim)  # (B, T, heads, hd)
        query_states = self.q_proj(hidden_states).view(hidden_shape)
        key_states = self.k_proj(hidden_states).view(hidden_shape)
        if self.config.qk_norm:
            query_states, key_states = self.q_norm(query_states), self.k_norm(key_states)
        query_states = query_states.transpose(1, 2)  # (B, nh, T, hd)
        key_states = key_states.transpose(1, 2)  # (B, n_kv, T, hd)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

        cos, sin = position_embeddings
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
        if cache is not None:
            # append this step's keys/values; attend over everything seen so far. From transformers 5.24
            # (CACHE_KEY "cache") a paged cache (continuous batching) reads its indices from the forward kwargs
            paged = {"kwargs": kwargs} if CACHE_KEY == "cache" else {}
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx, **paged)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=self.config.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()  # (B, T, nh * hd)
        return self.o_proj(attn_output), attn_weights


class RecipeGPTDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: RecipeGPTConfig, layer_idx: int):
        super().__init__()
        self.self_attn = RecipeGPTAttention(config, layer_idx)
        self.mlp = RecipeGPTMLP(config)
        self.input_layernorm = RecipeGPTRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RecipeGPTRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)  # identity in eval mode

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        # x = x + dropout(attn(norm(x))); x = x + dropout(mlp(norm(x)))
        residual = hidden_states
        hidden_states, _ = self.self_attn(
            self.input_layernorm(hidden_states),
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            cache=cache,
            **kwargs,
        )
        hidden_states = residual + self.dropout(hidden_states)
        return hidden_states + self.dropout(self.mlp(self.post_attention_layernorm(hidden_states)))


class RecipeGPTPreTrainedModel(PreTrainedModel):
    config_class = RecipeGPTConfig
    config: RecipeGPTConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["RecipeGPTDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    # what `output_hidden_states` / `output_attentions` collect, through transformers' output-capturing hooks
    # (`capture_outputs` on RecipeGPTModel.forward): each decoder layer's output, each attention's weights
    _can_record_outputs = {"hidden_states": RecipeGPTDecoderLayer, "attentions": RecipeGPTAttention}

    def _init_weights(self, module: nn.Module) -> None:
        # normal(0, 0.02) for linears/embeddings, ones for norms, RoPE buffers recomputed
        super()._init_weights(module)
        if isinstance(module, nn.Linear) and getattr(module, "_is_residual_projection", False):
            # GPT-2: scale the projections that write into the residual stream by 1/sqrt(2 * layers),
            # so the residual's variance does not grow with depth
            std = self.config.initializer_range / (2 * self.config.num_hidden_layers) ** 0.5
            init.normal_(module.weight, mean=0.0, std=std)


class RecipeGPTModel(RecipeGPTPreTrainedModel):
    def __init__(self, config: RecipeGPTConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            [RecipeGPTDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = RecipeGPTRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = RecipeGPTRotaryEmbedding(config)
        self.embed_dropout = nn.Dropout(config.hidden_dropout)
        self.gradient_checkpointing = False
        self.post_init()

    @accepts_old_cache_name
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("RecipeGPTModel: pass exactly one of input_ids or inputs_embeds")
        if "past_key_values" in kwargs:  # transformers < 5.24: the name its generate uses
            cache = cache if cache is not None else kwargs.pop("past_key_values")
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)  # (B, T, C)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if position_ids is None:
            past_seen_tokens = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
            position_ids = position_ids.unsqueeze(0)  # (1, T)

        # causal mask, merged with padding from attention_mask; with no attention_mask and no cache,
        # position_ids that restart at 0 mark packed documents and the mask becomes block-diagonal
        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **{CACHE_KEY: cache},
        )
        hidden_states = self.embed_dropout(inputs_embeds)
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        for decoder_layer in self.layers:
            hidden_states = decoder_layer(
                hidden_states,
                position_embeddings=position_embeddings,
                attention_mask=causal_mask,
                cache=cache,
                position_ids=position_ids,
                **kwargs,
            )
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, **{CACHE_KEY: cache if use_cache else None})


class RecipeGPTForCausalLM(RecipeGPTPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: RecipeGPTConfig):
        super().__init__(config)
        self.model = RecipeGPTModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @accepts_old_cache_name
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast:
        r"""
        Args:
            labels: token ids to predict, shifted inside the loss (`labels[t+1]` is the target at t);
                -100 marks positions without loss (padding, prompts).
            logits_to_keep: if an int > 0, compute logits only for the last that many positions
                (generation needs only the last one).
            kwargs: passed to the attention kernel (e.g. TRL's padding-free `cu_seq_lens_q`) and to the loss
                (`num_items_in_batch` normalises a loss summed over gradient-accumulation micro-batches);
                `output_hidden_states` / `output_attentions` (or the same config fields) collect the embedding
                output plus every layer's output / every layer's attention weights (eager attention only);
                `return_dict=False` returns a tuple (loss first when labels are given).
        """
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])  # (B, T, V)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **{CACHE_KEY: getattr(outputs, CACHE_KEY)},
        )

    # -- helpers for training ------------------------------------------------------------------------

    def num_parameters_for_flops(self) -> int:
        """Parameters that take part in a matmul per token: all but the input embedding lookup
        (the output head counts, whether tied or not)."""
        non_embedding = sum(p.numel() for n, p in self.named_parameters()
                            if "embed_tokens" not in n and "lm_head" not in n)
        return non_embedding + self.config.vocab_size * self.config.hidden_size

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward): 6N + 12 * layers * heads * head_dim * seq_len
        (PaLM appendix B; the second term is attention's QK^T and AV, which N does not count)."""
        c = self.config
        return (6 * self.num_parameters_for_flops()
                + 12 * c.num_hidden_layers * c.num_attention_heads * c.head_dim * seq_len)


__all__ = ["RecipeGPTForCausalLM", "RecipeGPTModel", "RecipeGPTPreTrainedModel"]
