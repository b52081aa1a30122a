"""The OpenAI-compatible HTTP API and the chat page, as a FastAPI app around a GenerationEngine.

Routes: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions` (both with
`stream: true` as server-sent events), `POST /v1/feedback` (ours: thumbs and suggested answers),
`GET /health`, and the chat page at `/`. Every error is a JSON body in OpenAI's shape
`{"error": {"message", "type", "param", "code"}}` with a 4xx status for bad input, so OpenAI clients
raise their usual exceptions and the server keeps running.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .engine import GenerationEngine, GenerationRequest, QueueFullError
from .feedback_store import FeedbackStore
from .schemas import ChatCompletionRequest, CompletionRequest, FeedbackRequest
from .text import StreamingDetokenizer

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


@dataclass
class ServerSettings:
    """Limits and identity of a running server (see `ServeConfig` for what each means)."""

    model_name: str
    context_window: int
    max_tokens_cap: int = 512
    default_max_tokens: int = 256
    request_timeout_s: float = 120.0
    max_body_bytes: int = 1_000_000
    api_key: str | None = None


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
    """ASGI middleware: refuses request bodies over `max_bytes` with a 413 before they are parsed,
    by Content-Length when given and by counting the bytes otherwise (chunked uploads)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(scope, receive, send)
        received, started = 0, False

        class TooLarge(Exception):
            pass

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise TooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except TooLarge:
            if not started:
                await self._reject(scope, receive, send)

    async def _reject(self, scope, receive, send):
        response = error_response(413, f"request body is larger than this server's limit of {self.max_bytes} bytes",
                                  code="request_too_large")
        await response(scope, receive, send)


