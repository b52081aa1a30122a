"""The OpenAI-compatible HTTP API and the chat page, as a FastAPI app around a GenerationEngine.

Routes: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions` (both with
`stream: true` as server-sent events, `n` answers per prompt, log-probabilities, and for completions
several prompts, token-id prompts and `echo`), vLLM's `/tokenizer_info`, `/tokenize` and `/detokenize`,
`POST /v1/feedback` (ours: thumbs and suggested answers), `GET /health`, and the chat page at `/`.
Every error is a JSON body in OpenAI's shape `{"error": {"message", "type", "param", "code"}}` with a
4xx status for bad input, so OpenAI clients raise their usual exceptions and the server keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import anyio
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from .config import ServeConfig
from .engine import GenerationRequest, QueueFullError
from .engine_process import EngineClient, EngineStoppedError
from .feedback_store import FeedbackStore
from .metrics import ServerMetrics
from .schemas import ChatCompletionRequest, CompletionRequest, DetokenizeRequest, FeedbackRequest, TokenizeRequest
from .structured import GrammarCompiler, StructuredOutputError
from .text import StreamingDetokenizer, TokenText

STATIC_DIR = Path(__file__).resolve().parent / "static"
TOKENIZER_ROUTES = ("/tokenizer_info", "/tokenize", "/detokenize")  # vLLM's paths, outside /v1
KEYED_ROUTES = (*TOKENIZER_ROUTES, "/metrics")  # behind the API key (when one is set), as /v1/ is
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
# OpenAI APIs this server does not have, and what to use instead (said in the 404)
NOT_IMPLEMENTED = {
    "/v1/responses": " (the Responses API is not implemented by this server; use /v1/chat/completions)",
    "/v1/embeddings": " (this server generates text only; it has no embeddings)",
}


@dataclass
class ServerSettings:
    """The serve config, whole, and what start-up resolved from it: the name clients send, the context window
    the loaded model allows, the Host names answered."""

    config: ServeConfig
    model_name: str
    context_window: int
    allowed_hosts: list[str] = field(default_factory=lambda: list(LOOPBACK_NAMES))

    @property
    def api_key(self) -> str | None:
        return self.config.api_key


class APIError(Exception):
    """An error answered as OpenAI does: HTTP status plus `{"error": {message, type, param, code}}`."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.type, self.param, self.code, self.headers)


