"""GovernorClient against a real worker on a real nats-server: typed replies for every call, one exception class per
error code, and the event stream as typed events.

Each test opens its client after the worker serves (`GovernorClient.connect`), as a coordinator would.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

import msgspec
import pytest

from schemas.events import (
    BreakerClosed,
    BreakerHalfOpen,
    BreakerReset,
    BreakerTripped,
    Escalation,
    EscalationContext,
    Event,
    Position,
    WitnessRecord,
)
from schemas.policy import ResourcePolicy
from schemas.replies import (
    Assignment,
    AssignmentRecord,
    AssignReply,
    CostReply,
    FailureReply,
    HistoryReply,
    ResetReply,
    StatusReply,
    SuccessReply,
    SwarmReply,
    SwarmStatus,
    TripReply,
)
from tests.factories import EXAMPLE_SWARMS, make_config, profile
from tests.integration.helpers import WorkerFactory
from worker import errors
from worker.client import ERRORS_BY_CODE, GovernorClient
from worker.ops import contract as schema
from worker.ops.natsserver import NatsServer

SIP = "session-4-sip"
NDI = "session-1-ndi"
WEBRTC = profile(
    "session-2-webrtc",
    ["integration:webrtc", "docs:technical-writing"],
    cost_per_hour=8.0,
    reputation_score=0.92,
    budget=25.0,
    model="sonnet",
)
PROBE_TRACE = "client-test-stream-probe"


@pytest.fixture
async def gov(start_worker: WorkerFactory, nats_server: NatsServer) -> AsyncIterator[GovernorClient]:
    """A serving worker with the two example swarms, and a client connected after it serves."""
    await start_worker()
    async with await GovernorClient.connect(nats_server.url, timeout=5.0) as client:
        yield client


Stream = AsyncGenerator[tuple[str, Event], None]


async def open_stream(client: GovernorClient, *, witness: bool) -> Stream:
    """`client.events()`, returned once its subscriptions are live.

    Why: the iterator subscribes when it is first read, and nothing public says when that has reached the server.
    So a probe event (a BreakerTripped with trace id PROBE_TRACE) is published until the stream yields it;
    `next_event` skips probes.
    """
    stream = cast(Stream, client.events(witness=witness))  # an async generator: it has aclose()
    first = asyncio.ensure_future(anext(stream))
    probe = BreakerTripped(
        swarm_id="probe", reason="probe", remaining=0.0, operations_count=0, tripped_at=0.0, trace_id=PROBE_TRACE
    )
    async with asyncio.timeout(5):
        while not first.done():
            await client.nc.publish("governor.events.breaker.tripped", msgspec.json.encode(probe))
            await asyncio.wait([first], timeout=0.05)
    subject, event = first.result()
    assert (subject, event) == ("governor.events.breaker.tripped", probe)
    return stream


async def next_event(stream: Stream, timeout: float = 5.0) -> tuple[str, Event]:
    """The next (subject, event) that is not a probe."""
    async with asyncio.timeout(timeout):
        while True:
            subject, event = await anext(stream)
            if event.trace_id != PROBE_TRACE:
                return subject, event


class TestCalls:
    async def test_assign(self, gov: GovernorClient) -> None:
        """`assign` returns an AssignReply with typed assignments and the caller's trace id."""
        reply = await gov.assign(["integration:sip"], task_id="t-1", max_cost=20.0, trace_id="coordinator-7")
        assert reply == AssignReply(
            task_id="t-1",
            swarm_id=SIP,
            assignments=[Assignment(swarm_id=SIP, capability_match=1.0, score=0.95 / 15.0)],
            trace_id="coordinator-7",
        )

    async def test_assign_without_a_qualified_swarm(self, gov: GovernorClient) -> None:
        """No qualified swarm is a reply, not an exception; with `explain` it says why each swarm was rejected."""
        reply = await gov.assign(["integration:ndi", "integration:sip"], task_id="t-2", explain=True)
        assert (reply.swarm_id, reply.assignments, reply.reason) == (None, [], "no_qualified_swarm")
        assert reply.rejected == {SIP: "capability_match_below_threshold", NDI: "capability_match_below_threshold"}

    async def test_cost(self, gov: GovernorClient) -> None:
        """`cost` returns a CostReply; the same event id again is answered as a duplicate and changes nothing."""
        first = await gov.cost(SIP, "sip_integration", 2.5, event_id="e-1", task_id="t-1")
        again = await gov.cost(SIP, "sip_integration", 2.5, event_id="e-1", task_id="t-1")
        assert (type(first), first.swarm_id, first.remaining, first.tripped, first.duplicate) == (
            CostReply,
            SIP,
            22.5,
            False,
            False,
        )
        assert (again.remaining, again.duplicate) == (22.5, True)

    async def test_failure(self, gov: GovernorClient) -> None:
        """`failure` returns a FailureReply counting failures in the window; the third trips the breaker."""
        replies = [await gov.failure(NDI, task_id=f"t-{i}", error="timeout") for i in range(3)]
        assert [(type(r), r.failures_in_window, r.tripped) for r in replies] == [
            (FailureReply, 1, False),
            (FailureReply, 2, False),
            (FailureReply, 3, True),
        ]

    async def test_status(self, gov: GovernorClient) -> None:
        """`status` returns a StatusReply with typed swarms, budgets, breakers and the policy."""
        await gov.cost(NDI, "ndi_integration", 5.0)
        status = await gov.status()
        assert type(status) is StatusReply
        assert [(type(s), s.swarm_id, s.budget_remaining) for s in status.swarms] == [
            (SwarmStatus, SIP, 25.0),
            (SwarmStatus, NDI, 20.0),
        ]
        assert status.budgets == {SIP: 25.0, NDI: 20.0}
        assert status.breakers == {}
        assert type(status.policy) is ResourcePolicy
        assert status.policy.min_capability_match == 0.7

    async def test_history(self, gov: GovernorClient) -> None:
        """`history` returns a HistoryReply of AssignmentRecords, newest last, cut to `limit`."""
        await gov.assign(["integration:sip"], task_id="t-1", max_cost=20.0)
        await gov.assign(["integration:ndi"], task_id="t-2")
        everything = await gov.history()
        latest = await gov.history(1)
        assert type(everything) is HistoryReply
        assert [(type(a), a.task_id, a.swarm_id) for a in everything.assignments] == [
            (AssignmentRecord, "t-1", SIP),
            (AssignmentRecord, "t-2", NDI),
        ]
        assert [a.task_id for a in latest.assignments] == ["t-2"]

    async def test_trip_and_reset(self, gov: GovernorClient) -> None:
        """`trip` returns a TripReply and opens the breaker; `reset` returns a ResetReply with the new budget."""
        tripped = await gov.trip(SIP, "manual_override", requested_by="ops")
        assert tripped == TripReply(swarm_id=SIP, trace_id=tripped.trace_id)
        assert (await gov.status()).breakers[SIP].reason == "manual_override"
        reset = await gov.reset(SIP, 40.0, approved_by="alice")
        assert (type(reset), reset.swarm_id, reset.remaining, reset.duplicate) == (ResetReply, SIP, 40.0, False)
        assert (await gov.status()).breakers == {}

    async def test_register_and_deregister(self, gov: GovernorClient) -> None:
        """`register` and `deregister` return SwarmReplies, and the registry follows."""
        registered = await gov.register(WEBRTC)
        assert (type(registered), registered.swarm_id) == (SwarmReply, "session-2-webrtc")
        assert (await gov.assign(["integration:webrtc"])).swarm_id == "session-2-webrtc"
        deregistered = await gov.deregister("session-2-webrtc")
        assert (type(deregistered), deregistered.swarm_id) == (SwarmReply, "session-2-webrtc")
        assert [s.swarm_id for s in (await gov.status()).swarms] == [SIP, NDI]