def create_app(engine: GenerationEngine, tokenizer, store: FeedbackStore, settings: ServerSettings) -> FastAPI:
    """Builds the FastAPI app.

    Args:
        engine: the running generation engine (owns the model).
        tokenizer: the model's tokenizer (chat template for chat requests).
        store: where feedback rows go.
        settings: limits, model name, optional API key.
    """
    app = FastAPI(title="llm_recipes server", docs_url=None, redoc_url=None)
    app.state.engine, app.state.store, app.state.settings = engine, store, settings
    stop_ids = _stop_token_ids(engine.model, tokenizer)
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
                return error_response(400, f"malformed JSON in the request body: {err.get('ctx', {}).get('error', err.get('msg'))}",
                                      code="invalid_json")
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", []) if p != "body"]
        param = ".".join(loc) or None
        message = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', []) if p != 'body') or 'body'}: {e.get('msg')}"
                            for e in errors[:5])
        return error_response(400, f"invalid request: {message}", param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        kind = "not_found" if exc.status_code == 404 else None
        return error_response(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=kind)

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")

    # -- auth ------------------------------------------------------------------------------------

    @app.middleware("http")
    async def _check_api_key(request: Request, call_next):
        if settings.api_key and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
                return error_response(401, "invalid or missing API key: send 'Authorization: Bearer <key>'",
                                      code="invalid_api_key")
        return await call_next(request)

    # -- routes ----------------------------------------------------------------------------------

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_name, "waiting": engine.waiting, "running": engine.running,
                "context_window": settings.context_window, "max_tokens_cap": settings.max_tokens_cap,
                "auth_required": bool(settings.api_key)}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": created,
                                            "owned_by": "llm_recipes"}]}

    @app.get("/v1/models/{model_id:path}")
    async def model_info(model_id: str):
        _check_model(model_id, settings)
        return {"id": settings.model_name, "object": "model", "created": created, "owned_by": "llm_recipes"}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        _check_model(body.model, settings)
        prompt_ids = tokenizer(body.prompt)["input_ids"]
        return await _respond(body, prompt_ids, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        _check_model(body.model, settings)
        if not tokenizer.chat_template:
            raise APIError(400, "this model's tokenizer has no chat template: use /v1/completions", param="messages")
        messages = [{"role": m.role, "content": m.content} for m in body.messages]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]  # the template adds BOS itself
        if body.max_completion_tokens is not None and body.max_tokens is None:
            body.max_tokens = body.max_completion_tokens
        return await _respond(body, prompt_ids, chat=True)

    @app.post("/v1/feedback")
    async def feedback(body: FeedbackRequest):
        if body.rating is None and not (body.suggestion or "").strip():
            raise APIError(400, "feedback needs a rating ('up' or 'down') or a non-empty suggestion", param="rating")
        rating = {"up": 1, "down": -1, None: None}[body.rating]
        row_id = await run_in_threadpool(
            store.add, model=body.model or settings.model_name,
            messages=[{"role": m.role, "content": m.content} for m in body.messages],
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

    # -- generation ------------------------------------------------------------------------------

    async def _respond(body, prompt_ids: list[int], chat: bool):
        if not prompt_ids:
            raise APIError(400, "the prompt is empty", param="prompt")
        max_tokens = _resolve_max_tokens(body.max_tokens, len(prompt_ids), settings)
        request_id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        events = _generate(engine, tokenizer, prompt_ids, max_tokens, body, stop_ids, settings.request_timeout_s)
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            first = await _first_event(events)  # queue-full errors become a 503 before the stream starts
            stream = _sse(first, events, request_id, settings.model_name, chat, include_usage, len(prompt_ids))
            return StreamingResponse(stream, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        text, finish, n_tokens = "", None, 0
        async for delta, finish_reason, count in events:
            text += delta
            finish, n_tokens = finish_reason or finish, count
        usage = {"prompt_tokens": len(prompt_ids), "completion_tokens": n_tokens,
                 "total_tokens": len(prompt_ids) + n_tokens}
        now = int(time.time())
        if chat:
            return {"id": request_id, "object": "chat.completion", "created": now, "model": settings.model_name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": finish, "logprobs": None}], "usage": usage}
        return {"id": request_id, "object": "text_completion", "created": now, "model": settings.model_name,
                "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}], "usage": usage}

    return app


def _check_model(name: str, settings: ServerSettings) -> None:
    if name != settings.model_name:
        raise APIError(404, f"the model {name!r} does not exist on this server; it serves {settings.model_name!r}",
                       param="model", code="model_not_found")


def _resolve_max_tokens(requested: int | None, prompt_tokens: int, settings: ServerSettings) -> int:
    room = settings.context_window - prompt_tokens
    if room < 1:
        raise APIError(400, f"the prompt is {prompt_tokens} tokens; this model's context window is "
                            f"{settings.context_window} tokens, which leaves no room for an answer",
                       param="messages", code="context_length_exceeded")
    if requested is None:
        return min(settings.default_max_tokens, settings.max_tokens_cap, room)
    if requested > settings.max_tokens_cap:
        raise APIError(400, f"max_tokens {requested} is above this server's cap of {settings.max_tokens_cap}",
                       param="max_tokens", code="max_tokens_exceeded")
    if requested > room:
        raise APIError(400, f"the prompt ({prompt_tokens} tokens) plus max_tokens ({requested}) exceeds this model's "
                            f"context window of {settings.context_window} tokens",
                       param="max_tokens", code="context_length_exceeded")
    return requested


def _stop_token_ids(model, tokenizer) -> frozenset[int]:
    ids = set()
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return frozenset(ids)


async def _generate(engine, tokenizer, prompt_ids, max_tokens, body, stop_ids, timeout_s) -> AsyncIterator[tuple]:
    """Submits one request and yields `(text delta, finish_reason or None, completion tokens so far)`.

    Raises APIError 503 when the queue is full and 408 when the time limit passes; the engine request is
    cancelled whenever the consumer stops early (client gone) or an error occurs.
    """
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    request = GenerationRequest(prompt_ids=list(prompt_ids), max_new_tokens=max_tokens,
                                emit=lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev),
                                temperature=body.temperature, top_p=body.top_p,
                                stop_ids=frozenset() if body.ignore_eos else stop_ids, seed=body.seed)
    try:
        engine.submit(request)
    except QueueFullError as e:
        raise APIError(503, f"server overloaded: {e}; retry later", type="server_error", code="server_overloaded",
                       headers={"Retry-After": "1"}) from None
    detok = StreamingDetokenizer(tokenizer, stop=body.stop)
    deadline = loop.time() + timeout_s
    count = 0
    try:
        while True:
            try:
                kind, value = await asyncio.wait_for(events.get(), timeout=max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise APIError(408, f"the request took longer than this server's limit of {timeout_s:g} s",
                               type="timeout_error", code="request_timeout") from None
            if kind == "token":
                count += 1
                delta, stopped = detok.add(value)
                if stopped:
                    yield delta, "stop", count
                    return
                if delta:
                    yield delta, None, count
            elif kind == "done":
                yield detok.flush(), "stop" if value == "stop" else "length", count
                return
            else:
                raise APIError(500, value, type="server_error")
    finally:
        request.cancel()


async def _first_event(events):
    try:
        return await events.__anext__()
    except StopAsyncIteration:
        return None


async def _sse(first, events, request_id, model_name, chat, include_usage, prompt_tokens) -> AsyncIterator[bytes]:
    created = int(time.time())
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(delta_text: str | None, finish: str | None, role: bool = False) -> bytes:
        if chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if delta_text is not None:
                delta["content"] = delta_text
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": delta_text or "", "finish_reason": finish, "logprobs": None}
        payload = {"id": request_id, "object": kind, "created": created, "model": model_name, "choices": [choice]}
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()

    count = 0
    try:
        if chat:
            yield chunk("", None, role=True)
        pending = [first] if first is not None else []
        while True:
            if pending:
                event = pending.pop()
            else:
                try:
                    event = await events.__anext__()
                except StopAsyncIteration:
                    break
            delta, finish, count = event
            if delta:
                yield chunk(delta, None)
            if finish:
                yield chunk(None if chat else "", finish)
                break
        if include_usage:
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": count,
                     "total_tokens": prompt_tokens + count}
            payload = {"id": request_id, "object": kind, "created": created, "model": model_name, "choices": [],
                       "usage": usage}
            yield f"data: {json.dumps(payload)}\n\n".encode()
        yield b"data: [DONE]\n\n"
    except APIError as e:  # a stream already answered 200: report the error in-band, as OpenAI does
        yield f"data: {json.dumps({'error': {'message': e.message, 'type': e.type, 'code': e.code}})}\n\n".encode()
        yield b"data: [DONE]\n\n"
    finally:
        await events.aclose()  # cancels the engine request when the client went away
