"""Reservations, half-open recovery and the soft-budget warning over a real nats-server."""

from __future__ import annotations

import asyncio

from tests.factories import EXAMPLE_SWARMS, make_config
from tests.integration.helpers import Recorder, WorkerFactory
from worker.client import GovernorClient


class TestOverNats:
    async def test_soft_budget_escalation(
        self, start_worker: WorkerFactory, client: GovernorClient, recorder: Recorder
    ) -> None:
        """Spending 80% of an allocation (the 0.5 and 0.8 alerts at once) publishes one MEDIUM escalation with the
        trace id, and a threshold event for each alert crossed."""
        await start_worker()
        await client.cost("session-1-ndi", "op", 21.0, trace_id="soft-1")
        await client.cost("session-1-ndi", "op", 1.0, trace_id="soft-2")
        [escalation] = await recorder.wait_for("governor.events.escalation")
        assert (escalation["severity"], escalation["context"]["type"], escalation["trace_id"]) == (
            "MEDIUM",
            "soft_budget",
            "soft-1",
        )
        assert escalation["reason"] == "Budget running low - 80% spent, 4.00 of 25.00 USD left"

    async def test_reservation_held_settled_and_shown(
        self, start_worker: WorkerFactory, client: GovernorClient
    ) -> None:
        """An estimate is held on the chosen swarm (status shows it) until a cost for the task settles it."""
        await start_worker()
        reply = await client.assign(["integration:ndi"], task_id="job-1", estimated_cost=20.0)
        assert (reply.swarm_id, reply.assignments[0].reserved) == ("session-1-ndi", 20.0)
        status = await client.status()
        assert [(h.task_id, h.swarm_id, h.amount) for h in status.holds] == [("job-1", "session-1-ndi", 20.0)]
        assert (await client.assign(["integration:ndi"], task_id="job-2", estimated_cost=10.0)).swarm_id is None
        await client.cost("session-1-ndi", "op", 3.0, task_id="job-1")
        assert (await client.status()).holds == []
        assert (
            await client.assign(["integration:ndi"], task_id="job-3", estimated_cost=10.0)
        ).swarm_id == "session-1-ndi"

    async def test_half_open_events(
        self, start_worker: WorkerFactory, client: GovernorClient, recorder: Recorder
    ) -> None:
        """A failure trip turns half-open after the cool-down (event), and a success closes it (event)."""
        await start_worker(make_config(EXAMPLE_SWARMS, breaker_cooldown_s=0.2))
        for _ in range(3):
            await client.failure("session-1-ndi")
        await asyncio.sleep(0.3)
        assert (await client.assign(["integration:ndi"])).swarm_id == "session-1-ndi"
        [half_open] = await recorder.wait_for("governor.events.breaker.half_open")
        assert (half_open["swarm_id"], half_open["probes"]) == ("session-1-ndi", 1)
        assert (await client.success("session-1-ndi")).closed is True
        [closed] = await recorder.wait_for("governor.events.breaker.closed")
        assert closed["reason"] == "repeated_failures"
        assert (await client.status()).breakers == {}

    async def test_history_lists_resets_with_approver(
        self, start_worker: WorkerFactory, client: GovernorClient
    ) -> None:
        """`governor.history` returns the resets with the human who approved each."""
        await start_worker()
        await client.cost("session-1-ndi", "op", 30.0)
        await client.reset("session-1-ndi", 10.0, approved_by="alice")
        history = await client.history()
        assert [(r.swarm_id, r.approved_by, r.new_budget, r.previous_reason) for r in history.resets] == [
            ("session-1-ndi", "alice", 10.0, "budget_exhausted")
        ]