class TestErrors:
    async def test_unknown_swarm(self, gov: GovernorClient) -> None:
        """A cost for an unregistered swarm raises UnknownSwarm with the server's message."""
        with pytest.raises(errors.UnknownSwarm) as caught:
            await gov.cost("ghost", "op", 1.0)
        assert (type(caught.value), caught.value.code) == (errors.UnknownSwarm, "unknown_swarm")
        assert caught.value.message == "no swarm 'ghost' is registered"

    async def test_unknown_capability(self, gov: GovernorClient) -> None:
        """An assign naming an unknown capability raises UnknownCapability."""
        with pytest.raises(errors.UnknownCapability) as caught:
            await gov.assign(["nonsense:thing"])
        assert type(caught.value) is errors.UnknownCapability
        assert caught.value.message.startswith("unknown capability 'nonsense:thing'")

    async def test_not_tripped(self, gov: GovernorClient) -> None:
        """A reset of a closed breaker raises NotTripped."""
        with pytest.raises(errors.NotTripped) as caught:
            await gov.reset(NDI, 10.0, approved_by="alice")
        assert type(caught.value) is errors.NotTripped
        assert caught.value.message == "swarm 'session-1-ndi' is not tripped; nothing to reset"

    async def test_already_tripped(self, gov: GovernorClient) -> None:
        """A second manual trip raises AlreadyTripped."""
        await gov.trip(SIP, "manual_override", requested_by="ops")
        with pytest.raises(errors.AlreadyTripped) as caught:
            await gov.trip(SIP, "performance_degradation", requested_by="ops")
        assert type(caught.value) is errors.AlreadyTripped
        assert caught.value.message == "swarm 'session-4-sip' is already tripped (manual_override)"

    async def test_already_registered(self, gov: GovernorClient) -> None:
        """Registering an existing id raises AlreadyRegistered."""
        profile = msgspec.structs.replace(WEBRTC, swarm_id=SIP)
        with pytest.raises(errors.AlreadyRegistered) as caught:
            await gov.register(profile)
        assert type(caught.value) is errors.AlreadyRegistered
        assert caught.value.message == "swarm 'session-4-sip' is already registered"

    async def test_invalid_cost(self, gov: GovernorClient) -> None:
        """A negative cost (the client checks nothing itself) raises InvalidCost naming the field."""
        with pytest.raises(errors.InvalidCost) as caught:
            await gov.cost(SIP, "op", -1.0)
        assert type(caught.value) is errors.InvalidCost
        assert caught.value.message == "Expected `float` >= 0.0 - at `$.cost`"

    async def test_invalid_budget(self, gov: GovernorClient) -> None:
        """A reset to a zero budget raises InvalidBudget."""
        await gov.trip(SIP, "manual_override", requested_by="ops")
        with pytest.raises(errors.InvalidBudget) as caught:
            await gov.reset(SIP, 0.0, approved_by="alice")
        assert type(caught.value) is errors.InvalidBudget
        assert caught.value.message == "Expected `float` > 0.0 - at `$.new_budget`"

    async def test_invalid_request_via_raw_call(self, gov: GovernorClient) -> None:
        """A raw `call` with an unknown field raises InvalidRequest itself (not a subclass)."""
        body: dict[str, Any] = {"swarm_id": SIP, "operation": "op", "cost": 1.0, "bogus": 2}
        with pytest.raises(errors.InvalidRequest) as caught:
            await gov.call("cost", body, CostReply)
        assert type(caught.value) is errors.InvalidRequest
        assert caught.value.message == "Object contains unknown field `bogus`"

    async def test_deadline_exceeded_via_raw_call(self, gov: GovernorClient) -> None:
        """A raw `call` whose deadline has passed raises DeadlineExceeded."""
        with pytest.raises(errors.DeadlineExceeded) as caught:
            await gov.call("status", {"deadline": 1.0}, StatusReply)
        assert type(caught.value) is errors.DeadlineExceeded

    def test_every_error_code_has_a_class(self) -> None:
        """The client maps every code the governor can answer with to the class of that code."""
        for code in schema.error_statuses():
            assert ERRORS_BY_CODE[code].code == code


