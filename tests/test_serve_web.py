"""Web hardening of the server: the Host header is checked (DNS rebinding cannot reach a keyless local
server), the chat page forbids framing, inline script and MIME sniffing, a chunked body is counted
against the body limit, and a damaged feedback store stops start-up with a message that says what to do."""

from __future__ import annotations

import httpx
import pytest
from serve_helpers import running_server


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("web") / "feedback.sqlite"
    with running_server(tiny_model_dir, path, max_body_bytes=20_000) as handle:
        yield handle


def test_host_header_must_name_this_server(server):
    url, *_ = server
    port = url.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
        assert httpx.get(url + "/health", headers={"Host": host}).status_code == 200, host
    # a page on attacker.example whose name was rebound to 127.0.0.1: its requests carry its own name
    for host in (f"attacker.example:{port}", "attacker.example", "127.0.0.1.attacker.example", ""):
        for method, path in (("GET", "/health"), ("GET", "/"), ("POST", "/v1/completions")):
            response = httpx.request(method, url + path, headers={"Host": host},
                                     json={"model": "tiny", "prompt": "hi", "max_tokens": 1})
            assert response.status_code == 400, (host, path, response.text)
            error = response.json()["error"]
            assert error["code"] == "invalid_host" and "--allowed_hosts" in error["message"]


def test_allowed_hosts_setting(tiny_model_dir, tmp_path):
    from llm_recipes.serving.app import default_allowed_hosts

    assert default_allowed_hosts("0.0.0.0") == ["*"]
    assert default_allowed_hosts("10.0.0.5")[0] == "10.0.0.5" and "localhost" in default_allowed_hosts("10.0.0.5")
    with running_server(tiny_model_dir, tmp_path / "f.sqlite", allowed_hosts=["chat.example.org", "*.lab.example"]
                        ) as (url, *_):
        def status(host):
            return httpx.get(url + "/health", headers={"Host": host}).status_code

        assert status("chat.example.org") == 200 and status("gpu1.lab.example:8000") == 200
        assert status("127.0.0.1") == 400 and status("lab.example.evil") == 400


def test_chat_page_security_headers(server):
    url, *_ = server
    for path in ("/", "/static/chat.js", "/static/chat.css", "/health"):
        response = httpx.get(url + path)
        assert response.status_code == 200, path
        csp = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
    page = httpx.get(url + "/").text
    assert "<script>" not in page and "<style>" not in page and " style=" not in page  # nothing inline


def test_chunked_body_over_the_limit_is_413(server):
    url, *_ = server

    def chunks():  # no Content-Length: the server has to count
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(100):
            yield b"x" * 10_000
        yield b'"}'

    response = httpx.post(url + "/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "request_too_large"
    small = httpx.post(url + "/v1/completions",
                       content=iter([b'{"model": "tiny", ', b'"prompt": "hi", "max_tokens": 2}']),
                       headers={"content-type": "application/json"})
    assert small.status_code == 200, small.text  # a chunked body under the limit is read whole


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other table"])
def test_damaged_feedback_store_is_a_clear_error(tiny_model_dir, tmp_path, capsys, damage):
    import sqlite3

    from llm_recipes.cli import main
    from llm_recipes.serving.feedback_store import FeedbackStore, FeedbackStoreError

    path = tmp_path / "serve" / "feedback.sqlite"
    path.parent.mkdir()
    if damage == "garbage":
        path.write_bytes(b"this is not a database " * 400)
    elif damage == "truncated":
        store = FeedbackStore(path)
        for i in range(50):
            store.add(model="m", messages=[{"role": "user", "content": "q" * 500}], completion="a", rating=1,
                      suggestion=None)
        store.close()
        data = path.read_bytes()
        path.write_bytes(data[:100] + b"\xff" * 4000 + data[4100:])
    else:
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE feedback (x TEXT)")
        conn.commit()
        conn.close()
    with pytest.raises(FeedbackStoreError, match="move it aside") as raised:
        FeedbackStore(path)
    assert str(path) in str(raised.value)
    assert main(["serve", str(tiny_model_dir), "--output_dir", str(path.parent), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "move it aside" in err and "Traceback" not in err
