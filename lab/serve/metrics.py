"""The server's Prometheus metrics, in a registry of its own (several servers can live in one process).

    m = Metrics()
    m.requests.labels(endpoint="/v1/completions", status="200").inc()
    m.text()                           # the /metrics page (Prometheus text format)

Read by Prometheus, by ``lab.serve.scrape`` (a dashboard or notebook), or by eye.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The /metrics response's content type."""


class Metrics:
    """Every figure the server exports (names start with ``lab_serve_``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("lab_serve_requests", "HTTP requests answered, by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("lab_serve_request_seconds", "Time to answer a request (a stream: to its end)",
                                 ["endpoint"], registry=r,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.batch_size = Histogram("lab_serve_batch_size", "Requests run together in one model call (generation: rows in one decoding step)",
                                    ["kind"], registry=r, buckets=(1, 2, 4, 8, 16, 32, 64))
        self.queue_depth = Gauge("lab_serve_queue_depth", "Requests waiting for a batch", ["kind"], registry=r)
        self.tokens = Counter("lab_serve_generated_tokens", "Tokens generated", registry=r)
        self.tokens_per_second = Gauge("lab_serve_tokens_per_second",
                                       "Tokens generated per second, over about the last second of generation", registry=r)
        self.streams = Gauge("lab_serve_active_completions", "Completions in flight (streamed or not)", registry=r)
        self.ready = Gauge("lab_serve_ready", "1 once the model is loaded and warmed up", registry=r)
        for kind in ("predict", "generate"):  # present from the start, so a scrape always finds them
            self.queue_depth.labels(kind=kind).set(0)

    def text(self) -> bytes:
        return generate_latest(self.registry)
