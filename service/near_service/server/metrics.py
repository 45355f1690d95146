"""Prometheus metrics of one service instance, in its own registry (no global state).

``GET /metrics`` exposes: ``near_requests_total`` and ``near_request_seconds`` per route, method and
status; ``near_queue_depth`` (requests admitted and not yet answered) and ``near_embed_queue_texts``
(query texts waiting for the embedder); ``near_cache_lookups_total{store, result}``;
``near_embedded_texts_total{kind}`` (texts the model actually ran on: 0 after a warm start);
``near_redis_up``; ``near_ready`` and ``near_pool_size``.

>>> m = Metrics()
>>> m.embedded.labels(kind="query").inc(3)
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from near_service.core.embedder import EmbeddingStore

#: The methods that get their own label; anything else a client sends is counted as "other".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Every metric the service exports, registered in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("near_requests", "HTTP requests answered.", ["route", "method", "status"], registry=r)
        self.latency = Histogram(
            "near_request_seconds", "HTTP request latency.", ["route", "method"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "near_queue_depth", "Requests admitted to the embedder/index and not yet answered.", registry=r
        )
        self.embed_queue = Gauge("near_embed_queue_texts", "Query texts waiting for the embedder.", registry=r)
        self.embed_batches = Counter("near_embed_batches", "Query embedding calls (one per micro-batch).", registry=r)
        self.cache = Counter(
            "near_cache_lookups", "Embedding cache lookups by store and result.", ["store", "result"], registry=r
        )
        self.embedded = Counter("near_embedded_texts", "Texts the model embedded (cache misses).", ["kind"], registry=r)
        self.redis_up = Gauge("near_redis_up", "1 if Redis answers, 0 if degraded, -1 if not configured.", registry=r)
        self.ready = Gauge("near_ready", "1 once the pool is embedded and indexed.", registry=r)
        self.pool_size = Gauge("near_pool_size", "Candidates in the pool.", registry=r)
        self.rejected = Counter("near_rejected", "Requests refused because the queue was full.", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CountingStore:
    """Wraps an :class:`EmbeddingStore` and counts its hits and misses in ``near_cache_lookups_total``."""

    def __init__(self, store: EmbeddingStore, name: str, metrics: Metrics) -> None:
        self.store, self.name = store, name
        self._hit = metrics.cache.labels(store=name, result="hit")
        self._miss = metrics.cache.labels(store=name, result="miss")

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        found = self.store.get_many(keys)
        hits = sum(v is not None for v in found)
        self._hit.inc(hits)
        self._miss.inc(len(found) - hits)
        return found

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        self.store.put_many(items)


class MetricsMiddleware:
    """Pure ASGI middleware: counts and times every HTTP request by its route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            # Only labels the server chooses, so no client can grow /metrics: the route's template (not
            # the raw path; unknown paths and requests refused before routing share "unmatched") and a
            # known method or "other". Statuses are the service's own.
            name = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            method = method if method in _METHODS else "other"
            self.metrics.requests.labels(route=name, method=method, status=str(status)).inc()
            self.metrics.latency.labels(route=name, method=method).observe(time.perf_counter() - start)
