"""Prometheus metrics, with the seed's names, and the small HTTP endpoint that serves them.

`Metrics` takes its `CollectorRegistry`, so every test gets a fresh one. Only the actor and the bus update it,
after the core decided; the per-swarm series are read from the core when Prometheus scrapes.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from schemas.replies import GroupStatus

log = logging.getLogger("if_governor.metrics")

TASK_DURATION_BUCKETS_S = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)
LATENCY_BUCKETS_MS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0)


class _PerSwarm(Collector):
    """The per-swarm series, read from the core when Prometheus scrapes (not updated on the hot path).

    `if_governor_cost_tracked_usd` keeps the seed's exact name: prometheus-client's Counter would append `_total`,
    so it is written by hand, as untyped (it only grows until the swarm is deregistered).
    The scrape runs on the event loop's thread, between the actor's batches, so it reads a consistent core.
    """

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[tuple[str, float, float, bool]]] | None = None

    def collect(self) -> Iterable[Metric]:
        budget = GaugeMetricFamily(
            "if_governor_budget_remaining_usd", "Remaining budget per swarm (USD).", labels=["swarm_id"]
        )
        cost = Metric("if_governor_cost_tracked_usd", "Total cost tracked per swarm (USD).", "unknown")
        status = GaugeMetricFamily(
            "if_governor_circuit_breaker_status", "Breaker per swarm: 0 closed, 1 tripped.", labels=["swarm_id"]
        )
        for swarm_id, remaining, tracked, tripped in self.source() if self.source is not None else ():
            budget.add_metric([swarm_id], remaining)
            cost.add_sample("if_governor_cost_tracked_usd", {"swarm_id": swarm_id}, tracked)
            status.add_metric([swarm_id], 1.0 if tripped else 0.0)
        yield budget
        yield cost
        yield status


class _InFlight(Collector):
    """Tasks in flight per swarm, read from the core when Prometheus scrapes."""

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[tuple[str, int]]] | None = None

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "if_governor_tasks_in_flight",
            "Tasks assigned to a swarm, neither completed nor expired.",
            labels=["swarm_id"],
        )
        for swarm_id, count in self.source() if self.source is not None else ():
            family.add_metric([swarm_id], count)
        yield family


class _Evictions(Collector):
    """Idempotency keys forgotten before their horizon because their window was full, by kind (read from the
    core at scrape time)."""

    def __init__(self) -> None:
        self.source: Callable[[], dict[str, int]] | None = None

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "if_governor_dedupe_evicted",
            "Event ids (and task ids, kind assign) forgotten early because their kind's window was full.",
            labels=["kind"],
        )
        for kind, count in sorted((self.source() if self.source is not None else {}).items()):
            family.add_metric([kind], count)
        yield family


class _PerGroup(Collector):
    """The per-group series of the budget groups, read from the core when Prometheus scrapes."""

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[GroupStatus]] | None = None

    def collect(self) -> Iterable[Metric]:
        def family(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"if_governor_group_{name}", doc, labels=["group"])

        limit = family("budget_limit_usd", "A budget group's limit in its current period, top-ups included (USD).")
        spent = family("budget_spent_usd", "What a budget group spent in its current period (USD).")
        remaining = family("budget_remaining_usd", "A budget group's limit less what it spent in its period (USD).")
        exhausted = family("budget_exhausted", "1 while a budget group has nothing left in its period, else 0.")
        rate = family("burn_rate_usd_per_hour", "A budget group's spend over the last hour, per hour (USD).")
        forecast = family(
            "forecast_exhaustion_seconds",
            "Seconds until a budget group runs out at its last hour's rate (only when before its period ends).",
        )
        period_end = family("period_end_timestamp_seconds", "When a budget group's current period ends (Unix s).")
        now = time.time()
        for g in self.source() if self.source is not None else ():
            labels = [g.id]
            limit.add_metric(labels, g.limit + g.topped_up)
            spent.add_metric(labels, g.spent)
            remaining.add_metric(labels, g.remaining)
            exhausted.add_metric(labels, 1.0 if g.exhausted else 0.0)
            rate.add_metric(labels, g.rate_usd_per_hour)
            if g.forecast_exhausted_at is not None:
                forecast.add_metric(labels, max(0.0, g.forecast_exhausted_at - now))
            if g.period_end is not None:
                period_end.add_metric(labels, g.period_end)
        yield from (limit, spent, remaining, exhausted, rate, forecast, period_end)


class _HotCounters(Collector):
    """The counters bumped on every request, exported from plain ints at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        m = self.metrics
        yield CounterMetricFamily("if_governor_assignments", "Tasks assigned to a swarm.", value=m.assigned)
        yield CounterMetricFamily(
            "if_governor_assignments_failed", "Assign requests that found no qualified swarm.", value=m.assign_failed
        )
        received = CounterMetricFamily("if_governor_requests", "Requests received, by subject.", labels=["subject"])
        for subject, count in dict(m.received).items():
            received.add_metric([subject], count)
        yield received


