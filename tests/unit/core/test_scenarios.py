"""The four example scenarios of `IF.governor.md`, played on the decision core."""

from __future__ import annotations

import pytest

from schemas.replies import Assignment
from tests.factories import NOW, SIP, governed, profile

NDI = "integration:ndi"
WEBRTC = "integration:webrtc"
H323 = "integration:h323"
PYTHON = "code-analysis:python"


class TestExampleScenarios:
    def test_scenario_1_basic_task_assignment(self) -> None:
        """Scenario 1: the SIP task goes to session-4-sip (score 0.95 / 15) and its cost is tracked."""
        governor = governed(
            profile(
                "session-4-sip", [SIP, H323], cost_per_hour=15.0, reputation_score=0.95, budget=25.0, model="sonnet"
            ),
            profile("session-1-ndi", [NDI], cost_per_hour=2.0, reputation_score=0.90, budget=25.0, model="haiku"),
        )
        reply = governor.assign("task-1", [SIP], now=NOW, max_cost=20.0)
        assert reply.swarm_id == "session-4-sip"
        assert reply.assignments == [Assignment(swarm_id="session-4-sip", capability_match=1.0, score=0.95 / 15.0)]
        assert reply.assignments[0].score == pytest.approx(0.06333333333333334)
        cost = governor.track_cost("session-4-sip", "sip_integration", 2.5, now=NOW)
        assert (cost.remaining, cost.tripped) == (22.5, False)

    def test_scenario_2_budget_exhaustion_and_circuit_breaker(self) -> None:
        """Scenario 2: 5.0 − 2.0 − 2.0 − 2.0 = −1.0 trips the breaker; nothing qualifies until a reset of 25.0."""
        governor = governed(
            profile("session-test", [PYTHON], cost_per_hour=15.0, reputation_score=0.95, budget=5.0, model="sonnet")
        )
        remaining = []
        for i in (1, 2, 3):
            assert governor.find_qualified_swarm([PYTHON], 20.0) == "session-test"
            reply = governor.track_cost("session-test", f"task-{i}", 2.0, now=NOW + i)
            remaining.append((reply.remaining, reply.tripped))
        assert remaining == [(3.0, False), (1.0, False), (-1.0, True)]
        assert governor.get_circuit_breaker_status()["session-test"].reason == "budget_exhausted"
        assert governor.find_qualified_swarm([PYTHON], 20.0) is None
        governor.reset_circuit_breaker("session-test", 25.0, approved_by="alice", now=NOW + 10)
        assert governor.find_qualified_swarm([PYTHON], 20.0) == "session-test"
        assert governor.get_budget_report() == {"session-test": 25.0}

    def test_scenario_3_multi_swarm_task_distribution(self) -> None:
        """Scenario 3: each single-protocol task goes to the one swarm that holds that protocol."""
        governor = governed(
            profile("session-1-ndi", [NDI], cost_per_hour=2.0, reputation_score=0.90, budget=25.0, model="haiku"),
            profile(
                "session-2-webrtc", [WEBRTC], cost_per_hour=15.0, reputation_score=0.92, budget=25.0, model="sonnet"
            ),
            profile("session-3-h323", [H323], cost_per_hour=2.0, reputation_score=0.88, budget=25.0, model="haiku"),
            profile("session-4-sip", [SIP], cost_per_hour=15.0, reputation_score=0.95, budget=25.0, model="sonnet"),
        )
        expected = {
            NDI: ("session-1-ndi", 0.90 / 2.0),
            WEBRTC: ("session-2-webrtc", 0.92 / 15.0),
            H323: ("session-3-h323", 0.88 / 2.0),
            SIP: ("session-4-sip", 0.95 / 15.0),
        }
        for cap, (swarm_id, score) in expected.items():
            reply = governor.assign(f"task-{cap}", [cap], now=NOW, max_cost=20.0)
            assert reply.assignments == [Assignment(swarm_id=swarm_id, capability_match=1.0, score=score)]

    def test_scenario_4_cost_optimization(self) -> None:
        """Scenario 4: haiku (0.60) beats sonnet (0.0633..) and opus (0.0133..) for the same capability."""
        governor = governed(
            profile("haiku-swarm", [PYTHON], cost_per_hour=1.5, reputation_score=0.90, budget=25.0, model="haiku"),
            profile("sonnet-swarm", [PYTHON], cost_per_hour=15.0, reputation_score=0.95, budget=25.0, model="sonnet"),
            profile("opus-swarm", [PYTHON], cost_per_hour=75.0, reputation_score=1.0, budget=25.0, model="opus"),
        )
        assert governor.find_qualified_swarm([PYTHON], 100.0) == "haiku-swarm"
        reply = governor.assign("task-1", [PYTHON], now=NOW, max_cost=100.0, max_swarms=3)
        assert [(a.swarm_id, a.score) for a in reply.assignments] == [
            ("haiku-swarm", 0.6),
            ("sonnet-swarm", 0.95 / 15.0),
            ("opus-swarm", 1.0 / 75.0),
        ]
        assert [round(a.score, 4) for a in reply.assignments] == [0.6, 0.0633, 0.0133]
