"""Helpers for the serving tests: a real server on a free loopback port, always shut down."""

from __future__ import annotations

import contextlib
from pathlib import Path


@contextlib.contextmanager
def running_server(model_dir: Path, feedback_path: Path, **kwargs):
    """Starts the real app on uvicorn in a thread; yields (base_url, app, engine, store)."""
    from llm_recipes.serving import build_server
    from llm_recipes.serving.config import ServeConfig
    from llm_recipes.serving.runner import ServerThread

    kwargs.setdefault("max_batch_size", 4)
    kwargs.setdefault("served_model_name", "tiny")
    app, engine, store = build_server(ServeConfig(model_path=str(model_dir), **kwargs), feedback_path)
    server = ServerThread(app).start()
    try:
        yield server.url, app, engine, store
    finally:
        server.stop()
        engine.shutdown()
        store.close()
