"""vLLM, for real, on our model folders: greedy tokens against transformers, and throughput beside ours.

vLLM runs from its own virtual environment (made by `benchmarks/serve/vllm_setup.sh VENV`) as its
OpenAI server, `python -m vllm.entrypoints.openai.api_server`, on 127.0.0.1, one server at a time;
this script runs with the project's python (transformers and `llm-recipes serve` come from there).

greedy      serve the native RecipeGPT folder (`--trust-remote-code`: vLLM's Transformers backend runs
            our modeling file from the folder) and its `llm-recipes export --to llama` folder; ask
            greedy token-id completions (temperature 0, `ignore_eos`) and compare vLLM's token ids with
            transformers' `generate(do_sample=False)` on the same prompts. One JSON line per folder.
throughput  the same model and the same streaming chat requests through `llm-recipes serve` and through
            vLLM (the native folder, then the Llama export), one server after the other in the same
            run, with benchmarks/serve/load_test.py's clients and statistics (its per-answer feedback
            post is answered on the client side for every server: vLLM has no /v1/feedback).
all         both.

    python benchmarks/serve/vllm_check.py greedy                    # builds a quickstart-size random model
    python benchmarks/serve/vllm_check.py all --model_path runs/quickstart/dpo/final --json_out results.jsonl

The vLLM python: --vllm_python, else $LLM_RECIPES_VLLM_PYTHON, else /work/vllm-venv/bin/python.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load_test  # noqa: E402  (the load-test clients and statistics are shared, not copied)

DEFAULT_VLLM_PYTHON = "/work/vllm-venv/bin/python"
SERVED_NAME = "bench"  # load_test's requests name this model
PROMPTS = [
    "The",
    "Return a",
    "This module provides",
    "Parameters\n----------\n",
    "The os.path.join function",
    "class Foo:\n    def __init__(self):",
    "A list comprehension is",
    "Exceptions are raised when",
]


def vllm_python(explicit: str | None = None) -> str | None:
    """The python of a virtual environment where vLLM is installed, or None: `explicit`, else
    $LLM_RECIPES_VLLM_PYTHON when set (empty: none), else /work/vllm-venv/bin/python where it exists."""
    candidate = explicit or os.environ.get("LLM_RECIPES_VLLM_PYTHON", DEFAULT_VLLM_PYTHON)
    if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
        return candidate
    return None


def build_quickstart_model(folder: Path) -> Path:
    """A randomly initialised RecipeGPT of the quickstart's size (recipes/quickstart/pretrain.yaml: the micro
    preset with 4 layers, context 128 = seq_len, a 4,096-token BPE), for when no trained model exists."""
    from llm_recipes.model import RecipeGPTConfig, presets

    def quickstart_size(preset, **overrides):
        return presets.config_from_preset(preset,
                                          **{**overrides, "num_hidden_layers": 4, "max_position_embeddings": 128})

    with mock.patch("llm_recipes.model.config_from_preset", quickstart_size):  # load_test imports it at call time
        load_test.build_random_model(folder, "micro")
    config = RecipeGPTConfig.from_pretrained(folder)
    assert (config.num_hidden_layers, config.hidden_size, config.max_position_embeddings) == (4, 256, 128), config
    return folder


def export_llama(native: Path, out: Path) -> Path:
    """`llm-recipes export NATIVE --to llama --output_dir OUT`, as a user runs it."""
    subprocess.run([sys.executable, "-m", "llm_recipes", "export", str(native), "--to", "llama",
                    "--output_dir", str(out)],
                   check=True, stdout=subprocess.DEVNULL, timeout=600)
    return out


def prompt_ids(folder: Path) -> list[list[int]]:
    from transformers import AutoTokenizer

    import llm_recipes  # noqa: F401  (registers RecipeGPT: its folder's config needs no remote code here)

    tokenizer = AutoTokenizer.from_pretrained(folder)
    return [tokenizer(text)["input_ids"] for text in PROMPTS]


def transformers_greedy(folder: Path, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    """transformers' greedy continuation of each prompt, exactly max_tokens long (no stop on EOS, like
    vLLM's ignore_eos), one prompt at a time (no padding)."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    import llm_recipes  # noqa: F401  (registers RecipeGPT with transformers' Auto classes)

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    config = copy.deepcopy(model.generation_config)
    config.update(do_sample=False, max_new_tokens=max_tokens, min_new_tokens=None, eos_token_id=None,
                  temperature=None, top_p=None, top_k=None)
    out = []
    with torch.inference_mode():
        for ids in prompts:
            generated = model.generate(torch.tensor([ids]), generation_config=config)
            out.append(generated[0, len(ids):].tolist())
    return out


