"""The serve stage's configuration: `llm-recipes serve` parses it, and the server is built from it whole
(`serving.build_server(cfg)`)."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    static_kv_cache: bool = field(default=True, metadata={
        "help": "decode with a preallocated KV cache and a fused decode step that reads the model's weights "
                "(RecipeGPT; on the quickstart model a step costs a quarter of the transformers forward's CPU, the "
                "server 1.5x less per streamed token); other "
                "models, or false, decode through the transformers forward (the path taken is printed at start)"})
    compile_decode: bool = field(default=False, metadata={
        "help": "compile the static decode step with torch.compile (inductor, a C++ compiler) at start: "
                "15-95 s more start-up on 2 busy cores for 5-20 percent less CPU per step; when compilation fails the "
                "step stays eager and the reason is printed at start"})
    prefix_cache: int = field(default=4, metadata={
        "help": "with the static KV cache: keys and values of this many finished answers are kept, and a prompt "
                "that starts with one's tokens (the chat page re-sends the conversation every turn) prefills only "
                "the rest; 0 turns it off"})
    one_row_step: str = field(default="numba", metadata={
        "help": "with the static KV cache, the step when one request decodes alone: numba (the whole step and the "
                "choice of its token in one compiled call; numba comes with the serve extra, compiled at start in "
                "~5-10 s the first time, then loaded from numba's cache in under a second; without numba, the numpy "
                "step), numpy (~2x less CPU per step than the torch step on the quickstart model) or torch; numba and "
                "numpy run float32 on the CPU only (else the torch step), give logits within ~1.5e-5 of the torch "
                "step's and the same draws for a seed, and prefill a request admitted alone in numpy; batches always "
                "take the torch step; the start-up line says which step runs"})
    seed: int = field(default=0, metadata={"help": "global torch seed (requests may pass their own `seed`)"})
