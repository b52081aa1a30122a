"""Bounded loopback load test of `llm-recipes serve`: N concurrent streaming chat clients, a fixed number
of requests, one feedback row per answer.

Starts the real server (`python -m llm_recipes.serve`) in a subprocess on 127.0.0.1, so clients and
server do not share a GIL, then for each client count runs `--requests` streamed chat completions
(`max_tokens` fixed, `ignore_eos` so every answer has the same length) and posts a thumbs up/down for
each answer. Reports errors, lost feedback rows (stored rows vs acknowledged), p50/p99 time to first
token, p50 time per output token and aggregate output tokens/s.

    python benchmarks/serve/load_test.py                       # builds a random-weight model of the micro preset
    python benchmarks/serve/load_test.py --model_path runs/quickstart/sft/final --clients 1 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def build_random_model(folder: Path, preset: str) -> Path:
    """A RecipeGPT of the given preset with random weights and a BPE tokenizer trained on the pydoc topics."""
    import pydoc_data.topics

    import torch
    from transformers import GenerationConfig

    from llm_recipes.model import RecipeGPTForCausalLM, config_from_preset
    from llm_recipes.tokenizer.bpe import end_of_turn_token_ids, save_tokenizer, train_bpe

    texts = [t for t in pydoc_data.topics.topics.values() if len(t) > 200]
    tok = train_bpe(texts, vocab_size=4096, model_max_length=512)
    torch.manual_seed(0)
    config = config_from_preset(preset, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = RecipeGPTForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=end_of_turn_token_ids(tok), pad_token_id=tok.pad_token_id)
    model.save_pretrained(folder)
    save_tokenizer(tok, folder)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_path: Path, out: Path, max_batch_size: int,
                 threads: int | None, env: dict | None = None, cwd: str | None = None,
                 extra_args: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    port = free_port()
    args = [sys.executable, "-m", "llm_recipes.serve", str(model_path), "--output_dir", str(out), "--port", str(port),
            "--served_model_name", "bench", "--max_batch_size", str(max_batch_size), "--max_queue", "256"]
    if threads:
        args += ["--torch_num_threads", str(threads)]
    args += list(extra_args)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300  # a compiled decode step (--compile_decode) takes a minute on a busy machine
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("server did not start in 300 s")


# fields added to (or, with None, removed from) every request body: another server's way to the same answers
# (llama.cpp's server ignores `ignore_eos`; throughput_ab.py bans its end tokens through logit_bias instead)
EXTRA_BODY: dict = {}


async def one_request(client: httpx.AsyncClient, i: int, max_tokens: int) -> dict:
    messages = [
        {"role": "user", "content": f"Question {i}: how do I read a file line by line in Python? " * (1 + i % 3)}
    ]
    body = {"model": "bench", "messages": messages, "max_tokens": max_tokens, "temperature": 0.8, "seed": i,
            "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    body = {k: v for k, v in {**body, **EXTRA_BODY}.items() if v is not None}
    start = time.perf_counter()
    first = None
    text, tokens, finish = "", 0, None
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            return {"error": f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"}
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if "error" in data:
                return {"error": data["error"]["message"]}
            if data.get("usage"):
                tokens = data["usage"]["completion_tokens"]
            if data["choices"] and data["choices"][0].get("finish_reason"):
                finish = data["choices"][0]["finish_reason"]
            if data["choices"] and data["choices"][0]["delta"].get("content"):
                first = first or time.perf_counter()
                text += data["choices"][0]["delta"]["content"]
    end = time.perf_counter()
    if not tokens and finish == "length":  # a server that sends no usage in streams: the whole budget was used
        tokens = max_tokens
    feedback = await client.post("/v1/feedback", json={"messages": messages, "completion": text,
                                                      "rating": "up" if i % 2 else "down"})
    if feedback.status_code != 200:
        return {"error": f"feedback HTTP {feedback.status_code}"}
    return {"ttft": (first or end) - start, "latency": end - start, "tokens": tokens,
            "tpot": (end - first) / max(tokens - 1, 1) if first else None}


async def run_load(url: str, clients: int, requests: int, max_tokens: int) -> dict:
    counter = iter(range(requests))
    results = []

    async def worker(client):
        for i in counter:  # shared iterator: exactly `requests` requests in total
            try:
                results.append(await one_request(client, i, max_tokens))
            except Exception as e:  # noqa: BLE001 - counted as an error of the run
                results.append({"error": f"{type(e).__name__}: {e}"})

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        wall = time.perf_counter() - start
    ok = [r for r in results if "error" not in r]
    ttft = sorted(r["ttft"] for r in ok)
    tpot = sorted(r["tpot"] for r in ok if r["tpot"] is not None)

    def pct(values, q):
        return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else float("nan")

    return {"clients": clients, "requests": len(results), "errors": len(results) - len(ok),
            "error_examples": [r["error"] for r in results if "error" in r][:3], "wall_s": wall,
            "ttft_p50_s": pct(ttft, 0.5), "ttft_p99_s": pct(ttft, 0.99),
            "tpot_p50_s": statistics.median(tpot) if tpot else None,
            "output_tokens": sum(r["tokens"] for r in ok), "output_tokens_per_s": sum(r["tokens"] for r in ok) / wall,
            "feedback_acknowledged": len(ok)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", help="model folder; default: a random-weight model of --preset")
    parser.add_argument("--preset", default="micro")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--requests", type=int, nargs="+", default=[16, 128], help="requests per client count")
    parser.add_argument("--max_tokens", type=int, default=64)
    parser.add_argument("--max_batch_size", type=int, nargs="+", default=[32], help="server batch sizes to try")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the server")
    parser.add_argument("--json_out", help="write the results here as JSON")
    args = parser.parse_args()
    if len(args.requests) != len(args.clients):
        parser.error("--requests needs one count per --clients value")
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    model_path = Path(args.model_path) if args.model_path else build_random_model(work / "model", args.preset)
    rows = []
    for batch in args.max_batch_size:
        for clients, requests in zip(args.clients, args.requests):
            out = work / f"serve-b{batch}-c{clients}"
            proc, url = start_server(model_path, out, batch, args.threads)
            try:
                httpx.post(url + "/v1/chat/completions", timeout=120, json={  # warm-up, not counted
                    "model": "bench", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
                before = httpx.get(url + "/v1/feedback/stats").json()["rows"]
                result = asyncio.run(run_load(url, clients, requests, args.max_tokens))
                stored = httpx.get(url + "/v1/feedback/stats").json()["rows"] - before
            finally:
                proc.terminate()
                proc.wait(30)
            result.update(max_batch_size=batch, feedback_stored=stored,
                          lost_feedback_rows=result["feedback_acknowledged"] - stored)
            rows.append(result)
            print(json.dumps(result), flush=True)
    print()
    print("| server batch | clients | requests | errors | lost feedback | TTFT p50 | TTFT p99 | time/token p50 "
          "| output tok/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['max_batch_size']} | {r['clients']} | {r['requests']} | {r['errors']} "
              f"| {r['lost_feedback_rows']} | "
              f"{r['ttft_p50_s'] * 1000:.0f} ms | {r['ttft_p99_s'] * 1000:.0f} ms | {r['tpot_p50_s'] * 1000:.1f} ms | "
              f"{r['output_tokens_per_s']:.0f} |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r["errors"] == 0 and r["lost_feedback_rows"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
