"""Batched text generation for many concurrent requests on one model.

One worker thread owns the model. Requests wait in a bounded queue; at every decoding step the worker
admits waiting requests into free batch slots (their prompts are prefilled together and their KV
cache is merged into the running batch), advances every running sequence by one token, and drops
the ones that finished. So a short request never waits for a long one to end, and 32 clients share
one forward pass per step instead of taking turns (iteration-level batching, as in Orca / vLLM, with
a `DynamicCache` left-padded to a common length instead of paged memory; its layers append into spare
room, `GrowingLayer`).

Sampling is per request (penalties, logit bias, temperature, top-k, top-p, min-p, seed, through
transformers' logits processors), tokens go back through a callback as soon as they are chosen, and a
request can be cancelled (client gone, time limit) at any step. A failure that belongs to one sequence
(its sampling values, its prompt) fails that sequence only, never its batch neighbours: each row is
sampled under its own `try`, and when a batched prefill fails its prompts are prefilled one at a time.
On request, each token comes with its log-probability and the most likely alternatives, and the
prompt's own tokens can be scored in the prefill (OpenAI's `logprobs` / `echo`, what lm-evaluation-harness
uses to score answers).
Log-probabilities are those of the model's distribution (a log-softmax of the logits), before
temperature and top_p, as vLLM reports them.
"""

from __future__ import annotations

import functools
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ..model.modeling_recipe_gpt import CACHE_KEY
from ..runtime.threads import choose, free_cpus
from .static_decode import DEFAULT_ONE_ROW_STEP, NUMPY_PREFILL_MAX_TOKENS, check_one_row_step
from .structured import GrammarState

logger = logging.getLogger(__name__)


SMALL_MODEL_PARAMETERS = 10_000_000


def decode_threads(model, free: int | None = None) -> int:
    """CPU threads for decoding: one for a small model on the CPU, else torch's setting capped at the CPUs
    actually free (`free_cpus()`, measured at start).

    Measured on 2 cores (benchmarks/README.md, "Serving"): a decode step of a small model is many tiny
    operations, and splitting each over two OpenMP threads costs more in synchronisation than it saves.
    With one thread the quickstart's 4.3M-parameter model decodes 2.4x faster for 1 client (450 vs 186
    tokens/s) and 1.4x for 32; a 5.9M model 1.1-2.5x. From ~28M parameters two threads win once several
    requests share a step (1.2-1.5x at 8-32 clients), so larger models keep torch's setting, but never more
    threads than free CPUs: with 2 busy processes on 2 cores, a step ran 1.7x faster on one thread than on
    two (OpenMP threads spin and wait on each other; /work/shared/REFERENCE.md).
    """
    import torch

    on_cpu = next(model.parameters()).device.type == "cpu"
    if not on_cpu:
        return torch.get_num_threads()
    if model.num_parameters() < SMALL_MODEL_PARAMETERS:
        return 1
    return choose(free_cpus() if free is None else free, limit=torch.get_num_threads())


class QueueFullError(RuntimeError):
    """The engine's waiting queue is full: the server is overloaded, the client should retry later."""


@dataclass
class GenerationRequest:
    """One sequence to generate.

    Args:
        prompt_ids: token ids of the prompt (already templated; BOS included when the model expects it).
        max_new_tokens: most tokens to generate; 0 runs the prompt only (to score it: `prompt_logprobs`).
        emit: called from the worker thread with `("token", id, logprobs)` for each token, then once
            `("done", finish_reason)` (`"stop"` at an end token, `"length"` at max_new_tokens, `"cancelled"`)
            or `("error", message)`. `logprobs` is None unless asked for, else `(logprob, top)` with `top`
            a list of `(id, logprob)`, most likely first. With `prompt_logprobs`, the first event is
            `("prompt_logprobs", [None, (logprob, top), ...])`: one entry per prompt token, the first
            unscored (nothing predicts it).
        temperature: 0 means greedy.
        top_p: nucleus sampling mass (1.0 = off).
        top_k: keep the k most likely tokens (0 = off).
        min_p: drop tokens less likely than min_p x the most likely one's probability (0 = off).
        presence_penalty, frequency_penalty: OpenAI's, over the answer's tokens:
            `logit[j] -= frequency_penalty * count[j] + presence_penalty * (count[j] > 0)`.
        repetition_penalty: vLLM's / CTRL's, over prompt and answer (1.0 = off): a seen token's logit is
            divided by it when positive, multiplied when negative.
        logit_bias: token id -> value added to its logit.
        grammar: a compiled grammar (`structured.GrammarCompiler.compile`) the answer must follow: tokens
            that cannot continue it are masked out before choosing (greedy or sampled).
        stop_ids: token ids that end the sequence (not emitted).
        seed: makes sampling reproducible for this request.
        logprobs: None for no log-probabilities; k >= 0 for the chosen token's and the k most likely.
        prompt_logprobs: also score the prompt's tokens (with `logprobs` alternatives each).
    """

    prompt_ids: list[int]
    max_new_tokens: int
    emit: Callable[[tuple], None]
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] | None = None
    grammar: object | None = None
    stop_ids: frozenset[int] = frozenset()
    seed: int | None = None
    logprobs: int | None = None
    prompt_logprobs: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued_at: float = field(default_factory=time.monotonic)
    on_cancel: Callable[[], None] | None = None  # set by whoever carries the request to another process

    def cancel(self) -> None:
        self.cancelled.set()
        if self.on_cancel is not None:
            self.on_cancel()


