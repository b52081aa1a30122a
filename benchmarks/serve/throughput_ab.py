"""Serving throughput side by side in one run: `llm-recipes serve` from one or more source trees (before/after
A/B), vLLM's CPU build, and llama.cpp for one stream, in alternating rounds, so that the ratios hold on a
shared machine whose load moves.

Each round starts every server in turn on the same model and runs the same streaming chat clients as
`vllm_check.py throughput` (load_test.py's requests, 48 tokens, temperature 0.8, a seed per request, no
feedback posts), then llama.cpp on the model's GGUF export through llama-cpp-python (one thread, the same
chat prompts, 48 sampled tokens each, in process: no HTTP) and, with --llama_server, llama.cpp's own OpenAI
server (llama-cpp-python's `llama_cpp.server`, `pip install -e .[bench]`) on the same GGUF under the same load
client as ours; with --in_process, each of our trees' engine in process too (no HTTP, no engine process: the
counterpart of llama.cpp in process). Every row gives the 1-minute load average before and after, and the
server's CPU time per output token (its whole process tree: our engine process, vLLM's engine core), which
moves less with the neighbours' load than tokens/s does, and of it the main process's (ours: the HTTP side).

    python benchmarks/serve/throughput_ab.py --model_path runs/quickstart/dpo/final \\
        --gguf runs/quickstart/gguf/dpo.gguf --llama_server --ours before=/work/main --ours after=. --rounds 2 \\
        --json_out benchmarks/serve/throughput-DATE.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpx  # noqa: E402
import load_test  # noqa: E402
import vllm_check  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
SERVE_OPTIONS = {"compile": ["--compile_decode", "true"], "no_static": ["--static_kv_cache", "false"],
                 "bf16": ["--dtype", "bfloat16"], "torch_step": ["--one_row_step", "torch"],
                 "numpy_step": ["--one_row_step", "numpy"], "numba_step": ["--one_row_step", "numba"]}


def tree_cpu_seconds(root: int, children: bool = True) -> float:
    """User + system CPU seconds of `root` and (with `children`) every live descendant (from /proc)."""
    parents, cpu = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / TICKS
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo += [child for child, parent in parents.items() if parent == pid and children]
    return total


@contextlib.contextmanager
def vllm(model: Path, python: str, log: Path, max_len: int, seqs: int, env: dict | None = None):
    """vLLM's OpenAI server (its own process group, whose leader is the API server); yields (pid, url)."""
    with vllm_check.vllm_server(model, python, log, trust_remote_code=True, max_model_len=max_len,
                                max_num_seqs=seqs, env_overrides=env) as url:
        port = url.rsplit(":", 1)[1]
        found = subprocess.run(["pgrep", "-f", "--", f"--port {port}"], capture_output=True, text=True)
        pid = min(int(p) for p in found.stdout.split())  # the API server; its engine core is its child
        yield pid, url


@contextlib.contextmanager
def llama_server(gguf: Path, log: Path, context: int, threads: int):
    """llama.cpp's own OpenAI-compatible server (llama-cpp-python's `llama_cpp.server`, the `bench` extra) on
    the GGUF; yields (pid, url). It answers one request at a time (no batching across clients)."""
    port = load_test.free_port()
    args = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", vllm_check.SERVED_NAME,
            "--n_ctx", str(context), "--n_threads", str(threads), "--n_threads_batch", str(threads),
            "--host", "127.0.0.1", "--port", str(port), "--verbose", "false",
            # queue a request that arrives during another (its default stops the running stream for it)
            "--interrupt_requests", "false"]
    with open(log, "w") as log_file:
        proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:  # it has no /health: its model list answers once the model is loaded
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"llama_cpp.server did not start (log: {log})")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        yield proc.pid, url
    finally:
        vllm_check._stop(proc)


def load_rows(pid: int, url: str, clients: list[int], requests: list[int], max_tokens: int) -> list[dict]:
    """vllm_check's load (warm-up, then each client count) with the server tree's CPU time per output token,
    split into the root process's (ours: the HTTP process) and its children's (ours: the engine process)."""
    rows = []
    for n, count in zip(clients, requests):
        cpu, root = tree_cpu_seconds(pid), tree_cpu_seconds(pid, children=False)
        row = vllm_check._load(url, [n], [count], max_tokens)[0]
        row["server_cpu_s"] = tree_cpu_seconds(pid) - cpu
        tokens = max(row["output_tokens"], 1)
        row["cpu_us_per_output_token"] = 1e6 * row["server_cpu_s"] / tokens
        row["root_cpu_us_per_output_token"] = 1e6 * (tree_cpu_seconds(pid, children=False) - root) / tokens
        rows.append(row)
    return rows


