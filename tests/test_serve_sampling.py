"""Every OpenAI request field is honoured or refused by name, and each sampling control has the effect it
promises: penalties, logit bias, top-k, top-p, min-p, stop strings (across token boundaries, in streams),
seeds and n."""

from __future__ import annotations

import json
import math

import httpx
import pytest
from serve_helpers import running_server


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("sampling") / "feedback.sqlite"
    with running_server(tiny_model_dir, path, max_tokens_cap=64, default_max_tokens=16) as handle:
        yield handle


def _post(url, path, body):
    response = httpx.post(url + path, json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def _complete(url, **fields):
    body = {"model": "tiny", "prompt": "The import system", "max_tokens": 24, "ignore_eos": True, **fields}
    return _post(url, "/v1/completions", body)


# -- the OpenAI contract -------------------------------------------------------------------------------


def _openai_fields():
    from openai.types import completion_create_params
    from openai.types.chat import completion_create_params as chat_create_params

    return {"/v1/chat/completions": set(chat_create_params.CompletionCreateParamsBase.__annotations__) | {"stream"},
            "/v1/completions": set(completion_create_params.CompletionCreateParamsBase.__annotations__) | {"stream"}}


def test_every_openai_request_field_is_honoured_or_refused_by_name(server):
    """The fields come from the installed `openai` package's own request types: a field a new release adds
    fails this test until the server honours or refuses it."""
    from llm_recipes.serving.schemas import (
        REFUSED_CHAT_FIELDS,
        REFUSED_COMPLETION_FIELDS,
        ChatCompletionRequest,
        CompletionRequest,
    )

    url, *_ = server
    bases = {"/v1/chat/completions": {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                      "max_tokens": 2},
             "/v1/completions": {"model": "tiny", "prompt": "hi", "max_tokens": 2}}
    declared = {"/v1/chat/completions": (ChatCompletionRequest, REFUSED_CHAT_FIELDS),
                "/v1/completions": (CompletionRequest, REFUSED_COMPLETION_FIELDS)}
    for path, fields in _openai_fields().items():
        request_type, refused = declared[path]
        unknown = fields - set(request_type.model_fields)
        assert not unknown, f"{path}: OpenAI fields this server neither honours nor refuses: {sorted(unknown)}"
        for field in sorted(set(refused) & fields):
            response = httpx.post(url + path, json={**bases[path], field: "x"}, timeout=30)
            assert response.status_code == 400, (path, field, response.text)
            error = response.json()["error"]
            assert error["param"] == field and "not supported" in error["message"], (path, field, error)
        # a field OpenAI does not have either is refused by name, not ignored
        response = httpx.post(url + path, json={**bases[path], "temprature": 0.5}, timeout=30)
        assert response.status_code == 400 and response.json()["error"]["param"] == "temprature"
        assert "unknown field" in response.json()["error"]["message"]


def test_the_responses_api_is_a_404_that_says_what_to_use(server):
    import openai
    from openai import OpenAI

    url, *_ = server
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="use /v1/chat/completions"):
        client.responses.create(model="tiny", input="hi")


def test_neutral_values_of_unsupported_fields_are_accepted(server):
    """What OpenAI clients send by default or echo back (`tool_choice: "none"`, `response_format` text,
    `store: false`, null message fields) is not a request for the unsupported feature."""
    url, *_ = server
    answer = _post(url, "/v1/chat/completions", {
        "model": "tiny", "max_tokens": 2, "tool_choice": "none", "tools": [], "parallel_tool_calls": None,
        "response_format": {"type": "text"}, "store": False, "modalities": ["text"], "service_tier": "auto",
        "messages": [{"role": "user", "content": "hi"},
                     {"role": "assistant", "content": "hello", "refusal": None, "tool_calls": None},
                     {"role": "user", "content": "and?"}]})
    assert answer["choices"][0]["message"]["role"] == "assistant"
    refused = httpx.post(f"{url}/v1/chat/completions", json={
        "model": "tiny", "messages": [{"role": "user", "content": "hi", "name": "bob"}]}, timeout=30)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "messages.0.name"


# -- sampling controls -----------------------------------------------------------------------------------


