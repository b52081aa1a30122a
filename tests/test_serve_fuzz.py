"""Fuzzing the server from its own OpenAPI schema with schemathesis: requests that fit the schema and
requests that break it, on every operation, against the real server on loopback. No answer may be a
5xx. Bounded: a fixed number of examples per operation and generation mode, and a time budget the whole
test stays under (about 30-50 s on 2 busy cores)."""

from __future__ import annotations

import time

import pytest
from serve_helpers import running_server

EXAMPLES = 60  # per operation and generation mode
BUDGET_S = 40.0  # the fuzzing stops starting new operations after this


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "feedback.sqlite"
    # small answers keep each generated request cheap: fuzzing is about inputs, not long generations
    with running_server(tiny_model_dir, path, max_tokens_cap=8, default_max_tokens=4, max_queue=32,
                        request_timeout_s=20) as handle:
        yield handle


def test_no_5xx_for_any_request_the_schema_describes_or_breaks(server):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    url, *_ = server
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8  # every route: generation, tokenizer, feedback, models, health
    start = time.monotonic()
    tried, server_errors, statuses = 0, [], {}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if time.monotonic() - start > BUDGET_S:
                break

            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode), served_model=st.booleans())
            def fuzz(case, served_model):
                nonlocal tried
                if served_model and isinstance(case.body, dict) and "model" in case.body:
                    case.body["model"] = "tiny"  # else nearly every generated request stops at the 404
                response = case.call(base_url=url, timeout=60)
                tried += 1
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code >= 500:
                    server_errors.append((case.method, case.path, case.body, response.status_code,
                                          response.text[:300]))

            try:
                fuzz()
            except Unsatisfiable:  # nothing to break in an operation without parameters (GET /health)
                assert mode == GenerationMode.NEGATIVE and operation.method.upper() == "GET"
    elapsed = time.monotonic() - start
    print(f"\nschemathesis: {tried} requests over {len(operations)} operations in {elapsed:.0f} s; "
          f"statuses {dict(sorted(statuses.items()))}")
    assert not server_errors, server_errors[:5]
    assert tried >= 100
    assert any(400 <= status < 500 for status in statuses) and 200 in statuses