def check_request(request: GenerationRequest) -> None:
    """Refuses a request no engine can run (ValueError naming the value)."""
    if not request.prompt_ids:
        raise ValueError("a generation request needs at least one prompt token")
    if request.max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be 0 or more, got {request.max_new_tokens}")


class _Row:
    """A running sequence: its request, its token ids so far, its uniform numbers (from its seed's generator) and
    logits processors."""

    def __init__(self, request: GenerationRequest, device, vocab_size: int):
        import torch
        from transformers import (
            LogitsProcessorList,
            MinPLogitsWarper,
            RepetitionPenaltyLogitsProcessor,
            SequenceBiasLogitsProcessor,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self.request = request
        self.ids = list(request.prompt_ids)  # prompt + answer: what the penalties look at
        self.generated = 0
        generator = None
        if request.seed is not None:
            generator = torch.Generator(device=device).manual_seed(int(request.seed))
        self.uniforms = Uniforms(generator, device)  # every draw of this row takes its number here
        # penalties and bias change the scores greedy decoding picks from too; the filters only matter
        # when sampling. transformers' processors where one exists, in the order generate() applies them.
        self.penalties = LogitsProcessorList()
        if request.repetition_penalty != 1.0:
            self.penalties.append(RepetitionPenaltyLogitsProcessor(request.repetition_penalty))
        if request.presence_penalty or request.frequency_penalty:
            self.penalties.append(OpenAIPenalties(request.presence_penalty, request.frequency_penalty,
                                                  len(request.prompt_ids)))
        if request.logit_bias:
            self.penalties.append(SequenceBiasLogitsProcessor([[[int(t)], float(b)]
                                                               for t, b in request.logit_bias.items()]))
        self.grammar = None
        if request.grammar is not None:
            self.grammar = GrammarState(request.grammar, vocab_size)
        self.filters = LogitsProcessorList()
        if request.top_k > 0:
            self.filters.append(TopKLogitsWarper(request.top_k))
        if request.top_p < 1.0:
            self.filters.append(TopPLogitsWarper(request.top_p))
        if request.min_p > 0.0:
            self.filters.append(MinPLogitsWarper(request.min_p))
        # nothing but a temperature (no penalty, bias, grammar or filter: most requests) and a token to generate
        self.plain = not (self.penalties or self.filters or self.grammar is not None or request.max_new_tokens == 0)


class Uniforms:
    """A row's uniform numbers for its draws (`_draw`, `_draw_one`, the numba step's), from its generator (torch's
    global one without), taken BLOCK at a time. Every path takes the row's numbers here in order, so a seed gives the
    same tokens alone, in a batch and row by row; on the CPU `torch.rand(k)` also gives the numbers of k calls of
    `torch.rand(1)` and leaves the generator in the same state (a serial kernel; tested), so a seeded row draws the
    tokens it drew one number at a time before (on a GPU, Philox's offsets make a block's numbers differ from one at
    a time: still reproducible). Why: one `torch.rand(1)` per token cost ~16 us of one stream's ~290 us token on the
    quickstart model (cold caches right after the step); on a GPU, reading one number back per row and token would
    wait for the device each time."""

    BLOCK = 64

    def __init__(self, generator, device):
        self.generator, self.device = generator, device
        self._block: list[float] = []
        self._next = 0

    def next(self) -> float:
        if self._next == len(self._block):
            import torch

            self._block = torch.rand(self.BLOCK, generator=self.generator, device=self.device).tolist()
            self._next = 0
        self._next += 1
        return self._block[self._next - 1]


class OpenAIPenalties:
    """OpenAI's presence and frequency penalties, as a transformers logits processor: over the tokens
    after `prompt_length` (the answer), `logit[j] -= frequency * count[j] + presence * (count[j] > 0)`."""

    def __init__(self, presence: float, frequency: float, prompt_length: int):
        self.presence, self.frequency, self.prompt_length = float(presence), float(frequency), int(prompt_length)

    def __call__(self, input_ids, scores):
        import torch

        answer = input_ids[:, self.prompt_length:]  # (B, generated)
        counts = torch.zeros_like(scores).scatter_add_(1, answer, torch.ones_like(answer, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


@functools.cache
def growing_layer_class():
    """`GrowingLayer`, defined on first use (transformers is imported lazily by this module)."""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A `DynamicLayer` that appends each step's keys and values into spare room at the end of its tensors
        instead of concatenating: `torch.cat` copied the whole cache of every layer at every decode step (at 32
        rows of the quickstart model, ~12% of a step). `keys`/`values` stay views of the room's first
        `length` columns, so code that reads or replaces them (the engine's merge, trim and row selection)
        works as on a `DynamicLayer`; a replaced tensor is copied into new room at the next update."""

        SPARE = 64  # columns of room added at each reallocation: a reallocation every 64 steps at most

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            length, add = self.get_seq_length(), key_states.shape[-2]
            room_k = getattr(self, "_room_keys", None)
            if (self.keys is not getattr(self, "_view_keys", None) or length + add > room_k.shape[-2]
                    or room_k.shape[0] != key_states.shape[0]):
                shape = (*key_states.shape[:-2], length + add + self.SPARE, key_states.shape[-1])
                room_k, room_v = key_states.new_empty(shape), value_states.new_empty(shape)
                if length:
                    room_k[..., :length, :] = self.keys
                    room_v[..., :length, :] = self.values
                self._room_keys, self._room_values = room_k, room_v
            room_k[..., length:length + add, :] = key_states
            self._room_values[..., length:length + add, :] = value_states
            self.keys, self.values = room_k[..., :length + add, :], self._room_values[..., :length + add, :]
            self._view_keys = self.keys
            return self.keys, self.values

    return GrowingLayer


class GenerationEngine:
    """Owns a causal LM and generates for queued requests in batches on a worker thread.

    Args:
        model: a transformers causal LM (eval mode is set here).
        pad_token_id: id used for left padding (any id works: padded positions are masked out).
        max_batch_size: most sequences decoded together.
        max_queue: most requests waiting for a slot; `submit` raises QueueFullError beyond it.
        num_threads: CPU threads for torch on the decoding thread; default: `decode_threads(model)` with the
            CPUs free at start (`free_cpus`).
        on_step: called on the worker thread after every turn of its loop (a decoding step, or an idle wait
            of at most 50 ms), after the step's events were emitted: `engine_process` sends everything a step
            emitted to the HTTP process in one message from here.
        static_cache: decode with a preallocated KV cache and a fused decode step (`static_decode`) when the
            model allows it (RecipeGPT); otherwise, or when False, through the model's transformers forward.
            `decode_path` says which, and why not the static one.
        compile_decode: compile the static decode step with torch.compile at start (`compile_seconds`);
            when that fails the step stays eager and `decode_path` gives the reason.
        context: longest prompt + answer of a request (the static cache's positions); default: the model's
            `max_position_embeddings`. A longer request fails with an error naming it.
        prefix_cache: with the static cache, how many finished sequences' keys and values to keep (one cache
            slot each): a prompt that starts with one's tokens (a chat's next turn re-sends the conversation)
            prefills only the rest (`prefix_hits`, `prefix_reused_tokens` count them); 0 turns it off.
        one_row_step: with the static cache, the step when a single row decodes: "numba" (the step and, for a
            row with nothing but a temperature, its token in one compiled call: `numba_step`; without numba the
            numpy step), "numpy" (both faster for one stream on the CPU at float32; elsewhere the torch step,
            `decode_path` says why) or "torch" (`static_decode.StaticDecoder`); batches of two or more always take
            the torch step. With "numba" or "numpy" active, a prompt admitted while no row runs is also prefilled in
            numpy (`StaticDecoder.prefill_alone`) unless it asks for prompt log-probabilities or is longer than
            NUMPY_PREFILL_MAX_TOKENS.
    """

    def __init__(self, model, pad_token_id: int, max_batch_size: int = 8, max_queue: int = 64,
                 num_threads: int | None = None, on_step: Callable[[], None] | None = None,
                 static_cache: bool = True, compile_decode: bool = False, context: int | None = None,
                 prefix_cache: int = 4, one_row_step: str = DEFAULT_ONE_ROW_STEP):
        import torch

        check_one_row_step(one_row_step)

        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.pad_token_id = int(pad_token_id)
        self.max_batch_size = int(max_batch_size)
        self._queue: queue.Queue[GenerationRequest] = queue.Queue(maxsize=int(max_queue))
        self._stop = threading.Event()
        self._on_step = on_step
        self._torch = torch
        self._cache_key = CACHE_KEY  # the forward's KV-cache argument name in the installed transformers
        self.free_cpus = None  # measured at start when the thread count is ours to choose (on the CPU)
        if not num_threads and self.device.type == "cpu":
            self.free_cpus = round(free_cpus(), 1)
        self._num_threads = int(num_threads or decode_threads(model, free=self.free_cpus))
        self.vocab_size = int(model.config.vocab_size)  # logits per position
        self.context = int(context or getattr(model.config, "max_position_embeddings", 0) or 0) or None
        self._static = None
        self._prefix_slots = max(int(prefix_cache), 0)
        self.decode_path, self.compile_seconds = "transformers forward (static_cache off)", 0.0
        if static_cache:
            self._static, self.decode_path = self._static_decoder(model, compile_decode, one_row_step)
        logger.info("decoding: %s", self.decode_path)
        self._warm_up()
        self._thread = threading.Thread(target=self._loop, name="generation-engine", daemon=True)
        self.running = 0  # sequences in the current batch
        self.peak_batch = 0  # largest batch decoded so far (shows that concurrent requests share steps)
        self.steps = 0
        self._thread.start()

    def _static_decoder(self, model, compile_decode: bool, one_row_step: str):
        """The static decoder and a line for the log: which decode path runs, and why."""
        from .static_decode import StaticDecoder, unsupported_reason

        reason = "no context length known" if self.context is None else unsupported_reason(
            model, self.max_batch_size, self.context, self._prefix_slots)
        if reason is not None and self._prefix_slots and self.context is not None and unsupported_reason(
                model, self.max_batch_size, self.context) is None:  # the prefix slots made the cache too big
            logger.warning("no prefix cache: %s with %d prefix slots", reason, self._prefix_slots)
            self._prefix_slots, reason = 0, None
        if reason is not None:
            return None, f"transformers forward (no static KV cache: {reason})"
        torch = self._torch
        previous = torch.get_num_threads()
        torch.set_num_threads(self._num_threads)  # compile and warm the kernels with the decoding threads
        try:
            decoder = StaticDecoder(model, self.max_batch_size, self.context, compile=compile_decode,
                                    prefix_slots=self._prefix_slots, one_row_step=one_row_step)
        finally:
            torch.set_num_threads(previous)
        self.compile_seconds = round(decoder.compile_seconds, 1)
        if decoder.one_row_step == "numba":
            one_row = f"; one row: the numba step (ready in {decoder.numba_seconds:.1f} s)"
        elif decoder.one_row_step == "numpy":
            one_row = "; one row: the numpy step" + (f" ({decoder.one_row_reason})" if decoder.one_row_reason else "")
        else:
            one_row = f"; one row: the torch step ({decoder.one_row_reason or 'one_row_step torch'})"
        if decoder.compiled:
            return decoder, (f"static KV cache, decode step compiled by torch.compile in {self.compile_seconds} s"
                             f"{one_row}")
        if compile_decode:
            return decoder, (f"static KV cache, eager decode step (torch.compile failed after "
                             f"{self.compile_seconds} s: {decoder.compile_error}){one_row}")
        return decoder, f"static KV cache, eager decode step (compile_decode off){one_row}"

    def _warm_up(self) -> None:
        # Measured on a 2-core CPU container: when the first parallel torch op of the process runs on the
        # worker thread instead of the thread that created the engine, decoding stays 10-20x slower for the
        # life of the process (OpenMP thread-team start-up). One small forward here avoids that.
        torch = self._torch
        with torch.inference_mode():
            self.model(input_ids=torch.tensor([[self.pad_token_id] * 4], device=self.device), use_cache=False)

    # -- public ----------------------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> None:
        check_request(request)
        if self._stop.is_set():
            raise RuntimeError("the generation engine is shut down")
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            raise QueueFullError(f"{self._queue.maxsize} requests are already waiting") from None

    @property
    def num_threads(self) -> int:
        return self._num_threads

    @property
    def max_queue(self) -> int:
        return self._queue.maxsize

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    # -- worker ----------------------------------------------------------------------------------

    def _loop(self) -> None:
        torch = self._torch
        torch.set_num_threads(self._num_threads)  # OpenMP settings are per thread
        rows: list[_Row] = []
        state = None  # (cache, attention_mask (B, S), next position (B,), last token (B,))
        # inference mode for the thread's whole life, not entered per step: one stream's token is ~300 us, and each
        # small step of Python around the compiled step counts
        with torch.inference_mode():
            self._serve(rows, state)

    def _serve(self, rows: list[_Row], state) -> None:
        """The worker's loop: admit, decode, emit, until `shutdown`."""
        while not self._stop.is_set():
            try:
                if not rows:
                    try:
                        first = self._queue.get(timeout=0.05)
                    except queue.Empty:
                        continue
                    newcomers = [first] + self._take(self.max_batch_size - 1)
                else:
                    newcomers = self._take(self.max_batch_size - len(rows))
                if newcomers:
                    # prefill, then their first token; survivors join the running batch
                    newcomers = [r for r in newcomers if not self._drop_if_cancelled(r)]
                    new_rows, new_state = self._admit(newcomers, alone=not rows) if newcomers else ([], None)
                    if new_rows:
                        rows, state = self._merge(rows, state, new_rows, new_state)
                if rows:
                    rows, state = self._decode_step(rows, state)
                self.running = len(rows)
                self.peak_batch = max(self.peak_batch, len(rows))
            except Exception as e:  # a bug or OOM must not kill the server: fail the running requests
                logger.exception("generation failed")
                for row in rows:
                    _fail(row.request, e)
                rows, state = [], None
                self.running = 0
            finally:
                if self._on_step is not None:
                    self._on_step()
        for request in [row.request for row in rows] + self._take(self._queue.maxsize + 1):
            request.emit(("error", "server shutting down"))
        if self._on_step is not None:
            self._on_step()

    def _take(self, n: int) -> list[GenerationRequest]:
        if n <= 0 or not self._queue.qsize():  # the usual case while decoding: no exception raised and caught
            return []
        taken = []
        while len(taken) < n:
            try:
                taken.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return taken

    @staticmethod
    def _drop_if_cancelled(request: GenerationRequest) -> bool:
        if request.cancelled.is_set():
            request.emit(("done", "cancelled"))
            return True
        return False

    def _admit(self, requests: list[GenerationRequest], alone: bool = False):
        """Prefills new requests and samples their first tokens; returns (rows, state) of the ones that
        go on. A request whose own values fail (a seed torch refuses, a prompt the model cannot embed)
        fails alone: its row is never built, or the batch is prefilled again one request at a time.
        `alone`: no row is running (a single newcomer may then be prefilled by the numpy step)."""
        rows = []
        for request in requests:
            try:
                if self._static is not None and len(request.prompt_ids) + request.max_new_tokens > self.context:
                    raise ValueError(f"the prompt ({len(request.prompt_ids)} tokens) plus max_new_tokens "
                                     f"({request.max_new_tokens}) exceeds the engine's context of {self.context}")
                rows.append(_Row(request, self.device, self.vocab_size))
            except Exception as e:  # noqa: BLE001 - reported to that request only
                _fail(request, e, "request refused by the engine")
        if not rows:
            return [], None
        try:
            return self._prefill_and_sample(rows, alone)
        except Exception as e:  # noqa: BLE001
            if len(rows) == 1:
                _fail(rows[0].request, e, "prefill failed")
                return [], None
        return self._merge_groups(self._admit([row.request]) for row in rows)  # find the culprit: each prompt alone

    def _prefill_and_sample(self, rows: list[_Row], alone: bool = False):
        """Prefills new rows and samples their first tokens: the prompts that start with a kept sequence's tokens
        (`StaticDecoder.reuse`) one at a time from its keys and values, the others as one batch. Every prefill
        runs before any token is emitted: when one fails, `_admit` retries the prompts alone and no answer has
        had its first token twice. A single prompt with no row running, when one row takes the numpy step, is
        prefilled in numpy straight into the static cache (`StaticDecoder.prefill_alone`: one stream's prefill
        was ~9 ms through the transformers forward); scoring a prompt (`prompt_logprobs`) keeps the forward."""
        if (alone and len(rows) == 1 and self._static is not None and self._static.one_row_step != "torch"
                and not rows[0].request.prompt_logprobs
                and len(rows[0].request.prompt_ids) <= NUMPY_PREFILL_MAX_TOKENS):
            prompt = rows[0].request.prompt_ids
            # the state of the static path (no transformers cache), the row already in slot 0: see `_merge_static`
            return self._sample_and_emit(rows, (None, None, [len(prompt)], self._static.prefill_alone(prompt)))
        prefilled, fresh = [], []
        for row in rows:
            cache, length = (None, 0) if self._static is None or row.request.prompt_logprobs else \
                self._static.reuse(row.request.prompt_ids)  # scoring a prompt needs all its logits
            if length:
                prefilled.append(self._prefill_cached(row, cache, length))
            else:
                fresh.append(row)
        if fresh:
            prefilled.insert(0, self._prefill(fresh))
        return self._merge_groups(self._sample_and_emit(*group) for group in prefilled)

    def _merge_groups(self, groups):
        """(rows, state) of newcomers prefilled apart, as one group (`_merge_dynamic`); groups with no row left are
        skipped."""
        merged_rows, merged_state = [], None
        for group_rows, group_state in groups:
            if group_rows:
                merged_rows, merged_state = self._merge_dynamic(merged_rows, merged_state, group_rows, group_state)
        return merged_rows, merged_state

    @property
    def prefix_hits(self) -> int:
        """Prompts that reused kept keys and values (0 without the static cache)."""
        return self._static.prefix.hits if self._static is not None else 0

    @property
    def prefix_reused_tokens(self) -> int:
        """Prompt tokens not prefilled, their keys and values reused."""
        return self._static.prefix.reused_tokens if self._static is not None else 0

    def _prefill_cached(self, row: _Row, cache, length: int):
        """`_prefill` for one prompt whose first `length` tokens' keys and values are in `cache`: the model runs on
        the rest only, at positions length.."""
        torch = self._torch
        prompt = row.request.prompt_ids
        rest = torch.tensor([prompt[length:]], dtype=torch.long, device=self.device)
        mask = torch.ones((1, len(prompt)), dtype=torch.long, device=self.device)
        positions = torch.arange(length, len(prompt), device=self.device)[None]
        out = self.model(input_ids=rest, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1, **{self._cache_key: cache})
        return [row], (cache, mask, torch.tensor([len(prompt)], device=self.device), out.logits[:, -1, :])

    def _prefill(self, rows: list[_Row]):
        """Runs the prompts of new rows as one left-padded batch; returns the rows and their state."""
        from transformers.cache_utils import DynamicCache, DynamicLayer

        torch = self._torch
        requests = [row.request for row in rows]
        width = max(len(r.prompt_ids) for r in requests)
        ids = torch.full((len(requests), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for i, r in enumerate(requests):
            ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids, dtype=torch.long)
            mask[i, width - len(r.prompt_ids):] = 1
        # positions count real tokens only, so a left-padded prompt sees the same positions as alone
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)  # filled in place by the model
        if all(type(layer) is DynamicLayer for layer in cache.layers):
            cache.layers = [growing_layer_class()() for _ in cache.layers]
        score_prompts = any(r.prompt_logprobs for r in requests)
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                         position_ids=positions.to(self.device), use_cache=True,
                         logits_to_keep=0 if score_prompts else 1, **{self._cache_key: cache})
        if score_prompts:
            for i, r in enumerate(requests):
                if r.prompt_logprobs:
                    # position t predicts token t + 1: the prompt's logits are the row's last len(prompt) ones
                    logits = out.logits[i, width - len(r.prompt_ids):-1]
                    targets = torch.tensor(r.prompt_ids[1:], dtype=torch.long, device=self.device)
                    r.emit(("prompt_logprobs", [None] + _logprobs(logits, targets, r.logprobs or 0)))
        next_pos = mask.sum(-1)
        return rows, (cache, mask.to(self.device), next_pos.to(self.device), out.logits[:, -1, :])

    def _merge(self, rows, state, new_rows, new_state):
        """Appends newcomers (state: cache, mask, next position, token to feed next) to the running batch:
        caches and masks are left-padded to a common length."""
        if self._static is not None:
            return self._merge_static(rows, state, new_rows, new_state)
        return self._merge_dynamic(rows, state, new_rows, new_state)

    def _merge_dynamic(self, rows, state, new_rows, new_state):
        """`_merge` for two transformers caches (also how `_admit` joins prompts prefilled one at a time)."""
        torch = self._torch
        if not rows:
            return new_rows, new_state
        cache, mask, pos, tokens = state
        new_cache, new_mask, new_pos, new_tokens = new_state
        length = max(mask.shape[1], new_mask.shape[1])

        def left_pad(t, dim_len, total):  # pad dim -2 (sequence) of a (B, H, S, D) tensor
            if dim_len == total:
                return t
            pad = t.new_zeros((*t.shape[:-2], total - dim_len, t.shape[-1]))
            return torch.cat([pad, t], dim=-2)

        for old_layer, new_layer in zip(cache.layers, new_cache.layers):
            old_len, add_len = old_layer.keys.shape[-2], new_layer.keys.shape[-2]
            old_layer.keys = torch.cat([left_pad(old_layer.keys, old_len, length),
                                        left_pad(new_layer.keys, add_len, length)], dim=0)
            old_layer.values = torch.cat([left_pad(old_layer.values, old_len, length),
                                          left_pad(new_layer.values, add_len, length)], dim=0)

        def pad_mask(m):
            return torch.cat([m.new_zeros((m.shape[0], length - m.shape[1])), m], dim=1)

        merged_mask = torch.cat([pad_mask(mask), pad_mask(new_mask)], dim=0)
        merged_tokens = torch.cat([tokens, new_tokens], dim=0)
        return rows + new_rows, (cache, merged_mask, torch.cat([pos, new_pos]), merged_tokens)

    def _merge_static(self, rows, state, new_rows, new_state):
        """Copies newcomers' prefilled keys and values (without their left padding) into the static cache's
        next slots. The running batch's state is (None, None, positions: a list of ints, tokens to feed)."""
        new_cache, new_mask, new_pos, new_tokens = new_state
        if new_cache is None:  # prefilled into slot 0 of the static cache already (`_prefill_and_sample`, alone)
            return new_rows, new_state
        lengths = new_pos.tolist()
        for i, length in enumerate(lengths):
            self._static.load(len(rows) + i, new_cache, i, new_mask.shape[1] - length, length)
        if not rows:
            return new_rows, (None, None, lengths, new_tokens)
        old_tokens = state[3] if self._torch.is_tensor(state[3]) else self._torch.tensor(state[3], device=self.device)
        return rows + new_rows, (None, None, state[2] + lengths, self._torch.cat([old_tokens, new_tokens]))

    def _decode_step(self, rows, state):
        """Feeds every running row its last token and samples the next."""
        torch = self._torch
        cache, mask, pos, last_tokens = state
        if cache is None and isinstance(last_tokens, list):  # one row on the numba or numpy step (`_sample_and_emit`)
            self.steps += 1
            row = rows[0]
            if row.plain and self._static.one_row_step == "numba":
                return self._numba_step_alone(row, last_tokens[0], pos[0])
            logits = self._static.step_one(last_tokens[0], pos[0])
            return self._sample_and_emit(rows, (None, None, [pos[0] + 1], logits))
        if cache is None:  # the static cache: positions are ints, rows sit in slots 0..B-1
            # at least 2 columns: a compiled step specialises a length of 1 (one more compilation)
            logits = self._static.step(last_tokens, torch.tensor(pos, device=self.device), max(max(pos) + 1, 2),
                                       position=pos[0] if len(pos) == 1 else None)
            self.steps += 1
            return self._sample_and_emit(rows, (None, None, [p + 1 for p in pos], logits))
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        out = self.model(input_ids=last_tokens[:, None], attention_mask=mask, position_ids=pos[:, None],
                         use_cache=True, logits_to_keep=1, **{self._cache_key: cache})
        self.steps += 1
        return self._sample_and_emit(rows, (cache, mask, pos + 1, out.logits[:, -1, :]))

    def _numba_step_alone(self, row: _Row, token: int, position: int):
        """One plain row (`_Row.plain`) alone on the numba step: the step and its token in one compiled call, then
        `_sample_and_emit`'s work for this one row with nothing else to check (one stream's whole token is ~300 us
        of CPU on the quickstart model, and each Python step after the step's sweep of the weights meets cold
        caches). The uniform number comes from the row's `Uniforms`, as every draw's, so that a seed gives the same
        tokens alone and in a batch."""
        request = row.request
        temperature = request.temperature
        try:
            uniform = 0.0 if temperature <= 0 else row.uniforms.next()
            token, logits = self._static.step_and_pick(token, position, temperature, uniform)
            if token < 0:  # too close to call in float64 (or not a distribution): torch's float32 draw decides
                token = _draw_one(self._torch.from_numpy(logits), temperature, uniform)
            if self._emit_token(row, token, logits):
                return [row], (None, None, [position + 1], [token])  # its next token stays an int
        except Exception as e:  # noqa: BLE001 - its values, its callback: fail the request, as `_sample_and_emit`
            _fail(request, e, "sampling failed for one sequence")
        self._ended(0, row, position + 1)
        return [], None

    def _sample_and_emit(self, rows, state):
        """Chooses a token for each row from its logits, emits it, and prunes finished rows."""
        torch = self._torch
        cache, mask, pos, logits = state
        tokens = [self.pad_token_id] * len(rows)
        try:
            chosen = self._sample_plain(rows, logits)
        except Exception:  # noqa: BLE001 - each row is sampled alone below, where a failure stays its own
            logger.exception("batched sampling failed; sampling row by row")
            chosen = {}
        keep = []
        for i, row in enumerate(rows):
            request = row.request
            try:
                if request.max_new_tokens == 0:  # the prompt only (scored in the prefill): nothing to generate
                    request.emit(("done", "length"))
                    continue
                tokens[i] = token = chosen[i] if i in chosen else self._sample(logits[i], row)
                if self._emit_token(row, token, logits[i]):
                    keep.append(i)
            except Exception as e:  # noqa: BLE001 - this row's failure (its values, its callback) is its own
                _fail(request, e, "sampling failed for one sequence")
        if len(keep) == len(rows) == 1 and cache is None and self._static.one_row_step != "torch":
            # one row on the numba or numpy step: its next token stays an int (no tensor made and read back each token)
            return rows, (cache, mask, pos, tokens)
        tokens = torch.tensor(tokens, dtype=torch.long, device=self.device)
        if len(keep) == len(rows):
            return rows, (cache, mask, pos, tokens)
        if cache is None:
            kept = set(keep)
            for i, row in enumerate(rows):
                if i not in kept:
                    self._ended(i, row, pos[i])
        if not keep:
            return [], None
        if cache is None:
            return self._compact_static(rows, keep, pos, tokens)
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        cache.batch_select_indices(index)
        rows = [rows[i] for i in keep]
        state = (cache, mask.index_select(0, index), pos.index_select(0, index), tokens.index_select(0, index))
        return rows, self._trim_padding(state)

    def _emit_token(self, row: _Row, token: int, logits) -> bool:
        """A row's chosen token: its end (cancelled, an end token: not emitted) or its emission, with its
        log-probabilities when asked for (from `logits`, the row's (V,) tensor or numpy array), and its end at
        max_new_tokens. Returns whether the row goes on. The one place both paths end a row's token: the batch's
        (`_sample_and_emit`) and one plain row's on the numba step (`_numba_step_alone`)."""
        request = row.request
        if request.cancelled.is_set():
            request.emit(("done", "cancelled"))
            return False
        if token in request.stop_ids:
            request.emit(("done", "stop"))
            return False
        if row.grammar is not None:
            row.grammar.advance(token)
        info = None
        if request.logprobs is not None:
            scores = self._torch.as_tensor(logits)[None]  # a numpy array's memory, not a copy
            info = _logprobs(scores, self._torch.tensor([token], device=scores.device), request.logprobs)[0]
        request.emit(("token", token, info))
        row.ids.append(token)
        row.generated += 1
        if row.generated < request.max_new_tokens:
            return True
        request.emit(("done", "length"))
        return False

    def _ended(self, slot: int, row: _Row, fed: int) -> None:
        """A row in static cache slot `slot` ended, fed its first `fed` tokens (positions 0..fed-1): with a prefix
        cache, its keys and values are kept for a later prompt that starts with them."""
        if self._static.prefix.entries:
            self._static.keep(slot, row.ids[:fed])

    def _compact_static(self, rows, keep: list[int], positions: list[int], tokens):
        """The rows in `keep` back in slots 0..len(keep)-1: each emptied slot below that takes one of the rows
        above it (one copy per moved row, not of the whole batch)."""
        n = len(keep)
        kept = set(keep)
        holes = [i for i in range(n) if i not in kept]
        movers = [i for i in keep if i >= n]
        if holes:
            self._static.move(movers, holes, max(positions[i] for i in movers))
        order = list(range(n))
        for hole, mover in zip(holes, movers):
            order[hole] = mover
        index = self._torch.tensor(order, dtype=self._torch.long, device=self.device)
        return [rows[i] for i in order], (None, None, [positions[i] for i in order], tokens.index_select(0, index))

    def _trim_padding(self, state):
        """Drops left columns that no remaining row uses (after long rows finish, short ones stay cheap)."""
        cache, mask, pos, tokens = state
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else 0
        if start == 0:
            return state
        for layer in cache.layers:
            layer.keys = layer.keys[..., start:, :]
            layer.values = layer.values[..., start:, :]
        return cache, mask[:, start:], pos, tokens

    def _sample_plain(self, rows: list[_Row], logits) -> dict[int, int]:
        """Tokens of the rows with nothing but a temperature (no penalty, bias, grammar or filter: most
        requests), chosen with a few operations over all of them instead of several per row: a decode step
        of the quickstart model at 32 rows spent about a fifth of its time in per-row sampling. A seeded
        row still draws its own numbers (`Uniforms`), so its answer does not depend on its batch neighbours."""
        torch = self._torch
        greedy, sampled = [], []
        for i, row in enumerate(rows):
            if not row.plain:
                continue
            (greedy if row.request.temperature <= 0 else sampled).append(i)
        chosen = {}
        if greedy == [0] and len(rows) == 1 and logits.device.type == "cpu" and logits.dtype == torch.float32:
            # one stream: no torch operation
            chosen[0] = int(logits.numpy().argmax())  # the first largest (NaN first), as torch's argmax
        elif greedy:
            chosen.update(zip(greedy, logits[greedy].argmax(-1).tolist()))
        if sampled == [0] and len(rows) == 1 and logits.device.type == "cpu":  # one stream
            row = rows[0]
            chosen[0] = _draw_one(logits, row.request.temperature, row.uniforms.next())
        elif sampled:
            scores = logits if len(sampled) == len(rows) else logits[sampled]  # no index copy when all sample
            # a tensor division for every batch (not a Python scalar's, which the CPU kernel turns into a
            # product with 1/t): a seeded row draws the same tokens alone and beside others
            temperatures = torch.tensor([rows[i].request.temperature for i in sampled], device=logits.device)
            scores = scores.float() / temperatures[:, None]
            draws = _draw(torch.softmax(scores, dim=-1), [rows[i].uniforms.next() for i in sampled])  # (rows, V)
            chosen.update(zip(sampled, draws))
        return chosen

    def _sample(self, logits, row: _Row) -> int:
        """Penalties, bias and the grammar's mask, then greedy; or temperature, the top-k / top-p / min-p
        filters and a draw."""
        torch = self._torch
        request = row.request
        scores = logits.float()[None]  # (1, V); a view of the batch's logits: nothing below writes into it...
        if row.penalties:
            scores = row.penalties(torch.tensor([row.ids], device=self.device), scores)
        if row.grammar is not None:  # ...but the grammar's mask works in place: on a copy
            scores = row.grammar.mask(scores.clone())
        if request.temperature <= 0:
            return int(scores.argmax())
        scores = scores / request.temperature
        if row.filters:
            scores = row.filters(None, scores)  # the filters look at the scores only
        return _draw(torch.softmax(scores, dim=-1), [row.uniforms.next()])[0]


NOT_A_DISTRIBUTION = ("the probabilities are not a distribution (NaN, infinite or all zero): a temperature too small "
                      "for float32, or logits that overflowed")


def _draw(probs, uniforms: list[float]) -> list[int]:
    """One token per row of `probs` (rows, V), drawn by inverting its cumulative distribution with the row's uniform
    number (`uniforms`: taken from the row's `Uniforms`, from its own generator when it has one): the same
    distribution as `torch.multinomial`, which on the CPU took ~0.3 ms per row of a 4,096-token vocabulary
    (10 ms of a 32-row step) against ~0.5 ms here for all 32 (benchmarks/README.md, "Serving throughput").
    A seeded row's draws depend on its own numbers only, never on its batch neighbours."""
    import torch

    uniform = torch.tensor(uniforms, dtype=torch.float32, device=probs.device)
    cumulative = probs.cumsum(dim=-1)
    total = cumulative[:, -1:]  # (rows, 1)
    # checked in Python on the few totals: cheaper than four tensor operations on one row
    if not all(math.isfinite(t) and t > 0 for t in total.view(-1).tolist()):  # as torch.multinomial refuses
        raise ValueError(NOT_A_DISTRIBUTION)
    # the first token whose cumulative mass exceeds u x total: never one of probability 0 (its mass adds
    # nothing), and scaling by the row's own total keeps float rounding from running past the end
    targets = uniform[:, None] * total
    return torch.searchsorted(cumulative, targets, right=True).clamp_(max=probs.shape[-1] - 1).view(-1).tolist()


def _draw_one(logits, temperature: float, uniform: float) -> int:
    """`_draw(softmax(logits / temperature))` for one row (logits (V,) or (1, V)) on the CPU, with the same draw for
    the same uniform number: the same division (in numpy: IEEE division by the float32 temperature, the values of
    `_sample_plain`'s division by a (1,)-tensor, where torch would turn a Python scalar divisor into a product with
    1/t), the same torch softmax and cumulative sum (the same kernels, so the same float32 values), then the checks
    and the search in numpy. Why: right after a decode step every small torch operation meets cold caches (12-35
    us each on the quickstart model), and `_draw` took ~107 us of a ~490 us token there; this ~78
    (benchmarks/README.md, "Serving throughput"). `uniform`: the row's number, from its `Uniforms`."""
    import numpy as np
    import torch

    values = logits if logits.dtype == torch.float32 else logits.float()
    scores = values.numpy().reshape(-1) / np.float32(temperature)
    cumulative = torch.softmax(torch.from_numpy(scores), dim=-1).cumsum(dim=-1).numpy()
    total = cumulative[-1]  # a numpy float32, as `_draw`'s tensor
    if not (math.isfinite(total) and total > 0):
        raise ValueError(NOT_A_DISTRIBUTION)
    # float32 product and right-side search, as `_draw`: the first token whose cumulative mass exceeds u x total
    index = int(np.searchsorted(cumulative, np.float32(uniform) * total, side="right"))
    return min(index, cumulative.shape[0] - 1)


def _fail(request: GenerationRequest, error: Exception, log: str | None = None) -> None:
    """Ends one request with an error event (a callback that fails too is only logged); `log`: a line logged first,
    with the exception being handled."""
    if log is not None:
        logger.exception(log)
    try:
        request.emit(("error", f"generation failed: {type(error).__name__}: {error}"))
    except Exception:  # noqa: BLE001
        logger.exception("could not report an error to its request")


def _logprobs(logits, targets, top: int) -> list[tuple[float, list[tuple[int, float]]]]:
    """For each row of logits (N, V): the log-probability of its target and the `top` most likely tokens.

    Computed in float32 from one log-softmax, so a target that is the most likely token has exactly the
    top entry's value (lm-evaluation-harness compares them to decide whether an answer is greedy).
    """
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    chosen = logp.gather(-1, targets[:, None])[:, 0].tolist()
    if top > 0:
        values, ids = logp.topk(min(top, logp.shape[-1]), dim=-1)
        alternatives = [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
    else:
        alternatives = [[] for _ in chosen]
    return list(zip(chosen, alternatives))
