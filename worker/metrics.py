"""Prometheus metrics, with the seed's names, and the small HTTP endpoint that serves them.

`Metrics` takes its `CollectorRegistry`, so every test gets a fresh one. Only the actor and the bus update it,
after the core decided; the per-swarm series are refreshed for the swarms a batch touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger("if_governor.metrics")

LATENCY_BUCKETS_MS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0)


class _CostTracked(Collector):
    """`if_governor_cost_tracked_usd{swarm_id}`: total USD tracked per swarm.

    Exported under the seed's exact name; prometheus-client's Counter would append `_total`, so this series is
    written by hand (as untyped: it only ever grows until the swarm is deregistered).
    """

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def collect(self) -> Iterable[Metric]:
        metric = Metric("if_governor_cost_tracked_usd", "Total cost tracked per swarm (USD).", "unknown")
        for swarm_id, value in dict(self.values).items():
            metric.add_sample("if_governor_cost_tracked_usd", {"swarm_id": swarm_id}, value)
        yield metric


class Metrics:
    """Every metric the governor exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.assignments = Counter("if_governor_assignments", "Tasks assigned to a swarm.", registry=r)
        self.assignments_failed = Counter(
            "if_governor_assignments_failed", "Assign requests that found no qualified swarm.", registry=r
        )
        self.assignment_latency = Histogram(
            "if_governor_assignment_latency_ms",
            "Time from receiving an assign request to sending its reply (ms).",
            buckets=LATENCY_BUCKETS_MS,
            registry=r,
        )
        self.budget_remaining = Gauge(
            "if_governor_budget_remaining_usd", "Remaining budget per swarm (USD).", ["swarm_id"], registry=r
        )
        self._cost_tracked = _CostTracked()
        r.register(self._cost_tracked)
        self.trips = Counter(
            "if_governor_circuit_breaker_trips", "Circuit breaker trips, by reason.", ["reason"], registry=r
        )
        self.resets = Counter("if_governor_circuit_breaker_resets", "Circuit breaker resets by a human.", registry=r)
        self.breaker_status = Gauge(
            "if_governor_circuit_breaker_status",
            "Breaker per swarm: 0 closed, 1 tripped.",
            ["swarm_id"],
            registry=r,
        )
        self.rejected = Counter(
            "if_governor_requests_rejected", "Requests answered with an error, by code.", ["code"], registry=r
        )
        self.requests = Counter("if_governor_requests", "Requests received, by subject.", ["subject"], registry=r)
        self.expired = Counter(
            "if_governor_requests_expired", "Requests dropped because their deadline had passed.", registry=r
        )
        self.ledger_failures = Counter(
            "if_governor_ledger_failures", "Ledger writes that were not acknowledged, by kind.", ["kind"], registry=r
        )
        self.mailbox_depth = Gauge("if_governor_mailbox_depth", "Commands waiting for the actor.", registry=r)
        self.batch_size = Histogram(
            "if_governor_batch_size",
            "Commands the actor applied per batch.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )

    def swarm(self, swarm_id: str, remaining: float, cost_tracked: float, tripped: bool) -> None:
        """Refresh one swarm's series."""
        self.budget_remaining.labels(swarm_id).set(remaining)
        self.breaker_status.labels(swarm_id).set(1 if tripped else 0)
        self._cost_tracked.values[swarm_id] = cost_tracked

    def forget_swarm(self, swarm_id: str) -> None:
        """Drop a deregistered swarm's series."""
        for gauge in (self.budget_remaining, self.breaker_status):
            with contextlib.suppress(KeyError):
                gauge.remove(swarm_id)
        self._cost_tracked.values.pop(swarm_id, None)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class HttpEndpoint:
    """`/metrics`, `/healthz` (the process is alive) and `/readyz` (it is serving) over plain HTTP/1.1."""

    def __init__(self, metrics: Metrics, ready: Callable[[], bool], host: str, port: int) -> None:
        self._metrics = metrics
        self._ready = ready
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured as an ephemeral port)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request_line.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else ""
            status, body, ctype = self._route(path)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _route(self, path: str) -> tuple[str, bytes, str]:
        if path == "/metrics":
            return "200 OK", self._metrics.exposition(), "text/plain; version=0.0.4; charset=utf-8"
        if path == "/healthz":
            return "200 OK", b"ok\n", "text/plain"
        if path == "/readyz":
            if self._ready():
                return "200 OK", b"ready\n", "text/plain"
            return "503 Service Unavailable", b"not ready\n", "text/plain"
        return "404 Not Found", b"not found\n", "text/plain"
