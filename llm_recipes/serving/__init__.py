"""Serving a model: batched generation engine, OpenAI-compatible FastAPI app, feedback store."""

from __future__ import annotations

import os

from ..config import default_model_name


def build_server(model_path: str | os.PathLike, feedback_path: str | os.PathLike, *, model_name: str | None = None,
                 trust_remote_code: bool = False, dtype: str = "float32", max_batch_size: int = 8,
                 max_queue: int = 64, max_tokens_cap: int = 512, default_max_tokens: int = 256,
                 context_window: int | None = None, request_timeout_s: float = 120.0,
                 max_body_bytes: int = 1_000_000, api_key: str | None = None, num_threads: int | None = None,
                 host: str = "127.0.0.1", allowed_hosts: list[str] | None = None):
    """Loads the model and wires engine, feedback store and app together. `num_threads`: CPU threads for
    decoding (default: one for a model under 10M parameters on the CPU, else torch's; see
    `engine.decode_threads`). `allowed_hosts`: Host header names the server answers (default: from the
    bound `host`, see `app.default_allowed_hosts`). The feedback store is opened first, so a damaged one
    stops start-up (FeedbackStoreError) before the model is loaded.

    Returns:
        (app, engine, store); call `engine.shutdown()` and `store.close()` when done.
    """
    from .app import ServerSettings, create_app, default_allowed_hosts
    from .engine import GenerationEngine
    from .feedback_store import FeedbackStore
    from .loading import context_window as model_context_window
    from .loading import load_for_serving

    store = FeedbackStore(feedback_path)
    model, tokenizer = load_for_serving(model_path, trust_remote_code=trust_remote_code, dtype=dtype)
    window = model_context_window(model, tokenizer)
    if context_window:
        window = min(window, int(context_window))
    settings = ServerSettings(model_name=model_name or default_model_name(model_path), context_window=window,
                              max_tokens_cap=max_tokens_cap, default_max_tokens=default_max_tokens,
                              request_timeout_s=request_timeout_s, max_body_bytes=max_body_bytes, api_key=api_key,
                              allowed_hosts=list(allowed_hosts or default_allowed_hosts(host)))
    engine = GenerationEngine(model, tokenizer.pad_token_id, max_batch_size=max_batch_size, max_queue=max_queue,
                              num_threads=num_threads)
    app = create_app(engine, tokenizer, store, settings)
    return app, engine, store
