"""The four "Example Scenarios" of `IF.governor.md`, played over a real nats-server through the governor's subjects.

Swarms are registered the way a deployment would: over `governor.register` (scenarios 1, 2 and 4) or from the
config (scenario 3). Events are checked as a subscriber receives them.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
from nats.aio.client import Client

from schemas.profiles import SwarmProfile
from tests.factories import make_config, profile, swarm_entry
from tests.integration.helpers import Recorder, WorkerFactory, project

PYTHON = "code-analysis:python"


class Governor:
    """The coordinator's and the operator's side of the conversation, as raw JSON over NATS."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.tasks = 0

    async def call(self, name: str, body: dict[str, Any], *, trace_id: str | None = None) -> dict[str, Any]:
        headers = {"X-IF-Trace-ID": trace_id} if trace_id else None
        msg = await self.nc.request(f"governor.{name}", json.dumps(body).encode(), timeout=5.0, headers=headers)
        reply: dict[str, Any] = json.loads(msg.data)
        assert reply["ok"] is True, reply
        return reply

    async def register(self, swarm: SwarmProfile) -> None:
        """`governor.register` with the profile's fields as its body."""
        assert (await self.call("register", msgspec.to_builtins(swarm)))["swarm_id"] == swarm.swarm_id

    async def find_qualified_swarm(self, capabilities: list[str], max_cost: float) -> str | None:
        """`IF.governor.md`'s `find_qualified_swarm(required_capabilities, max_cost)`, over `governor.assign`."""
        self.tasks += 1
        body = {"task_id": f"task-{self.tasks}", "required_capabilities": capabilities, "max_cost": max_cost}
        swarm_id: str | None = (await self.call("assign", body))["swarm_id"]
        return swarm_id

    async def track_cost(
        self, swarm_id: str, operation: str, cost: float, *, trace_id: str | None = None
    ) -> dict[str, Any]:
        """`IF.governor.md`'s `track_cost(swarm_id, operation, cost)`, over `governor.cost`."""
        return await self.call("cost", {"swarm_id": swarm_id, "operation": operation, "cost": cost}, trace_id=trace_id)


class TestScenario1BasicAssignment:
    async def test_sip_task_goes_to_the_sip_swarm(self, start_worker: WorkerFactory, nc: Client) -> None:
        """A SIP task under $20/h goes to session-4-sip, and its $2.50 cost leaves $22.50 of $25."""
        await start_worker(make_config([]))
        gov = Governor(nc)
        await gov.register(
            profile(
                "session-4-sip",
                ["integration:sip", "integration:h323"],
                cost_per_hour=15.0,
                reputation_score=0.95,
                budget=25.0,
                model="sonnet",
            )
        )
        await gov.register(
            profile(
                "session-1-ndi",
                ["integration:ndi"],
                cost_per_hour=2.0,
                reputation_score=0.90,
                budget=25.0,
                model="haiku",
            )
        )

        swarm_id = await gov.find_qualified_swarm(["integration:sip"], max_cost=20.0)
        assert swarm_id == "session-4-sip"
        cost = await gov.track_cost(swarm_id, "sip_integration", 2.5)
        assert (cost["remaining"], cost["tripped"]) == (22.5, False)
        status = await gov.call("status", {})
        assert status["budgets"] == {"session-4-sip": 22.5, "session-1-ndi": 25.0}


