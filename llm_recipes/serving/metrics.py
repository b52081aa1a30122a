"""The server's Prometheus metrics (`GET /metrics`), with the standard client library, prometheus_client.

Names follow vLLM's where one exists (`vllm:time_to_first_token_seconds` -> `llm_recipes_time_to_first_token_seconds`),
so dashboards made for it need only the prefix changed. Each server has its own registry (several can run
in one process: the tests do).
"""

from __future__ import annotations

# seconds: from a few milliseconds (a tiny model's step on a free CPU) to the default request time limit
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
                   1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 120.0)


class ServerMetrics:
    """Counters, gauges and histograms of one server.

    Args:
        engine: the generation engine (queue length and running sequences are read from it at scrape time).
        store: the feedback store (its row count is read at scrape time).
    """

    def __init__(self, engine, store):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry = CollectorRegistry()
        self.requests = Counter("llm_recipes_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=registry)
        self.prompt_tokens = Counter("llm_recipes_prompt_tokens", "prompt tokens of generation requests",
                                     registry=registry)
        self.generation_tokens = Counter("llm_recipes_generation_tokens", "tokens generated", registry=registry)
        self.time_to_first_token = Histogram("llm_recipes_time_to_first_token_seconds",
                                             "from a request's arrival to its first generated token (per answer)",
                                             buckets=LATENCY_BUCKETS, registry=registry)
        self.inter_token_latency = Histogram("llm_recipes_inter_token_latency_seconds",
                                             "between consecutive tokens of one answer",
                                             buckets=LATENCY_BUCKETS, registry=registry)
        Gauge("llm_recipes_num_requests_waiting", "answers waiting for a batch slot",
              registry=registry).set_function(lambda: engine.waiting)
        Gauge("llm_recipes_num_requests_running", "sequences in the running batch",
              registry=registry).set_function(lambda: engine.running)
        Gauge("llm_recipes_feedback_rows", "rows in the feedback store",
              registry=registry).set_function(store.count)
        registry.register(_PrefixCacheCollector(engine))

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format, and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _PrefixCacheCollector:
    """The engine's prefix cache counters, read at scrape time (the engine counts them; a prometheus_client
    Counter cannot read another object's count): prompts that reused kept keys and values, and the prompt
    tokens they did not prefill."""

    def __init__(self, engine):
        self._engine = engine

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        yield CounterMetricFamily("llm_recipes_prefix_cache_hits", "prompts that reused a finished answer's keys "
                                  "and values", value=self._engine.prefix_hits)
        yield CounterMetricFamily("llm_recipes_prefix_cache_reused_tokens", "prompt tokens not prefilled: their "
                                  "keys and values were reused",
                                  value=self._engine.prefix_reused_tokens)
