"""A decode step for RecipeGPT with a preallocated (static) KV cache, optionally compiled with torch.compile.

Why: on the quickstart's 4.3M-parameter model a decode step through the transformers forward is ~3 ms of CPU
for one token, almost all of it Python and torch dispatch (mask building, cache bookkeeping, output-capturing
hooks, ~300 small operations), while llama.cpp takes ~0.7 ms. This step reads the model's own weights and does
only the arithmetic: one fused QKV and one fused gate/up matmul per layer, rotary angles from a table, keys and
values written in place into per-layer tensors of shape (max_batch_size, kv_heads, context + 1, head_dim) and one
scaled-dot-product attention over them. Compiled (inductor, C++ on the CPU), the whole step becomes a few
generated kernels.

Rows live in cache slots 0..B-1 of the batch, each from position 0 (no left padding): a row that joins is
copied into the next free slot after its prefill (the prefill stays the transformers forward: batched prompts,
prompt log-probabilities); a row that leaves has its slot filled by the batch's last row (`StaticDecoder.move`).

Supported: RecipeGPT (`model_type` "recipe_gpt") with a rotary type whose frequencies do not depend on the
sequence length (all but "dynamic"). `unsupported_reason` says why another model keeps the transformers path.

One decoding row (one stream) can take a numpy rendition of the step instead (`one_row_step="numpy"`,
`numpy_decode_step_for`) on numpy views of the same weights and cache: on the quickstart model it is ~2x
faster than the eager torch step (numpy's OpenBLAS does one-row products in half of torch's time, and a numpy
call costs ~1 us where a torch operation's dispatch costs 2-5; benchmarks/README.md, "Serving throughput").
With numba installed (`one_row_step="numba"`, the default) the whole step, and the choice of its token, is one
compiled call (`numba_step.py`) on the same memory: the layers' weights and the cache are stacked over layers
(one tensor each, the per-layer tensors views of it) so that it takes a few arrays.
"""

from __future__ import annotations

import contextlib
import logging
import time

logger = logging.getLogger(__name__)

MAX_CACHE_BYTES = 4 * 2**30  # a bigger static cache (long context x many rows x a big model) is not allocated
# fewer shared first tokens are not reused: every chat prompt shares its template's first few, and a prompt that
# reuses kept keys and values is prefilled alone, outside the batched prefill of the others (vLLM's block: 16)
MIN_REUSED_TOKENS = 16
# the numpy prefill of a prompt admitted alone holds its attention scores whole (heads x n x n floats, no
# flash-style tiling): longer prompts take the transformers forward (SDPA), whose memory does not grow so
NUMPY_PREFILL_MAX_TOKENS = 512
# the step for a single decoding row: "numba" (`numba_step.decode_row`, one compiled call; without numba the numpy
# step), "numpy" (`numpy_decode_step_for`), both on the CPU at float32 (elsewhere the torch step), or "torch" (the
# step of every batch size)
ONE_ROW_STEPS = ("numba", "numpy", "torch")
DEFAULT_ONE_ROW_STEP = "numba"


def check_one_row_step(value) -> str:
    """`value` when it is one of ONE_ROW_STEPS, else a ValueError naming the option."""
    if value not in ONE_ROW_STEPS:
        raise ValueError(f"one_row_step must be one of {', '.join(ONE_ROW_STEPS)}; got {value!r}")
    return value


def unsupported_reason(model, max_batch_size: int, context: int, prefix_slots: int = 0) -> str | None:
    """Why this model cannot use the static decode step (None when it can)."""
    config = model.config
    if getattr(config, "model_type", None) != "recipe_gpt":
        return f"model type {getattr(config, 'model_type', None)!r} is not recipe_gpt"
    if config.rope_parameters.get("rope_type", "default") == "dynamic":
        return "dynamic NTK rotary frequencies change with the sequence length"
    element = next(model.parameters()).element_size()
    size = (2 * config.num_hidden_layers * (max_batch_size + prefix_slots) * config.num_key_value_heads * (context + 1)
            * config.head_dim * element)
    if size > MAX_CACHE_BYTES:
        return f"a static KV cache of {size / 2**30:.1f} GiB (over {MAX_CACHE_BYTES / 2**30:g} GiB)"
    return None


