"""The engine process boundary (serving/engine_process.py): a cancelled answer frees its slot in the engine
process, a crashed engine process turns into clear errors (never a hang), and neither a shutdown nor the
death of the HTTP process leaves an engine process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import httpx
import pytest
from serve_helpers import running_server


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_until(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _recorder():
    events, first, done = [], threading.Event(), threading.Event()

    def emit(event):
        events.append(event)
        first.set()
        if event[0] in ("done", "error"):
            done.set()
    return events, first, done, emit


@pytest.fixture()
def client(tiny_model_dir, tiny_tokenizer):
    from llm_recipes.serving.engine_process import EngineClient, EngineSpec

    engine = EngineClient(EngineSpec(model_path=str(tiny_model_dir), pad_token_id=tiny_tokenizer.pad_token_id,
                                     max_batch_size=4, max_queue=4))
    yield engine
    engine.shutdown()


def test_requests_cancel_and_shutdown_across_the_boundary(client):
    from llm_recipes.serving.engine import GenerationRequest

    assert _alive(client.pid) and client.pid != os.getpid()
    # a whole answer comes back, token by token, then done
    events, _, done, emit = _recorder()
    client.submit(GenerationRequest([1, 5, 6], 5, emit, temperature=0))
    assert done.wait(60)
    assert [e[0] for e in events] == ["token"] * 5 + ["done"] and events[-1] == ("done", "length")

    # a long answer cancelled after its first token: the engine process stops it and frees its slot
    events, first, done, emit = _recorder()
    request = GenerationRequest([1, 5, 6], 240, emit, temperature=0)
    client.submit(request)
    assert first.wait(60)
    request.cancel()
    assert done.wait(60)
    assert events[-1] == ("done", "cancelled") and len(events) < 240
    assert _wait_until(lambda: client.running == 0 and client.waiting == 0)

    # bad values are refused here, before they cross
    with pytest.raises(ValueError, match="max_new_tokens"):
        client.submit(GenerationRequest([1], -1, emit))

    # shutdown: an answer in flight ends with an error event, the process is gone, later submits are refused
    events, first, done, emit = _recorder()
    client.submit(GenerationRequest([1, 5, 6], 240, emit, temperature=0))
    assert first.wait(60)
    pid = client.pid
    client.shutdown()
    assert done.wait(10) and events[-1] == ("error", "server shutting down")
    assert not _alive(pid)
    from llm_recipes.serving.engine_process import EngineStoppedError

    with pytest.raises(EngineStoppedError):
        client.submit(GenerationRequest([1, 5], 1, emit))


def test_a_crashed_engine_process_is_an_error_not_a_hang(tiny_model_dir, tmp_path):
    """The engine process killed mid-answer: the stream in flight ends with an in-band error naming the exit,
    /health says 503, new requests get a 503 at once."""
    with running_server(tiny_model_dir, tmp_path / "f.sqlite", max_tokens_cap=240) as (url, _, engine, _s):
        with httpx.Client(base_url=url, timeout=60) as http:
            body = {"model": "tiny", "prompt": "hello", "max_tokens": 240, "ignore_eos": True, "stream": True}
            # the engine is stopped (SIGSTOP) once the answer is under way; when its stream has not ended 1.5 s later
            # the answer is still in flight and the engine is killed there. The one-row step can finish all 240
            # tokens before the first chunk reaches us: then the engine goes on and the test asks again.
            for _ in range(10):
                lines, under_way, ended = [], threading.Event(), threading.Event()

                def read(lines=lines, under_way=under_way, ended=ended):
                    with http.stream("POST", "/v1/completions", json=body) as r:
                        for line in r.iter_lines():
                            if line.startswith("data: "):
                                lines.append(line)
                                under_way.set()
                    ended.set()

                reader = threading.Thread(target=read)
                reader.start()
                assert under_way.wait(30)
                os.kill(engine.pid, signal.SIGSTOP)
                if not ended.wait(1.5):
                    break
                os.kill(engine.pid, signal.SIGCONT)
                reader.join(30)
            else:
                pytest.fail("every answer ended before the engine process could be stopped mid-answer")
            os.kill(engine.pid, signal.SIGKILL)  # a stopped process dies as well
            reader.join(60)
            assert lines[-1] == "data: [DONE]"
            assert any("exited unexpectedly (exit code -9)" in line for line in lines)
            health = http.get("/health")
            assert health.status_code == 503 and "exit code -9" in health.json()["error"]
            again = http.post("/v1/completions", json={"model": "tiny", "prompt": "hello", "max_tokens": 2})
            assert again.status_code == 503 and again.json()["error"]["code"] == "engine_unavailable"


def test_the_engine_process_exits_with_the_server_process(tiny_model_dir, tiny_tokenizer, tmp_path):
    """A server process killed outright (no shutdown) leaves no engine process: it reads end-of-file on its
    pipe and stops."""
    script = textwrap.dedent(f"""
        import time
        from llm_recipes.serving.engine_process import EngineClient, EngineSpec
        engine = EngineClient(EngineSpec(model_path={str(tiny_model_dir)!r},
                                         pad_token_id={tiny_tokenizer.pad_token_id}))
        print(engine.pid, flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        engine_pid = int(proc.stdout.readline())
        assert _alive(engine_pid)
        proc.kill()
        proc.wait(30)
        assert _wait_until(lambda: not _alive(engine_pid), timeout=30)
    finally:
        proc.kill()
