"""Serving a model: batched generation engine, OpenAI-compatible FastAPI app, feedback store."""

from __future__ import annotations

import os

from ..config import default_model_name
from .config import ServeConfig


def build_server(cfg: ServeConfig, feedback_path: str | os.PathLike):
    """Loads `cfg.model_path` and wires engine, feedback store and app together, from the serve config whole
    (`cfg.api_key`, when set, is required on the /v1 routes). The feedback store is opened first, so a damaged
    one stops start-up (FeedbackStoreError) before the model is loaded.

    The model runs in an engine process of its own (`engine_process`); this process keeps the tokenizer
    and the HTTP side.

    Returns:
        (app, engine, store): the engine is the engine process's `EngineClient`; call `engine.shutdown()`
        and `store.close()` when done.
    """
    # FastAPI and the engine come from the `serve` extra; `llm-recipes feedback` reads the store without them
    from .app import ServerSettings, create_app, default_allowed_hosts
    from .engine_process import EngineClient, EngineSpec
    from .feedback_store import FeedbackStore
    from .loading import ModelLoadError, load_config_and_tokenizer, torch_dtype
    from .loading import context_window as model_context_window
    from .static_decode import check_one_row_step

    try:  # before anything is opened or started; reported as a bad dtype is (`llm-recipes serve: error: ...`)
        check_one_row_step(cfg.one_row_step)
    except ValueError as e:
        raise ModelLoadError(str(e)) from None
    store = FeedbackStore(feedback_path)
    # the folder, its tokenizer and the dtype are checked here, so a bad one is refused before a process starts
    config, tokenizer = load_config_and_tokenizer(cfg.model_path, trust_remote_code=cfg.trust_remote_code)
    torch_dtype(cfg.dtype)
    window = model_context_window(config, tokenizer)
    if cfg.context_window:
        window = min(window, int(cfg.context_window))
    settings = ServerSettings(config=cfg, model_name=cfg.served_model_name or default_model_name(cfg.model_path),
                              context_window=window,
                              allowed_hosts=list(cfg.allowed_hosts or default_allowed_hosts(cfg.host)))
    try:
        engine = EngineClient(EngineSpec(model_path=str(cfg.model_path), pad_token_id=tokenizer.pad_token_id,
                                         max_batch_size=cfg.max_batch_size, max_queue=cfg.max_queue,
                                         num_threads=cfg.torch_num_threads, trust_remote_code=cfg.trust_remote_code,
                                         dtype=cfg.dtype, seed=cfg.seed, static_kv_cache=cfg.static_kv_cache,
                                         compile_decode=cfg.compile_decode, context=window,
                                         prefix_cache=cfg.prefix_cache, one_row_step=cfg.one_row_step))
    except BaseException:
        store.close()
        raise
    try:
        app = create_app(engine, tokenizer, store, settings)
    except BaseException:
        engine.shutdown()
        store.close()
        raise
    return app, engine, store