def decode_step_for(config):
    """The decode step of a model with this config: its sizes are constants of the function (so that a
    compilation with dynamic shapes specialises on them), its weights and cache are arguments.

    The arithmetic is the model's (the same products and sums in the same order, so greedy answers equal
    `generate`'s), in fewer torch operations: on one row of the quickstart model each operation's dispatch
    (~2-5 us) costs more than its arithmetic, and a step was ~200 of them around 17 matrix products. The
    rotation runs on queries and keys together, as `x * cos + roll(x, hd/2) * sin'` where `sin'` is the sine
    table with its first half negated (`rotate_half(x) * sin` term by term: a negation is exact); the norm is
    the model's own `rms_norm` (which skips its float32 casts on float32 input); one row attends without a
    mask (every cached position up to its own is visible)."""
    import torch

    from ..model.modeling_recipe_gpt import rms_norm  # the model's own norm (any dtype)

    eps, heads, kv_heads, head_dim = float(config.rms_norm_eps), config.num_attention_heads, \
        config.num_key_value_heads, config.head_dim
    q_size, kv_size, scaling, qk_norm = heads * head_dim, kv_heads * head_dim, head_dim**-0.5, bool(config.qk_norm)
    grouped = kv_heads != heads  # a bool here: torch.compile would make the comparison symbolic
    half = head_dim // 2

    def norm(x, weight):
        return rms_norm(x, weight, eps)

    def decode_step(weights: dict, keys: list, values: list, tokens, positions, length: int,
                    position: int | None = None):
        """Logits (B, V) for one token per row. tokens, positions: (B,); row b's token is at `positions[b]`
        and its keys/values are written there in slot b; rows attend to their positions 0..positions[b] within
        the first `length` columns (for one row, `length` must be its position + 1: it attends unmasked).
        `position`: that one row's position as a Python int (eager only: a compiled step would specialise on
        it), for views and plain copies where a tensor of positions takes gathers and scatters."""
        batch = tokens.shape[0]
        x = weights["embed"][tokens]  # (B, C)
        if position is not None:
            cos, sin = weights["cos"][position], weights["signed_sin"][position]  # (hd,): views
        else:
            cos = weights["cos"][positions][:, None, :]  # (B, 1, hd): broadcast over heads
            sin = weights["signed_sin"][positions][:, None, :]
            rows = torch.arange(batch, device=tokens.device)
        bias = None
        if batch > 1:
            visible = torch.arange(length, device=tokens.device)[None, :] <= positions[:, None]
            # additive, made once: a boolean mask is converted to this by the attention of every layer
            bias = torch.zeros(visible.shape, dtype=x.dtype, device=x.device).masked_fill_(~visible, float("-inf"))
            bias = bias[:, None, None, :]  # (B, 1, 1, length): over heads and the one query
        for layer, key_cache, value_cache in zip(weights["layers"], keys, values):
            qkv = norm(x, layer["input_norm"]) @ layer["qkv"]  # (B, q + 2 kv)
            qk = qkv[:, :q_size + kv_size].view(batch, heads + kv_heads, head_dim)
            if qk_norm:
                qk = torch.cat([norm(qk[:, :heads], layer["q_norm"]), norm(qk[:, heads:], layer["k_norm"])], dim=1)
            qk = qk * cos + qk.roll(half, -1) * sin
            new_values = qkv[:, q_size + kv_size:].view(batch, kv_heads, head_dim)
            if position is not None:
                key_cache[0, :, position] = qk[0, heads:]
                value_cache[0, :, position] = new_values[0]
            else:
                key_cache[rows, :, positions] = qk[:, heads:]
                value_cache[rows, :, positions] = new_values
            attended = torch.nn.functional.scaled_dot_product_attention(
                qk[:, :heads, None, :], key_cache[:batch, :, :length], value_cache[:batch, :, :length],
                attn_mask=bias, scale=scaling, enable_gqa=grouped)  # (B, nh, 1, hd)
            x = x + attended.reshape(batch, q_size) @ layer["o"]
            gate, up = (norm(x, layer["post_norm"]) @ layer["gate_up"]).chunk(2, dim=-1)
            x = x + (torch.nn.functional.silu(gate) * up) @ layer["down"]
        return norm(x, weights["norm"]) @ weights["lm_head"]

    return decode_step