def chat_prompt_ids(tokenizer, i: int) -> list[int]:
    """load_test.py's chat request `i` as the servers tokenize it."""
    text = f"Question {i}: how do I read a file line by line in Python? " * (1 + i % 3)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                           tokenize=False)
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


def ours_in_process(tree: Path, model: Path, requests: int, max_tokens: int, threads: int | None,
                    extra: tuple[str, ...]) -> dict:
    """`ours_single_stream` run by the python of this one with PYTHONPATH=tree (the tree under test)."""
    args = [sys.executable, __file__, "--model_path", str(model), "--requests", str(requests), "--max_tokens",
            str(max_tokens), "--in_process_row", "compile" if "--compile_decode" in extra else "eager",
            "--in_process_dtype", "bfloat16" if "bfloat16" in extra else "float32"]
    if "--one_row_step" in extra:
        args += ["--in_process_one_row_step", extra[extra.index("--one_row_step") + 1]]
    if threads:
        args += ["--in_process_threads", str(threads)]
    done = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tree)},
                          timeout=1800)
    if done.returncode:
        raise RuntimeError(f"our in-process row failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ours_single_stream(model: Path, requests: int, max_tokens: int, compile_decode: bool,
                       threads: int | None = None, dtype: str = "float32", one_row_step: str | None = None) -> dict:
    """Our engine in process (no HTTP, no engine process: llama.cpp in process's counterpart): the load
    test's chat prompts one after another, `max_tokens` sampled tokens each (temperature 0.8, a seed each,
    no stop at an end token), one decoding thread as `llm-recipes serve` chooses for this model size."""
    import threading

    from llm_recipes.serving.engine import GenerationEngine, GenerationRequest
    from llm_recipes.serving.loading import load_for_serving

    loaded, tokenizer = load_for_serving(model, dtype=dtype)
    engine = GenerationEngine(loaded, tokenizer.pad_token_id, max_batch_size=1, compile_decode=compile_decode,
                              num_threads=threads,
                              # only when asked: a tree from before the option has no such argument
                              **({"one_row_step": one_row_step} if one_row_step else {}))
    try:
        load = os.getloadavg()[0]
        cpu, started, tokens, ttft = time.process_time(), time.perf_counter(), 0, []
        for i in range(requests):
            done, times = threading.Event(), []

            def emit(event, times=times, done=done):
                if event[0] == "token":
                    times.append(time.perf_counter())
                elif event[0] in ("done", "error"):
                    done.set()

            begin = time.perf_counter()
            engine.submit(GenerationRequest(chat_prompt_ids(tokenizer, i), max_tokens, emit, temperature=0.8, seed=i))
            done.wait(300)
            ttft.append(times[0] - begin)
            tokens += len(times)
        wall = time.perf_counter() - started
        return {"server": f"ours in process ({engine.num_threads} thread{'s' if engine.num_threads > 1 else ''}"
                          f"{', compiled' if engine._static is not None and engine._static.compiled else ''})",
                "clients": 1, "requests": requests, "errors": 0, "output_tokens": tokens,
                "output_tokens_per_s": tokens / wall, "ttft_p50_s": sorted(ttft)[len(ttft) // 2],
                "ttft_p99_s": max(ttft), "tpot_p50_s": None, "decode_path": engine.decode_path,
                "cpu_us_per_output_token": 1e6 * (time.process_time() - cpu) / tokens,
                "loadavg_1min": [round(load, 2), round(os.getloadavg()[0], 2)]}
    finally:
        engine.shutdown()


def llama_cpp_single_stream(gguf: Path, model: Path, requests: int, max_tokens: int, threads: int) -> dict:
    """llama.cpp (llama-cpp-python) on the GGUF export: the load test's chat prompts one after another,
    `max_tokens` sampled tokens each (temperature 0.8, no stop on EOS), in process."""
    import llama_cpp
    from transformers import AutoTokenizer

    import llm_recipes  # noqa: F401  (registers RecipeGPT: the folder's tokenizer loads without remote code)

    tokenizer = AutoTokenizer.from_pretrained(model)
    context = json.loads((model / "config.json").read_text())["max_position_embeddings"]
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=context, n_threads=threads, n_threads_batch=threads,
                          verbose=False, seed=0)
    load = os.getloadavg()[0]
    cpu, started, tokens, ttft = time.process_time(), time.perf_counter(), 0, []
    for i in range(requests):
        ids = chat_prompt_ids(tokenizer, i)
        begin = time.perf_counter()
        for k, _ in enumerate(llm.generate(ids, temp=0.8, reset=True)):
            if k == 0:
                ttft.append(time.perf_counter() - begin)
            tokens += 1
            if k + 1 == max_tokens:
                break
    wall = time.perf_counter() - started
    return {"server": f"llama.cpp ({threads} thread{'s' if threads > 1 else ''})", "clients": 1,
            "requests": requests, "errors": 0, "output_tokens": tokens, "output_tokens_per_s": tokens / wall,
            "ttft_p50_s": sorted(ttft)[len(ttft) // 2], "ttft_p99_s": max(ttft), "tpot_p50_s": None,
            "cpu_us_per_output_token": 1e6 * (time.process_time() - cpu) / tokens,
            "loadavg_1min": [round(load, 2), round(os.getloadavg()[0], 2)]}


def print_table(rows: list[dict]) -> None:
    print("\n| round | server | clients | errors | output tok/s | TTFT p50 | TTFT p99 | CPU/token | of it, the "
          "server's main process | load avg |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        root = r.get("root_cpu_us_per_output_token")
        print(f"| {r['round']} | {r['server']} | {r['clients']} | {r['errors']} | {r['output_tokens_per_s']:.0f} | "
              f"{r['ttft_p50_s'] * 1000:.0f} ms | {r['ttft_p99_s'] * 1000:.0f} ms | "
              f"{r['cpu_us_per_output_token']:.0f} us | {'' if root is None else f'{root:.0f} us'} | "
              f"{r['loadavg_1min'][0]:.1f} -> {r['loadavg_1min'][1]:.1f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", required=True, help="native RecipeGPT folder")
    parser.add_argument("--gguf", help="its `llm-recipes export --to gguf` file (llama.cpp single stream)")
    parser.add_argument("--ours", action="append", default=[], metavar="LABEL=TREE",
                        help="serve with PYTHONPATH=TREE under this label (repeat for an A/B); "
                             "LABEL=TREE,threads=N also sets --torch_num_threads N; ',compile' adds "
                             "--compile_decode true, ',no_static' --static_kv_cache false, ',bf16' --dtype bfloat16, "
                             "',torch_step' / ',numpy_step' / ',numba_step' --one_row_step torch / numpy / numba")
    parser.add_argument("--vllm", action="append", default=[], metavar="LABEL[=KEY=VALUE,...]",
                        help="a vLLM configuration under this label with these environment settings, e.g. "
                             "'nobind=VLLM_CPU_OMP_THREADS_BIND=nobind,OMP_NUM_THREADS=1' (repeat to compare "
                             "several; default: one, 'default', with vllm_check's settings)")
    parser.add_argument("--no_vllm", action="store_true", help="leave vLLM out")
    parser.add_argument("--vllm_python", help="python of the vLLM venv (default as vllm_check.py)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--requests", type=int, nargs="+", default=[16, 128], help="requests per client count")
    parser.add_argument("--max_tokens", type=int, default=48)
    parser.add_argument("--max_batch_size", type=int, default=32, help="ours: --max_batch_size; vLLM: max-num-seqs")
    parser.add_argument("--llama_threads", type=int, default=1)
    parser.add_argument("--llama_server", action="store_true",
                        help="also llama.cpp's own OpenAI server (llama_cpp.server) on --gguf, under the same load "
                             "client as ours (its end tokens banned by logit_bias: it ignores ignore_eos)")
    parser.add_argument("--in_process", action="store_true",
                        help="also each --ours tree's engine in process (no HTTP, no engine process) for one stream: "
                             "the counterpart of llama.cpp in process")
    parser.add_argument("--no_servers", action="store_true",
                        help="with --in_process: leave out our HTTP servers (only the in-process rows of our trees, "
                             "beside llama.cpp's), for more interleaved rounds in the same minutes")
    parser.add_argument("--in_process_row", choices=["eager", "compile"], help=argparse.SUPPRESS)  # the child's
    parser.add_argument("--in_process_threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--in_process_dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--in_process_one_row_step", help=argparse.SUPPRESS)
    parser.add_argument("--json_out", help="append the JSON lines here too")
    args = parser.parse_args(argv)
    if args.no_servers and not args.in_process:
        parser.error("--no_servers leaves only the in-process rows: pass --in_process too")
    model = Path(args.model_path)
    if args.in_process_row:  # the child of `ours_in_process`: one row, as JSON, on stdout
        print(json.dumps(ours_single_stream(model, args.requests[0], args.max_tokens,
                                            args.in_process_row == "compile", args.in_process_threads,
                                            args.in_process_dtype, args.in_process_one_row_step)))
        return 0
    trees = []  # (label, tree, decoding threads or None, extra serve arguments)
    for label, _, spec in (o.partition("=") for o in args.ours):
        tree, *options = spec.split(",")
        threads, extra = None, []
        for option in options:
            if option.startswith("threads="):
                threads = int(option.removeprefix("threads="))
            elif option in SERVE_OPTIONS:
                extra += SERVE_OPTIONS[option]
            else:
                parser.error(f"--ours {label}: unknown option {option!r} (threads=N, {', '.join(SERVE_OPTIONS)})")
        trees.append((label, Path(tree).resolve(), threads, tuple(extra)))
    vllms = []  # (label, environment settings)
    for label, _, spec in (v.partition("=") for v in args.vllm or ["default"]):
        settings = dict(item.split("=", 1) for item in spec.split(",") if item)
        vllms.append((label, settings))
    python = None if args.no_vllm else vllm_check.vllm_python(args.vllm_python)
    if not args.no_vllm and python is None:
        parser.error("vLLM is not installed (see vllm_check.py); pass --no_vllm to leave it out")
    max_len = json.loads((model / "config.json").read_text())["max_position_embeddings"]
    work = Path(tempfile.mkdtemp(prefix="throughput-ab-"))
    rows = []

    def record(row: dict, round_: int, server: str) -> None:
        row.update(round=round_, server=server, model=str(model), max_tokens=args.max_tokens,
                   time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json_out:
            with open(args.json_out, "a") as f:
                f.write(json.dumps(row) + "\n")

    for round_ in range(1, args.rounds + 1):
        order = trees if round_ % 2 else trees[::-1]  # alternate which tree goes first
        for label, tree, threads, extra in order:
            server = contextlib.nullcontext((None, None)) if args.no_servers else vllm_check.ours_server(
                model, work / f"serve-{label}-{round_}", args.max_batch_size, tree=tree, threads=threads,
                extra_args=extra)
            with server as (proc, url):
                for row in [] if args.no_servers else load_rows(proc.pid, url, args.clients, args.requests,
                                                                args.max_tokens):
                    record(row, round_, f"llm-recipes serve ({label})")
            if args.in_process:
                row = ours_in_process(tree, model, args.requests[0], args.max_tokens, threads, extra)
                record(row, round_, f"{row.pop('server')} ({label})")
        for label, settings in vllms if python else []:
            with vllm(model, python, work / f"vllm-{label}-{round_}.log", max_len, args.max_batch_size,
                      settings) as (pid, url):
                for row in load_rows(pid, url, args.clients, args.requests, args.max_tokens):
                    row["vllm_env"] = settings
                    record(row, round_, f"vLLM ({label})")
        if args.gguf and args.llama_server:
            # same answers as ours: no stop at an end token (ignore_eos there), so every answer has max_tokens
            eos = json.loads((model / "generation_config.json").read_text()).get("eos_token_id", [])
            ban = {str(t): -100 for t in (eos if isinstance(eos, list) else [eos])}
            with llama_server(Path(args.gguf), work / f"llama-server-{round_}.log", max_len, args.llama_threads) \
                    as (pid, url), mock.patch.object(load_test, "EXTRA_BODY", {"ignore_eos": None, "logit_bias": ban}):
                for row in load_rows(pid, url, args.clients, args.requests, args.max_tokens):
                    record(row, round_, f"llama.cpp server ({args.llama_threads} thread)")
        if args.gguf:
            record(llama_cpp_single_stream(Path(args.gguf), model, args.requests[0], args.max_tokens,
                                           args.llama_threads), round_, f"llama.cpp ({args.llama_threads} thread)")
    print_table(rows)
    print(f"logs: {work}", file=sys.stderr)
    return 0 if all(r["errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
