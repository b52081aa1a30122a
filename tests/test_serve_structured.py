"""Structured output (`response_format`) by grammar-constrained decoding: even the tiny random model's
answers parse and validate against the schema, with the official client's `parse`, in streams too; an
answer cut by max_tokens says "length"; a schema that cannot be compiled is a 400 naming the problem."""

from __future__ import annotations

import json
from typing import Literal

import httpx
import pytest
from pydantic import BaseModel
from serve_helpers import running_server

pytest.importorskip("xgrammar")


class FileInfo(BaseModel):
    exists: bool
    kind: Literal["file", "folder", "link"]
    size: int


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("structured") / "feedback.sqlite"
    with running_server(tiny_model_dir, path, max_tokens_cap=64, default_max_tokens=48) as handle:
        yield handle


MESSAGES = [{"role": "user", "content": "Describe /etc/hosts as JSON."}]


def test_parse_with_the_openai_client(server):
    from openai import OpenAI

    url, *_ = server
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    for seed in range(4):
        # the random model may write a long integer: room for it (the cap), so every seed finishes
        completion = client.chat.completions.parse(model="tiny", messages=MESSAGES, response_format=FileInfo,
                                                   temperature=1.0, seed=seed, max_tokens=64)
        choice = completion.choices[0]
        assert choice.finish_reason == "stop"
        assert isinstance(choice.message.parsed, FileInfo)
        assert FileInfo.model_validate_json(choice.message.content) == choice.message.parsed


def test_json_schema_strict_and_streamed(server):
    url, *_ = server
    schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]},
                                               "confidence": {"type": "number"}, "tags": {
                                                   "type": "array", "items": {"type": "boolean"}, "maxItems": 3}},
              "required": ["answer", "confidence", "tags"], "additionalProperties": False}
    body = {"model": "tiny", "messages": MESSAGES, "temperature": 0.8, "seed": 3, "max_tokens": 64,
            "response_format": {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema,
                                                                        "strict": True}}}
    answer = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()["choices"][0]
    assert answer["finish_reason"] == "stop"
    parsed = json.loads(answer["message"]["content"])
    assert set(parsed) == {"answer", "confidence", "tags"} and parsed["answer"] in ("yes", "no")
    assert all(isinstance(t, bool) for t in parsed["tags"]) and len(parsed["tags"]) <= 3
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, timeout=60) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    streamed = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    assert streamed == answer["message"]["content"]  # same seed, same constrained answer
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


def test_json_object_and_the_length_limit(server):
    """`json_object`: the answer starts as a JSON object and, when it finishes, parses as one; cut by
    max_tokens it says "length", and the client's parse refuses it rather than return half a JSON."""
    import openai
    from openai import OpenAI

    url, *_ = server
    for seed in range(6):
        answer = httpx.post(f"{url}/v1/chat/completions", json={
            "model": "tiny", "messages": MESSAGES, "seed": seed, "max_tokens": 64,
            "response_format": {"type": "json_object"}}, timeout=60).json()["choices"][0]
        text = answer["message"]["content"]
        assert text.startswith("{")
        if answer["finish_reason"] == "stop":
            assert isinstance(json.loads(text), dict)
        else:
            assert answer["finish_reason"] == "length"
    short = httpx.post(f"{url}/v1/chat/completions", json={
        "model": "tiny", "messages": MESSAGES, "max_tokens": 3, "response_format": {
            "type": "json_schema", "json_schema": {"name": "f", "schema": FileInfo.model_json_schema()}}},
        timeout=60).json()["choices"][0]
    assert short["finish_reason"] == "length"
    with pytest.raises(json.JSONDecodeError):
        json.loads(short["message"]["content"])
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(model="tiny", messages=MESSAGES, response_format=FileInfo, max_tokens=3)


@pytest.mark.parametrize("response_format,fragment", [
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {
        "a": {"type": "nonsense"}}}}}, "Unsupported type"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}}, "nowhere"),
    ({"type": "json_schema"}, "json_schema"),
    ({"type": "json_schema", "json_schema": {"name": "bad name!", "schema": {}}}, "name"),
    ({"type": "xml"}, "type"),
])
def test_bad_response_format_is_400_naming_the_problem(server, response_format, fragment):
    url, *_ = server
    response = httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES,
                                                               "response_format": response_format}, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"].startswith("response_format") and fragment in error["message"], error


def test_ignore_eos_with_json_is_refused(server):
    url, *_ = server
    response = httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES,
                                                               "ignore_eos": True,
                                                               "response_format": {"type": "json_object"}})
    assert response.status_code == 400 and "ignore_eos" in response.json()["error"]["message"]


def test_a_schema_that_compiles_longer_than_a_request_may_is_refused(tiny_model_dir, tmp_path):
    with running_server(tiny_model_dir, tmp_path / "f.sqlite", request_timeout_s=1e-6) as (url, *_):
        response = httpx.post(f"{url}/v1/chat/completions", json={
            "model": "tiny", "messages": MESSAGES, "response_format": {
                "type": "json_schema", "json_schema": {"name": "f", "schema": FileInfo.model_json_schema()}}})
        assert response.status_code == 400 and "to compile" in response.json()["error"]["message"]
        assert httpx.get(f"{url}/health").status_code == 200