class TestEvents:
    async def test_breaker_events(self, gov: GovernorClient) -> None:
        """`events()` yields BreakerTripped, Escalation and BreakerReset objects on their subjects, and no witness
        records."""
        stream = await open_stream(gov, witness=False)
        try:
            await gov.cost(NDI, "ndi_integration", 1.0, trace_id="trace-cost")  # witness only: not in this stream
            await gov.trip(NDI, "manual_override", requested_by="ops")
            await gov.reset(NDI, 10.0, approved_by="alice")
            received = [await next_event(stream) for _ in range(3)]
        finally:
            await stream.aclose()
        assert [(subject, type(event)) for subject, event in received] == [
            ("governor.events.breaker.tripped", BreakerTripped),
            ("governor.events.escalation", Escalation),
            ("governor.events.breaker.reset", BreakerReset),
        ]
        tripped, escalation, reset = (event for _, event in received)
        assert isinstance(tripped, BreakerTripped)
        assert (tripped.swarm_id, tripped.reason, tripped.remaining, tripped.operations_count) == (
            NDI,
            "manual_override",
            24.0,
            1,
        )
        assert isinstance(escalation, Escalation)
        assert (escalation.swarm_id, escalation.reason, escalation.severity) == (
            NDI,
            "Circuit breaker tripped - manual override",
            "HIGH",
        )
        assert escalation.context == EscalationContext(
            type="circuit_breaker", reason="manual_override", timestamp=tripped.tripped_at
        )
        assert escalation.trace_id == tripped.trace_id
        assert isinstance(reset, BreakerReset)
        assert (reset.swarm_id, reset.new_budget, reset.approved_by) == (NDI, 10.0, "alice")

    async def test_witness_records(self, gov: GovernorClient) -> None:
        """With `witness=True` the stream also yields WitnessRecords, carrying the request's trace id (and the
        event id the client gave the cost by default)."""
        stream = await open_stream(gov, witness=True)
        try:
            await gov.cost(SIP, "sip_integration", 2.5, task_id="t-1", trace_id="trace-cost")
            subject, record = await next_event(stream)
        finally:
            await stream.aclose()
        assert subject == "governor.witness.cost_tracked"
        assert isinstance(record, WitnessRecord)
        assert record == WitnessRecord(
            operation="cost_tracked",
            params={
                "swarm_id": SIP,
                "operation": "sip_integration",
                "cost": 2.5,
                "remaining": 22.5,
                "task_id": "t-1",
                "event_id": record.params["event_id"],
            },
            timestamp=record.timestamp,
            severity="INFO",
            trace_id="trace-cost",
            position=record.position,
        )
        assert re.fullmatch(r"[0-9a-f]{32}", record.params["event_id"])
        assert isinstance(record.position, Position) and record.position.index == 0  # its first record in the ledger

    async def test_half_open_and_closed_events(self, start_worker: WorkerFactory, nats_server: NatsServer) -> None:
        """After a failure trip and its cool-down, `events()` yields BreakerHalfOpen, then BreakerClosed once
        `success` reports the probe task done."""
        await start_worker(make_config(EXAMPLE_SWARMS, breaker_cooldown_s=0.2))
        async with await GovernorClient.connect(nats_server.url, timeout=5.0) as gov:
            stream = await open_stream(gov, witness=False)
            try:
                for i in range(3):
                    await gov.failure(NDI, task_id=f"t-{i}", error="timeout")
                await asyncio.sleep(0.3)  # the cool-down passes
                assert (await gov.assign(["integration:ndi"], task_id="probe-task")).swarm_id == NDI
                success = await gov.success(NDI, task_id="probe-task")
                assert (type(success), success.swarm_id, success.closed) == (SuccessReply, NDI, True)
                received = [await next_event(stream) for _ in range(4)]
            finally:
                await stream.aclose()
        assert [(subject, type(event)) for subject, event in received] == [
            ("governor.events.breaker.tripped", BreakerTripped),
            ("governor.events.escalation", Escalation),
            ("governor.events.breaker.half_open", BreakerHalfOpen),
            ("governor.events.breaker.closed", BreakerClosed),
        ]
        half_open, closed = received[2][1], received[3][1]
        assert isinstance(half_open, BreakerHalfOpen) and isinstance(closed, BreakerClosed)
        assert (half_open.swarm_id, half_open.reason, half_open.probes) == (NDI, "repeated_failures", 1)
        assert (closed.swarm_id, closed.reason) == (NDI, "repeated_failures")
