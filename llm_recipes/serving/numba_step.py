"""One decoding row's whole step, and its draw, compiled by numba: one native call per token.

Why: on the quickstart model (0.95M parameters) the numpy step (`static_decode.numpy_decode_step_for`) is ~65
numpy calls and the draw (`engine._draw_one`) ~6 more per token; each pays its dispatch and, right after the sweep
of the weights, cold caches, where the arithmetic is a few microseconds (benchmarks/README.md, "Serving
throughput"). Here every layer (norms, the fused products, rotation, attention over the static cache, MLP), the
final norm and the lm_head run in one compiled function; a second one picks the token (greedy, or the draw of a
given uniform number) without leaving native code.

The arithmetic is the model's, in float32 like the numpy step, but the sums in another order (vectorised dot
products: `fastmath` reassociation and fused multiply-adds only, no approximate functions and no NaN/infinity
assumptions), so logits differ from the forward's by rounding only (tested within 1e-5).

The draw must be `_draw`'s: the same token for the same uniform number. Its softmax (torch's vectorised exp)
cannot be reproduced bit for bit here, so `draw_token` computes the distribution in float64 and answers only when
the target (uniform x total) is clear of the chosen token's cumulative bounds by `DRAW_MARGIN`, above the bound
of the difference between the two computations (and 40x the largest difference measured); otherwise it returns -1
and the caller draws through the exact torch path with the same uniform number. So every token equals `_draw`'s.

numba is optional (the `serve` extra installs it): without it the numpy step runs. Compiled code is cached on disk
(`cache=True`) where the clean stage's kernels are: NUMBA_CACHE_DIR when set, else the user's cache directory
(`runtime/numba_cache.py`: a read-only install works).
"""

from __future__ import annotations

import math

from ..runtime.numba_cache import name_cache_dir

name_cache_dir()  # before numba is imported: it reads its cache directory once, then

import numba  # noqa: E402
import numpy as np  # noqa: E402

# how far (times the total) the target must be from the chosen token's cumulative bounds for the float64 draw to
# answer: torch's float32 softmax is within 20 ulp per value (its exp's bound; a common scale, as its rounded sum,
# cancels against the total), so a normalised cumulative sum differs by < 2 x 20 x 2^-24 = 2.4e-6 plus the float32
# rounding of the sum and the target (~1.2e-7): 5e-6 covers both; measured over 3,000 random draws, < 1.2e-7
DRAW_MARGIN = 5e-6
FASTMATH = {"reassoc", "contract", "nsz"}  # vectorised sums; no "afn" (approximate exp), no "nnan"/"ninf"


def _jit(function):
    # cache=True needs a writable cache directory (see above); where none can be made, compile at every start
    try:
        return numba.njit(cache=True, fastmath=FASTMATH, boundscheck=False, nogil=True)(function)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(fastmath=FASTMATH, boundscheck=False, nogil=True)(function)


@numba.njit(fastmath=FASTMATH)
def _matvec(x, weight, out):
    """out = x @ weight for x (n,), weight (n, m) row-major: four rows of the weight at a time scaled and added to
    `out` (contiguous, so vectorised over m; four rows per pass read and write `out` a quarter as often)."""
    rows, columns = weight.shape
    out[:] = 0.0
    for i in range(0, rows - 3, 4):
        x0, x1, x2, x3 = x[i], x[i + 1], x[i + 2], x[i + 3]
        for j in range(columns):
            out[j] += x0 * weight[i, j] + x1 * weight[i + 1, j] + x2 * weight[i + 2, j] + x3 * weight[i + 3, j]
    for i in range(rows - rows % 4, rows):
        xi = x[i]
        for j in range(columns):
            out[j] += xi * weight[i, j]


@numba.njit(fastmath=FASTMATH)
def _rms_norm(x, weight, eps, out):
    total = np.float32(0.0)
    for i in range(x.shape[0]):
        total += x[i] * x[i]
    scale = np.float32(1.0 / math.sqrt(total / x.shape[0] + eps))
    for i in range(x.shape[0]):
        out[i] = weight[i] * (x[i] * scale)