def _numpy_rms_norm(x, weight, eps: float):
    """The model's rms_norm over the last axis of a (rows, width) numpy array: weight * x / sqrt(mean(x^2) + eps)."""
    import numpy as np

    return weight * (x / np.sqrt(np.einsum("ij,ij->i", x, x)[:, None] / x.shape[-1] + eps))


def _numpy_rotate(qk, cos, sin, half: int):
    """Rotary embedding of the queries and keys `qk` (..., hd) as the torch step does it: x * cos + roll(x, hd/2) *
    signed_sin, the roll as two half-width products (np.roll copies twice)."""
    rotated = qk * cos
    rotated[..., :half] += qk[..., half:] * sin[..., :half]
    rotated[..., half:] += qk[..., :half] * sin[..., half:]
    return rotated


def numpy_decode_step_for(config):
    """The decode step of one row at a known position, in numpy (float32 arrays: `as_numpy` of the step's
    weights and cache). The arithmetic of `decode_step_for` for one row; its logits differ from the torch step's
    by rounding only (the norm's mean as a dot product, products by OpenBLAS instead of MKL; up to 1.5e-5 over 96
    positions of the quickstart model). Why numpy: for one row each torch operation's dispatch (2-5 us) costs
    more than its arithmetic, a numpy call ~1 us, and OpenBLAS's one-row products took half of MKL's time through
    torch."""
    import math

    import numpy as np

    eps, heads, kv_heads, head_dim = float(config.rms_norm_eps), config.num_attention_heads, \
        config.num_key_value_heads, config.head_dim
    q_size, kv_size, scaling, qk_norm = heads * head_dim, kv_heads * head_dim, head_dim**-0.5, bool(config.qk_norm)
    group, half, intermediate = heads // kv_heads, head_dim // 2, config.intermediate_size

    def norm(x, weight):
        # for one vector the mean as a dot product and the scale as a Python float (numpy's per-call cost is most
        # of this norm's time)
        if x.ndim == 1:
            return weight * (x * (1.0 / math.sqrt(float(x @ x) / x.shape[0] + eps)))
        return _numpy_rms_norm(x, weight, eps)

    def decode_step(weights: dict, keys: list, values: list, token: int, position: int):
        """Logits (V,) of the row in slot 0 fed `token` at `position`; its keys and values are written there and
        it attends to positions 0..position."""
        x = weights["embed"][token]  # (C,): a copy
        cos, sin = weights["cos"][position], weights["signed_sin"][position]
        length = position + 1
        for layer, key_cache, value_cache in zip(weights["layers"], keys, values):
            qkv = norm(x, layer["input_norm"]) @ layer["qkv"]
            qk = qkv[:q_size + kv_size].reshape(heads + kv_heads, head_dim)
            if qk_norm:
                qk = np.concatenate([norm(qk[:heads], layer["q_norm"]), norm(qk[heads:], layer["k_norm"])])
            rotated = _numpy_rotate(qk, cos, sin, half)
            key_cache[0, :, position] = rotated[heads:]
            value_cache[0, :, position] = qkv[q_size + kv_size:].reshape(kv_heads, head_dim)
            # grouped-query attention: query head h reads key/value head h // group, as SDPA's enable_gqa
            scores = rotated[:heads].reshape(kv_heads, group, head_dim) @ key_cache[0, :, :length].transpose(0, 2, 1)
            scores *= scaling
            scores -= scores.max(-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(-1, keepdims=True)
            attended = scores @ value_cache[0, :, :length]  # (kv heads, group, hd)
            x = x + attended.reshape(q_size) @ layer["o"]
            gate_up = norm(x, layer["post_norm"]) @ layer["gate_up"]
            gate, up = gate_up[:intermediate], gate_up[intermediate:]
            x = x + (gate / (1 + np.exp(-gate)) * up) @ layer["down"]  # silu(gate) * up
        return norm(x, weights["norm"]) @ weights["lm_head"]

    return decode_step


def numpy_prefill_for(config):
    """The prefill of one row in numpy: `numpy_decode_step_for`'s arithmetic over several positions at once, with
    causal attention, writing the keys and values into the same static cache (slot 0). Why: a prompt admitted
    alone went through the transformers forward (mask building, cache objects, ~300 torch operations: ~9 ms of
    CPU for a 20-60-token prompt of the quickstart model, ~19% of a 48-token answer's time), where this is ~100
    numpy calls around 17 matrix products of a few rows. Its logits differ from the forward's by rounding only.
    The products of several rows go through torch (MKL) on the same memory: OpenBLAS's sgemm for 3-60 rows took
    1.4-5x torch's time here (a 20 x 256 by 256 x 1,408 product: 210 us against 125), where for one row (the
    decode step, and the last row's logits here) OpenBLAS is the faster."""
    import numpy as np
    import torch

    def mm(x, weight):  # (rows, in) @ (in, out) by torch, numpy in and out (no copies: shared memory)
        return (torch.from_numpy(x) @ torch.from_numpy(weight)).numpy()

    eps, heads, kv_heads, head_dim = float(config.rms_norm_eps), config.num_attention_heads, \
        config.num_key_value_heads, config.head_dim
    q_size, kv_size, scaling, qk_norm = heads * head_dim, kv_heads * head_dim, head_dim**-0.5, bool(config.qk_norm)
    group, half, intermediate = heads // kv_heads, head_dim // 2, config.intermediate_size

    def norm(x, weight):
        return _numpy_rms_norm(x, weight, eps)

    def prefill(weights: dict, keys: list, values: list, tokens, start: int):
        """Logits (V,) of the last of `tokens` (a list of ids) fed at positions start..start+n-1 of slot 0, whose
        positions 0..start-1 hold earlier tokens' keys and values (a reused prefix); the new keys and values are
        written there, and each position attends to every position up to its own."""
        n = len(tokens)
        end = start + n
        x = weights["embed"][np.asarray(tokens)]  # (n, C): a copy
        cos, sin = weights["cos"][start:end, None, :], weights["signed_sin"][start:end, None, :]  # (n, 1, hd)
        # causal: query row i (position start + i) sees cache columns 0..start + i; the same for every head
        hidden = np.triu(np.full((n, end), -np.inf, dtype=x.dtype), k=start + 1)
        for layer, key_cache, value_cache in zip(weights["layers"], keys, values):
            qkv = mm(norm(x, layer["input_norm"]), layer["qkv"])  # (n, q + 2 kv)
            qk = qkv[:, :q_size + kv_size].reshape(n, heads + kv_heads, head_dim)
            if qk_norm:
                queries = norm(qk[:, :heads].reshape(n * heads, head_dim), layer["q_norm"])
                new_keys = norm(qk[:, heads:].reshape(n * kv_heads, head_dim), layer["k_norm"])
                qk = np.concatenate([queries.reshape(n, heads, head_dim), new_keys.reshape(n, kv_heads, head_dim)],
                                    axis=1)
            rotated = _numpy_rotate(qk, cos, sin, half)
            key_cache[0, :, start:end] = rotated[:, heads:].transpose(1, 0, 2)
            value_cache[0, :, start:end] = qkv[:, q_size + kv_size:].reshape(n, kv_heads, head_dim).transpose(1, 0, 2)
            # (kv heads, group, n, hd): query head h reads key/value head h // group
            queries = rotated[:, :heads].transpose(1, 0, 2).reshape(kv_heads, group, n, head_dim)
            scores = queries @ key_cache[0, :, None, :end].transpose(0, 1, 3, 2)  # (kv heads, group, n, end)
            scores *= scaling
            scores += hidden
            scores -= scores.max(-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(-1, keepdims=True)
            attended = scores @ value_cache[0, :, None, :end]  # (kv heads, group, n, hd)
            x = x + mm(attended.reshape(heads, n, head_dim).transpose(1, 0, 2).reshape(n, q_size), layer["o"])
            gate_up = mm(norm(x, layer["post_norm"]), layer["gate_up"])
            gate, up = gate_up[:, :intermediate], gate_up[:, intermediate:]
            x = x + mm(gate / (1 + np.exp(-gate)) * up, layer["down"])
        return norm(x[-1:], weights["norm"])[0] @ weights["lm_head"]

    return prefill


def as_numpy(tensors):
    """Tensors in nested dicts and lists as numpy arrays on the same memory (writes go both ways)."""
    if isinstance(tensors, dict):
        return {k: as_numpy(v) for k, v in tensors.items()}
    if isinstance(tensors, list):
        return [as_numpy(v) for v in tensors]
    return tensors.detach().numpy()


class StaticDecoder:
    """The static KV cache of a RecipeGPT model and its decode step.

    Args:
        model: a RecipeGPTForCausalLM (its weights are read, transposed and fused once here; the model is
            not changed).
        max_batch_size: cache slots.
        context: positions per slot (the longest prompt + answer).
        compile: compile the step with torch.compile (inductor) for every batch size up to max_batch_size
            now; on failure the step stays eager and `compile_error` says why.
        prefix_slots: extra slots after the batch's, where finished rows' keys and values are kept for a later
            prompt that starts with the same tokens (`PrefixCache`); the decode step never reads them.
        one_row_step: "numba": a single row decodes through `numba_step.decode_row` (`step_one`) or, with its
            token, `decode_and_pick` (`step_and_pick`), compiled here (`numba_seconds`); without numba the numpy
            step. "numpy": through `numpy_decode_step_for`. Both run on the CPU at float32 (otherwise, or without
            threadpoolctl, the torch step; `one_row_reason` says why) and prefill one row in numpy
            (`prefill_alone`). "torch": the torch step.
    """

    def __init__(self, model, max_batch_size: int, context: int, compile: bool = False, prefix_slots: int = 0,
                 one_row_step: str = "torch"):
        import torch

        config = self.config = model.config
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.max_batch_size, self.context = int(max_batch_size), int(context)
        base = model.model
        with torch.no_grad():
            # the rotary table from the model's own module: the same cos/sin (and scaling) as its forward
            # one spare position (never attended): a compiled step specialises `length` equal to these tables'
            # and the cache's size (a third graph, compiled at the first request that reaches the context)
            positions = torch.arange(self.context + 1, device=self.device)[None]
            cos, sin = base.rotary_emb(base.embed_tokens.weight[:1], positions)
            half = config.head_dim // 2
            # each kind of weight stacked over layers (L, ...), each layer's a view: the compiled one-row step takes
            # a few arrays, the torch and numpy steps a dict per layer, on the same memory
            blocks = [(block, block.self_attn, block.mlp) for block in base.layers]
            self.stacked = {
                "input_norm": torch.stack([b.input_layernorm.weight for b, _, _ in blocks]),
                "post_norm": torch.stack([b.post_attention_layernorm.weight for b, _, _ in blocks]),
                "qkv": torch.stack([torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).t()
                                    for _, a, _ in blocks]),
                "o": torch.stack([a.o_proj.weight.t() for _, a, _ in blocks]),
                "gate_up": torch.stack([torch.cat([m.gate_proj.weight, m.up_proj.weight]).t() for _, _, m in blocks]),
                "down": torch.stack([m.down_proj.weight.t() for _, _, m in blocks]),
                **({"q_norm": torch.stack([a.q_norm.weight for _, a, _ in blocks]),
                    "k_norm": torch.stack([a.k_norm.weight for _, a, _ in blocks])} if config.qk_norm else {}),
            }
            layers = [{name: stacked[i] for name, stacked in self.stacked.items()} for i in range(len(blocks))]
            self.weights = {
                "embed": base.embed_tokens.weight, "norm": base.norm.weight,
                "lm_head": model.lm_head.weight.t().contiguous(), "cos": cos[0], "layers": layers,
                # rotate_half(x) * sin == roll(x, hd/2) * signed_sin: the first half's sign moves into the table
                "signed_sin": torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1),
            }
        self.prefix = PrefixCache(range(self.max_batch_size, self.max_batch_size + int(prefix_slots)))
        shape = (self.max_batch_size + int(prefix_slots), config.num_key_value_heads, self.context + 1,
                 config.head_dim)
        # (L, slots, kv heads, context + 1, hd), one per layer as views (`keys[layer]`)
        self.all_keys = torch.zeros((len(layers), *shape), dtype=self.dtype, device=self.device)
        self.all_values = torch.zeros((len(layers), *shape), dtype=self.dtype, device=self.device)
        self.keys, self.values = list(self.all_keys.unbind(0)), list(self.all_values.unbind(0))
        self._eager_step = self._step = decode_step_for(config)
        self.compiled = False
        self.compile_error: str | None = None
        self.compile_seconds = 0.0
        if compile:
            self._compile()
        self._numpy_step = self._numpy_prefill = self._numba = None
        self.numpy_steps = self.numpy_prefills = 0  # steps taken by the numpy or numba step (tests and benchmarks)
        self.numba_seconds = 0.0  # the numba step's start-up: compiled, or loaded from numba's cache
        self.one_row_reason = None  # why the step asked for does not run (None when it does)
        self.one_row_step = "torch"
        if check_one_row_step(one_row_step) != "torch":
            self.one_row_reason = self._numpy_one_row()
            if self.one_row_reason is None:
                self.one_row_step = "numpy"
                if one_row_step == "numba":
                    self.one_row_reason = self._numba_one_row()
                    self.one_row_step = "numba" if self.one_row_reason is None else "numpy"
                if self.one_row_step == "numpy":  # numpy's products every token: BLAS limited for good
                    self._blas.limit(limits=self._blas_threads)

    def _numpy_one_row(self) -> str | None:
        """Sets up the numpy step for one row; why not (None when it is set up)."""
        import torch

        if self.device.type != "cpu" or self.dtype != torch.float32:
            return f"the numpy step runs float32 on the CPU, not {str(self.dtype).removeprefix('torch.')} on " \
                   f"{self.device.type}"
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            return "threadpoolctl is not installed (pip install llm-recipes[serve])"
        # OpenBLAS starts one thread per core: on 2 busy cores its default made a step with numpy products 2.5x
        # slower than with one thread; the decoding thread count torch was given (1 for a small model) holds for
        # numpy's products here: around each call of the numba step's prefill (`prefill_alone`), for the whole
        # process with the numpy step (entering and leaving the limit costs ~24 us, a tenth of its token)
        self._blas = ThreadpoolController().select(user_api="blas")
        self._blas_threads = torch.get_num_threads()
        self._numpy_arrays = (as_numpy(self.weights), as_numpy(self.keys), as_numpy(self.values))
        self._numpy_step = numpy_decode_step_for(self.config)
        self._numpy_prefill = numpy_prefill_for(self.config)
        return None

    def _numba_one_row(self) -> str | None:
        """Sets up the numba step for one row (after `_numpy_one_row`: the prefill stays numpy's) and runs it once,
        so that the first request does not wait for its compilation (`numba_seconds`: ~5-10 s compiling, well
        under a second from numba's on-disk cache); why not (None when it is set up)."""
        import numpy as np

        start = time.perf_counter()
        try:
            from . import numba_step
        except ImportError as e:
            return f"numba is not installed (pip install llm-recipes[serve]): {e}"
        config, stacked = self.config, as_numpy(self.stacked)
        no_norm = np.zeros((len(self.keys), 1), np.float32)
        weights = self._numpy_arrays[0]
        self._numba_arrays = (
            weights["embed"], weights["cos"], weights["signed_sin"], stacked["input_norm"], stacked["post_norm"],
            stacked["qkv"], stacked["o"], stacked["gate_up"], stacked["down"], stacked.get("q_norm", no_norm),
            stacked.get("k_norm", no_norm), weights["norm"], weights["lm_head"], self.all_keys.numpy(),
            self.all_values.numpy(), np.float32(config.rms_norm_eps), int(config.num_attention_heads),
            int(config.num_key_value_heads), bool(config.qk_norm))
        self._numba = numba_step
        try:
            # compiles (or loads from the cache) the function; what it writes in slot 0 is rewritten before use
            numba_step.decode_and_pick(0, 0, *self._numba_arrays, True, 1.0, 0.0)
        except Exception as e:  # noqa: BLE001 - no compiler for this CPU, a numba bug: the numpy step works the same
            self._numba = None
            return f"the numba step failed to compile: {_first_line(e)}"
        finally:
            self.numba_seconds = time.perf_counter() - start
        return None

    def _compile(self) -> None:
        """Compiles the step and runs it for every batch size, so that no request waits for a compilation: two
        graphs (torch.compile specialises a batch of 1; larger ones share one with dynamic sizes). Lengths
        start at 2 (`step` never asks for 1, another specialisation)."""
        import torch

        start = time.perf_counter()
        try:
            step = torch.compile(self._eager_step, dynamic=True, fullgraph=True)
            with torch.inference_mode():
                for batch in range(1, self.max_batch_size + 1):
                    tokens = torch.zeros(batch, dtype=torch.long, device=self.device)
                    positions = torch.ones(batch, dtype=torch.long, device=self.device)  # not an alias: a guard
                    step(self.weights, self.keys, self.values, tokens, positions, 2)
        except Exception as e:  # noqa: BLE001 - no compiler, an inductor bug: the eager step works the same
            self.compile_error = _first_line(e)
            return
        finally:
            self.compile_seconds = time.perf_counter() - start
        self._step, self.compiled = step, True

    def step(self, tokens, positions, length: int, position: int | None = None):
        """Logits (B, V) of the rows in slots 0..B-1 (see `decode_step_for`); `length` >= 2; `position`: a single
        row's position as an int (used by the eager step, and for one row by the numpy step)."""
        if self._numpy_step is not None and position is not None and tokens.shape[0] == 1:
            return self.step_one(int(tokens[0]), position)
        if not self.compiled:
            return self._step(self.weights, self.keys, self.values, tokens, positions, length, position)
        import torch

        try:
            # a shape the warm-up did not cover must not stall every request for a compilation: refuse it...
            with torch.compiler.set_stance("fail_on_recompile"):
                return self._step(self.weights, self.keys, self.values, tokens, positions, length)
        except Exception as e:  # noqa: BLE001 - ...and decode eagerly from then on (same results)
            self.compile_error = f"left for the eager step while serving: {_first_line(e)}"
            logger.warning("compiled decode step: %s", self.compile_error)
            self._step, self.compiled = self._eager_step, False
            return self._step(self.weights, self.keys, self.values, tokens, positions, length, position)

    def step_one(self, token: int, position: int):
        """The numba or numpy step (`one_row_step`) for the row in slot 0: logits (1, V) of `token` fed at
        `position` (ints in, no tensors to build and read back)."""
        import torch

        self.numpy_steps += 1
        if self._numba is not None:
            logits = self._numba.decode_row(token, position, *self._numba_arrays)
        else:
            logits = self._numpy_step(*self._numpy_arrays, token, position)
        return torch.from_numpy(logits[None])

    def step_and_pick(self, token: int, position: int, temperature: float, uniform: float):
        """The numba step (`one_row_step == "numba"`) and its token in one compiled call: (token, logits (V,) as a
        numpy array: a tensor only when the caller needs one). The token is the greedy one when `temperature` <= 0,
        else the one `engine._draw` gives these logits at this temperature for this uniform number; -1 when the
        compiled draw cannot be sure of it (the caller draws through torch with the same number:
        `numba_step.draw_token`)."""
        self.numpy_steps += 1
        return self._numba.decode_and_pick(token, position, *self._numba_arrays, temperature <= 0, temperature,
                                           uniform)

    def prefill_alone(self, prompt: list[int]):
        """For the numba and numpy steps only (`one_row_step`): prefills `prompt` into slot 0 (the batch must be
        empty) with `numpy_prefill_for`, after copying in the keys and values of a kept row that starts with the
        same tokens (`PrefixCache.lookup`); returns the logits (1, V) of its last token."""
        import torch

        slot, length = self.prefix.lookup(prompt)
        if length:
            self.move([slot], [0], length)
        self.numpy_prefills += 1
        # the numba step: BLAS limited for this call only; the numpy step: limited already
        with self._blas.limit(limits=self._blas_threads) if self.one_row_step == "numba" else contextlib.nullcontext():
            return torch.from_numpy(self._numpy_prefill(*self._numpy_arrays, prompt[length:], length)[None])

    def load(self, slot: int, cache, row: int, start: int, length: int) -> None:
        """Copies row `row` of a prefilled transformers cache (its columns start..start+length: the prompt
        without its left padding) into `slot`, positions 0..length-1."""
        for layer, keys, values in zip(cache.layers, self.keys, self.values):
            keys[slot, :, :length] = layer.keys[row, :, start:start + length]
            values[slot, :, :length] = layer.values[row, :, start:start + length]

    def keep(self, slot: int, tokens: list[int]) -> None:
        """Keeps the keys and values of `slot` (a row that ends: positions 0..len(tokens)-1, those of `tokens`) in
        a prefix slot, for `reuse`."""
        target = self.prefix.claim(tokens)
        if target is not None:
            self.move([slot], [target], len(tokens))

    def reuse(self, prompt: list[int]):
        """For a prompt whose first tokens are those of a kept row: a transformers cache (one row) holding their
        keys and values, and how many they are; (None, 0) when no kept row shares `MIN_REUSED_TOKENS` with it. At
        least the prompt's last token is left out (its logits choose the first answer token)."""
        slot, length = self.prefix.lookup(prompt)
        if not length:
            return None, 0
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache(config=self.config)
        for index, (keys, values) in enumerate(zip(self.keys, self.values)):
            cache.update(keys[slot:slot + 1, :, :length].clone(), values[slot:slot + 1, :, :length].clone(), index)
        return cache, length

    def move(self, sources: list[int], targets: list[int], length: int) -> None:
        """Copies the first `length` positions of slots `sources` into slots `targets`."""
        for keys, values in zip(self.keys, self.values):
            keys[targets, :, :length] = keys[sources, :, :length]
            values[targets, :, :length] = values[sources, :, :length]


