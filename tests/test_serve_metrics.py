"""`GET /metrics`: Prometheus' text format from prometheus_client, behind the API key, with request,
token, queue, latency and feedback figures that match what the server did."""

from __future__ import annotations

import threading

import httpx
from serve_helpers import running_server

KEY = {"Authorization": "Bearer m3trics"}


def _scrape(url) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    response = httpx.get(url + "/metrics", headers=KEY)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def test_metrics_count_what_the_server_did(tiny_model_dir, tmp_path):
    from llm_recipes.serving.engine import GenerationRequest

    with running_server(tiny_model_dir, tmp_path / "f.sqlite", api_key="m3trics") as (url, _, engine, _s):
        assert httpx.get(url + "/metrics").status_code == 401  # behind the key, like /v1/
        with httpx.Client(base_url=url, headers=KEY, timeout=60) as http:
            usage = []
            for stream in (False, True):
                body = {"model": "tiny", "prompt": "The os module", "max_tokens": 6, "ignore_eos": True, "n": 2,
                        "stream": stream, "stream_options": {"include_usage": True} if stream else None}
                if stream:
                    with http.stream("POST", "/v1/completions", json=body) as r:
                        lines = [line for line in r.iter_lines() if '"usage"' in line]
                    usage.append(httpx.Response(200, content=lines[-1][6:]).json()["usage"])
                else:
                    usage.append(http.post("/v1/completions", json=body).json()["usage"])
            assert http.post("/v1/feedback", json={"messages": [{"role": "user", "content": "q"}],
                                                   "completion": "a", "rating": "up"}).status_code == 200
            # a prompt that starts with a finished one's 16+ tokens reuses their keys and values (prefix cache)
            text = "The os module lets a program list, create and remove folders and files on any system"
            for prompt in (text, text + " it runs on"):
                response = http.post("/v1/completions", json={"model": "tiny", "prompt": prompt, "max_tokens": 2,
                                                              "ignore_eos": True})
                assert response.status_code == 200
                usage.append(response.json()["usage"])
            assert http.get("/v1/models/nope").status_code == 404
            assert http.get("/no/such/page").status_code == 404
        assert httpx.get(url + "/v1/models").status_code == 401

        m = _scrape(url)
        assert m[("llm_recipes_requests_total", (("route", "/v1/completions"), ("status", "200")))] == 4
        assert m[("llm_recipes_requests_total", (("route", "/v1/feedback"), ("status", "200")))] == 1
        assert m[("llm_recipes_requests_total", (("route", "/v1/models/{model_id:path}"), ("status", "404")))] == 1
        assert m[("llm_recipes_requests_total", (("route", "unmatched"), ("status", "404")))] == 1
        assert m[("llm_recipes_requests_total", (("route", "/v1/models"), ("status", "401")))] == 1
        assert m[("llm_recipes_prefix_cache_hits_total", ())] == 1
        assert 16 <= m[("llm_recipes_prefix_cache_reused_tokens_total", ())] <= usage[-1]["prompt_tokens"] - 1
        assert m[("llm_recipes_prompt_tokens_total", ())] == sum(u["prompt_tokens"] for u in usage)
        generated = sum(u["completion_tokens"] for u in usage)
        assert generated == 4 * 6 + 2 * 2 and m[("llm_recipes_generation_tokens_total", ())] == generated
        assert m[("llm_recipes_time_to_first_token_seconds_count", ())] == 6  # one per answer
        assert m[("llm_recipes_inter_token_latency_seconds_count", ())] == generated - 6
        assert m[("llm_recipes_time_to_first_token_seconds_sum", ())] > 0
        assert m[("llm_recipes_feedback_rows", ())] == 1
        assert m[("llm_recipes_num_requests_running", ())] == 0

        # queue length while the worker is held
        release, holding = threading.Event(), threading.Event()
        engine.submit(GenerationRequest([1, 5, 6], 1, lambda event: (holding.set(), release.wait(30)),
                                        temperature=0))
        assert holding.wait(30)
        waiting = [GenerationRequest([1, 5], 1, lambda event: None) for _ in range(3)]
        for request in waiting:
            engine.submit(request)
        try:
            m = _scrape(url)
            assert m[("llm_recipes_num_requests_waiting", ())] == 3
            # counted on the HTTP side of the engine process: the held answer had its first event (running),
            # the three behind it none yet (waiting)
            assert m[("llm_recipes_num_requests_running", ())] == 1
        finally:
            release.set()