@_jit
def decode_row(token, position, embed, cos, signed_sin, input_norm, post_norm, qkv, o, gate_up, down, q_norm, k_norm,
               final_norm, lm_head, keys, values, eps, heads, kv_heads, qk_norm):
    """Logits (V,) of the row in cache slot 0 fed `token` at `position`; its keys and values are
    written there and it attends to positions 0..position.

    Weights are the static decoder's, stacked over layers: input_norm, post_norm (L, C), qkv (L, C, q + 2 kv),
    o (L, q, C), gate_up (L, C, 2 I), down (L, I, C), q_norm, k_norm (L, hd) (unused without qk_norm), lm_head
    (C, V); keys, values (L, slots, kv heads, context + 1, hd); cos, signed_sin (context + 1, hd) as the torch step's
    (the rotation is x * cos + roll(x, hd / 2) * signed_sin)."""
    layers, width = qkv.shape[0], qkv.shape[1]
    head_dim = keys.shape[4]
    half, group = head_dim // 2, heads // kv_heads
    q_size, kv_size = heads * head_dim, kv_heads * head_dim
    intermediate = down.shape[1]
    scaling = np.float32(head_dim ** -0.5)
    x = embed[token].copy()  # (C,)
    normed = np.empty(width, np.float32)
    fused = np.empty(qkv.shape[2], np.float32)
    rotated = np.empty((heads + kv_heads, head_dim), np.float32)
    scores = np.empty(position + 1, np.float32)
    attended = np.empty(q_size, np.float32)
    projected = np.empty(width, np.float32)
    mlp = np.empty(gate_up.shape[2], np.float32)
    hidden = np.empty(intermediate, np.float32)
    for layer in range(layers):
        _rms_norm(x, input_norm[layer], eps, normed)
        _matvec(normed, qkv[layer], fused)
        for h in range(heads + kv_heads):  # queries and keys, rotated (and normed first with qk_norm)
            base = h * head_dim
            if qk_norm:
                _rms_norm(fused[base:base + head_dim], q_norm[layer] if h < heads else k_norm[layer], eps,
                          fused[base:base + head_dim])
            for d in range(half):
                rotated[h, d] = fused[base + d] * cos[position, d] + fused[base + d + half] * signed_sin[position, d]
                rotated[h, d + half] = (fused[base + d + half] * cos[position, d + half]
                                        + fused[base + d] * signed_sin[position, d + half])
        for g in range(kv_heads):
            keys[layer, 0, g, position, :] = rotated[heads + g]
            start = q_size + kv_size + g * head_dim
            values[layer, 0, g, position, :] = fused[start:start + head_dim]
        for h in range(heads):  # query head h reads key/value head h // group (grouped-query attention)
            g = h // group
            largest = -np.inf
            for t in range(position + 1):
                dot = np.float32(0.0)
                for d in range(head_dim):
                    dot += rotated[h, d] * keys[layer, 0, g, t, d]
                scores[t] = dot * scaling
                largest = max(largest, scores[t])
            total = np.float32(0.0)
            for t in range(position + 1):
                scores[t] = np.exp(scores[t] - largest)
                total += scores[t]
            out = attended[h * head_dim:(h + 1) * head_dim]
            out[:] = 0.0
            for t in range(position + 1):
                weight = scores[t] / total
                for d in range(head_dim):
                    out[d] += weight * values[layer, 0, g, t, d]
        _matvec(attended, o[layer], projected)
        for i in range(width):
            x[i] += projected[i]
        _rms_norm(x, post_norm[layer], eps, normed)
        _matvec(normed, gate_up[layer], mlp)
        for i in range(intermediate):  # silu(gate) * up
            gate = mlp[i]
            hidden[i] = gate / (np.float32(1.0) + np.exp(-gate)) * mlp[intermediate + i]
        _matvec(hidden, down[layer], projected)
        for i in range(width):
            x[i] += projected[i]
    _rms_norm(x, final_norm, eps, normed)
    logits = np.empty(lm_head.shape[1], np.float32)
    _matvec(normed, lm_head, logits)
    return logits


