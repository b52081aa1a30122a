"""`llm-recipes serve DIR`: an OpenAI-compatible API and a chat page that collects feedback.

    llm-recipes serve runs/quickstart/sft/final --output_dir runs/quickstart/serve
    # then: open http://127.0.0.1:8000/  or  OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="-")
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass, field

import torch

from .cli import entry_point
from .config import beside_model, parse_config
from .pipeline.envelope import StageRun
from .serving import build_server
from .serving.feedback_store import FeedbackStoreError
from .serving.loading import ModelLoadError
from .serving.runner import ServerThread

API_KEY_ENV = "LLM_RECIPES_API_KEY"


@dataclass
class ServeConfig:
    model_path: str = field(metadata={"help": "model folder to serve (config.json, safetensors, tokenizer); "
                                              "also accepted as the first bare argument"})
    output_dir: str | None = field(default=None,
                                   metadata={"help": "folder for feedback.sqlite (the feedback store), the resolved "
                                                     "config and the completion marker; default: serve/ beside the "
                                                     "model's stage folder (runs/quickstart/dpo/final -> "
                                                     "runs/quickstart/serve), else runs/default/serve"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind; 127.0.0.1 keeps the server local, "
                                                             "0.0.0.0 exposes it to the network"})
    port: int = field(default=8000, metadata={"help": "TCP port"})
    allowed_hosts: list[str] | None = field(default=None, metadata={
        "help": "Host header names the server answers (others get HTTP 400, which stops DNS rebinding from "
                "web pages); '*' allows any, '*.example.com' subdomains; default: the loopback names for "
                "127.0.0.1, the bound address plus loopback for another address, any for 0.0.0.0"})
    served_model_name: str | None = field(default=None, metadata={
        "help": "the `model` name clients must send; default: the model folder's name (its stage's name for "
                ".../final)"})
    api_key: str | None = field(default=None, metadata={
        "help": f"require 'Authorization: Bearer <key>' on /v1/ routes; default: ${API_KEY_ENV} if set, else no key"})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "allow Python code shipped with a model of a type transformers/llm_recipes do not know "
                "(RecipeGPT never needs it)"})
    dtype: str = field(default="float32", metadata={"help": "weights dtype: float32, bfloat16 or float16"})
    max_batch_size: int = field(default=8, metadata={"help": "most requests decoded together in one forward pass"})
    max_queue: int = field(default=64, metadata={"help": "most requests waiting for a batch slot; more get HTTP 503"})
    max_tokens_cap: int = field(default=512, metadata={"help": "largest max_tokens a request may ask for (400 above)"})
    default_max_tokens: int = field(default=256, metadata={"help": "max_tokens when a request gives none "
                                                                   "(also limited by the context window)"})
    context_window: int | None = field(default=None, metadata={
        "help": "longest prompt + answer in tokens; default and upper bound: the model's max_position_embeddings"})
    request_timeout_s: float = field(default=120.0, metadata={"help": "time limit of one request, queueing "
                                                                      "included (HTTP 408 after it)"})
    max_body_bytes: int = field(default=1_000_000, metadata={"help": "largest request body in bytes (HTTP 413 above)"})
    torch_num_threads: int | None = field(default=None, metadata={
        "help": "CPU threads for decoding; default: 1 for a model under 10M parameters on the CPU (faster: fewer "
                "thread synchronisations per tiny operation), else torch's, capped at the CPUs free at start "
                "(printed at start)"})
    seed: int = field(default=0, metadata={"help": "global torch seed (requests may pass their own `seed`)"})


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
        app, engine, store = build_server(
            cfg.model_path, feedback_path, model_name=cfg.served_model_name, trust_remote_code=cfg.trust_remote_code,
            dtype=cfg.dtype, max_batch_size=cfg.max_batch_size, max_queue=cfg.max_queue,
            max_tokens_cap=cfg.max_tokens_cap, default_max_tokens=cfg.default_max_tokens,
            context_window=cfg.context_window, request_timeout_s=cfg.request_timeout_s,
            max_body_bytes=cfg.max_body_bytes, api_key=api_key, num_threads=cfg.torch_num_threads, host=cfg.host,
            allowed_hosts=cfg.allowed_hosts)
    except (ModelLoadError, FeedbackStoreError, OSError) as e:
        print(f"llm-recipes serve: error: {e}", file=sys.stderr)
        return 2
    # the model loaded and the store opened: this run's record replaces the last one (no key on disk)
    run = StageRun("serve", cfg.output_dir, ServeConfig(**{**cfg.__dict__, "api_key": "***" if api_key else None}),
                   secrets=(api_key,))
    run.start()
    settings = app.state.settings
    server = ServerThread(app, host=cfg.host, port=cfg.port, log_level="info")
    print(f"serving {settings.model_name!r} from {cfg.model_path} (context {settings.context_window} tokens, "
          f"batch {cfg.max_batch_size}, {engine.num_threads} CPU thread(s) for decoding"
          f"{'' if engine.free_cpus is None else f' ({engine.free_cpus} of {os.cpu_count()} CPUs free at start)'}, "
          f"{'API key required' if api_key else 'no API key'})")
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
