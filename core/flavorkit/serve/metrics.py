"""Prometheus metrics of one server (its own registry, so several apps can live in one process).

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`); users call :func:`flavorkit.serve.create_app`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class Metrics:
    """Request, token, latency, queue and batch metrics, exposed at ``GET /metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "flavorkit_requests", "HTTP requests by route and status code", ["route", "status"], registry=r
        )
        self.prompt_tokens = Counter("flavorkit_prompt_tokens", "Prompt tokens of admitted requests", registry=r)
        self.completion_tokens = Counter(
            "flavorkit_completion_tokens", "Generated tokens, cancelled requests included", registry=r
        )
        self.ttft = Histogram(
            "flavorkit_time_to_first_token_seconds",
            "From submission to the first generated text of an OpenAI request written to its client "
            "(the first chunk after the opening one; the whole body when not streamed)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "flavorkit_inter_token_latency_seconds",
            "Time between two generated tokens of one choice",
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("flavorkit_queue_depth", "Requests waiting for the next batch", registry=r)
        self.batch_size = Histogram(
            "flavorkit_batch_size",
            "Requests per backend generate call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.active = Gauge("flavorkit_active_requests", "Requests in the running batch", registry=r)
        self.cancelled = Counter(
            "flavorkit_cancelled_requests",
            "Requests stopped before they finished (disconnect, timeout, shutdown)",
            ["reason"],
            registry=r,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return bytes(generate_latest(self.registry))