@numba.njit(fastmath=FASTMATH)
def _exp_below_zero(values, largest):
    """values[i] = exp(values[i] - largest) (all <= 0) in float64, vectorised (libm's exp is one call per value: 20
    of a draw's ~28 us over 4,096 tokens): exp(r) by its Taylor series to r^11 on |r| <= ln(2) / 2 (relative error
    < 1e-13), times 2^k built from its bits; below -700 (under 1e-304) it is 0."""
    powers = np.empty(values.shape[0], np.int64)
    for i in range(values.shape[0]):
        y = max(values[i] - largest, -700.0)
        k = math.floor(y * 1.4426950408889634 + 0.5)
        r = y - k * 0.6931471805599453  # |r| <= 0.35: the series' error stays far below the draw's margin
        p = 1.0 + r * (1.0 + r * (1 / 2 + r * (1 / 6 + r * (1 / 24 + r * (1 / 120 + r * (1 / 720 + r * (
            1 / 5040 + r * (1 / 40320 + r * (1 / 362880 + r * (1 / 3628800 + r / 39916800))))))))))
        values[i] = p if y > -700.0 else 0.0
        powers[i] = (np.int64(k) + 1023) << 52  # the bits of 2^k (k >= -1010)
    scale = powers.view(np.float64)
    for i in range(values.shape[0]):
        values[i] *= scale[i]


@_jit
def draw_token(logits, greedy, temperature, uniform, margin):
    """The token the engine picks for these logits (V,): greedy, the first largest (NaN first), as numpy's argmax;
    else the one `engine._draw` draws at this temperature (made float32, as torch's) with this uniform number, the
    first token whose cumulative probability exceeds uniform x total. -1 when that target is within `margin` (times
    the total) of the token's cumulative bounds, or the probabilities are not a distribution: the caller then draws
    through torch with the same uniform number (and raises as it does)."""
    size = logits.shape[0]
    if greedy:
        best = 0
        for i in range(size):
            if math.isnan(logits[i]):
                return i
            if logits[i] > logits[best]:
                best = i
        return best
    largest = -np.inf
    scaled = np.empty(size, np.float64)
    divisor = np.float32(temperature)
    for i in range(size):
        value = logits[i] / divisor  # float32 division, as torch's
        if math.isnan(value):
            return -1
        scaled[i] = value
        largest = max(largest, value)
    if not math.isfinite(largest):
        return -1
    _exp_below_zero(scaled, largest)
    total = 0.0
    for i in range(size):
        total += scaled[i]
    target = uniform * total
    cumulative = 0.0
    for i in range(size):
        below = cumulative
        cumulative += scaled[i]
        if cumulative > target:
            if (target - below) > margin * total and (cumulative - target) > margin * total:
                return i
            return -1
    return -1  # past the end by rounding: torch's search clamps; let it decide


@_jit
def decode_and_pick(token, position, embed, cos, signed_sin, input_norm, post_norm, qkv, o, gate_up, down, q_norm,
                    k_norm, final_norm, lm_head, keys, values, eps, heads, kv_heads, qk_norm, greedy, temperature,
                    uniform):
    """`decode_row` and `draw_token` (with DRAW_MARGIN) in one call: (token or -1, logits)."""
    logits = decode_row(token, position, embed, cos, signed_sin, input_norm, post_norm, qkv, o, gate_up, down, q_norm,
                        k_norm, final_norm, lm_head, keys, values, eps, heads, kv_heads, qk_norm)
    return draw_token(logits, greedy, temperature, uniform, DRAW_MARGIN), logits
