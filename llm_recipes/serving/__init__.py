"""Serving a model: batched generation engine, OpenAI-compatible FastAPI app, feedback store."""

from __future__ import annotations

import os

from ..config import default_model_name
from .config import ServeConfig


def build_server(cfg: ServeConfig, feedback_path: str | os.PathLike):
    """Loads `cfg.model_path` and wires engine, feedback store and app together, from the serve config whole
    (`cfg.api_key`, when set, is required on the /v1 routes). The feedback store is opened first, so a damaged
    one stops start-up (FeedbackStoreError) before the model is loaded.

    Returns:
        (app, engine, store); call `engine.shutdown()` and `store.close()` when done.
    """
    # FastAPI and the engine come from the `serve` extra; `llm-recipes feedback` reads the store without them
    from .app import ServerSettings, create_app, default_allowed_hosts
    from .engine import GenerationEngine
    from .feedback_store import FeedbackStore
    from .loading import context_window as model_context_window
    from .loading import load_for_serving

    store = FeedbackStore(feedback_path)
    model, tokenizer = load_for_serving(cfg.model_path, trust_remote_code=cfg.trust_remote_code, dtype=cfg.dtype)
    window = model_context_window(model, tokenizer)
    if cfg.context_window:
        window = min(window, int(cfg.context_window))
    settings = ServerSettings(config=cfg, model_name=cfg.served_model_name or default_model_name(cfg.model_path),
                              context_window=window,
                              allowed_hosts=list(cfg.allowed_hosts or default_allowed_hosts(cfg.host)))
    engine = GenerationEngine(model, tokenizer.pad_token_id, max_batch_size=cfg.max_batch_size,
                              max_queue=cfg.max_queue, num_threads=cfg.torch_num_threads)
    app = create_app(engine, tokenizer, store, settings)
    return app, engine, store
