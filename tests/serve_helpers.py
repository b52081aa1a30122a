"""Helpers for the serving tests: a real server on a free loopback port, always shut down."""

from __future__ import annotations

import contextlib
import threading
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


def collector(n: int):
    """What n engine requests emit: (tokens per request, finish event per request, an Event set when all n
    finished, make(i) -> request i's emit callback)."""
    results = {i: [] for i in range(n)}
    finish = {}
    done = threading.Event()

    def make(i):
        def emit(event):
            if event[0] == "token":
                results[i].append(event[1])
            else:
                finish[i] = event
                if len(finish) == n:
                    done.set()
        return emit

    return results, finish, done, make


def held_steps():
    """(released, on_step): an engine `on_step` that holds the worker after its first turn until `released` is set.
    Requests submitted meanwhile are all waiting at its next turn, so they join the running batch however fast the
    machine decodes (staggered sleeps alone let a fast step finish a request before the next one arrived)."""
    released = threading.Event()
    return released, lambda: released.wait(30)
