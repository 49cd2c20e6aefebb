"""The worker answers over a real nats-server: the shortest path through every layer."""

from __future__ import annotations

from tests.integration.helpers import Recorder, WorkerFactory
from worker.client import GovernorClient


class TestSmoke:
    async def test_assign_cost_trip_reset_over_nats(
        self, start_worker: WorkerFactory, client: GovernorClient, recorder: Recorder
    ) -> None:
        """A coordinator assigns, spends the budget to zero, sees the trip, and an operator resets it."""
        await start_worker()
        reply = await client.assign(["integration:sip"], task_id="t-1", max_cost=20.0)
        assert reply.swarm_id == "session-4-sip"
        cost = await client.cost("session-4-sip", "sip_integration", 25.0)
        assert (cost.remaining, cost.tripped) == (0.0, True)
        tripped = await recorder.wait_for("governor.events.breaker.tripped")
        assert tripped[0]["reason"] == "budget_exhausted"
        reset = await client.reset("session-4-sip", 25.0, approved_by="alice")
        assert reset.remaining == 25.0