def _chosen_and_top(choice):
    """Per generated token: (chosen logprob, {token: logprob} of the alternatives)."""
    lp = choice["logprobs"]
    return list(zip(lp["token_logprobs"], lp["top_logprobs"]))


def _rank(chosen: float, top: dict) -> int:
    """How many alternatives are more likely than the chosen token."""
    return sum(v > chosen + 1e-6 for v in top.values())


def test_top_k_top_p_and_min_p_keep_only_what_they_allow(server):
    """Sampled at temperature 1 with the model's own log-probabilities reported (before any filter):
    every chosen token lies inside the set the filter keeps; top_k 1 and a tiny top_p are greedy."""
    url, *_ = server
    greedy = _complete(url, temperature=0)["choices"][0]["text"]
    for fields in ({"top_k": 1}, {"top_p": 0.001}):
        answers = _complete(url, temperature=1.0, n=4, seed=5, **fields)["choices"]
        assert {c["text"] for c in answers} == {greedy}, fields

    unfiltered = _complete(url, temperature=1.0, n=4, seed=5, logprobs=20)["choices"]
    outside_top3 = sum(_rank(chosen, top) >= 3 for c in unfiltered for chosen, top in _chosen_and_top(c))
    assert outside_top3 > 0  # without a filter, sampling does leave the top 3: the checks below mean something

    for c in _complete(url, temperature=1.0, n=4, seed=5, logprobs=20, top_k=3)["choices"]:
        for chosen, top in _chosen_and_top(c):
            assert _rank(chosen, top) < 3
    for c in _complete(url, temperature=1.0, n=4, seed=5, logprobs=20, top_p=0.5)["choices"]:
        for chosen, top in _chosen_and_top(c):
            more_likely = sum(math.exp(v) for v in top.values() if v > chosen + 1e-6)
            assert more_likely < 0.5  # the nucleus: the tokens before it hold less than top_p
    for c in _complete(url, temperature=1.0, n=4, seed=5, logprobs=20, min_p=0.3)["choices"]:
        for chosen, top in _chosen_and_top(c):
            assert math.exp(chosen) >= 0.3 * math.exp(max(top.values())) - 1e-6


def test_repetition_penalty_matches_transformers_generate(server, tiny_model_dir):
    """Greedy with a repetition_penalty gives exactly what `generate(repetition_penalty=...)` gives."""
    import torch

    from llm_recipes.serving.loading import load_for_serving

    url, *_ = server
    model, tok = load_for_serving(tiny_model_dir)
    ids = tok("The import system")["input_ids"]
    expected = {}
    for penalty in (1.0, 3.0, 10.0):
        out = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, repetition_penalty=penalty,
                             eos_token_id=None, pad_token_id=tok.pad_token_id)
        expected[penalty] = out[0, len(ids):].tolist()
    assert len({tuple(v) for v in expected.values()}) == 3
    for penalty in (1.0, 3.0, 10.0):
        text = _complete(url, temperature=0, repetition_penalty=penalty)["choices"][0]["text"]
        assert text == tok.decode(expected[penalty], skip_special_tokens=True), penalty


def test_presence_and_frequency_penalties(server):
    """OpenAI's definition, checked on a known vector, and their effect on a greedy answer: the tiny
    model's greedy answer repeats tokens; with a penalty it repeats fewer."""
    import torch

    from llm_recipes.serving.engine import OpenAIPenalties

    scores = torch.zeros(1, 6)
    ids = torch.tensor([[5, 5, 1, 2, 2, 2, 3]])  # prompt [5], answer [5, 1, 2, 2, 2, 3]
    out = OpenAIPenalties(presence=0.5, frequency=0.25, prompt_length=1)(ids, scores)
    # count: token 1 once, 2 three times, 3 once, 5 once (the prompt's 5 is not counted)
    assert out.tolist() == [[0.0, -0.75, -1.25, -0.75, 0.0, -0.75]]

    url, *_ = server

    def repeats(**fields):
        lp = _complete(url, temperature=0, max_tokens=32, logprobs=0, **fields)["choices"][0]["logprobs"]
        return len(lp["tokens"]) - len(set(lp["tokens"]))

    plain = repeats()
    assert plain > 4
    assert repeats(frequency_penalty=2.0) < plain
    assert repeats(presence_penalty=2.0) < plain
    assert repeats(frequency_penalty=-2.0) >= plain  # negative values encourage repetition


