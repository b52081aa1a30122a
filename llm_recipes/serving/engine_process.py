"""The generation engine in a process of its own, as vLLM runs its engine core: the HTTP process keeps the
event loop, the engine process keeps the model.

Why: a decode step of a small model is hundreds of small torch operations, each of which releases the GIL
and must take it back; in one process the event loop's Python (HTTP parsing, JSON, SSE writes) held it in
between, and the engine alone decoded ~2x the tokens/s it did behind the server (benchmarks/README.md,
"Serving throughput"). Here the two share no GIL.

The boundary is thin: the engine process runs the same `GenerationEngine`; `EngineClient` has its interface
(`submit`, `GenerationRequest.cancel`, `waiting`, `running`, `shutdown`) on the HTTP side. Messages, pickled
over a `multiprocessing` pipe (spawn context: no fork of a process with threads and OpenMP):

    HTTP -> engine:  ("submit", id, request fields, serialised grammar or None), ("cancel", id),
                     ("tokenizer_info", json) once before the first grammar, ("shutdown",)
    engine -> HTTP:  ("ready", facts about the model and threads) or ("failed", kind, message) at start;
                     then ("events", [(id, event), ...], steps, peak batch, (prefix cache hits, reused
                     prompt tokens)) ONCE per decoding step with
                     every event the step emitted (each row's token, done, error), so the HTTP side
                     wakes once per step, not once per token.

Events are `GenerationRequest.emit`'s tuples, delivered to the request's own `emit` on the HTTP side by one
reader thread. Grammar state lives in the engine process: a request carries its compiled grammar, serialised
by xgrammar. When the engine process dies, every request in flight ends with an error event naming its exit
code (no hang) and later submits raise `EngineStoppedError`; when the HTTP process dies, the engine process
reads end-of-file on its pipe and exits.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import multiprocessing
import signal
import threading
from dataclasses import dataclass

from .engine import GenerationEngine, GenerationRequest, QueueFullError, check_request
from .loading import ModelLoadError
from .static_decode import DEFAULT_ONE_ROW_STEP

logger = logging.getLogger(__name__)

# what crosses the boundary of a request: its values, not its callbacks, events or grammar object
REQUEST_FIELDS = tuple(f.name for f in dataclasses.fields(GenerationRequest)
                       if f.name not in ("emit", "grammar", "cancelled", "enqueued_at", "on_cancel"))
FINAL = ("done", "error")  # an answer's last event


class EngineStoppedError(RuntimeError):
    """The engine process is not running (it exited, or the server is shutting down)."""


@dataclass
class EngineSpec:
    """What the engine process needs to build its engine: the model folder and the engine's settings."""

    model_path: str
    pad_token_id: int
    max_batch_size: int = 8
    max_queue: int = 64
    num_threads: int | None = None
    trust_remote_code: bool = False
    dtype: str = "float32"
    seed: int | None = None
    static_kv_cache: bool = True
    compile_decode: bool = False
    context: int | None = None
    prefix_cache: int = 4
    one_row_step: str = DEFAULT_ONE_ROW_STEP


