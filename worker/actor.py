"""The actor: the one asyncio task that owns the decision core.

Handlers put commands in the `Mailbox` and return at once. The actor takes every command that waits (up to a
batch), applies them to the core in order with one reading of the clock, then performs the effects itself: the
replies, the events the core recorded, and the metrics. Nothing else touches the core.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from schemas.events import BreakerReset, BreakerTripped, Event
from schemas.profiles import SwarmProfile
from schemas.replies import AssignReply, HistoryReply
from schemas.requests import (
    AssignRequest,
    CostRequest,
    DeregisterRequest,
    FailureRequest,
    HistoryRequest,
    RegisterRequest,
    Request,
    ResetRequest,
    StatusRequest,
    TripRequest,
)
from worker.core import Governor
from worker.errors import GovernorError, Unavailable
from worker.metrics import Metrics

log = logging.getLogger("if_governor.actor")


class Command:
    """A decoded request waiting for the actor, with what is needed to answer it."""

    __slots__ = ("received", "reply_to", "request", "subject", "trace_id")

    def __init__(self, request: Request, reply_to: str, trace_id: str, subject: str, received: float) -> None:
        self.request = request
        self.reply_to = reply_to  # "" for a plain publish: apply, answer nobody
        self.trace_id = trace_id
        self.subject = subject
        self.received = received  # time.perf_counter() when the handler got it


class Outbox(Protocol):
    """Where the actor sends its effects (the bus adapter in production)."""

    async def reply(self, command: Command, reply: msgspec.Struct) -> None: ...

    async def reply_error(self, command: Command, error: GovernorError) -> None: ...

    async def publish(self, events: list[Event]) -> None: ...

    async def flush(self) -> None: ...


class Mailbox:
    """A bounded FIFO of commands with a single consumer. `put` never waits: a full mailbox refuses."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[Command] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, command: Command) -> bool:
        """Queue a command; False when the mailbox is full or closed."""
        if self._closed or len(self._items) >= self.capacity:
            return False
        self._items.append(command)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True

    def close(self) -> None:
        """Refuse new commands; the consumer still gets what is queued, then an empty batch."""
        self._closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self, limit: int) -> list[Command]:
        """Wait for at least one command and return up to `limit`; an empty list once closed and drained."""
        while not self._items:
            if self._closed:
                return []
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        items = self._items
        n = min(limit, len(items))
        return [items.popleft() for _ in range(n)]


