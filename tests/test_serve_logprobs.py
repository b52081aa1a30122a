"""Scoring through the server: logprobs, echo, several prompts and answers per request, vLLM's tokenizer
routes, and lm-evaluation-harness's `local-completions` model against it, checked against the model's
own forward pass and against lm_eval's HF backend on the same folder."""

from __future__ import annotations

import httpx
import pytest
from serve_helpers import running_server


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("serve_lp") / "feedback.sqlite"
    with running_server(tiny_model_dir, path, max_tokens_cap=64, default_max_tokens=16) as handle:
        yield handle


def _reference_logprobs(model, ids):
    """log p(ids[t] | ids[:t]) for t >= 1 and the log-softmax rows, from one plain forward pass."""
    import torch

    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    return [float(logp[t - 1, ids[t]]) for t in range(1, len(ids))], logp


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    """The served model, loaded here too (the server's copy is in its engine process)."""
    from llm_recipes.serving.loading import load_for_serving

    return load_for_serving(tiny_model_dir)[0]


def test_echo_scores_the_prompt_like_a_forward_pass(server, model, tiny_tokenizer):
    url, app, engine, store = server
    ids = tiny_tokenizer("The os module provides a portable way of using")["input_ids"]
    expected, logp = _reference_logprobs(model, ids)
    with httpx.Client(base_url=url, timeout=60) as http:
        # what lm-evaluation-harness sends: token ids, echo, one token, logprobs 1
        body = http.post("/v1/completions", json={"model": "tiny", "prompt": [ids], "max_tokens": 1, "logprobs": 1,
                                                 "echo": True, "temperature": 0}).json()
        choice = body["choices"][0]
        lp = choice["logprobs"]
        assert len(lp["tokens"]) == len(ids) + 1  # the prompt, then the one generated token
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        assert lp["token_logprobs"][1:len(ids)] == pytest.approx(expected, abs=1e-4)
        # the generated token is the greedy one, and its logprob is the best alternative's
        greedy = int(logp[-1].argmax())
        assert lp["token_logprobs"][-1] == pytest.approx(float(logp[-1, greedy]), abs=1e-4)
        assert lp["token_logprobs"][-1] == max(lp["top_logprobs"][-1].values())
        for t in range(1, len(ids)):
            top = lp["top_logprobs"][t]
            assert 1 <= len(top) <= 2  # the best token, plus the prompt's own when it is not the best
            assert max(top.values()) == pytest.approx(float(logp[t - 1].max()), abs=1e-4)
        assert choice["text"].startswith(tiny_tokenizer.decode(ids, skip_special_tokens=True))
        offsets = lp["text_offset"]
        assert offsets == sorted(offsets) and offsets[0] == 0
        assert body["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 1, "total_tokens": len(ids) + 1}

        # max_tokens 0: the prompt only, scored; a string prompt is echoed as sent
        text = "for item in items:"
        body = http.post("/v1/completions", json={"model": "tiny", "prompt": text, "max_tokens": 0, "echo": True,
                                                 "logprobs": 3}).json()
        choice = body["choices"][0]
        string_ids = tiny_tokenizer(text)["input_ids"]
        assert choice["text"] == text and choice["finish_reason"] == "length"
        assert choice["logprobs"]["token_logprobs"][1:] == pytest.approx(
            _reference_logprobs(model, string_ids)[0], abs=1e-4)
        assert all(len(top) in (3, 4) for top in choice["logprobs"]["top_logprobs"][1:])
        assert body["usage"]["completion_tokens"] == 0


def test_several_prompts_and_answers_in_one_request(server, tiny_tokenizer):
    url, *_ = server
    with httpx.Client(base_url=url, timeout=60) as http:
        def complete(**fields):
            response = http.post("/v1/completions", json={"model": "tiny", "max_tokens": 8, **fields})
            assert response.status_code == 200, response.text
            return response.json()

        alone = [complete(prompt=p, temperature=0)["choices"][0]["text"] for p in ("import os", "def f(x):")]
        body = complete(prompt=["import os", "def f(x):"], temperature=0, n=2)
        assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
        assert [c["text"] for c in body["choices"]] == [alone[0], alone[0], alone[1], alone[1]]
        # sampled: n answers differ from each other, and the same seed gives the same n answers
        first = complete(prompt="The", temperature=1.0, n=3, seed=11)
        again = complete(prompt="The", temperature=1.0, n=3, seed=11)
        texts = [c["text"] for c in first["choices"]]
        assert texts == [c["text"] for c in again["choices"]]
        assert len(set(texts)) > 1
        assert 3 <= first["usage"]["completion_tokens"] <= 24 and first["usage"]["prompt_tokens"] == 2

        # several answers streamed: each choice's pieces carry its index and add up to its text
        import json

        pieces, finished = {0: "", 1: ""}, set()
        with http.stream("POST", "/v1/completions", json={"model": "tiny", "prompt": "import os", "max_tokens": 8,
                                                          "temperature": 0, "n": 2, "stream": True}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    choice = json.loads(line[6:])["choices"][0]
                    pieces[choice["index"]] += choice["text"]
                    if choice["finish_reason"]:
                        finished.add(choice["index"])
        assert pieces == {0: alone[0], 1: alone[0]} and finished == {0, 1}


def test_chat_logprobs_with_the_openai_client(server):
    from openai import OpenAI

    url, *_ = server
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "What does os.path.join do?"}]
    chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=0,
                                          logprobs=True, top_logprobs=3)
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens
    # each token's bytes, joined, are the answer (a token may end inside a character)
    assert b"".join(bytes(item.bytes) for item in content).decode() == chat.choices[0].message.content
    for item in content:
        assert len(item.top_logprobs) == 3
        assert item.logprob == item.top_logprobs[0].logprob  # greedy: the chosen token is the best one
        assert [t.logprob for t in item.top_logprobs] == sorted((t.logprob for t in item.top_logprobs), reverse=True)
    plain = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=0)
    assert plain.choices[0].logprobs is None and plain.choices[0].message.content == chat.choices[0].message.content

    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=0,
                                            logprobs=True, stream=True)
    streamed = [t for c in stream if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in content], abs=1e-6)


