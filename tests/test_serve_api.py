"""The OpenAI-compatible server, end to end over real HTTP: the official `openai` client, bad input,
API keys, concurrency and the feedback store."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import pytest
from serve_helpers import running_server


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "feedback.sqlite"
    with running_server(tiny_model_dir, path, max_tokens_cap=64, default_max_tokens=16,
                        max_body_bytes=20_000) as handle:
        yield handle


def test_openai_client_chat_and_completions(server, monkeypatch):
    from openai import OpenAI

    from llm_recipes.serving import engine_process

    url, *_ = server
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"

    messages = [{"role": "system", "content": "You answer questions about Python."},
                {"role": "user", "content": "What does os.path.join do?"}]
    chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
    answer = chat.choices[0].message.content
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    assert chat.choices[0].finish_reason in ("stop", "length")
    assert chat.usage.completion_tokens <= 12 and chat.usage.prompt_tokens > 10

    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == answer  # greedy: streaming and not give the same text
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
    # really incremental: the answer's first token goes out before its last is known. The server joins every token
    # already waiting into one chunk (as vLLM merges a slow reader's outputs), and the one-row step decodes this tiny
    # model's tokens in microseconds, so left alone the engine can finish an answer before its first chunk is sent.
    # Here the HTTP process's reader thread hands on the first token, then holds every later event until that
    # token's chunk has reached this client: the rest must come in later chunks, however fast the machine.
    first_read, delivered, deliver = threading.Event(), [], engine_process._deliver

    def held(request, event):  # on the engine client's reader thread
        if delivered:
            first_read.wait(30)
        delivered.append(event[0])  # counted before it is handed on: the client may read its chunk at once
        deliver(request, event)

    with monkeypatch.context() as patch:
        patch.setattr(engine_process, "_deliver", held)
        long = client.chat.completions.create(model="tiny", messages=messages, max_tokens=64, temperature=0,
                                              stream=True, extra_body={"ignore_eos": True})
        pieces, handed_on = [], []  # the texts of the chunks; how many events the reader had handed on at each
        for c in long:
            if c.choices and c.choices[0].delta.content:
                pieces.append(c.choices[0].delta.content)
                handed_on.append(len(delivered))
                first_read.set()
    assert delivered.count("token") == 64 and len(pieces) >= 2 and handed_on[0] == 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == chat.choices[0].finish_reason

    completion = client.completions.create(model="tiny", prompt="The os module", max_tokens=10, temperature=0)
    text = completion.choices[0].text
    assert completion.object == "text_completion" and completion.usage.completion_tokens <= 10
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt="The os module", max_tokens=10, temperature=0, stream=True))
    assert streamed == text


def test_bad_input_gets_clear_4xx_and_server_stays_up(server):
    import openai
    from openai import OpenAI

    url, *_ = server
    with httpx.Client(base_url=url, timeout=30) as http:
        def post(path, payload=None, content=None):
            if content is None:
                return http.post(path, json=payload)
            return http.post(path, content=content, headers={"content-type": "application/json"})

        cases = {
            "malformed JSON": (post("/v1/chat/completions", content=b'{"model": "tiny", "messages": [}'),
                               400, "malformed JSON"),
            "unknown model": (post("/v1/completions", {"model": "gpt-9", "prompt": "hi"}), 404, "gpt-9"),
            "max_tokens over cap": (post("/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 65}),
                                    400, "cap of 64"),
            "prompt past context": (post("/v1/completions", {"model": "tiny", "prompt": "word " * 400}),
                                    400, "context window"),
            "prompt + max_tokens past context": (
                post("/v1/completions", {"model": "tiny", "prompt": "word " * 230, "max_tokens": 60}),
                400, "context window"),
            "oversized body": (post("/v1/completions", content=json.dumps(
                {"model": "tiny", "prompt": "x" * 30_000}).encode()), 413, "20000 bytes"),
            "missing field": (post("/v1/chat/completions", {"model": "tiny"}), 400, "messages"),
            "n over the limit": (post("/v1/completions", {"model": "tiny", "prompt": "a", "n": 17}), 400, "n"),
            "prompts x n over the queue": (post("/v1/completions", {"model": "tiny", "prompt": ["a"] * 9, "n": 8}),
                                           400, "9 prompt(s) x n=8"),
            "token id outside the vocabulary": (post("/v1/completions", {"model": "tiny", "prompt": [5, 10**6]}),
                                                400, "token id 1000000"),
            "empty token prompt": (post("/v1/completions", {"model": "tiny", "prompt": [[1, 2], []]}), 400, "empty"),
            "max_tokens 0 without echo": (post("/v1/completions", {"model": "tiny", "prompt": "a", "max_tokens": 0}),
                                          400, "echo"),
            "top_logprobs without logprobs": (post("/v1/chat/completions", {
                "model": "tiny", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}), 400, "logprobs"),
            "logprobs over 20": (post("/v1/completions", {"model": "tiny", "prompt": "a", "logprobs": 21}),
                                 400, "logprobs"),
            "tools": (post("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                                                    "tools": [{"type": "function"}]}), 400, "tools"),
            "bad role": (post("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "wizard",
                                                                                      "content": "x"}]}), 400, "role"),
            "empty feedback": (post("/v1/feedback", {"messages": [{"role": "user", "content": "q"}],
                                                     "completion": "a"}), 400, "rating"),
            "unknown route": (http.get("/v1/nothing"), 404, "/v1/nothing"),
        }
        for name, (response, status, fragment) in cases.items():
            assert response.status_code == status, (name, response.text)
            error = response.json()["error"]
            assert fragment in error["message"], (name, error)
            assert error["type"]
        assert cases["unknown model"][0].json()["error"]["code"] == "model_not_found"
        assert cases["prompt past context"][0].json()["error"]["code"] == "context_length_exceeded"
        assert http.get("/health").json()["status"] == "ok"

    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="cap of 64"):
        client.completions.create(model="tiny", prompt="hi", max_tokens=1000)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    # still serving after all of that
    assert client.completions.create(model="tiny", prompt="hi", max_tokens=3).usage.completion_tokens <= 3


def test_concurrent_requests_share_batches(server):
    from openai import OpenAI

    url, app, engine, store = server
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    prompts = [f"Question {i}: what is a list comprehension?" for i in range(6)]
    alone = [client.completions.create(model="tiny", prompt=p, max_tokens=24, temperature=0).choices[0].text
             for p in prompts]
    together, errors = [None] * len(prompts), []

    def ask(i):
        try:
            together[i] = client.completions.create(model="tiny", prompt=prompts[i], max_tokens=24,
                                                    temperature=0).choices[0].text
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    # the engine process is stopped until all six requests are in its pipe, so they meet in its batches however
    # fast it decodes (the engine tests hold the worker with held_steps; here the engine is another process)
    os.kill(engine._process.pid, signal.SIGSTOP)
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while engine.waiting < len(prompts) and time.monotonic() < deadline:
            time.sleep(0.01)
        queued = engine.waiting
    finally:
        os.kill(engine._process.pid, signal.SIGCONT)
    for t in threads:
        t.join(60)
    assert queued == len(prompts)
    assert not errors
    assert together == alone  # batching changes nothing in the answers
    assert engine.peak_batch >= 2


def test_feedback_rows_are_stored_and_survive_restart(tiny_model_dir, tmp_path):
    from llm_recipes.serving.feedback_store import FeedbackStore

    path = tmp_path / "feedback.sqlite"
    conversation = [{"role": "user", "content": "How do I join paths?"}]
    with running_server(tiny_model_dir, path) as (url, *_):
        with httpx.Client(base_url=url, timeout=30) as http:
            up = http.post("/v1/feedback", json={"messages": conversation, "completion": "Use os.path.join.",
                                                 "rating": "up"})
            better = http.post("/v1/feedback", json={"messages": conversation, "completion": "No idea.",
                                                     "rating": "down", "suggestion": "Use os.path.join(a, b)."})
            assert up.status_code == 200 and better.status_code == 200
            assert http.get("/v1/feedback/stats").json() == {"rows": 2}
    # a new server process on the same file sees both rows
    with running_server(tiny_model_dir, path) as (url, *_):
        assert httpx.get(f"{url}/v1/feedback/stats").json() == {"rows": 2}
    rows = list(FeedbackStore(path).rows())
    assert [(r["rating"], r["suggestion"]) for r in rows] == [(1, None), (-1, "Use os.path.join(a, b).")]
    assert rows[1]["messages"] == conversation and rows[1]["completion"] == "No idea."


def test_api_key_and_timeout(tiny_model_dir, tmp_path):
    import openai
    from openai import OpenAI

    with running_server(tiny_model_dir, tmp_path / "f.sqlite", api_key="s3cret", request_timeout_s=1e-6) as (url, *_):
        wrong = OpenAI(base_url=f"{url}/v1", api_key="guess", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        response = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "hi"})
        assert response.status_code == 401 and "API key" in response.json()["error"]["message"]
        assert httpx.get(f"{url}/health").json()["auth_required"] is True  # health needs no key
        assert httpx.post(f"{url}/tokenize", json={"prompt": "hi"}).status_code == 401  # vLLM's routes need it
        assert httpx.get(f"{url}/tokenizer_info", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        right = OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
        assert right.models.list().data[0].id == "tiny"
        # the 1 microsecond limit passes before any token: a 408, and the server carries on
        with pytest.raises(openai.APIStatusError) as info:
            right.completions.create(model="tiny", prompt="hi", max_tokens=5)
        assert info.value.status_code == 408
        assert right.models.list().data[0].id == "tiny"


def test_remote_code_needs_explicit_trust(tiny_model_dir, tmp_path):
    import shutil

    from llm_recipes.serving.loading import ModelLoadError, load_for_serving

    foreign = tmp_path / "foreign"
    shutil.copytree(tiny_model_dir, foreign)
    config = json.loads((foreign / "config.json").read_text())
    config["model_type"] = "someone_elses_gpt"
    (foreign / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="trust_remote_code"):
        load_for_serving(foreign)
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_for_serving(tmp_path / "missing")
    # our own type loads without remote code although config.json carries an auto_map
    model, _ = load_for_serving(tiny_model_dir)
    assert type(model).__module__.startswith("llm_recipes.")


def test_serve_cli_reports_bad_model_path(tmp_path, capsys):
    from llm_recipes.cli import main

    assert main(["serve", str(tmp_path / "nothing"), "--output_dir", str(tmp_path / "out")]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--max_batch_sise", "3"]) == 2


def test_full_queue_answers_503_and_recovers(tiny_model_dir, tmp_path):
    from llm_recipes.serving.engine import GenerationRequest

    with running_server(tiny_model_dir, tmp_path / "f.sqlite", max_batch_size=1, max_queue=1) as (url, _, engine, _s):
        # hold the worker inside a callback so nothing leaves the queue while we fill it
        release, holding = threading.Event(), threading.Event()

        def blocking_emit(event):
            holding.set()
            release.wait(30)

        engine.submit(GenerationRequest([1, 5, 6], 2, blocking_emit, temperature=0))
        assert holding.wait(30)
        first = {}
        waiting = threading.Thread(target=lambda: first.update(r=httpx.post(
            f"{url}/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2}, timeout=60)))
        waiting.start()
        for _ in range(200):  # until the first request sits in the queue
            if engine.waiting == 1:
                break
            threading.Event().wait(0.02)
        overflow = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
        assert overflow.status_code == 503 and overflow.headers["retry-after"] == "1"
        assert overflow.json()["error"]["code"] == "server_overloaded"
        release.set()
        waiting.join(60)
        assert first["r"].status_code == 200  # the queued request is served once the worker is free
        assert httpx.get(f"{url}/health").json()["status"] == "ok"


def test_serve_command_end_to_end(tiny_model_dir, tmp_path):
    """`python -m llm_recipes.serve DIR` as a user runs it: serves, stops cleanly on SIGTERM, marks the stage
    complete, and never writes the API key (given on the command line) to disk."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "serve"
    proc = subprocess.Popen([sys.executable, "-m", "llm_recipes.serve", str(tiny_model_dir), "--output_dir", str(out),
                             "--port", str(port), "--api_key", "k3y-from-env"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        headers = {"Authorization": "Bearer k3y-from-env"}
        name = httpx.get(url + "/v1/models", headers=headers).json()["data"][0]["id"]
        assert name == tiny_model_dir.name
        saved = httpx.post(url + "/v1/feedback", headers=headers, json={
            "messages": [{"role": "user", "content": "q"}], "completion": "a", "rating": "up"})
        assert saved.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output
    assert "1 feedback rows" in output
    assert json.loads((out / "stage_complete.json").read_text())["feedback_rows"] == 1
    for name in ("resolved_config.yaml", "run_info.json"):
        assert "k3y-from-env" not in (out / name).read_text()


def test_run_serves_on_request_and_ctrl_c_stops_it(tiny_model_dir, tmp_path):
    """`llm-recipes run RECIPE --stages serve`: serving is an on-request stage of a recipe; Ctrl+C (SIGINT to
    the terminal's process group) stops the server cleanly and the run ends without an error."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    (recipe / "serve.yaml").write_text(f"output_dir: ${{run_dir}}/serve\nmodel_path: {tiny_model_dir}\nport: {port}\n")
    (recipe / "sft.yaml").write_text("output_dir: ${run_dir}/sft\n")  # not named: must not run
    # a terminal's Ctrl+C needs SIGINT's default disposition: where the tests themselves run as a background
    # job of a non-interactive shell (nohup, `cmd &` in a script), SIGINT is inherited as ignored
    proc = subprocess.Popen([sys.executable, "-m", "llm_recipes", "run", str(recipe), "--stages", "serve",
                             "--run_dir", str(tmp_path / "run"), "--report", "false"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 200
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            output = proc.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # leave no server behind
            raise
    assert proc.returncode == 0, output
    assert "[run] serve: done" in output and "Traceback" not in output
    assert (tmp_path / "run" / "serve" / "stage_complete.json").is_file()
    assert not (tmp_path / "run" / "sft").exists()