class PrefixCache:
    """Which token ids each prefix slot holds the keys and values of, and which slot to reuse for a prompt
    (the one sharing the longest run of first tokens with it) or to overwrite (one whose tokens begin the new
    ones: the same conversation's previous turn; else the least recently used).

    Why: a chat client re-sends the whole conversation every turn, so a turn's prompt starts with the previous
    turn's prompt and answer, whose keys and values the engine computed already; only the rest is prefilled."""

    def __init__(self, slots):
        self.entries: dict[int, tuple[int, ...]] = {slot: () for slot in slots}
        self._used: dict[int, int] = {slot: 0 for slot in slots}
        self._clock = 0
        self.hits, self.reused_tokens = 0, 0

    def _touch(self, slot: int) -> None:
        self._clock += 1
        self._used[slot] = self._clock

    def claim(self, tokens: list[int]) -> int | None:
        """The slot to store `tokens` into (its entry is set to them), or None when there are no slots."""
        if not self.entries or not tokens:
            return None
        tokens = tuple(tokens)
        older = [s for s, held in self.entries.items() if held and tokens[:len(held)] == held]
        slot = older[0] if older else min(self._used, key=self._used.get)
        self.entries[slot] = tokens
        self._touch(slot)
        return slot

    def lookup(self, prompt: list[int]) -> tuple[int | None, int]:
        """(slot, length): the kept row sharing the longest run of first tokens with `prompt` and that run's
        length (at most len(prompt) - 1); (None, 0) when none shares `MIN_REUSED_TOKENS` or more."""
        best, best_length = None, 0
        for slot, held in self.entries.items():
            length = _common_prefix(held, prompt, len(prompt) - 1)
            if length > best_length and length >= MIN_REUSED_TOKENS:
                best, best_length = slot, length
        if best is not None:
            self._touch(best)
            self.hits += 1
            self.reused_tokens += best_length
        return best, best_length


def _common_prefix(a, b, limit: int) -> int:
    n = min(len(a), len(b), limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