class Actor:
    """Applies mailbox commands to the core, in order, in batches, and performs their effects."""

    def __init__(
        self,
        core: Governor,
        mailbox: Mailbox,
        outbox: Outbox,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
        max_batch: int = 256,
    ) -> None:
        self.core = core
        self.mailbox = mailbox
        self.outbox = outbox
        self.metrics = metrics
        self.clock = clock
        self.max_batch = max_batch
        self._apply: dict[type[Request], Callable[[Any, float, str], msgspec.Struct]] = {
            AssignRequest: self._assign,
            CostRequest: self._cost,
            ResetRequest: self._reset,
            TripRequest: self._trip,
            FailureRequest: self._failure,
            RegisterRequest: self._register,
            DeregisterRequest: self._deregister,
            StatusRequest: self._status,
            HistoryRequest: self._history,
        }
        for swarm_id in core.get_budget_report():
            self._refresh(swarm_id)

    async def run(self) -> None:
        """Serve until the mailbox is closed and drained."""
        mailbox = self.mailbox
        while batch := await mailbox.take(self.max_batch):
            await self.process(batch)

    async def process(self, batch: list[Command]) -> None:
        """Apply one batch and perform its effects."""
        now = self.clock()
        results: list[msgspec.Struct | GovernorError] = []
        touched: set[str] = set()
        apply = self._apply
        for command in batch:
            request = command.request
            try:
                results.append(apply[type(request)](request, now, command.trace_id))
            except GovernorError as error:
                results.append(error)
            except Exception as error:  # a bug: answer, log with context, keep serving the others
                log.exception("internal error applying %s (trace %s)", type(request).__name__, command.trace_id)
                results.append(Unavailable(f"internal error: {type(error).__name__}"))
            else:
                swarm_id = getattr(request, "swarm_id", None)
                if swarm_id is not None:
                    touched.add(swarm_id)
        events = self.core.take_events()
        self._observe(batch, results, events, touched)
        outbox = self.outbox
        for command, result in zip(batch, results, strict=True):
            if isinstance(result, GovernorError):
                await outbox.reply_error(command, result)
            elif command.reply_to:
                await outbox.reply(command, result)
        if events:
            await outbox.publish(events)
        self.metrics.mailbox_depth.set(len(self.mailbox))

    def _observe(
        self,
        batch: list[Command],
        results: list[msgspec.Struct | GovernorError],
        events: list[Event],
        touched: set[str],
    ) -> None:
        metrics = self.metrics
        metrics.batch_size.observe(len(batch))
        done = time.perf_counter()
        for command, result in zip(batch, results, strict=True):
            if isinstance(result, AssignReply):
                if result.swarm_id is None:
                    metrics.assignments_failed.inc()
                else:
                    metrics.assignments.inc()
                metrics.assignment_latency.observe((done - command.received) * 1000.0)
        for event in events:
            if isinstance(event, BreakerTripped):
                metrics.trips.labels(event.reason).inc()
            elif isinstance(event, BreakerReset):
                metrics.resets.inc()
        for swarm_id in touched:
            self._refresh(swarm_id)

    def _refresh(self, swarm_id: str) -> None:
        gauges = self.core.swarm_gauges(swarm_id)
        if gauges is None:
            self.metrics.forget_swarm(swarm_id)
        else:
            self.metrics.swarm(swarm_id, *gauges)

    # -- one method per request type: the request's fields to the core's arguments ----------------------------

    def _assign(self, r: AssignRequest, now: float, trace_id: str) -> msgspec.Struct:
        return self.core.assign(
            r.task_id,
            r.required_capabilities,
            now=now,
            max_cost=r.max_cost,
            max_swarms=r.max_swarms,
            explain=r.explain,
            trace_id=trace_id,
        )

    def _cost(self, r: CostRequest, now: float, trace_id: str) -> msgspec.Struct:
        return self.core.track_cost(
            r.swarm_id,
            r.operation,
            r.cost,
            now=now,
            event_id=r.event_id,
            task_id=r.task_id,
            trace_id=trace_id,
        )

    def _reset(self, r: ResetRequest, now: float, trace_id: str) -> msgspec.Struct:
        return self.core.reset_circuit_breaker(
            r.swarm_id,
            r.new_budget,
            approved_by=r.approved_by,
            now=now,
            event_id=r.event_id,
            trace_id=trace_id,
        )

    def _trip(self, r: TripRequest, now: float, trace_id: str) -> msgspec.Struct:
        return self.core.trip_circuit_breaker(
            r.swarm_id, r.reason, now=now, requested_by=r.requested_by, trace_id=trace_id
        )

    def _failure(self, r: FailureRequest, now: float, trace_id: str) -> msgspec.Struct:
        return self.core.record_failure(
            r.swarm_id, now=now, task_id=r.task_id, error=r.error, event_id=r.event_id, trace_id=trace_id
        )

    def _register(self, r: RegisterRequest, now: float, trace_id: str) -> msgspec.Struct:
        profile = SwarmProfile(
            swarm_id=r.swarm_id,
            capabilities=r.capabilities,
            cost_per_hour=r.cost_per_hour,
            reputation_score=r.reputation_score,
            current_budget_remaining=r.current_budget_remaining,
            model=r.model,
        )
        return self.core.register_swarm(profile, now=now, trace_id=trace_id)

    def _deregister(self, r: DeregisterRequest, now: float, trace_id: str) -> msgspec.Struct:
        return self.core.deregister_swarm(r.swarm_id, now=now, trace_id=trace_id)

    def _status(self, r: StatusRequest, now: float, trace_id: str) -> msgspec.Struct:
        return self.core.status(now=now, trace_id=trace_id)

    def _history(self, r: HistoryRequest, now: float, trace_id: str) -> msgspec.Struct:
        return HistoryReply(assignments=self.core.get_assignment_history(r.limit), trace_id=trace_id)
