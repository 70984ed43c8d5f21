"""Prometheus metrics of one serving app, in its own registry (two apps in one process never clash)."""
from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServeMetrics:
    """Queue depth, batch sizes, latencies, tokens and rejections of one app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.queue_depth = Gauge("autolite_queue_depth", "Texts waiting in the batcher queue.", registry=reg)
        self.batch_size = Histogram("autolite_batch_size", "Texts per model forward.",
                                    buckets=BATCH_BUCKETS, registry=reg)
        self.batch_tokens = Histogram("autolite_batch_padded_tokens", "Padded tokens (B x T) per forward.",
                                      buckets=(16, 64, 256, 1024, 4096, 16384, 65536), registry=reg)
        self.queue_wait = Histogram("autolite_queue_wait_seconds", "Time a text waited before its forward.",
                                    buckets=LATENCY_BUCKETS, registry=reg)
        self.forward_seconds = Histogram("autolite_forward_seconds", "Duration of one batched forward.",
                                         buckets=LATENCY_BUCKETS, registry=reg)
        self.request_latency = Histogram("autolite_request_latency_seconds", "End-to-end latency per request.",
                                         ["endpoint"], buckets=LATENCY_BUCKETS, registry=reg)
        self.requests = Counter("autolite_requests", "HTTP requests by endpoint and status.",
                                ["endpoint", "status"], registry=reg)
        self.tokens = Counter("autolite_tokens", "Real (unpadded) tokens processed by the model.", registry=reg)
        self.tokens_per_second = Gauge("autolite_tokens_per_second",
                                       "Real tokens per second of the most recent forward.", registry=reg)
        self.rejected = Counter("autolite_rejected", "Texts rejected by the batcher.", ["reason"], registry=reg)
        self.streams_cancelled = Counter("autolite_streams_cancelled", "Streamed completions that stopped "
                                         "early (client went away, or an error).", registry=reg)

    def observe_batch(self, size: int, real_tokens: int, padded_tokens: int, seconds: float) -> None:
        """Record one forward of ``size`` texts."""
        self.batch_size.observe(size)
        self.batch_tokens.observe(padded_tokens)
        self.forward_seconds.observe(seconds)
        self.tokens.inc(real_tokens)
        if seconds > 0:
            self.tokens_per_second.set(real_tokens / seconds)

    def watch_routes(self, model: Any) -> None:
        """Export a routed (fast/main path) model's rows per path as ``autolite_route_rows_total{path}``."""
        counts = getattr(model, "route_counts", None)
        if counts is not None:
            self.registry.register(_RouteRows(counts))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class _RouteRows:
    """Collector over the model's cumulative per-path row counts (fast, escalated = fast then main, main)."""

    def __init__(self, counts: Any) -> None:
        self.counts = counts

    def collect(self):
        family = CounterMetricFamily("autolite_route_rows", "Rows answered per path of a routed model "
                                     "(fast; escalated: fast then main; main).", labels=["path"])
        for path in ("fast", "escalated", "main"):
            family.add_metric([path], self.counts.get(path, 0))
        yield family
