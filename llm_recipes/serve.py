"""`llm-recipes serve DIR`: an OpenAI-compatible API and a chat page that collects feedback.

    llm-recipes serve runs/quickstart/sft/final --output_dir runs/quickstart/serve
    # then: open http://127.0.0.1:8000/  or  OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="-")
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys

import torch

from .cli import entry_point
from .config import beside_model, parse_config
from .pipeline.envelope import StageRun
from .serving import build_server
from .serving.config import API_KEY_ENV, ServeConfig
from .serving.feedback_store import FeedbackStoreError
from .serving.loading import ModelLoadError
from .serving.runner import ServerThread


def config_classes() -> tuple[type, ...]:
    return (ServeConfig,)


def main(argv: list[str] | None = None) -> int:
    (cfg,) = parse_config(config_classes(), argv, stage="serve", positional="model_path")
    cfg.output_dir = cfg.output_dir or beside_model(cfg.model_path, "serve")
    if cfg.torch_num_threads:
        torch.set_num_threads(cfg.torch_num_threads)
    torch.manual_seed(cfg.seed)
    api_key = cfg.api_key or os.environ.get(API_KEY_ENV) or None
    feedback_path = os.path.join(cfg.output_dir, "feedback.sqlite")
    try:
        app, engine, store = build_server(dataclasses.replace(cfg, api_key=api_key), feedback_path)
    except (ModelLoadError, FeedbackStoreError, OSError) as e:
        print(f"llm-recipes serve: error: {e}", file=sys.stderr)
        return 2
    # the model loaded and the store opened: this run's record replaces the last one (no key on disk)
    run = StageRun("serve", cfg.output_dir, dataclasses.replace(cfg, api_key="***" if api_key else None),
                   secrets=(api_key,))
    run.start()
    settings = app.state.settings
    server = ServerThread(app, host=cfg.host, port=cfg.port, log_level="info")
    print(f"serving {settings.model_name!r} from {cfg.model_path} (context {settings.context_window} tokens, "
          f"batch {cfg.max_batch_size}, {engine.num_threads} CPU thread(s) for decoding in engine process {engine.pid}"
          f"{'' if engine.free_cpus is None else f' ({engine.free_cpus} of {os.cpu_count()} CPUs free at start)'}, "
          f"{'API key required' if api_key else 'no API key'})")
    print(f"decoding: {engine.decode_path}")
    print(f"feedback is stored in {feedback_path}")
    def stop_on_sigterm(signum, frame):  # `kill`, systemd, docker stop: shut down like Ctrl+C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        server.start()
        print(f"chat page: {server.url}/   OpenAI API: {server.url}/v1   (Ctrl+C stops)", flush=True)
        server.thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        engine.shutdown()
        rows = store.count()
        store.close()
    run.complete(feedback_rows=rows, feedback_path=feedback_path)
    print(f"stopped; {rows} feedback rows in {feedback_path}")
    return 0


if __name__ == "__main__":
    sys.exit(entry_point("serve", main))