def test_logit_bias(server):
    url, *_ = server
    first = _complete(url, temperature=0, max_tokens=4, logprobs=0)["choices"][0]["logprobs"]["tokens"][0]
    tokenized = _post(url, "/tokenize", {"prompt": first, "add_special_tokens": False})["tokens"]
    assert len(tokenized) == 1
    banned = _complete(url, temperature=0, max_tokens=4, logprobs=0, logit_bias={str(tokenized[0]): -100})
    assert banned["choices"][0]["logprobs"]["tokens"][0] != first
    forced = _complete(url, temperature=1.0, seed=1, max_tokens=4, logit_bias={"65": 100})["choices"][0]["text"]
    assert forced == _post(url, "/detokenize", {"tokens": [65] * 4})["prompt"]
    bad = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "x", "logit_bias": {"99999": 1}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "logit_bias"


def test_stop_string_across_token_boundaries_in_streams(server):
    """A stop string made of the end of one token and the start of the next: the answer ends before it,
    streamed or not, and no part of it is ever sent."""
    url, *_ = server
    base = {"prompt": "The import system", "temperature": 1.0, "seed": 7, "max_tokens": 40}
    tokens = _complete(url, **base, logprobs=0)["choices"][0]["logprobs"]["tokens"]
    full = "".join(tokens)
    at = next(i for i in range(2, len(tokens) - 1) if len(tokens[i]) >= 2 and len(tokens[i + 1]) >= 2
              and "\ufffd" not in tokens[i] + tokens[i + 1]
              and full.find(tokens[i][-2:] + tokens[i + 1][:2]) == len("".join(tokens[:i + 1])) - 2)
    stop = tokens[at][-2:] + tokens[at + 1][:2]
    expected = full[:full.find(stop)]

    answer = _complete(url, **base, stop=[stop, "never appears"])["choices"][0]
    assert answer["text"] == expected and answer["finish_reason"] == "stop"
    with httpx.stream("POST", f"{url}/v1/completions", json={"model": "tiny", "ignore_eos": True, **base,
                                                              "stop": stop, "stream": True}, timeout=60) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    pieces = [e["choices"][0]["text"] for e in events]
    # whatever the chunking (tokens that arrive together may share a chunk), nothing of the stop string is sent
    assert "".join(pieces) == expected
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


def test_seed_reproducible_and_n_answers_differ(server):
    url, *_ = server
    fields = {"temperature": 1.0, "top_k": 50, "min_p": 0.01, "presence_penalty": 0.5, "n": 3}
    first = [c["text"] for c in _complete(url, seed=123, **fields)["choices"]]
    again = [c["text"] for c in _complete(url, seed=123, **fields)["choices"]]
    other = [c["text"] for c in _complete(url, seed=124, **fields)["choices"]]
    assert first == again and len(set(first)) == 3 and other != first


def test_the_engine_draws_from_the_distribution():
    """The engine's sampler (inverse CDF, one uniform per row from the row's `Uniforms`): frequencies match the
    probabilities, a token of probability 0 is never drawn, and a seeded row's draws depend on its own generator
    only (its neighbours take theirs from torch's global one)."""
    import torch

    from llm_recipes.serving.engine import Uniforms, _draw

    cpu = torch.device("cpu")
    probs = torch.tensor([0.5, 0.0, 0.3, 0.2, 0.0])
    torch.manual_seed(0)
    unseeded = Uniforms(None, cpu)
    draws = _draw(probs.expand(40_000, -1), [unseeded.next() for _ in range(40_000)])
    counts = torch.bincount(torch.tensor(draws), minlength=5) / 40_000
    assert counts[1] == 0 and counts[4] == 0
    assert counts.tolist() == pytest.approx(probs.tolist(), abs=0.01)  # ~4.5 standard errors

    def seeded(rows):  # row 0 seeded with 7, its neighbours unseeded; each row's numbers as the engine takes them
        sources = [Uniforms(torch.Generator().manual_seed(7), cpu)] + [Uniforms(None, cpu) for _ in range(rows - 1)]
        return [_draw(torch.full((rows, 50), 0.02), [u.next() for u in sources])[0] for _ in range(20)]

    assert seeded(1) == seeded(8)