class EngineClient:
    """The HTTP process's side: starts the engine process, forwards requests and cancellations, and hands
    each step's events to their requests' `emit` callbacks (on its reader thread).

    Admission is counted here: at most `max_batch_size + max_queue` answers in flight (submitted and not
    finished), beyond which `submit` raises QueueFullError at once, as the in-process engine's full queue did.

    Args:
        spec: the engine's model and settings.
        start_timeout: seconds to wait for the model to load in the engine process.
    """

    def __init__(self, spec: EngineSpec, start_timeout: float = 600.0):
        self.spec = spec
        self.max_batch_size, self.max_queue = int(spec.max_batch_size), int(spec.max_queue)
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(target=engine_main, args=(child_conn, spec), name="llm-recipes-engine",
                                        daemon=True)  # multiprocessing ends it when this process exits normally
        self._process.start()
        child_conn.close()  # our copy: the engine's end-of-file comes when the engine process exits
        info = self._wait_ready(start_timeout)
        self.pid = self._process.pid
        self.num_threads, self.free_cpus = info["num_threads"], info["free_cpus"]
        self.vocab_size, self.embedding_size = info["vocab_size"], info["embedding_size"]
        self.eos_token_ids = frozenset(info["eos_token_ids"])
        self.decode_path, self.compile_seconds = info["decode_path"], info["compile_seconds"]
        self.steps = 0  # decoding steps so far
        self.peak_batch = 0  # largest batch decoded so far
        self.prefix_hits = self.prefix_reused_tokens = 0  # prompts that reused kept keys and values; their tokens
        self.error: str | None = None  # why the engine process is gone, once it is
        self._lock = threading.Lock()  # the tables below
        self._send_lock = threading.Lock()  # one writer at a time on the pipe
        self._requests: dict[int, GenerationRequest] = {}
        self._unstarted: set[int] = set()  # submitted, no event yet: waiting for a slot or in prefill
        self._ids = itertools.count()
        self._tokenizer_info_sent = False
        self._stopping = False
        self._reader = threading.Thread(target=self._read, name="engine-events", daemon=True)
        self._reader.start()

    def _wait_ready(self, timeout: float) -> dict:
        waited = 0.0
        while not self._conn.poll(0.2):
            waited += 0.2
            if not self._process.is_alive() or waited > timeout:
                self._process.kill()
                self._process.join()
                raise EngineStoppedError(f"the engine process did not start (exit code {self._process.exitcode}"
                                         f"{'' if waited <= timeout else f', no answer in {timeout:g} s'})")
        message = self._conn.recv()
        if message[0] == "failed":
            self._process.join(10)
            _, kind, text = message
            raise (ModelLoadError if kind == "load" else EngineStoppedError)(text)
        return message[1]

    # -- the engine's interface ------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> None:
        check_request(request)
        with self._lock:
            if self.error is not None or self._stopping:
                raise EngineStoppedError(self.error or "the generation engine is shut down")
            if len(self._requests) >= self.max_batch_size + self.max_queue:
                raise QueueFullError(f"{self.max_queue} requests are already waiting")
            rid = next(self._ids)
            self._requests[rid] = request
            self._unstarted.add(rid)
        grammar = None
        if request.grammar is not None:
            if not self._tokenizer_info_sent:  # the engine process needs it to rebuild grammars
                self._send(("tokenizer_info", request.grammar.tokenizer_info.serialize_json()))
                self._tokenizer_info_sent = True
            grammar = request.grammar.serialize_json()
        try:
            self._send(("submit", rid, {name: getattr(request, name) for name in REQUEST_FIELDS}, grammar))
        except EngineStoppedError:
            with self._lock:
                self._requests.pop(rid, None)
                self._unstarted.discard(rid)
            raise
        request.on_cancel = lambda: self._cancel(rid)
        if request.cancelled.is_set():  # cancelled while being sent
            self._cancel(rid)

    @property
    def waiting(self) -> int:
        """Answers submitted that have had no event yet (waiting for a batch slot, or in prefill)."""
        return len(self._unstarted)

    @property
    def running(self) -> int:
        """Answers being decoded (their first event came, their last has not)."""
        with self._lock:
            return len(self._requests) - len(self._unstarted)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stops the engine process (requests in flight end with an error event) and waits for it."""
        with self._lock:
            self._stopping = True
        try:
            self._send(("shutdown",))
        except EngineStoppedError:
            pass
        self._process.join(timeout)
        if self._process.is_alive():
            logger.warning("the engine process did not stop in %g s; killing it", timeout)
            self._process.kill()
            self._process.join()
        self._reader.join(timeout)
        self._conn.close()

    # -- plumbing --------------------------------------------------------------------------------

    def _send(self, message: tuple) -> None:
        try:
            with self._send_lock:
                self._conn.send(message)
        except (OSError, ValueError) as e:  # a closed or broken pipe: the engine process is gone
            raise EngineStoppedError(self.error or f"the engine process is gone ({e})") from None

    def _cancel(self, rid: int) -> None:
        with self._lock:
            if rid not in self._requests:
                return
        try:
            self._send(("cancel", rid))
        except EngineStoppedError:
            pass  # its request ends with the engine's error event

    def _read(self) -> None:
        """The reader thread: one message per decoding step, its events handed to their requests."""
        try:
            while True:
                _, events, self.steps, self.peak_batch, (self.prefix_hits, self.prefix_reused_tokens) = \
                    self._conn.recv()
                for rid, event in events:
                    with self._lock:
                        request = self._requests.get(rid)
                        self._unstarted.discard(rid)
                        if event[0] in FINAL:
                            self._requests.pop(rid, None)
                    if request is not None:
                        _deliver(request, event)
        except (EOFError, OSError):
            pass
        self._process.join(5)
        with self._lock:
            if self._stopping:
                self.error = "server shutting down"
            else:
                self.error = (f"the generation engine process exited unexpectedly (exit code "
                              f"{self._process.exitcode}); restart the server")
                logger.error(self.error)
            orphans = list(self._requests.values())
            self._requests.clear()
            self._unstarted.clear()
        for request in orphans:
            _deliver(request, ("error", self.error))


def _deliver(request: GenerationRequest, event: tuple) -> None:
    try:
        request.emit(event)
    except Exception:  # noqa: BLE001 - one answer's callback must not stop the others' events
        logger.exception("an answer's event callback failed")


# -- the engine process --------------------------------------------------------------------------


def engine_main(conn, spec: EngineSpec) -> None:
    """The engine process: loads the model, runs a `GenerationEngine` on its worker thread, and reads
    submissions and cancellations on this (main) thread until told to stop or its pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C reaches the whole process group: the server stops us
    lock = threading.Lock()
    outbox: list[tuple[int, tuple]] = []
    requests: dict[int, GenerationRequest] = {}
    engine = None

    def post(rid: int, event: tuple) -> None:  # a request's emit, on the engine's worker thread
        with lock:
            outbox.append((rid, event))
            if event[0] in FINAL:
                requests.pop(rid, None)

    def flush() -> None:  # the engine's on_step: everything this step emitted, in one message
        with lock:
            if not outbox:
                return
            events = outbox[:]
            outbox.clear()
        try:
            conn.send(("events", events, engine.steps, engine.peak_batch,
                       (engine.prefix_hits, engine.prefix_reused_tokens)))
        except OSError:  # the HTTP process is gone; the main thread sees end-of-file and stops the engine
            pass

    try:
        import torch

        from .loading import load_config, load_model

        if spec.seed is not None:
            torch.manual_seed(spec.seed)
        model = load_model(spec.model_path, load_config(spec.model_path, spec.trust_remote_code),
                           spec.trust_remote_code, spec.dtype)
        # the HTTP side counts admissions against max_batch_size + max_queue; this queue never refuses first
        engine = GenerationEngine(model, spec.pad_token_id, max_batch_size=spec.max_batch_size,
                                  max_queue=spec.max_batch_size + spec.max_queue, num_threads=spec.num_threads,
                                  on_step=flush, static_cache=spec.static_kv_cache,
                                  compile_decode=spec.compile_decode, context=spec.context,
                                  prefix_cache=spec.prefix_cache, one_row_step=spec.one_row_step)
    except BaseException as e:  # noqa: BLE001 - reported to the HTTP process, which raises it
        kind = "load" if isinstance(e, (ModelLoadError, OSError)) else "other"
        conn.send(("failed", kind, f"the engine process could not start: {type(e).__name__}: {e}"))
        return
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    conn.send(("ready", {"num_threads": engine.num_threads, "free_cpus": engine.free_cpus,
                         "decode_path": engine.decode_path, "compile_seconds": engine.compile_seconds,
                         "vocab_size": engine.vocab_size,
                         "embedding_size": model.get_input_embeddings().num_embeddings,
                         "eos_token_ids": [eos] if isinstance(eos, int) else list(eos or [])}))
    tokenizer_info = None
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the HTTP process is gone: stop rather than run orphaned
            break
        kind = message[0]
        if kind == "submit":
            _, rid, fields, grammar = message
            try:
                if grammar is not None:
                    import xgrammar as xgr

                    grammar = xgr.CompiledGrammar.deserialize_json(grammar, tokenizer_info)
                request = GenerationRequest(emit=lambda event, rid=rid: post(rid, event), grammar=grammar, **fields)
                with lock:
                    requests[rid] = request
                engine.submit(request)
            except (QueueFullError, ValueError, RuntimeError) as e:
                post(rid, ("error", f"generation failed: {type(e).__name__}: {e}"))
        elif kind == "cancel":
            with lock:
                request = requests.get(message[1])
            if request is not None:
                request.cancel()
        elif kind == "tokenizer_info":
            import xgrammar as xgr

            tokenizer_info = xgr.TokenizerInfo.deserialize_json(message[1])
        elif kind == "shutdown":
            break
    engine.shutdown()  # requests still in flight get "server shutting down", sent by the last on_step
    conn.close()
