"""The compute-budget dial: seconds of training on this device -> model depth (and with it width), batch,
learning rate and token count, as nanochat derives everything from `--depth`.

How a plan is made (`plan_run`), for each depth d = 1, 2, ... (d layers, 64 * d wide, `shape_for_depth`):

1. Step time on this device: `Throughput.step_seconds`, a fixed overhead per step plus the step's FLOPs at a
   sustained FLOP/s, both from a timing probe at stage start (`measure_throughput`: real training steps of two
   depths on random ids, on the actual device and threads, warm-up steps untimed, the depths' timed steps
   interleaved, the median of each) or, when the probe cannot run, a stated fallback.
2. Tokens per step and peak learning rate from the compute C = budget x FLOP/s: the hand-tuned quickstart point
   (2,048 tokens, 3e-3 at its 360 s on 2 CPU cores) scaled by DeepSeek LLM's fitted exponents (2024: batch
   ~ C^0.3271, learning rate ~ C^-0.125), so the dial lands on the tuned recipe where that was tuned.
3. Tokens D = steps that fit in the budget x tokens per step; a depth whose micro-batch of one row does not fit
   in memory, or that gets fewer than MIN_STEPS steps, is out.
4. Predicted held-out loss from a scaling law fitted to sweeps on this CPU (`CPU_FIT`, made by
   benchmarks/pretrain/scaling.py from scaling_runs.jsonl): L(N, D') = E + A / N^alpha + B / D'^beta, where D'
   discounts repeated data (Muennighoff et al. 2023: epochs beyond the first are worth less, R* = 15.4), so a
   fast device with a small corpus gets a bigger model rather than a hundred epochs.

The depth with the lowest predicted loss wins, except that the next larger depth wins when it predicts no worse
than the winner would with steps TIMING_TOLERANCE slower (`pick_candidate`): near a tie, a few percent of timing
noise must not flip the run to the smaller size. Explicit settings (model_depth, seq_len, batch size, accumulation,
learning rate, warmup) replace the dial's choice for that key. A budget in which no depth gets MIN_STEPS steps is
a `BudgetError` naming the budget and the minimum.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from ..config import ConfigError

MIN_STEPS = 50  # fewer optimizer steps than this is not training, whatever the model
MAX_DEPTH = 48
# the hand-tuned quickstart (recipes/quickstart/pretrain.yaml before the dial): 4 x 256 at vocabulary 4,096,
# 16 x 128 tokens per step, peak 3e-3, 1.61M tokens in 360 s on 2 CPU cores = 4.4e13 training FLOPs
ANCHOR_TOKENS_PER_STEP = 2048
ANCHOR_LEARNING_RATE = 3e-3
ANCHOR_COMPUTE = 1.61e6 * 27_145_728  # tokens x flops_per_token(depth 4, vocabulary 4,096, context 128)
BATCH_EXPONENT, LR_EXPONENT = 0.3271, -0.125  # DeepSeek LLM (2024), eq. 1: B_opt ~ C^0.3271, lr_opt ~ C^-0.125
REPEAT_HALF_LIFE = 15.4  # Muennighoff et al. 2023 (data-constrained scaling): R*_D
MEMORY_HEADROOM = 0.8  # use at most this share of the free memory
PROBE_WARMUP, PROBE_STEPS = 2, 7  # untimed steps per depth, then timed steps per depth (median), interleaved
# step-time error within which the choice between adjacent sizes goes to the larger. With 0.1 the quickstart (360 s,
# 2 CPU cores) keeps depth 2 while the depth-2 probe step takes 1.41-2.16x the depth-1 one; measured: 1.58-1.65 with
# 2 threads, 1.76-2.07 with 1 (benchmarks/README.md). 0.2 would move the band to 1.65-2.36, onto the 2-thread case.
TIMING_TOLERANCE = 0.1


class BudgetError(ConfigError):
    """A compute budget too small for any model on this device."""


def round_up(value: float, multiple: int) -> int:
    return int(-(-value // multiple) * multiple)


def shape_for_depth(depth: int) -> dict[str, int]:
    """RecipeGPT keys for a model of `depth` layers, 64 * depth wide (nanochat's aspect ratio), 64-wide heads,
    SwiGLU 8/3 x hidden rounded up to a multiple of 64 (the presets' rule). Depth 4 is the quickstart's
    4 x 256 model; depth 12 is GPT-2 small's 12 x 768."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    hidden = 64 * depth
    return {"num_hidden_layers": depth, "hidden_size": hidden, "num_attention_heads": depth,
            "num_key_value_heads": depth, "intermediate_size": round_up(8 * hidden / 3, 64)}


def seq_len_for_depth(depth: int) -> int:
    """Context grows with the model: 128 up to depth 5 (tuned on the CPU quickstart: most docstrings are shorter
    than 256 tokens, and shorter rows put more document starts in a batch), doubling to 1,024 by depth 24."""
    return min(1024, max(128, 2 ** round(math.log2(32 * depth))))


# -- what a shape costs -----------------------------------------------------------------------------

def parameter_count(shape: dict[str, int], vocab_size: int, tied: bool = True) -> int:
    """Parameters of a RecipeGPT with these keys (tied input and output embedding by default)."""
    h, layers, inter = shape["hidden_size"], shape["num_hidden_layers"], shape["intermediate_size"]
    heads, kv = shape["num_attention_heads"], shape.get("num_key_value_heads", shape["num_attention_heads"])
    head_dim = shape.get("head_dim") or h // heads
    attention = h * heads * head_dim * 2 + h * kv * head_dim * 2  # q, o and k, v
    per_layer = attention + 3 * h * inter + 2 * h  # SwiGLU's three matrices, two RMSNorms
    return vocab_size * h * (1 if tied else 2) + layers * per_layer + h


def flops_per_token(shape: dict[str, int], vocab_size: int, seq_len: int, tied: bool = True) -> float:
    """Training FLOPs per token, as `RecipeGPTForCausalLM.flops_per_token` counts them: 6 x (every parameter but
    the embedding lookup, the output head included) + attention's 12 * layers * heads * head_dim * seq_len."""
    h, layers, heads = shape["hidden_size"], shape["num_hidden_layers"], shape["num_attention_heads"]
    head_dim = shape.get("head_dim") or h // heads
    in_matmuls = parameter_count(shape, vocab_size, tied) - vocab_size * h * (1 if tied else 2) + vocab_size * h
    return 6 * in_matmuls + 12 * layers * heads * head_dim * seq_len


def training_memory(shape: dict[str, int], vocab_size: int, seq_len: int, micro_batch: int, bf16: bool) -> int:
    """Bytes a training step needs, roughly: float32 weights, gradients and AdamW's two moments (16 per parameter),
    the activations kept for backward (~17 values per token per layer and width unit, Korthikanti et al. 2022,
    in bf16 or float32), and the logits with their float32 loss copies."""
    act_bytes = 2 if bf16 else 4
    tokens = micro_batch * seq_len
    activations = tokens * shape["num_hidden_layers"] * shape["hidden_size"] * 17 * act_bytes
    logits = tokens * vocab_size * (act_bytes + 8)
    return int(16 * parameter_count(shape, vocab_size) + 1.25 * (activations + logits))


# -- the scaling law ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScalingLaw:
    """Held-out loss (nats per token) against parameters N and training tokens D: E + A / N^alpha + B / D^beta."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float

    def loss(self, parameters: float, tokens: float) -> float:
        return self.E + self.A / parameters ** self.alpha + self.B / tokens ** self.beta

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


CHINCHILLA_EXPONENTS = (0.34, 0.28)  # Hoffmann et al. 2022, approach 3: alpha, beta


def fit_scaling_law(parameters: Sequence[float], tokens: Sequence[float], losses: Sequence[float],
                    alphas: Sequence[float] | None = None, betas: Sequence[float] | None = None) -> ScalingLaw:
    """Least-squares fit of `ScalingLaw` to runs: for each (alpha, beta) on a grid (default 0.05 to 1 in steps of
    0.01), E, A, B >= 0 (non-negative least squares, linear once the exponents are fixed); the pair with the
    smallest squared error wins. One-value grids fix the exponents."""
    import numpy as np
    from scipy.optimize import nnls

    if not len(parameters) == len(tokens) == len(losses):
        raise ValueError("parameters, tokens and losses must have one entry per run")
    if len(losses) < 4:
        raise ValueError(f"a scaling fit needs at least 4 runs (3 coefficients and 2 exponents), got {len(losses)}")
    n, d, y = (np.asarray(v, dtype=float) for v in (parameters, tokens, losses))
    grid = np.round(np.arange(0.05, 1.0001, 0.01), 2)
    best = None
    for alpha in (grid if alphas is None else alphas):
        for beta in (grid if betas is None else betas):
            design = np.stack([np.ones_like(n), n ** -alpha, d ** -beta], axis=1)
            coef, residual = nnls(design, y)
            if best is None or residual < best[0] - 1e-12:
                best = (residual, coef, alpha, beta)
    _, (e, a, b), alpha, beta = best
    return ScalingLaw(E=float(e), A=float(a), alpha=float(alpha), B=float(b), beta=float(beta))


# fitted by `python benchmarks/pretrain/scaling.py fit` to benchmarks/pretrain/scaling_runs.jsonl (the quickstart's
# python-docs corpus, vocabulary 4,096, context 128, 2 CPU cores; 8 runs of 0.3M-7.7M parameters and 0.2M-1.6M
# tokens, Chinchilla's exponents); tests/test_sizing.py checks it equals that fit
CPU_FIT = ScalingLaw(E=1.57185, A=74.1702, alpha=0.34, B=130.876, beta=0.28)


def effective_tokens(tokens: float, unique_tokens: float | None) -> float:
    """Training tokens as fresh-data equivalents: repeated epochs count less and less (Muennighoff et al. 2023:
    D' = U + U R* (1 - exp(-(D/U - 1) / R*))); without a known corpus size, every token counts."""
    if not unique_tokens or tokens <= unique_tokens:
        return float(tokens)
    repeats = tokens / unique_tokens - 1
    return unique_tokens * (1 + REPEAT_HALF_LIFE * (1 - math.exp(-repeats / REPEAT_HALF_LIFE)))


# -- the device ---------------------------------------------------------------------------------------

@dataclass
class Throughput:
    """Seconds per optimizer step = overhead_s + FLOPs of the step / flops_per_s."""

    overhead_s: float
    flops_per_s: float
    device: str
    measured: bool
    note: str = ""
    probes: list[dict[str, Any]] = field(default_factory=list)

    def step_seconds(self, flops_per_token_: float, tokens_per_step: int) -> float:
        return self.overhead_s + flops_per_token_ * tokens_per_step / self.flops_per_s


def fallback_throughput(device_type: str, reason: str, peak: float | None = None, cpus: int = 1) -> Throughput:
    """A stated guess when the probe cannot run: the 2-core CPU this toolkit was measured on (1.2e11 FLOP/s for
    the quickstart model, 4.7k tokens/s), scaled by cores; a GPU at 30% of its bf16 peak (1e14 when unknown)."""
    if device_type == "cuda":
        return Throughput(0.01, 0.3 * (peak or 3.3e14), device_type, False, f"not measured ({reason}): assumed")
    return Throughput(0.03, 6e10 * max(1, cpus), device_type, False, f"not measured ({reason}): assumed")


def measure_throughput(device, vocab_size: int, depths: Sequence[int], seq_len: int, rows: int,
                       bf16: bool = False, steps: int = PROBE_STEPS, warmup: int = PROBE_WARMUP) -> Throughput:
    """Times real training steps (forward, backward, AdamW) of the dial's shapes at two depths on random ids, on
    `device` with the current thread setting, and fits step time = overhead + FLOPs / FLOP/s through them.

    Each depth first runs `warmup` untimed steps (the first allocates the optimizer state and the kernels' buffers
    and is several times slower). The `steps` timed steps then alternate between the depths (d1 d2, d2 d1, ...), so
    a burst of load from a neighbour slows both depths alike instead of one, and each depth's step time is the
    median of its steps: one slow step moves it not at all. (Timing each depth's steps in a row and averaging
    three made one quiet-machine probe read depth 2 65% slower than the others did and size the run down.)"""
    import torch

    from ..model import config_from_preset
    from ..model.modeling_recipe_gpt import RecipeGPTForCausalLM

    if steps < 1 or warmup < 0:
        raise ValueError(f"the probe needs steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    device = torch.device(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    runs = []
    for depth in sorted(set(depths)):
        shape = shape_for_depth(depth)
        config = config_from_preset("micro", vocab_size=vocab_size, max_position_embeddings=seq_len, **shape)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the run's RNG untouched
            torch.manual_seed(0)
            model = RecipeGPTForCausalLM(config).to(device)
            ids = torch.randint(0, vocab_size, (rows, seq_len), device=device)
        runs.append({"depth": depth, "model": model, "ids": ids, "times": [],
                     "optimizer": torch.optim.AdamW(model.parameters(), lr=1e-4)})

    def step(run) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with autocast:
            loss = run["model"](input_ids=run["ids"], labels=run["ids"], use_cache=False).loss
        loss.backward()
        run["optimizer"].step()
        run["optimizer"].zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    for run in runs:
        for _ in range(warmup):
            step(run)
    for round_ in range(steps):
        for run in (runs if round_ % 2 == 0 else runs[::-1]):
            run["times"].append(step(run))
    points = [{"depth": run["depth"], "step_s": round(statistics.median(run["times"]), 5),
               "flops_per_step": run["model"].flops_per_token(seq_len) * rows * seq_len,
               "steps_s": [round(t, 5) for t in run["times"]]} for run in runs]
    del runs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return throughput_from_probes(points, device.type)


def throughput_from_probes(points: list[dict[str, Any]], device_type: str) -> Throughput:
    """The line step_s = overhead + flops / rate through the probe points (the largest alone when the line does
    not rise: then no overhead is assumed)."""
    points = sorted(points, key=lambda p: p["flops_per_step"])
    big = points[-1]
    rate = big["flops_per_step"] / big["step_s"]
    overhead = 0.0
    if len(points) > 1:
        small = points[0]
        rise = big["step_s"] - small["step_s"]
        if rise > 0 and big["flops_per_step"] > small["flops_per_step"]:
            rate = (big["flops_per_step"] - small["flops_per_step"]) / rise
            overhead = max(0.0, small["step_s"] - small["flops_per_step"] / rate)
    return Throughput(overhead, rate, device_type, True, "measured", points)


def available_memory(device) -> int:
    """Bytes free for training on `device`: the GPU's free memory, or the machine's available RAM."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


# -- the plan -----------------------------------------------------------------------------------------

@dataclass
class Plan:
    """What the dial chose (and what was fixed by the recipe), as written to sizing.json and run_info.json."""

    budget_s: float
    depth: int | None
    shape: dict[str, int]
    parameters: int
    seq_len: int
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    tokens_per_step: int
    learning_rate: float
    warmup_steps: int
    planned_steps: int
    planned_tokens: int
    predicted_loss: float
    memory_bytes: int
    memory_limit_bytes: int
    throughput: dict[str, Any]
    explicit: list[str]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return (f"{self.parameters / 1e6:.2f}M parameters (depth {self.depth}: {self.shape['num_hidden_layers']} x "
                f"{self.shape['hidden_size']}), {self.per_device_train_batch_size} x "
                f"{self.gradient_accumulation_steps} rows x {self.seq_len} tokens per step, peak lr "
                f"{self.learning_rate:.2g}, ~{self.planned_steps:,} steps = {self.planned_tokens / 1e6:.2f}M tokens "
                f"in {self.budget_s:g} s (predicted held-out loss {self.predicted_loss:.2f} nats/token)")


def _power_of_two_rows(tokens: float, seq_len: int) -> int:
    return max(1, 2 ** round(math.log2(max(1.0, tokens / seq_len))))


def plan_run(budget_s: float, vocab_size: int, throughput: Throughput, memory_limit_bytes: int,
             unique_tokens: float | None = None, law: ScalingLaw = CPU_FIT, bf16: bool = False,
             fixed: dict[str, Any] | None = None, world_size: int = 1,
             shape_for: Callable[[int], dict[str, int]] = shape_for_depth) -> Plan:
    """The plan with the lowest predicted held-out loss that fits the budget and memory.

    Args:
        budget_s: seconds of training.
        vocab_size: the model's vocabulary (embedding rows).
        throughput: this device's step time model (`measure_throughput`).
        memory_limit_bytes: memory free for training per process.
        unique_tokens: training tokens in the corpus (repeats beyond it count less); None: unknown.
        law: the scaling law that predicts the loss.
        bf16: whether training runs under bf16 autocast (activation memory).
        fixed: explicit settings that win over the dial: `depth`, `shape` (a whole shape dict), `seq_len`,
            `per_device_train_batch_size`, `gradient_accumulation_steps`, `learning_rate`, `warmup_steps`.
        world_size: processes; tokens per step count all of them.
        shape_for: depth -> shape dict.

    Raises:
        BudgetError: no depth gets MIN_STEPS steps in the budget, or none fits in memory.
    """
    fixed = {k: v for k, v in (fixed or {}).items() if v is not None}
    if budget_s <= 0:
        raise BudgetError(f"compute_budget_seconds must be positive, got {budget_s:g}")
    args = (vocab_size, throughput, memory_limit_bytes, unique_tokens, law, bf16, world_size, shape_for)
    if "shape" in fixed or "depth" in fixed:
        return _best_plan(budget_s, fixed, *args)
    # The depth is the largest the comparison picks at any budget up to this one, on a grid of 8 per octave: with
    # a per-step overhead (CPU), a larger budget's larger batch makes small models relatively cheaper, and the
    # plain comparison would then sometimes pick a smaller model for more time. A larger budget never does here.
    depth = None
    for exponent in range(-8, math.floor(8 * math.log2(budget_s)) + 1):
        try:
            depth = max(depth or 0, _best_plan(2 ** (exponent / 8), fixed, *args).depth)
        except BudgetError:
            continue
    if depth is None:
        return _best_plan(budget_s, fixed, *args)  # raises the error that names the minimum budget
    plan = _best_plan(budget_s, {**fixed, "depth": depth}, *args)
    plan.explicit = sorted(fixed)
    return plan


def pick_candidate(scores: Sequence[tuple[float, float]]) -> int:
    """Which candidate to run, from (predicted loss, predicted loss with TIMING_TOLERANCE slower steps) for each
    viable candidate, smallest model first: the lowest predicted loss, unless the next larger model predicts no
    worse than the winner would with its steps TIMING_TOLERANCE slower. Then the larger one runs: a timing change
    within the probe's error does not flip the choice to the smaller of two adjacent sizes.

    Why toward the larger: near the flip the fitted law cannot tell the two apart, and where it was checked it
    undervalued the larger model (quiet machine, 360 s: depth 2 beat depth 1 by 0.33 nats/token held out, the law
    predicted at most 0.10; benchmarks/README.md, "The compute-budget dial")."""
    if not scores:
        raise ValueError("no candidate to pick from")
    best = min(range(len(scores)), key=lambda i: (scores[i][0], i))
    if best + 1 < len(scores) and scores[best + 1][0] <= scores[best][1]:
        return best + 1
    return best


def _best_plan(budget_s: float, fixed: dict[str, Any], vocab_size: int, throughput: Throughput,
               memory_limit_bytes: int, unique_tokens: float | None, law: ScalingLaw, bf16: bool, world_size: int,
               shape_for: Callable[[int], dict[str, int]]) -> Plan:
    """The candidate with the lowest predicted loss at this budget (see `plan_run`)."""
    compute = budget_s * throughput.flops_per_s * world_size
    scale = compute / ANCHOR_COMPUTE
    step_tokens_target = ANCHOR_TOKENS_PER_STEP * scale ** BATCH_EXPONENT
    learning_rate = fixed.get("learning_rate", ANCHOR_LEARNING_RATE * scale ** LR_EXPONENT)
    if "shape" in fixed:
        candidates = [(fixed.get("depth"), fixed["shape"])]
    elif "depth" in fixed:
        candidates = [(int(fixed["depth"]), shape_for(int(fixed["depth"])))]
    else:
        candidates = [(d, shape_for(d)) for d in range(1, MAX_DEPTH + 1)]
    scored: list[tuple[tuple[float, float], Plan]] = []  # viable candidates, smallest model first
    smallest, memory_short = None, None
    for depth, shape in candidates:
        seq_len = int(fixed.get("seq_len", seq_len_for_depth(shape["num_hidden_layers"])))
        rows = fixed.get("per_device_train_batch_size", None)
        accumulation = fixed.get("gradient_accumulation_steps", None)
        if rows is None:
            total_rows = max(1, _power_of_two_rows(step_tokens_target, seq_len) // world_size)
            rows = total_rows if accumulation is None else max(1, total_rows // int(accumulation))
        rows, accumulation = int(rows), int(accumulation or 1)
        # halve the micro-batch (doubling accumulation, same tokens per step) until it fits, unless it is fixed
        while (training_memory(shape, vocab_size, seq_len, rows, bf16) > memory_limit_bytes * MEMORY_HEADROOM
               and rows > 1 and "per_device_train_batch_size" not in fixed):
            rows, accumulation = rows // 2, accumulation * 2
        memory = training_memory(shape, vocab_size, seq_len, rows, bf16)
        if memory > memory_limit_bytes * MEMORY_HEADROOM:
            memory_short = memory_short or (depth, memory)
            continue
        tokens_per_step = rows * accumulation * seq_len * world_size
        flops = flops_per_token(shape, vocab_size, seq_len)
        # micro-batches run one after another: the per-step overhead is paid once per micro-batch
        step_s = (throughput.overhead_s * accumulation + flops * tokens_per_step / world_size
                  / throughput.flops_per_s)
        steps = int(budget_s / step_s)
        if smallest is None:
            smallest = (depth, shape, step_s, tokens_per_step)
        if steps < MIN_STEPS:
            continue
        parameters = parameter_count(shape, vocab_size)
        tokens = steps * tokens_per_step
        # depths compete at the batch rule's unrounded tokens per step: rounding to whole powers of two jumps at
        # some budgets and would make the choice jump back and forth with them
        if "per_device_train_batch_size" in fixed or "gradient_accumulation_steps" in fixed:
            compared = tokens
        else:
            compared = budget_s / (throughput.overhead_s * accumulation * step_tokens_target / tokens_per_step
                                   + flops * step_tokens_target / world_size / throughput.flops_per_s
                                   ) * step_tokens_target
        # the same run with steps TIMING_TOLERANCE slower: what a smaller model must still beat (`pick_candidate`)
        scores = (law.loss(parameters, effective_tokens(compared, unique_tokens)),
                  law.loss(parameters, effective_tokens(compared / (1 + TIMING_TOLERANCE), unique_tokens)))
        warmup = fixed.get("warmup_steps", min(1000, max(10, round(0.04 * steps))))
        scored.append((scores, Plan(
            budget_s=budget_s, depth=depth, shape=dict(shape), parameters=parameters, seq_len=seq_len,
            per_device_train_batch_size=rows, gradient_accumulation_steps=accumulation,
            tokens_per_step=tokens_per_step, learning_rate=float(f"{learning_rate:.3g}"), warmup_steps=int(warmup),
            planned_steps=steps, planned_tokens=tokens,
            predicted_loss=round(law.loss(parameters, effective_tokens(tokens, unique_tokens)), 4),
            memory_bytes=memory, memory_limit_bytes=int(memory_limit_bytes),
            throughput=_throughput_record(throughput), explicit=sorted(fixed))))
    if scored:
        return scored[pick_candidate([scores for scores, _ in scored])][1]
    if smallest is None:
        depth, memory = memory_short
        raise BudgetError(f"no model fits in memory: the smallest candidate (depth {depth}) needs "
                          f"~{memory / 2**30:.2f} GiB for one row, {memory_limit_bytes / 2**30:.2f} GiB are free")
    depth, shape, step_s, tokens_per_step = smallest
    minimum = MIN_STEPS * step_s
    raise BudgetError(
        f"compute_budget_seconds {budget_s:g} is too small for any model on this device ({throughput.device}, "
        f"{throughput.note}): the smallest model (depth {depth}, {parameter_count(shape, vocab_size) / 1e6:.2f}M "
        f"parameters) takes {step_s:.3g} s per step of {tokens_per_step:,} tokens, so {MIN_STEPS} steps need at "
        f"least {math.ceil(minimum)} s; raise compute_budget_seconds to {math.ceil(minimum)} or more")


def _throughput_record(throughput: Throughput) -> dict[str, Any]:
    return {"device": throughput.device, "measured": throughput.measured, "note": throughput.note,
            "overhead_s": round(throughput.overhead_s, 5), "flops_per_s": float(f"{throughput.flops_per_s:.4g}"),
            "probes": throughput.probes}


# -- applying the dial to a pretraining config ---------------------------------------------------------

SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
              "head_dim")
SIZING_FILE = "sizing.json"


def fixed_settings(cfg) -> dict[str, Any]:
    """The recipe's explicit settings that the dial must keep: a preset or shape keys fix the whole shape."""
    from ..model.presets import PRESETS

    fixed: dict[str, Any] = {key: getattr(cfg, key) for key in (
        "seq_len", "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "warmup_steps")}
    overrides = cfg.model_overrides or {}
    if cfg.model_preset is not None or any(key in overrides for key in SHAPE_KEYS):
        base = {**PRESETS[cfg.model_preset or "micro"], **overrides}
        fixed["shape"] = {key: base[key] for key in SHAPE_KEYS if base.get(key) is not None}
    elif cfg.model_depth is not None:
        fixed["depth"] = cfg.model_depth
    return fixed


def apply_plan(cfg, plan: Plan) -> None:
    """Fills the keys the recipe left to the dial (the explicit ones are already in plan as they were)."""
    if plan.depth is not None and cfg.model_preset is None and "shape" not in plan.explicit:
        cfg.model_depth = plan.depth
    for key in ("seq_len", "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate",
                "warmup_steps"):
        if getattr(cfg, key) is None:
            setattr(cfg, key, getattr(plan, key))
    if cfg.max_train_seconds is None:
        cfg.max_train_seconds = plan.budget_s
    if cfg.max_steps is None:  # an upper bound only: the budget ends training
        cfg.max_steps = max(MIN_STEPS, 10 * plan.planned_steps)
    cfg.validate()


def probe_and_plan(device, budget_s: float, vocab_size: int, memory_limit_bytes: int, unique_tokens: float | None,
                   bf16: bool = False, fixed: dict[str, Any] | None = None, world_size: int = 1,
                   peak: float | None = None, cpus: int = 1,
                   probe: Callable[..., Throughput] = measure_throughput) -> Plan:
    """The stage's plan: probe `device` at two depths around the depth a first guess of it would choose, plan
    with the probe's line, and when the plan lies more than one depth above the probed ones (the line was
    extrapolated: a probe whose larger depth ran barely slower than its smaller one reads as "FLOPs are free"),
    probe again between the larger probed depth and the plan's and plan once more. A failed probe falls back to
    the stated guess. `probe` is `measure_throughput` or a stand-in with its signature."""
    fixed = fixed or {}
    device_type = getattr(device, "type", str(device))
    guess = fallback_throughput(device_type, "first guess", peak, cpus)
    try:  # probe around the depth a first guess of the device would choose
        first = plan_run(budget_s, vocab_size, guess, memory_limit_bytes, unique_tokens, bf16=bf16, fixed=fixed,
                         world_size=world_size)
        top, seq_len, rows = (first.shape["num_hidden_layers"], first.seq_len,
                              max(1, min(first.per_device_train_batch_size, 16)))
    except BudgetError:  # the guess may be slower than the device: probe the smallest model
        top, seq_len, rows = 1, fixed.get("seq_len") or 128, 16
    # two depths, so that the fit separates the per-step overhead from the FLOP rate (one point cannot)
    depths = [max(1, top // 2), max(2, top)] if "shape" not in fixed else [top]
    for attempt in range(2):
        try:
            throughput = probe(device, vocab_size, depths, seq_len, rows, bf16=bf16)
        except Exception as e:  # noqa: BLE001 - any failure of the probe falls back to the stated guess
            throughput = fallback_throughput(device_type, f"the probe failed: {type(e).__name__}: {e}", peak, cpus)
        plan = plan_run(budget_s, vocab_size, throughput, memory_limit_bytes, unique_tokens, bf16=bf16, fixed=fixed,
                        world_size=world_size)
        if (attempt or not throughput.measured or "shape" in fixed or plan.depth is None
                or plan.depth <= max(depths) + 1):
            return plan
        first_line = f"the first probe's line (depths {depths}) put the plan at depth {plan.depth}"
        depths = [max(depths), plan.depth]
        seq_len, rows = plan.seq_len, max(1, min(plan.per_device_train_batch_size, 16))
        probe = _noting(probe, f"measured again: {first_line}")
    return plan


def _noting(probe: Callable[..., Throughput], note: str) -> Callable[..., Throughput]:
    def noted(*args, **kwargs) -> Throughput:
        throughput = probe(*args, **kwargs)
        if throughput.measured:
            throughput.note = note
        return throughput
    return noted


def size_run(cfg, tokenizer, accelerator, unique_tokens: int | None, say, saved: dict[str, Any] | None = None
             ) -> Plan:
    """Probes this device, plans the run for cfg.compute_budget_seconds and fills cfg (every process the same
    plan: the main process's). `saved`: the plan of the run being resumed, reused as it is (a new probe could
    choose a different size, which the checkpoint could not continue)."""
    from accelerate.utils import broadcast_object_list

    from ..tokenizer.bpe import round_vocab_size
    from .monitor import peak_flops

    vocab = (cfg.model_overrides or {}).get("vocab_size") or round_vocab_size(len(tokenizer))
    fixed = fixed_settings(cfg)
    bf16 = accelerator.mixed_precision == "bf16"
    payload: list[Any] = [None]
    if saved is not None:
        payload = [saved]
        say(f"pretrain: the dial's plan of the run being resumed ({SIZING_FILE})")
    elif accelerator.is_main_process:
        device = accelerator.device
        memory = available_memory(device)
        plan = probe_and_plan(device, cfg.compute_budget_seconds, vocab, memory, unique_tokens, bf16=bf16,
                              fixed=fixed, world_size=accelerator.num_processes, peak=peak_flops(device),
                              cpus=_cpus())
        payload = [plan.as_dict()]
        t = plan.throughput
        probe = ", ".join(f"depth {p['depth']}: {p['step_s'] * 1e3:.0f} ms/step" for p in t["probes"])
        say(f"pretrain: device {t['device']}: {t['flops_per_s']:.3g} FLOP/s + {t['overhead_s'] * 1e3:.1f} ms per step "
            f"({t['note']}{': ' + probe if probe else ''}); {memory / 2**30:.1f} GiB free; corpus "
            f"{f'{unique_tokens:,} tokens' if unique_tokens else 'size unknown (stream mode)'}")
    if accelerator.num_processes > 1 and saved is None:
        broadcast_object_list(payload, from_process=0)
    plan = Plan(**payload[0])
    kept = ", ".join(plan.explicit) or "none"
    say(f"pretrain: compute budget {plan.budget_s:g} s -> {plan.describe()}; set in the recipe and kept: {kept}")
    apply_plan(cfg, plan)
    return plan


def _cpus() -> int:
    from ..runtime.threads import usable_cpus

    return usable_cpus()


def record_plan(output_dir, plan: Plan) -> None:
    """The plan in `sizing.json` (read back on resume) and in run_info.json (what ran, next to the versions)."""
    from pathlib import Path

    from ..fileio import atomic_write_json, read_json

    out = Path(output_dir)
    atomic_write_json(out / SIZING_FILE, {"plan": plan.as_dict()})
    info = read_json(out / "run_info.json")
    if isinstance(info, dict):
        atomic_write_json(out / "run_info.json", {**info, "sizing": plan.as_dict()})


def shortfall(tokens: int, planned_tokens: int | None, ratio: float = 0.7) -> str | None:
    """A sentence when a run trained on far fewer tokens than planned (below `ratio` of the plan), else None."""
    if not planned_tokens or tokens >= ratio * planned_tokens:
        return None
    return (f"trained {tokens:,} tokens, {tokens / planned_tokens:.0%} of the {planned_tokens:,} planned from the "
            f"device's speed at the start: the steps ran slower than probed (a busy machine?), so the model saw "
            f"fewer tokens than its size was chosen for")