def vllm_greedy(url: str, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    out = []
    for ids in prompts:
        response = httpx.post(url + "/v1/completions", timeout=300, json={
            "model": SERVED_NAME, "prompt": ids, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "return_token_ids": True})
        if response.status_code != 200:
            raise RuntimeError(f"vLLM answered HTTP {response.status_code}: {response.text[:1000]}")
        out.append(response.json()["choices"][0]["token_ids"])
    return out


def _tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _wait_healthy(proc: subprocess.Popen, url: str, timeout_s: float, log: Path) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM exited with {proc.returncode} before it was ready; last lines of {log}:\n"
                               + _tail(log))
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"vLLM did not answer /health within {timeout_s:.0f} s (log: {log})")


def _stop(proc: subprocess.Popen) -> None:
    """End the server's whole process group (vLLM starts an engine-core child): SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the group, if any


@contextlib.contextmanager
def vllm_server(model: Path, python: str, log: Path, *, trust_remote_code: bool, max_model_len: int,
                max_num_seqs: int, enforce_eager: bool = False, startup_timeout_s: float = 600,
                env_overrides: dict | None = None):
    """vLLM's OpenAI server on 127.0.0.1 for `model`; yields its URL and always ends it. `env_overrides`: its
    CPU backend's settings (VLLM_CPU_OMP_THREADS_BIND, VLLM_CPU_NUM_OF_RESERVED_CPU, VLLM_CPU_KVCACHE_SPACE ...)."""
    port = load_test.free_port()
    args = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(port),
            "--dtype", "float32", "--max-model-len", str(max_model_len), "--max-num-seqs", str(max_num_seqs),
            # >= seqs x model length: no prompt is prefilled in chunks (a seeded request whose prompt is
            # chunked kills the CPU engine: "CPU Generator does not use offset")
            "--max-num-batched-tokens", str(max_num_seqs * max_model_len)]
    if trust_remote_code:
        args.append("--trust-remote-code")
    if enforce_eager:
        args.append("--enforce-eager")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
           "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false", **(env_overrides or {})}
    env.pop("PYTHONPATH", None)  # nothing of this project leaks into vLLM's interpreter
    with open(log, "w") as log_file:
        proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=tempfile.gettempdir(),
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.perf_counter()
        _wait_healthy(proc, url, startup_timeout_s, log)
        print(f"vllm: {model} ready in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        yield url
    finally:
        _stop(proc)


@contextlib.contextmanager
def ours_server(model: Path, out: Path, max_batch_size: int, tree: Path | None = None, threads: int | None = None,
                extra_args: tuple[str, ...] = ()):
    """`llm-recipes serve` on 127.0.0.1 (load_test's start-up); yields (process, URL) and always ends it.
    With `tree`, that source tree's code: PYTHONPATH and the working directory both set to it (`python -m`
    puts the working directory before PYTHONPATH, so PYTHONPATH alone would run the caller's tree)."""
    env = None if tree is None else {**os.environ, "PYTHONPATH": str(tree)}
    proc, url = load_test.start_server(model.resolve(), out.resolve(), max_batch_size, threads, env=env,
                                       cwd=None if tree is None else str(tree), extra_args=extra_args)
    try:
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def greedy_check(folder: Path, python: str, log: Path, *, native: bool, max_tokens: int = 16,
                 enforce_eager: bool = False, prompts: list[list[int]] | None = None) -> dict:
    """vLLM's greedy tokens vs transformers' on the same token-id prompts, for one folder."""
    prompts = prompts or prompt_ids(folder)
    expected = transformers_greedy(folder, prompts, max_tokens)
    config = json.loads((folder / "config.json").read_text())
    max_len = min(config["max_position_embeddings"], max(map(len, prompts)) + max_tokens + 16)
    with vllm_server(folder, python, log, trust_remote_code=native, max_model_len=max_len, max_num_seqs=4,
                     enforce_eager=enforce_eager) as url:
        try:
            got = vllm_greedy(url, prompts, max_tokens)
        except RuntimeError as e:
            raise RuntimeError(f"{e}\nlast lines of {log}:\n" + _tail(log)) from None
    equal = sum(a == b for a, b in zip(got, expected))
    first_mismatch = next(({"prompt": p, "vllm": a, "transformers": b}
                           for p, a, b in zip(prompts, got, expected) if a != b), None)
    return {"mode": "greedy", "folder": str(folder), "kind": "native" if native else "llama-export",
            "model_type": config["model_type"], "equal": equal, "total": len(prompts), "max_tokens": max_tokens,
            "first_mismatch": first_mismatch}


def _without_feedback(request):
    """load_test.one_request posts a thumbs up/down after each answer; vLLM has no /v1/feedback, so neither
    server gets it here (like for like): the post is answered on the client side."""

    class Client:
        def __init__(self, client):
            self._client = client

        def stream(self, *args, **kwargs):
            return self._client.stream(*args, **kwargs)

        async def post(self, path, **kwargs):
            if path == "/v1/feedback":
                return httpx.Response(200)
            return await self._client.post(path, **kwargs)

    async def one_request(client, i, max_tokens):
        return await request(Client(client), i, max_tokens)

    return one_request


def _load(url: str, clients: list[int], requests: list[int], max_tokens: int) -> list[dict]:
    httpx.post(url + "/v1/chat/completions", timeout=300, json={  # warm-up, not counted
        "model": SERVED_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).raise_for_status()
    rows = []
    with mock.patch.object(load_test, "one_request", _without_feedback(load_test.one_request)):
        for n, count in zip(clients, requests):
            load = os.getloadavg()[0]
            row = asyncio.run(load_test.run_load(url, n, count, max_tokens))
            rows.append({**row, "loadavg_1min": [round(load, 2), round(os.getloadavg()[0], 2)]})
    return rows


def throughput(native: Path, llama: Path | None, python: str, work: Path, clients: list[int], requests: list[int],
               max_tokens: int) -> list[dict]:
    """The same chat requests through `llm-recipes serve` (native folder) and vLLM (native folder through its
    Transformers backend; the Llama export through its own Llama), one server at a time, same run."""
    config = json.loads((native / "config.json").read_text())
    max_len, seqs = config["max_position_embeddings"], max(clients)
    servers = [("llm-recipes serve", native), ("vllm native", native)] + (
        [("vllm llama-export", llama)] if llama else [])
    rows = []
    for n, (server, folder) in enumerate(servers):
        started = time.perf_counter()
        if server.startswith("vllm"):
            context = vllm_server(folder, python, work / f"vllm-throughput-{n}.log",
                                  trust_remote_code=folder == native, max_model_len=max_len, max_num_seqs=seqs)
        else:
            context = ours_server(folder, work / "serve-throughput", max_batch_size=seqs)
        with context as handle:
            url = handle if isinstance(handle, str) else handle[1]
            for row in _load(url, clients, requests, max_tokens):
                row.update(mode="throughput", server=server, model=str(folder), max_tokens=max_tokens)
                rows.append(row)
                print(json.dumps(row), flush=True)
        print(f"{server}: {time.perf_counter() - started:.0f} s with start-up", file=sys.stderr, flush=True)
    return rows


def print_table(rows: list[dict]) -> None:
    print("\n| server | clients | requests | errors | output tok/s | TTFT p50 | TTFT p99 | time/token p50 "
          "| load avg (1 min) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['server']} | {r['clients']} | {r['requests']} | {r['errors']} | {r['output_tokens_per_s']:.0f} | "
              f"{r['ttft_p50_s'] * 1000:.0f} ms | {r['ttft_p99_s'] * 1000:.0f} ms | "
              f"{(r['tpot_p50_s'] or 0) * 1000:.1f} ms | "
              f"{r['loadavg_1min'][0]:.1f} -> {r['loadavg_1min'][1]:.1f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["greedy", "throughput", "all"])
    parser.add_argument("--model_path",
                        help="native RecipeGPT folder; default: a random model of the quickstart's size")
    parser.add_argument("--llama_path", help="its Llama export; default: exported here with `llm-recipes export`")
    parser.add_argument("--vllm_python", help="python of the vLLM venv (default: $LLM_RECIPES_VLLM_PYTHON, "
                                              f"else {DEFAULT_VLLM_PYTHON})")
    parser.add_argument("--max_tokens", type=int, default=16, help="greedy answer length")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--requests", type=int, nargs="+", default=[16, 128], help="requests per client count")
    parser.add_argument("--load_max_tokens", type=int, default=48, help="answer length in the throughput run")
    parser.add_argument("--enforce_eager", action="store_true", help="greedy: vLLM without compilation (faster start)")
    parser.add_argument("--json_out", help="append the JSON lines here too")
    args = parser.parse_args(argv)
    if len(args.requests) != len(args.clients):
        parser.error("--requests needs one count per --clients value")
    python = vllm_python(args.vllm_python)
    if python is None:
        print("vLLM is not installed: run benchmarks/serve/vllm_setup.sh VENV and pass --vllm_python "
              "VENV/bin/python (or set LLM_RECIPES_VLLM_PYTHON)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="vllm-check-"))
    native = Path(args.model_path) if args.model_path else build_quickstart_model(work / "native")
    llama = Path(args.llama_path) if args.llama_path else export_llama(native, work / "llama")
    rows = []
    if args.mode in ("greedy", "all"):
        prompts = prompt_ids(native)
        for folder, is_native in ((native, True), (llama, False)):
            row = greedy_check(folder, python, work / f"vllm-{'native' if is_native else 'llama'}.log",
                               native=is_native, max_tokens=args.max_tokens, enforce_eager=args.enforce_eager,
                               prompts=prompts)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.mode in ("throughput", "all"):
        load_rows = throughput(native, llama, python, work, args.clients, args.requests, args.load_max_tokens)
        rows += load_rows
        print_table(load_rows)
    if args.json_out:
        with open(args.json_out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"logs: {work}", file=sys.stderr)
    greedy_ok = all(r["equal"] == r["total"] for r in rows if r["mode"] == "greedy")
    load_ok = all(r["errors"] == 0 for r in rows if r["mode"] == "throughput")
    return 0 if greedy_ok and load_ok else 1


if __name__ == "__main__":
    sys.exit(main())