class LeanHistogram(Collector):
    """A histogram observed from plain numbers and exported at scrape time (prometheus-client's takes a lock and
    updates every bucket: about 2 µs per observation, on the hot path once per assign)."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(float(b) for b in buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # one per bound (value <= bound, not cumulative), then +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def collect(self) -> Iterable[Metric]:
        cumulative: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*self.bounds, math.inf), list(self.counts), strict=True):
            total += count
            cumulative.append(("+Inf" if bound == math.inf else repr(bound), float(total)))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=cumulative, sum_value=self.sum)


class Metrics:
    """Every metric the governor exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # Counted on every request: plain ints (a prometheus-client Counter.inc takes a lock, about 1.5 µs), read
        # when Prometheus scrapes.
        self.assigned = 0
        self.assign_failed = 0
        self.received: dict[str, int] = {}
        self.assignment_latency = LeanHistogram(
            "if_governor_assignment_latency_ms",
            "Time from receiving an assign request to sending its reply (ms).",
            LATENCY_BUCKETS_MS,
        )
        r.register(self.assignment_latency)
        self._per_swarm = _PerSwarm()
        r.register(self._per_swarm)
        self._per_group = _PerGroup()
        self._in_flight = _InFlight()
        self._evictions = _Evictions()
        r.register(self._evictions)
        r.register(_HotCounters(self))
        self.trips = Counter(
            "if_governor_circuit_breaker_trips", "Circuit breaker trips, by reason.", ["reason"], registry=r
        )
        self.resets = Counter("if_governor_circuit_breaker_resets", "Circuit breaker resets by a human.", registry=r)
        self.rejected = Counter(
            "if_governor_requests_rejected", "Requests answered with an error, by code.", ["code"], registry=r
        )
        self.expired = Counter(
            "if_governor_requests_expired", "Requests dropped because their deadline had passed.", registry=r
        )
        self.ledger_failures = Counter(
            "if_governor_ledger_failures", "Ledger writes that were not acknowledged, by kind.", ["kind"], registry=r
        )
        self.publish_failures = Counter(
            "if_governor_publish_failures",
            "Replies, events and discovery answers the connection refused to send, by kind.",
            ["kind"],
            registry=r,
        )
        self.ledger_foreign = Counter(
            "if_governor_ledger_quarantined",
            "Ledger messages (and snapshots) that were not the governor's, passed over when read.",
            registry=r,
        )
        self.term_failures = Counter(
            "if_governor_term_failures",
            "Terms that ended because one of their tasks (actor, lease renewer, snapshot writer) died.",
            registry=r,
        )
        self.lease_lost = Counter(
            "if_governor_lease_lost", "Times this process stopped serving because its lease was lost.", registry=r
        )
        self.lease_renewal = LeanHistogram(
            "if_governor_lease_renewal_seconds",
            "Time for one lease renewal to be answered (s); a renewal over ttl/3 counts as failed.",
            (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        r.register(self.lease_renewal)
        self.mailbox_depth = Gauge("if_governor_mailbox_depth", "Commands waiting for the actor.", registry=r)
        self.audit_pending = Gauge(
            "if_governor_audit_pending", "Stored records published and not yet acknowledged by JetStream.", registry=r
        )
        self.audit_resent = Counter(
            "if_governor_audit_resent", "Stored records published again (not acknowledged in time).", registry=r
        )
        self.audit_dropped = Counter(
            "if_governor_audit_dropped",
            "Stored records given up unacknowledged (the next takeover publishes them again from the ledger).",
            registry=r,
        )
        r.register(self._per_group)
        r.register(self._in_flight)
        self.completions = Counter(
            "if_governor_task_completions", "Tasks completed (governor.complete), by outcome.", ["outcome"], registry=r
        )
        for outcome in ("success", "failure"):
            self.completions.labels(outcome)
        self.expiries = Counter("if_governor_tasks_expired", "Tasks not completed within task_timeout_s.", registry=r)
        self.task_duration = LeanHistogram(
            "if_governor_task_duration_seconds",
            "Time from a task's assignment to its completion (s).",
            TASK_DURATION_BUCKETS_S,
        )
        r.register(self.task_duration)
        self.refills = Counter(
            "if_governor_budget_refills",
            "Budget periods that ended and refilled a group, by group.",
            ["group"],
            registry=r,
        )
        self.thresholds = Counter(
            "if_governor_budget_thresholds",
            "Budget threshold alerts fired, by kind (group or swarm).",
            ["kind"],
            registry=r,
        )
        self.topups = Counter(
            "if_governor_topups", "Operators' top-ups, by target (swarm or group).", ["target"], registry=r
        )
        self.tasks_over_budget = Counter(
            "if_governor_tasks_over_budget", "Tasks whose reported costs passed max_spend_per_task.", registry=r
        )
        for kind in ("group", "swarm"):  # every series from the start: increase() sees the first one
            self.thresholds.labels(kind)
            self.topups.labels(kind)
        self.batch_size = LeanHistogram(
            "if_governor_batch_size", "Commands the actor applied per batch.", (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
        )
        r.register(self.batch_size)

    def per_swarm_from(self, source: Callable[[], Iterable[tuple[str, float, float, bool]]]) -> None:
        """Where the per-swarm series come from: (swarm_id, remaining, cost tracked, tripped) at scrape time."""
        self._per_swarm.source = source

    def in_flight_from(self, source: Callable[[], Iterable[tuple[str, int]]]) -> None:
        """Where the tasks in flight per swarm come from: (swarm_id, count) at scrape time."""
        self._in_flight.source = source

    def per_group_from(self, source: Callable[[], Iterable[GroupStatus]]) -> None:
        """Where the per-group series come from: each budget group's status at scrape time."""
        self._per_group.source = source

    def evictions_from(self, source: Callable[[], dict[str, int]]) -> None:
        """Where the dedupe evictions come from: kind -> count, at scrape time."""
        self._evictions.source = source

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class HttpEndpoint:
    """`/metrics`, `/healthz` (the process is alive: its loop answers and, while serving, its actor turns) and
    `/readyz` (requests are being answered; with `?standbyok=true`, as Vault's health check has it, also a standby
    that has caught up with the ledger and can take over) over plain HTTP/1.1."""

    def __init__(
        self,
        metrics: Metrics,
        ready: Callable[[], bool],
        host: str,
        port: int,
        healthy: Callable[[], bool] = lambda: True,
        standing_by: Callable[[], bool] = lambda: False,
    ) -> None:
        self._metrics = metrics
        self._ready = ready
        self._standing_by = standing_by
        self._healthy = healthy
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
            path, _, query = (parts[1] if len(parts) >= 2 else "").partition("?")
            status, body, ctype = self._route(path, query)
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

    def _route(self, path: str, query: str = "") -> tuple[str, bytes, str]:
        if path == "/metrics":
            return "200 OK", self._metrics.exposition(), "text/plain; version=0.0.4; charset=utf-8"
        if path == "/healthz":
            if self._healthy():
                return "200 OK", b"ok\n", "text/plain"
            return "503 Service Unavailable", b"unhealthy\n", "text/plain"
        if path == "/readyz":
            if self._ready():
                return "200 OK", b"ready\n", "text/plain"
            if _standby_ok(query) and self._standing_by():
                return "200 OK", b"standby\n", "text/plain"
            return "503 Service Unavailable", b"not ready\n", "text/plain"
        return "404 Not Found", b"not found\n", "text/plain"


def _standby_ok(query: str) -> bool:
    """`standbyok=true` (or `1`) among the query's parameters."""
    return any(part in ("standbyok=true", "standbyok=1", "standbyok") for part in query.split("&"))