def error_response(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


class BodySizeLimit:
    """ASGI middleware: refuses request bodies over `max_bytes` with a 413 before the app sees them, by
    Content-Length when given and by counting the bytes otherwise (chunked uploads). The body is read here
    in full (it is at most `max_bytes`) and handed on, so an oversized chunked body is answered 413 rather
    than failing inside FastAPI's body parsing (which would make it a 400)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._reject(scope, receive, send)
            if not message.get("more_body", False):
                break
        delivered = False

        async def replay():  # the whole body once, then the real channel (to notice a disconnect)
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope, receive, send):
        response = error_response(413, f"request body is larger than this server's limit of {self.max_bytes} bytes",
                                  code="request_too_large")
        await response(scope, receive, send)


def default_allowed_hosts(bound_host: str) -> list[str]:
    """Host headers a server bound to `bound_host` accepts: the loopback names for a local server (so a web
    page cannot reach it through DNS rebinding: its requests carry the attacker's host name), the bound
    address plus loopback for a specific one, anything ("*") for 0.0.0.0 / :: (name the hosts with
    `--allowed_hosts` to check there too)."""
    if bound_host in ("0.0.0.0", "::", ""):
        return ["*"]
    return list(dict.fromkeys([bound_host, *LOOPBACK_NAMES]))


class HostCheck:
    """ASGI middleware: answers 400 to a request whose Host header is not in `allowed` (names without the
    port; "*" allows any; "*.example.com" any subdomain), as Starlette's TrustedHostMiddleware does, with an
    OpenAI-style error body that says how to allow the name."""

    def __init__(self, app, allowed: list[str]):
        self.app = app
        self.allowed = [h.lower() for h in allowed]
        self.any = "*" in self.allowed

    def allows(self, host: str) -> bool:
        if self.any:
            return True
        name = host.lower()
        if name.startswith("["):  # [::1]:8000
            name = name[: name.find("]") + 1]
        else:
            name = name.rsplit(":", 1)[0] if name.count(":") == 1 else name
        return any(name == h or (h.startswith("*.") and name.endswith(h[1:])) for h in self.allowed)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        if self.allows(host):
            return await self.app(scope, receive, send)
        response = error_response(400, f"Host header {host!r} is not allowed by this server (allowed: "
                                       f"{', '.join(self.allowed)}); to serve under that name, start it with "
                                       "--allowed_hosts", code="invalid_host")
        await response(scope, receive, send)


# the chat page needs nothing but its own origin: no inline script, no framing by other sites
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class SecurityHeaders:
    """ASGI middleware: adds `SECURITY_HEADERS` to every response."""

    def __init__(self, app):
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        await self.app(scope, receive, with_headers)


class KeyAndCount:
    """ASGI middleware: refuses /v1/ and `KEYED_ROUTES` without `Authorization: Bearer <api_key>` (when a key
    is set) with a 401, and counts every answered request by route template and status in `requests`."""

    def __init__(self, app, api_key: str | None, requests, route_of):
        self.app, self.api_key, self.requests, self.route_of = app, api_key, requests, route_of

    def authorized(self, scope) -> bool:
        path = scope["path"]
        if not self.api_key or not (path.startswith("/v1/") or path in KEYED_ROUTES):
            return True
        given = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = None

        async def send_counted(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        if self.authorized(scope):
            await self.app(scope, receive, send_counted)
        else:
            await error_response(401, "invalid or missing API key: send 'Authorization: Bearer <key>'",
                                 code="invalid_api_key")(scope, receive, send_counted)
        if status is not None:  # an exception escaping the app is answered (500) and counted nowhere, as before
            self.requests.labels(route=self.route_of(scope), status=str(status)).inc()


def create_app(engine: EngineClient, tokenizer, store: FeedbackStore, settings: ServerSettings) -> FastAPI:
    """Builds the FastAPI app.

    Args:
        engine: the running engine process's client (the model is there).
        tokenizer: the model's tokenizer (chat template for chat requests).
        store: where feedback rows go.
        settings: limits, model name, optional API key.
    """
    app = FastAPI(title="llm_recipes server", docs_url=None, redoc_url=None)
    app.state.engine, app.state.store, app.state.settings = engine, store, settings
    app.state.metrics = metrics = ServerMetrics(engine, store)
    stop_ids = _stop_token_ids(engine.eos_token_ids, tokenizer)
    vocab_size = engine.embedding_size
    token_text = TokenText(tokenizer)
    grammars = GrammarCompiler(tokenizer, engine.vocab_size, stop_ids)
    special_ids = frozenset(tokenizer.all_special_ids)
    created = int(time.time())

    # -- errors ----------------------------------------------------------------------------------

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        errors = exc.errors()
        for err in errors:
            if err.get("type") == "json_invalid":
                return error_response(400, "malformed JSON in the request body: "
                                           f"{err.get('ctx', {}).get('error', err.get('msg'))}",
                                      code="invalid_json")
        # a union field (prompt: text or list...) fails once per member: a value error (the value was of the
        # right type but not acceptable) says more than "should be a valid list", so it comes first
        errors = sorted(errors, key=lambda e: e.get("type") != "value_error")
        first = errors[0] if errors else {}
        param = _field_path(first.get("loc", [])) or None
        message = "; ".join(f"{_field_path(e.get('loc', [])) or 'body'}: {e.get('msg')}" for e in errors[:5])
        if first.get("type") == "extra_forbidden":
            return error_response(400, f"unknown field {param!r}: this server does not support it (see "
                                       "docs/deploy.md for the fields it takes)", param=param)
        return error_response(400, f"invalid request: {message}", param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        kind = "not_found" if exc.status_code == 404 else None
        hint = next((h for prefix, h in NOT_IMPLEMENTED.items() if request.url.path.startswith(prefix)), "")
        return error_response(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}{hint}", code=kind)

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")

    # -- auth and request counts ------------------------------------------------------------------

    def route_of(scope) -> str:
        """The route's template (/v1/models/{model_id}), not the raw path; a request refused before routing
        (401) is matched here."""
        route = scope.get("route") or next((r for r in app.router.routes if r.matches(scope)[0] == Match.FULL), None)
        return getattr(route, "path", "unmatched")

    # auth and request counts as a plain ASGI middleware: Starlette's `@app.middleware("http")` passes every
    # streamed chunk through an extra task and memory stream, which at 32 streaming clients cost the event
    # loop more than the answer itself (benchmarks/README.md, "Serving throughput")
    app.add_middleware(KeyAndCount, api_key=settings.api_key, requests=metrics.requests, route_of=route_of)

    # -- routes ----------------------------------------------------------------------------------

    @app.get("/health")
    async def health():
        if engine.error is not None:  # the engine process is gone: say so to load balancers and people
            return JSONResponse({"status": "error", "error": engine.error, "model": settings.model_name},
                                status_code=503)
        return {"status": "ok", "model": settings.model_name, "waiting": engine.waiting, "running": engine.running,
                "context_window": settings.context_window, "max_tokens_cap": settings.config.max_tokens_cap,
                "default_max_tokens": settings.config.default_max_tokens,
                "auth_required": bool(settings.api_key)}

    @app.get("/metrics")
    async def prometheus_metrics():
        body, content_type = await run_in_threadpool(metrics.exposition)  # reads the feedback store
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": created,
                                            "owned_by": "llm_recipes"}]}

    @app.get("/v1/models/{model_id:path}")
    async def model_info(model_id: str):
        _check_model(model_id, settings)
        return {"id": settings.model_name, "object": "model", "created": created, "owned_by": "llm_recipes"}

    # Tokenizing and templating run on a worker thread, never on the event loop: a 1 MB prompt takes about a
    # second to tokenize, and /health and streams must answer meanwhile. At most two at a time: each holds the
    # GIL through long C calls (turning 500,000 ids into a list, serialising them), and twelve at once kept the
    # event loop waiting behind all of them (/health up to 1.3 s on a quiet machine, 2026-12-05).
    tokenizing = anyio.CapacityLimiter(2)

    async def off_loop(func, *args, **kwargs):
        return await anyio.to_thread.run_sync(functools.partial(func, *args, **kwargs), limiter=tokenizing)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        _check_model(body.model, settings)
        prompts = []
        for prompt in body.prompts:
            if isinstance(prompt, str):
                prompts.append((await off_loop(_encode, tokenizer, prompt), prompt))
                continue
            _check_token_ids(prompt, vocab_size, "prompt")
            prompts.append((list(prompt), None))
        return await _respond(body, prompts, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        _check_model(body.model, settings)
        prompt_ids = await off_loop(_chat_prompt_ids, tokenizer, body.messages, True)
        if body.max_completion_tokens is not None and body.max_tokens is None:
            body.max_tokens = body.max_completion_tokens
        grammar = None
        if body.structured:
            spec = body.response_format.json_schema
            try:  # compiled on a worker thread; a schema that takes longer than a request may is refused
                grammar = await asyncio.wait_for(run_in_threadpool(
                    grammars.compile, body.response_format.type, spec.json_schema if spec else None,
                    bool(spec and spec.strict)), timeout=settings.config.request_timeout_s)
            except StructuredOutputError as e:
                raise APIError(400, str(e), param="response_format") from None
            except asyncio.TimeoutError:
                raise APIError(400, f"the JSON schema took longer than {settings.config.request_timeout_s:g} s "
                                    "to compile",
                               param="response_format") from None
        return await _respond(body, [(prompt_ids, None)], chat=True, grammar=grammar)

    # vLLM's tokenizer routes: lm-evaluation-harness's local-completions uses them when present, so it
    # needs no copy of the tokenizer on the client side
    @app.get("/tokenizer_info")
    async def tokenizer_info():
        return {"tokenizer_class": type(tokenizer).__name__, "eos_token": tokenizer.eos_token,
                "bos_token": tokenizer.bos_token, "pad_token": tokenizer.pad_token,
                "chat_template": tokenizer.chat_template, "model_max_length": settings.context_window}

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        if body.model is not None:
            _check_model(body.model, settings)

        def work() -> bytes:  # the answer is serialised there too: 300,000 ids are slow to encode
            if body.messages is not None:
                ids = _chat_prompt_ids(tokenizer, body.messages, add_generation_prompt=body.add_generation_prompt)
            else:
                ids = _encode(tokenizer, body.prompt, add_special_tokens=body.add_special_tokens)
            return json.dumps({"tokens": ids, "count": len(ids), "max_model_len": settings.context_window}).encode()

        return Response(await off_loop(work), media_type="application/json")

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        if body.model is not None:
            _check_model(body.model, settings)
        _check_token_ids(body.tokens, vocab_size, "tokens")
        return {"prompt": await off_loop(tokenizer.decode, body.tokens)}  # the /tokenize limit: it holds the GIL too

    @app.post("/v1/feedback")
    async def feedback(body: FeedbackRequest):
        if body.rating is None and not (body.suggestion or "").strip():
            raise APIError(400, "feedback needs a rating ('up' or 'down') or a non-empty suggestion", param="rating")
        rating = {"up": 1, "down": -1, None: None}[body.rating]
        row_id = await run_in_threadpool(
            store.add, model=body.model or settings.model_name,
            messages=_plain_messages(body.messages),
            completion=body.completion, rating=rating, suggestion=(body.suggestion or "").strip() or None,
            response_id=body.response_id)
        return {"id": row_id, "object": "feedback"}

    @app.get("/v1/feedback/stats")
    async def feedback_stats():
        return {"rows": await run_in_threadpool(store.count)}

    @app.get("/")
    async def chat_page():
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # outermost last: security headers on every answer, then the Host check, then the body limit
    app.add_middleware(BodySizeLimit, max_bytes=settings.config.max_body_bytes)
    app.add_middleware(HostCheck, allowed=settings.allowed_hosts)
    app.add_middleware(SecurityHeaders)

    # -- generation ------------------------------------------------------------------------------

    async def _respond(body, prompts: list[tuple[list[int], str | None]], chat: bool, grammar=None):
        """Generates `body.n` answers for each prompt (ids, text as sent or None) and answers in
        OpenAI's shape: choice `index` is prompt number x n + answer number, as in OpenAI and vLLM."""
        n = body.n
        if len(prompts) * n > engine.max_queue:
            raise APIError(400, f"{len(prompts)} prompt(s) x n={n} is more answers than this server queues at once "
                                f"({engine.max_queue}); split the request",
                           param="prompt" if len(prompts) > 1 else "n")
        if any(not ids for ids, _ in prompts):
            raise APIError(400, "the prompt is empty", param="prompt")
        if body.logit_bias:
            _check_token_ids([int(t) for t in body.logit_bias], vocab_size, "logit_bias")
        if chat:  # alternatives per token, None for no log-probabilities
            top = (body.top_logprobs or 0) if body.logprobs else None
        else:
            top = body.logprobs
        echo = not chat and body.echo
        request_id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        started = time.monotonic()
        sequences = []
        for p, (ids, text) in enumerate(prompts):
            max_tokens = _resolve_max_tokens(body.max_tokens, len(ids), settings)
            for k in range(n):
                sequences.append(_Sequence(index=p * n + k, prompt_ids=ids, max_tokens=max_tokens,
                                           seed=None if body.seed is None else body.seed + k,
                                           echo_text=_echo_text(tokenizer, ids, text) if echo else ""))
        _submit_all(engine, sequences, body, top, echo and top is not None, stop_ids, grammar)
        metrics.prompt_tokens.inc(sum(len(ids) for ids, _ in prompts))
        pieces = _merged([_pieces(s, tokenizer, body.stop, settings.config.request_timeout_s, metrics, started)
                          for s in sequences], sequences)

        def usage_of():  # called when the answers are complete
            prompt_tokens, completion_tokens = sum(len(ids) for ids, _ in prompts), sum(s.count for s in sequences)
            return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens}

        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            logprobs_json = None if top is None else (
                lambda entries, seq: _logprobs_json(entries, seq, chat, token_text, special_ids))
            stream = _sse(pieces, sequences, request_id, settings.model_name, chat, include_usage, usage_of,
                          logprobs_json)
            return StreamingResponse(stream, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        texts = {s.index: "" for s in sequences}
        entries = {s.index: [] for s in sequences}
        finish = {}
        async with contextlib.aclosing(pieces):  # closing cancels the engine requests if this handler stops
            async for seq, piece in pieces:
                texts[seq.index] += piece.text
                entries[seq.index] += piece.tokens
                if piece.finish:
                    finish[seq.index] = piece.finish
        choices = []
        for seq in sequences:
            logprobs = None
            if top is not None:
                logprobs = _logprobs_json(entries[seq.index], seq, chat, token_text, special_ids)
            if chat:
                choices.append({"index": seq.index, "message": {"role": "assistant", "content": texts[seq.index]},
                                "finish_reason": finish.get(seq.index), "logprobs": logprobs})
            else:
                choices.append({"index": seq.index, "text": texts[seq.index], "finish_reason": finish.get(seq.index),
                                "logprobs": logprobs})
        return {"id": request_id, "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": settings.model_name, "choices": choices, "usage": usage_of()}

    return app


@dataclass
class _Sequence:
    """One answer being generated: its choice index, prompt, engine request and event queue."""

    index: int
    prompt_ids: list[int]
    max_tokens: int
    seed: int | None
    echo_text: str = ""
    request: GenerationRequest | None = None
    events: asyncio.Queue | None = None
    count: int = 0  # answer tokens so far
    offset: int = 0  # characters of this choice's text already covered by text_offset (legacy logprobs)


@dataclass
class _Piece:
    """What one answer adds at a time: text, (token id, logprob, top alternatives) of the tokens it covers,
    and the finish reason on the last piece."""

    text: str
    tokens: list = field(default_factory=list)
    finish: str | None = None


_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list"}


def _field_path(loc) -> str:
    """`("body", "prompt", "function-after[...]")` -> `prompt`: the field's path without pydantic's
    union-member tags."""
    return ".".join(str(p) for p in loc if p != "body" and not (isinstance(p, str) and (
        p in _TYPE_TAGS or "[" in p or "-" in p)))


def _check_model(name: str, settings: ServerSettings) -> None:
    if name != settings.model_name:
        raise APIError(404, f"the model {name!r} does not exist on this server; it serves {settings.model_name!r}",
                       param="model", code="model_not_found")


def _check_token_ids(ids: list[int], vocab_size: int, param: str) -> None:
    bad = next((t for t in ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise APIError(400, f"token id {bad} in {param} is outside this model's vocabulary "
                            f"(ids 0 to {vocab_size - 1})",
                       param=param)


def _plain_messages(messages) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in messages]


def _chat_prompt_ids(tokenizer, messages, add_generation_prompt: bool) -> list[int]:
    """The conversation through the model's chat template, as token ids (the template adds BOS itself)."""
    if not tokenizer.chat_template:
        raise APIError(400, "this model's tokenizer has no chat template: use /v1/completions", param="messages")
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template(_plain_messages(messages), add_generation_prompt=add_generation_prompt,
                                             tokenize=False)
    except TemplateError as e:  # the template's own checks (`raise_exception`): the conversation's fault
        raise APIError(400, f"the model's chat template refused these messages: {e}", param="messages") from None
    return _encode(tokenizer, text, add_special_tokens=False)


def _encode(tokenizer, text: str, add_special_tokens: bool = True) -> list[int]:
    """Token ids of one text (run on a worker thread: the tokenizer holds the GIL for at most ~50-130 ms at
    a time on a 1 MB text, measured, so the event loop keeps answering meanwhile)."""
    return tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]


def _echo_text(tokenizer, ids: list[int], text: str | None) -> str:
    """The prompt as echoed: the string as sent, or the token ids' text without special tokens."""
    return text if text is not None else tokenizer.decode(ids, skip_special_tokens=True)


def _resolve_max_tokens(requested: int | None, prompt_tokens: int, settings: ServerSettings) -> int:
    room = settings.context_window - prompt_tokens
    if requested == 0:  # echo only: the prompt is scored, nothing generated
        if room < 0:
            raise APIError(400, f"the prompt is {prompt_tokens} tokens; this model's context window is "
                                f"{settings.context_window} tokens", param="prompt", code="context_length_exceeded")
        return 0
    if room < 1:
        raise APIError(400, f"the prompt is {prompt_tokens} tokens; this model's context window is "
                            f"{settings.context_window} tokens, which leaves no room for an answer",
                       param="messages", code="context_length_exceeded")
    if requested is None:
        return min(settings.config.default_max_tokens, settings.config.max_tokens_cap, room)
    if requested > settings.config.max_tokens_cap:
        raise APIError(400, f"max_tokens {requested} is above this server's cap of {settings.config.max_tokens_cap}",
                       param="max_tokens", code="max_tokens_exceeded")
    if requested > room:
        raise APIError(400, f"the prompt ({prompt_tokens} tokens) plus max_tokens ({requested}) exceeds this model's "
                            f"context window of {settings.context_window} tokens",
                       param="max_tokens", code="context_length_exceeded")
    return requested


def _stop_token_ids(eos, tokenizer) -> frozenset[int]:
    """The model's end tokens (its generation config's, `eos`) and the tokenizer's."""
    ids = set()
    for value in (list(eos), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return frozenset(ids)


class _EventRelay:
    """Hands engine events from the worker thread to their answers' asyncio queues, with one wake-up of the
    event loop for all the events that arrive before it runs (the engine emits a whole batch's tokens in one
    go) instead of a `call_soon_threadsafe` (a write to the loop's self-pipe, a wake-up, a callback) per token.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue, tuple]] = []

    def emit(self, events: asyncio.Queue, event: tuple) -> None:  # on the worker thread
        with self._lock:
            self._pending.append((events, event))
            if len(self._pending) > 1:  # a delivery is already scheduled and has not run yet
                return
        self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:  # on the event loop
        with self._lock:
            pending, self._pending = self._pending, []
        for events, event in pending:
            events.put_nowait(event)


_relays: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> its _EventRelay


def _relay() -> _EventRelay:
    loop = asyncio.get_running_loop()
    relay = _relays.get(loop)
    if relay is None:
        relay = _relays[loop] = _EventRelay(loop)
    return relay


def _submit_all(engine, sequences: list[_Sequence], body, top: int | None, prompt_logprobs: bool,
                stop_ids: frozenset[int], grammar=None) -> None:
    """Queues every answer's engine request; when the queue fills part-way, the ones queued are cancelled
    and the client gets a 503 (nothing half-answered)."""
    relay = _relay()
    for seq in sequences:
        seq.events = events = asyncio.Queue()
        seq.request = GenerationRequest(
            prompt_ids=list(seq.prompt_ids), max_new_tokens=seq.max_tokens,
            emit=functools.partial(relay.emit, events),
            temperature=body.temperature, top_p=body.top_p, top_k=max(body.top_k, 0), min_p=body.min_p,
            presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
            repetition_penalty=body.repetition_penalty,
            logit_bias={int(t): b for t, b in (body.logit_bias or {}).items()} or None, grammar=grammar,
            stop_ids=frozenset() if body.ignore_eos else stop_ids, seed=seq.seed, logprobs=top,
            prompt_logprobs=prompt_logprobs)
        try:
            engine.submit(seq.request)
        except (QueueFullError, EngineStoppedError) as e:
            for other in sequences:
                if other.request is not None:
                    other.request.cancel()
            if isinstance(e, EngineStoppedError):
                raise APIError(503, f"the server cannot generate: {e}", type="server_error",
                               code="engine_unavailable") from None
            raise APIError(503, f"server overloaded: {e}; retry later", type="server_error", code="server_overloaded",
                           headers={"Retry-After": "1"}) from None


async def _pieces(seq: _Sequence, tokenizer, stop: list[str], timeout_s: float, metrics: ServerMetrics,
                  started: float) -> AsyncIterator[_Piece]:
    """Turns one answer's engine events into pieces of text (stop strings applied, split characters held
    back), timing its tokens (from `started`, the request's arrival) for the metrics. Raises APIError 408
    when the time limit passes and 500 on an engine error; the engine request is cancelled whenever the
    consumer stops early (client gone) or an error occurs.

    All the events waiting when the answer wakes up become one piece: a client (or event loop) that falls
    behind the engine gets several tokens per chunk instead of a growing backlog of one-token chunks."""
    loop = asyncio.get_running_loop()
    detok = StreamingDetokenizer(tokenizer, stop=stop)
    # the limit counts from the request's arrival, queueing included: every event is checked against the
    # deadline (events that waited in the queue do not outrun it), and one timer per answer puts a time-out
    # event in its queue for an answer whose events stop coming (cheaper than a wait_for per token)
    deadline = started + timeout_s
    timer = loop.call_at(loop.time() + max(0.0, deadline - time.monotonic()), seq.events.put_nowait, ("timeout",))
    text = seq.echo_text  # goes out with the first piece
    pending: list = []  # (token id, logprob, alternatives) of tokens whose text is not out yet
    try:
        while True:
            event = await seq.events.get()
            while True:  # this event and every one already waiting
                kind = event[0]
                now = time.monotonic()
                if now > deadline:
                    kind = "timeout"
                if kind == "token":
                    seq.count += 1
                    if seq.count == 1:
                        metrics.time_to_first_token.observe(now - started)
                    else:
                        metrics.inter_token_latency.observe(now - started)
                    started = now  # from here on: the previous token's time
                    metrics.generation_tokens.inc()
                    info = event[2]
                    pending.append((event[1], None, None) if info is None else (event[1], *info))
                    delta, stopped = detok.add(event[1])
                    text += delta
                    if stopped:
                        yield _Piece(text, pending, "stop")
                        return
                elif kind == "prompt_logprobs":
                    pending += [(t, None, None) if e is None else (t, *e) for t, e in zip(seq.prompt_ids, event[1])]
                elif kind == "done":
                    yield _Piece(text + detok.flush(), pending, "stop" if event[1] == "stop" else "length")
                    return
                elif kind == "timeout":
                    raise APIError(408, f"the request took longer than this server's limit of {timeout_s:g} s",
                                   type="timeout_error", code="request_timeout")
                else:
                    raise APIError(500, event[1], type="server_error")
                if seq.events.empty():
                    break
                event = seq.events.get_nowait()
            if text:
                yield _Piece(text, pending)
                text, pending = "", []
    finally:
        timer.cancel()
        seq.request.cancel()


async def _merged(sources: list[AsyncIterator[_Piece]], sequences: list[_Sequence]) -> AsyncIterator[tuple]:
    """(sequence, piece) from several answers as they come; the first error is raised and stops them all."""
    if len(sources) == 1:  # one answer (the usual case): no pump task and queue between it and the client
        try:
            async for piece in sources[0]:
                yield sequences[0], piece
        finally:
            await sources[0].aclose()  # cancels the engine request
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(seq, pieces):
        try:
            async for piece in pieces:
                queue.put_nowait((seq, piece, None))
        except Exception as e:  # noqa: BLE001 - handed to the consumer, which raises it
            queue.put_nowait((seq, None, e))
            return
        queue.put_nowait((seq, None, None))

    tasks = [asyncio.create_task(pump(seq, pieces)) for seq, pieces in zip(sequences, sources)]
    try:
        remaining = len(tasks)
        while remaining:
            seq, piece, error = await queue.get()
            if error is not None:
                raise error
            if piece is None:
                remaining -= 1
            else:
                yield seq, piece
    finally:  # cancelling a pump closes its answer's pieces, which cancels the engine request
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _logprobs_json(entries: list, seq: _Sequence, chat: bool, token_text: TokenText, special_ids) -> dict:
    """Log-probabilities in OpenAI's shape: chat `{"content": [{token, logprob, bytes, top_logprobs}]}`,
    completions (legacy) `{tokens, token_logprobs, top_logprobs, text_offset}`, where the chosen token is
    always among `top_logprobs` (up to logprobs + 1 entries, as OpenAI documents) and an echoed prompt's
    first token has None (nothing predicts it)."""
    if chat:
        content = []
        for token, logprob, top in entries:
            text, raw = token_text(token)
            alternatives = [{"token": token_text(t)[0], "logprob": v, "bytes": list(token_text(t)[1])}
                            for t, v in top or []]
            content.append({"token": text, "logprob": logprob, "bytes": list(raw), "top_logprobs": alternatives})
        return {"content": content, "refusal": None}
    tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
    for token, logprob, top in entries:
        text = token_text(token)[0]
        tokens.append(text)
        token_logprobs.append(logprob)
        if logprob is None:
            top_logprobs.append(None)
        else:
            alternatives = {token_text(t)[0]: v for t, v in top}
            alternatives.setdefault(text, logprob)
            top_logprobs.append(alternatives)
        offsets.append(seq.offset)
        if token not in special_ids:  # special tokens are not in the returned text
            seq.offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": offsets}


async def _sse(pieces, sequences, request_id, model_name, chat, include_usage, usage_of,
               logprobs_json) -> AsyncIterator[bytes]:
    created = int(time.time())
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(index: int, delta_text: str | None, finish: str | None, logprobs=None, role: bool = False) -> bytes:
        if chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if delta_text is not None:
                delta["content"] = delta_text
            choice = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
        else:
            choice = {"index": index, "text": delta_text or "", "finish_reason": finish, "logprobs": logprobs}
        payload = {"id": request_id, "object": kind, "created": created, "model": model_name, "choices": [choice]}
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()

    try:
        if chat:
            for seq in sequences:
                yield chunk(seq.index, "", None, role=True)
        async for seq, piece in pieces:
            logprobs = logprobs_json(piece.tokens, seq) if logprobs_json and piece.tokens else None
            if piece.text or logprobs:
                yield chunk(seq.index, piece.text, None, logprobs)
            if piece.finish:
                yield chunk(seq.index, None if chat else "", piece.finish)
        if include_usage:
            payload = {"id": request_id, "object": kind, "created": created, "model": model_name, "choices": [],
                       "usage": usage_of()}
            yield f"data: {json.dumps(payload)}\n\n".encode()
        yield b"data: [DONE]\n\n"
    except APIError as e:  # a stream already answered 200: report the error in-band, as OpenAI does
        yield f"data: {json.dumps({'error': {'message': e.message, 'type': e.type, 'code': e.code}})}\n\n".encode()
        yield b"data: [DONE]\n\n"
    finally:
        await pieces.aclose()  # cancels the engine requests when the client went away