class TestScenario2BudgetExhaustion:
    async def test_breaker_trips_escalates_and_resets(
        self, start_worker: WorkerFactory, nc: Client, recorder: Recorder
    ) -> None:
        """Three $2 tasks exhaust a $5 budget: the breaker trips and escalates, blocks work, and a reset restores it."""
        await start_worker(make_config([]))
        gov = Governor(nc)
        await gov.register(
            profile("session-test", [PYTHON], cost_per_hour=15.0, reputation_score=0.95, budget=5.0, model="sonnet")
        )

        remaining = []
        for task in (1, 2, 3):
            swarm_id = await gov.find_qualified_swarm([PYTHON], 20.0)
            assert swarm_id == "session-test"
            cost = await gov.track_cost(swarm_id, f"task-{task}", 2.0, trace_id=f"scenario-2-task-{task}")
            remaining.append((cost["remaining"], cost["tripped"]))
        assert remaining == [(3.0, False), (1.0, False), (-1.0, True)]

        [tripped] = await recorder.wait_for("governor.events.breaker.tripped")
        # The second cost spent 80% of the budget (a MEDIUM budget alert), the third exhausted it (the trip's).
        low, escalation = await recorder.wait_for("governor.events.escalation", count=2)
        assert (low["severity"], low["context"]["type"]) == ("MEDIUM", "soft_budget")
        tripped_at = tripped["tripped_at"]
        expected_trip = {
            "swarm_id": "session-test",
            "reason": "budget_exhausted",
            "remaining": -1.0,
            "operations_count": 3,
            "tripped_at": tripped_at,
            "trace_id": "scenario-2-task-3",
        }
        assert project(tripped, expected_trip) == expected_trip
        expected_escalation = {
            "type": "ESCALATE",
            "swarm_id": "session-test",
            "reason": "Circuit breaker tripped - budget exhausted",
            "context": {"type": "circuit_breaker", "reason": "budget_exhausted", "timestamp": tripped_at},
            "trace_id": "scenario-2-task-3",
        }
        # Events only grow: fields added later (each with a default) may follow the ones `IF.governor.md` names.
        assert project(escalation, expected_escalation) == expected_escalation
        assert isinstance(tripped_at, float)

        status = await gov.call("status", {})
        breakers = {"session-test": {"reason": "budget_exhausted", "tripped_at": tripped_at}}
        assert project(status["breakers"], breakers) == breakers
        assert list(status["breakers"]) == ["session-test"]
        assert await gov.find_qualified_swarm([PYTHON], 20.0) is None

        reset = await gov.call(
            "reset",
            {"swarm_id": "session-test", "new_budget": 25.0, "approved_by": "alice"},
            trace_id="scenario-2-reset",
        )
        assert (reset["swarm_id"], reset["remaining"]) == ("session-test", 25.0)
        [reset_event] = await recorder.wait_for("governor.events.breaker.reset")
        expected_reset = {
            "swarm_id": "session-test",
            "new_budget": 25.0,
            "approved_by": "alice",
            "reset_at": reset_event["reset_at"],
            "trace_id": "scenario-2-reset",
        }
        assert project(reset_event, expected_reset) == expected_reset
        assert reset_event["reset_at"] >= tripped_at

        assert await gov.find_qualified_swarm([PYTHON], 20.0) == "session-test"
        assert len(recorder.bodies("governor.events.breaker.tripped")) == 1
        assert len(recorder.bodies("governor.events.escalation")) == 2  # the 80% alert and the trip, each once


class TestScenario3MultiSwarmDistribution:
    async def test_each_task_goes_to_its_specialist(self, start_worker: WorkerFactory, nc: Client) -> None:
        """Four single-protocol swarms from the config each receive the task for their protocol."""
        sessions = [
            ("session-1-ndi", "integration:ndi", 2.0, 0.90, "haiku"),
            ("session-2-webrtc", "integration:webrtc", 15.0, 0.92, "sonnet"),
            ("session-3-h323", "integration:h323", 2.0, 0.88, "haiku"),
            ("session-4-sip", "integration:sip", 15.0, 0.95, "sonnet"),
        ]
        swarms = [
            swarm_entry(swarm_id, [cap], cost_per_hour=cost, reputation_score=rep, initial_budget=25.0, model=model)
            for swarm_id, cap, cost, rep, model in sessions
        ]
        await start_worker(make_config(swarms))
        gov = Governor(nc)

        results = [(cap, await gov.find_qualified_swarm([cap], max_cost=20.0)) for _, cap, _, _, _ in sessions]
        assert results == [(cap, swarm_id) for swarm_id, cap, _, _, _ in sessions]
        history = await gov.call("history", {})
        assert [a["swarm_id"] for a in history["assignments"]] == [s[0] for s in sessions]


class TestScenario4CostOptimisation:
    async def test_cheapest_good_swarm_wins(self, start_worker: WorkerFactory, nc: Client) -> None:
        """Among haiku, sonnet and opus python swarms the haiku one wins on value, with `IF.governor.md`'s scores."""
        await start_worker(make_config([]))
        gov = Governor(nc)
        await gov.register(
            profile("haiku-swarm", [PYTHON], cost_per_hour=1.5, reputation_score=0.90, budget=25.0, model="haiku")
        )
        await gov.register(
            profile("sonnet-swarm", [PYTHON], cost_per_hour=15.0, reputation_score=0.95, budget=25.0, model="sonnet")
        )
        await gov.register(
            profile("opus-swarm", [PYTHON], cost_per_hour=75.0, reputation_score=1.0, budget=25.0, model="opus")
        )

        assert await gov.find_qualified_swarm([PYTHON], 100.0) == "haiku-swarm"
        ranked = await gov.call(
            "assign", {"task_id": "ranked", "required_capabilities": [PYTHON], "max_cost": 100.0, "max_swarms": 3}
        )
        expected = [
            {"swarm_id": "haiku-swarm", "capability_match": 1.0, "score": (1.0 * 0.90) / 1.5},
            {"swarm_id": "sonnet-swarm", "capability_match": 1.0, "score": (1.0 * 0.95) / 15.0},
            {"swarm_id": "opus-swarm", "capability_match": 1.0, "score": (1.0 * 1.0) / 75.0},
        ]
        assert project(ranked["assignments"], expected) == expected
        assert [round(a["score"], 3) for a in ranked["assignments"]] == [0.6, 0.063, 0.013]
