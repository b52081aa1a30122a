"""The engine alone (no HTTP), prefix caching on and off in one process: multi-turn chats as the chat page sends
them (each turn re-sends the conversation through the model's chat template), alternating rounds. Prints and
appends one JSON row per round and setting: time to first token (submit -> first token) per turn, the prompt
tokens prefilled and reused, and whether every answer equalled the other setting's (greedy).

    python benchmarks/serve/prefix_cache_ab.py runs/quickstart/dpo/final --json_out prefix.jsonl

With --serve, the same chats go through `llm-recipes serve` (`--prefix_cache 4` against `0`, a server started
for each round and setting) as streaming /v1/chat/completions requests whose assistant turns are the text of
the previous answers, as the chat page sends them; time to first token is then the first content chunk's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time

import httpx
import vllm_check  # benchmarks/serve/vllm_check.py: our server's start and stop
from rows import record  # benchmarks/serve/rows.py (the script's folder is on sys.path)

from llm_recipes.serving.engine import GenerationEngine, GenerationRequest
from llm_recipes.serving.loading import load_for_serving

QUESTIONS = ["How do I read a file?", "And write one?", "What about JSON?", "Show a loop.", "Thanks, and errors?",
             "One more tip?", "Bye."]


def chat(engine, tokenizer, answer_tokens: int, conversation: int) -> list[dict]:
    """One conversation, turn after turn until the context is full: [{turn, prompt, ttft_s, tokens}, ...]."""
    messages, turns = [], []
    for turn, question in enumerate(QUESTIONS):
        messages.append({"role": "user", "content": f"({conversation}) {question}"})
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        ids = list(ids["input_ids"] if isinstance(ids, dict) else ids)
        if len(ids) + answer_tokens > engine.context:
            break
        got, first, done = [], [], threading.Event()

        def emit(event, got=got, first=first, done=done):
            if event[0] == "token":
                first.append(first[0] if first else time.perf_counter())
                got.append(event[1])
            else:
                done.set()

        start = time.perf_counter()
        engine.submit(GenerationRequest(ids, answer_tokens, emit, temperature=0))
        done.wait(120)
        turns.append({"turn": turn, "prompt": len(ids), "ttft_s": first[0] - start, "tokens": got})
        messages.append({"role": "assistant", "content": tokenizer.decode(got, skip_special_tokens=True)})
    return turns


def chat_http(url: str, answer_tokens: int, conversation: int) -> list[dict]:
    """`chat` through the server: one conversation until the server answers 400 (the context is full)."""
    messages, turns = [], []
    with httpx.Client(base_url=url, timeout=120) as http:
        for turn, question in enumerate(QUESTIONS):
            messages.append({"role": "user", "content": f"({conversation}) {question}"})
            body = {"model": "bench", "messages": messages, "max_tokens": answer_tokens, "temperature": 0,
                    "stream": True, "ignore_eos": True}
            start, first, text = time.perf_counter(), None, ""
            with http.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code == 400:  # prompt + answer past the context window
                    break
                for line in response.iter_lines():
                    if line.startswith("data: {"):
                        choices = json.loads(line[6:])["choices"]
                        if choices and choices[0]["delta"].get("content"):
                            first = first or time.perf_counter()
                            text += choices[0]["delta"]["content"]
            turns.append({"turn": turn, "prompt": 0, "ttft_s": first - start, "tokens": text})
            messages.append({"role": "assistant", "content": text})
    return turns


def counter(url: str, name: str) -> float:
    """One counter's value from the server's /metrics."""
    line = next(line for line in httpx.get(url + "/metrics").text.splitlines() if line.startswith(name + " "))
    return float(line.split()[1])


def serve_rounds(args) -> int:
    """--serve: the chats through two servers per round, prefix cache on and off."""
    from pathlib import Path

    work = Path(tempfile.mkdtemp(prefix="prefix-cache-ab-"))
    answers = {}
    for round_ in range(args.rounds):
        settings = [("prefix cache on", "4"), ("prefix cache off", "0")]
        for name, entries in settings if round_ % 2 == 0 else settings[::-1]:
            with vllm_check.ours_server(Path(args.model_path), work / f"{name}-{round_}", 8,
                                        extra_args=("--prefix_cache", entries)) as (_, url):
                chat_http(url, args.answer_tokens, -1)  # warm-up, not counted
                load, hits = os.getloadavg()[0], counter(url, "llm_recipes_prefix_cache_hits_total")
                conversations = range(round_ * args.conversations, (round_ + 1) * args.conversations)
                turns = [t for c in conversations for t in chat_http(url, args.answer_tokens, c)]
                answers.setdefault(round_, {})[name] = [t["tokens"] for t in turns]
                later = [t["ttft_s"] for t in turns if t["turn"] > 0]
                record({"mode": "server", "round": round_ + 1, "setting": name, "turns": len(turns),
                        "ttft_first_turn_ms": 1000 * statistics.median(t["ttft_s"] for t in turns if t["turn"] == 0),
                        "ttft_later_turns_ms": 1000 * statistics.median(later),
                        "ttft_later_turns_mean_ms": 1000 * statistics.mean(later),
                        "hits": counter(url, "llm_recipes_prefix_cache_hits_total") - hits,
                        "loadavg_1min": [round(load, 2), round(os.getloadavg()[0], 2)]}, args.json_out)
    same = all(len(set(map(json.dumps, by_name.values()))) == 1 for by_name in answers.values())
    print(f"greedy answers equal with and without the prefix cache: {same}")
    return 0 if same else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_path")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--conversations", type=int, default=4)
    parser.add_argument("--answer_tokens", type=int, default=12)
    parser.add_argument("--json_out")
    parser.add_argument("--serve", action="store_true", help="through `llm-recipes serve` (HTTP), not in process")
    args = parser.parse_args()
    if args.serve:
        return serve_rounds(args)
    model, tokenizer = load_for_serving(args.model_path)
    engines = {"prefix cache on": GenerationEngine(model, tokenizer.pad_token_id, max_batch_size=8, prefix_cache=4),
               "prefix cache off": GenerationEngine(model, tokenizer.pad_token_id, max_batch_size=8, prefix_cache=0)}
    for name, engine in engines.items():  # warm-up, not counted
        chat(engine, tokenizer, args.answer_tokens, -1)
    answers = {}
    for round_ in range(args.rounds):
        for name, engine in (list(engines.items()) if round_ % 2 == 0 else list(engines.items())[::-1]):
            load = os.getloadavg()[0]
            hits, reused = engine.prefix_hits, engine.prefix_reused_tokens
            # new conversations every round (the same in both settings): a round never finds the previous one's
            conversations = range(round_ * args.conversations, (round_ + 1) * args.conversations)
            turns = [t for c in conversations for t in chat(engine, tokenizer, args.answer_tokens, c)]
            answers.setdefault(round_, {})[name] = [t["tokens"] for t in turns]
            later = [t["ttft_s"] for t in turns if t["turn"] > 0]
            row = {"round": round_ + 1, "setting": name, "turns": len(turns),
                   "ttft_first_turn_ms": 1000 * statistics.median(t["ttft_s"] for t in turns if t["turn"] == 0),
                   "ttft_later_turns_ms": 1000 * statistics.median(later),
                   "ttft_later_turns_mean_ms": 1000 * statistics.mean(later),
                   "prompt_tokens": sum(t["prompt"] for t in turns),
                   "reused_tokens": engine.prefix_reused_tokens - reused, "hits": engine.prefix_hits - hits,
                   "loadavg_1min": [round(load, 2), round(os.getloadavg()[0], 2)]}
            record(row, args.json_out)
    same = all(len(set(map(json.dumps, by_name.values()))) == 1 for by_name in answers.values())
    print(f"greedy answers equal with and without the prefix cache: {same}")
    for engine in engines.values():
        engine.shutdown()
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