def test_tokenizer_routes(server, tiny_tokenizer):
    url, *_ = server
    with httpx.Client(base_url=url, timeout=30) as http:
        info = http.get("/tokenizer_info").json()
        assert info["eos_token"] == tiny_tokenizer.eos_token and info["model_max_length"] == 256
        tokens = http.post("/tokenize", json={"prompt": "import os", "add_special_tokens": False}).json()["tokens"]
        assert tokens == tiny_tokenizer("import os", add_special_tokens=False)["input_ids"]
        assert http.post("/detokenize", json={"tokens": tokens}).json()["prompt"] == "import os"
        chat = http.post("/tokenize", json={"messages": [{"role": "user", "content": "hi"}]}).json()
        assert chat["tokens"] == tiny_tokenizer.apply_chat_template([{"role": "user", "content": "hi"}],
                                                                    add_generation_prompt=True, tokenize=True,
                                                                    return_dict=True)["input_ids"]
        bad = http.post("/detokenize", json={"tokens": [1, -3]})
        assert bad.status_code == 400 and "-3" in bad.json()["error"]["message"]
        assert http.post("/tokenize", json={}).status_code == 400


@pytest.mark.slow
def test_lm_evaluation_harness_local_completions_matches_its_hf_backend(server, tiny_model_dir):
    """lm_eval's `local-completions` model scoring through our server (its remote tokenizer found via our
    tokenizer routes) gives the same log-likelihoods as lm_eval's HFLM on the same model folder."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from test_evaluate import REPO

    url, *_ = server
    manager = TaskManager(include_path=[str(REPO / "llm_recipes" / "evaluation" / "lm_eval_tasks")])
    tasks = ["english_cloze", "python_docs_mc"]
    served = lm_eval.simple_evaluate(
        model="local-completions", model_args=f"model=tiny,base_url={url}/v1/completions,max_length=256,"
                                              "num_concurrent=4,max_retries=1",
        tasks=tasks, task_manager=manager, log_samples=True)
    # the same token sequences on both sides: no BOS before contexts (local-completions adds none)
    local = lm_eval.simple_evaluate(model=HFLM(pretrained=str(tiny_model_dir), batch_size=8, device="cpu",
                                               add_bos_token=False),
                                    tasks=tasks, task_manager=manager, log_samples=True)
    for task in tasks:
        ours = {s["doc_id"]: [r[0][0] for r in s["resps"]] for s in served["samples"][task]}
        theirs = {s["doc_id"]: [r[0][0] for r in s["resps"]] for s in local["samples"][task]}
        assert ours.keys() == theirs.keys() and len(ours) >= 10
        worst = max(abs(a - b) for doc_id in ours for a, b in zip(ours[doc_id], theirs[doc_id]))
        assert worst < 1e-3, (task, worst)  # float32 sums in another batch layout
        assert served["results"][task]["acc,none"] == local["results"][task]["acc,none"]
