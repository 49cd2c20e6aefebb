"""Budgets: costs deducted exactly and at once, the trip on exhaustion, the soft-budget warning, the largest
amount accepted, and the budget report and status."""

from __future__ import annotations

import math

import msgspec
import pytest

from schemas.events import BreakerTripped, BudgetThreshold, Escalation, EscalationContext, WitnessRecord
from schemas.policy import ResourcePolicy
from schemas.replies import BreakerState, CostReply
from tests.factories import NOW, SIP, governed, profile
from tests.unit.core.helpers import observable_state, tripped_events
from worker.errors import InvalidBudget, InvalidCost, UnknownSwarm


class TestTrackCost:
    def test_deducts_at_once(self) -> None:
        """A cost is deducted immediately: 25.0 − 2.5 leaves 22.5, breaker closed."""
        governor = governed(profile("a"))
        reply = governor.track_cost("a", "sip_integration", 2.5, now=NOW, trace_id="tr")
        assert reply == CostReply(swarm_id="a", remaining=22.5, tripped=False, cost=2.5, trace_id="tr")
        assert governor.get_budget_report() == {"a": 22.5}

    def test_money_is_exact(self) -> None:
        """0.1 + 0.2 from a budget of 0.3 leaves exactly 0.0 (not a float residue) and trips."""
        governor = governed(profile("a", budget=0.3))
        assert governor.track_cost("a", "op", 0.1, now=NOW).remaining == 0.2
        reply = governor.track_cost("a", "op", 0.2, now=NOW)
        assert (reply.remaining, reply.tripped) == (0.0, True)

    def test_ten_thousand_cents_exhaust_one_hundred_exactly(self) -> None:
        """10,000 costs of 0.01 from 100.0 leave exactly 0.0, tripping on the last one and not before."""
        governor = governed(profile("a", budget=100.0))
        for _ in range(9_999):
            governor.track_cost("a", "op", 0.01, now=NOW)
        assert governor.get_budget_report() == {"a": 0.01}
        assert governor.get_circuit_breaker_status() == {}
        reply = governor.track_cost("a", "op", 0.01, now=NOW + 1)
        assert reply == CostReply(swarm_id="a", remaining=0.0, tripped=True, cost=0.01)
        assert governor.get_circuit_breaker_status() == {
            "a": BreakerState(reason="budget_exhausted", tripped_at=NOW + 1)
        }
        assert list(governor.gauges()) == [("a", 0.0, 100.0, True)]

    def test_trips_on_reaching_exactly_zero(self) -> None:
        """A cost equal to the remaining budget trips the breaker (≤ 0, not < 0)."""
        governor = governed(profile("a", budget=5.0))
        assert governor.track_cost("a", "op", 5.0, now=NOW) == CostReply(
            swarm_id="a", remaining=0.0, tripped=True, cost=5.0
        )

    def test_trips_below_zero(self) -> None:
        """A cost beyond the remaining budget is still deducted in full and trips: 1.0 − 2.0 = −1.0."""
        governor = governed(profile("a", budget=1.0))
        assert governor.track_cost("a", "op", 2.0, now=NOW) == CostReply(
            swarm_id="a", remaining=-1.0, tripped=True, cost=2.0
        )

    def test_below_budget_does_not_trip(self) -> None:
        """A cost leaving one cent does not trip."""
        governor = governed(profile("a", budget=5.0))
        assert governor.track_cost("a", "op", 4.99, now=NOW) == CostReply(
            swarm_id="a", remaining=0.01, tripped=False, cost=4.99
        )

    def test_zero_cost_is_recorded_and_changes_no_budget(self) -> None:
        """A zero cost is a valid operation: counted, witnessed, nothing deducted."""
        governor = governed(profile("a"))
        assert governor.track_cost("a", "op", 0.0, now=NOW).remaining == 25.0
        assert governor.get_swarm_profile("a").operations_count == 1
        assert [e.operation for e in governor.take_events() if isinstance(e, WitnessRecord)] == ["cost_tracked"]

    def test_trip_events_in_order(self) -> None:
        """The exhausting cost records: witness cost_tracked, the thresholds it crossed (no MEDIUM escalation:
        the trip's says it), BreakerTripped, Escalation, witness trip (HIGH)."""
        governor = governed(profile("session-4-sip", budget=10.44))
        for i in range(4):
            governor.track_cost("session-4-sip", f"op-{i}", 2.0, now=NOW + i)
        governor.take_events()
        governor.track_cost("session-4-sip", "op-4", 2.5, now=NOW + 9, task_id="task-4", trace_id="tr-4")
        assert governor.take_events() == [
            WitnessRecord(
                operation="cost_tracked",
                params={
                    "swarm_id": "session-4-sip",
                    "operation": "op-4",
                    "cost": 2.5,
                    "remaining": -0.06,
                    "task_id": "task-4",
                },
                timestamp=NOW + 9,
                severity="INFO",
                trace_id="tr-4",
            ),
            *(
                event
                for fraction in (0.8, 0.95)
                for event in (
                    BudgetThreshold(
                        swarm_id="session-4-sip", fraction=fraction, spent=10.5, limit=10.44, trace_id="tr-4"
                    ),
                    WitnessRecord(
                        operation="budget_threshold",
                        params={"swarm_id": "session-4-sip", "fraction": fraction, "spent": 10.5, "limit": 10.44},
                        timestamp=NOW + 9,
                        severity="MEDIUM",
                        trace_id="tr-4",
                    ),
                )
            ),
            BreakerTripped(
                swarm_id="session-4-sip",
                reason="budget_exhausted",
                remaining=-0.06,
                operations_count=5,
                tripped_at=NOW + 9,
                trace_id="tr-4",
            ),
            Escalation(
                swarm_id="session-4-sip",
                reason="Circuit breaker tripped - budget exhausted",
                context=EscalationContext(type="circuit_breaker", reason="budget_exhausted", timestamp=NOW + 9),
                trace_id="tr-4",
            ),
            WitnessRecord(
                operation="circuit_breaker_tripped",
                params={
                    "swarm_id": "session-4-sip",
                    "reason": "budget_exhausted",
                    "old_budget": -0.06,
                    "operations_count": 5,
                },
                timestamp=NOW + 9,
                severity="HIGH",
                trace_id="tr-4",
            ),
        ]

    def test_escalation_has_the_documented_shape(self) -> None:
        """The escalation encodes as in `IF.governor.md`, `{"type": "ESCALATE", ..., "context": {...}}`, with a
        trace id."""
        governor = governed(profile("a", budget=1.0))
        governor.track_cost("a", "op", 1.0, now=NOW, trace_id="tr")
        (escalation,) = [e for e in governor.take_events() if isinstance(e, Escalation)]
        assert msgspec.to_builtins(escalation) == {
            "type": "ESCALATE",
            "swarm_id": "a",
            "reason": "Circuit breaker tripped - budget exhausted",
            "context": {"type": "circuit_breaker", "reason": "budget_exhausted", "timestamp": NOW},
            "trace_id": "tr",
            "severity": "HIGH",
        }

    def test_trips_once_only(self) -> None:
        """Costs on a tripped swarm are still deducted and witnessed, with no second trip."""
        governor = governed(profile("a", budget=1.0))
        governor.track_cost("a", "op", 1.0, now=NOW)
        governor.take_events()
        reply = governor.track_cost("a", "late", 0.5, now=NOW + 5)
        assert reply == CostReply(swarm_id="a", remaining=-0.5, tripped=True, cost=0.5)
        events = governor.take_events()
        assert [type(e).__name__ for e in events] == ["WitnessRecord"]
        assert events[0].operation == "cost_tracked"  # type: ignore[union-attr]
        assert governor.get_circuit_breaker_status() == {"a": BreakerState(reason="budget_exhausted", tripped_at=NOW)}
        assert governor.get_swarm_profile("a").operations_count == 2

    def test_operations_count(self) -> None:
        """Every tracked cost counts one operation, shown in the status and in BreakerTripped."""
        governor = governed(profile("a", budget=3.0), profile("b"))
        for _ in range(3):
            governor.track_cost("a", "op", 1.0, now=NOW)
        governor.track_cost("b", "op", 1.0, now=NOW)
        assert [s.operations_count for s in governor.status(now=NOW).swarms] == [3, 1]
        assert [e.operations_count for e in tripped_events(governor.take_events())] == [3]

    def test_unknown_swarm(self) -> None:
        """A cost for an unregistered swarm raises UnknownSwarm."""
        with pytest.raises(UnknownSwarm, match="'ghost'"):
            governed(profile("a")).track_cost("ghost", "op", 1.0, now=NOW)

    @pytest.mark.parametrize("cost", [-0.01, -1e-9, math.nan, math.inf, -math.inf, 1e10])
    def test_invalid_cost_changes_nothing(self, cost: float) -> None:
        """A negative, NaN, infinite or absurd cost raises InvalidCost and changes no state."""
        governor = governed(profile("a"))
        before = observable_state(governor)
        with pytest.raises(InvalidCost):
            governor.track_cost("a", "op", cost, now=NOW)
        assert observable_state(governor) == before
        assert governor.take_events() == []


class TestSoftBudget:
    def test_medium_escalation_once_per_allocation(self) -> None:
        """Crossing budget alerts raises one MEDIUM escalation for the highest crossed; a reset re-arms them."""
        governor = governed(profile("a", budget=10.0))
        governor.track_cost("a", "op", 8.5, now=NOW)
        escalations = [e for e in governor.take_events() if isinstance(e, Escalation)]
        assert [(e.severity, e.context.type, e.reason) for e in escalations] == [
            ("MEDIUM", "soft_budget", "Budget running low - 80% spent, 1.50 of 10.00 USD left")
        ]
        governor.track_cost("a", "op", 0.5, now=NOW)
        assert [e for e in governor.take_events() if isinstance(e, Escalation)] == []
        governor.track_cost("a", "op", 5.0, now=NOW)
        governor.reset_circuit_breaker("a", 20.0, approved_by="alice", now=NOW)
        governor.take_events()
        governor.track_cost("a", "op", 17.0, now=NOW)
        assert [e.severity for e in governor.take_events() if isinstance(e, Escalation)] == ["MEDIUM"]


class TestConfiguredMaximum:
    def test_amounts_above_the_configured_maximum_are_refused(self) -> None:
        """Costs, estimates and budgets above `max_amount_usd` are refused and change nothing."""
        from worker.errors import InvalidCost

        governor = governed(profile("a", budget=50.0), policy=ResourcePolicy(max_amount_usd=100.0))
        for call in (
            lambda: governor.track_cost("a", "op", 100.01, now=NOW),
            lambda: governor.assign("t", [SIP], now=NOW, estimated_cost=100.5),
        ):
            try:
                call()
            except InvalidCost as exc:
                assert "from 0 to 100" in exc.message
            else:
                raise AssertionError("not refused")
        governor.trip_circuit_breaker("a", "manual_override", now=NOW, requested_by="ops")
        try:
            governor.reset_circuit_breaker("a", 100.5, approved_by="alice", now=NOW)
        except InvalidBudget as exc:
            assert "at most 100" in exc.message
        else:
            raise AssertionError("not refused")
        assert governor.get_budget_report() == {"a": 50.0}


class TestReports:
    def test_budget_report_in_registration_order(self) -> None:
        """The budget report maps every swarm to its remaining USD, in registration order."""
        governor = governed(profile("b", budget=3.0), profile("a", budget=4.0))
        governor.track_cost("a", "op", 1.5, now=NOW)
        assert list(governor.get_budget_report().items()) == [("b", 3.0), ("a", 2.5)]

    def test_status(self) -> None:
        """The status lists swarms with live budget and breaker, the budgets, the breakers and the policy."""
        governor = governed(profile("a", budget=1.0), profile("b"))
        governor.track_cost("a", "op", 1.0, now=NOW)
        status = governor.status(now=NOW, trace_id="tr")
        breaker = BreakerState(reason="budget_exhausted", tripped_at=NOW)
        assert [(s.swarm_id, s.budget_remaining, s.breaker) for s in status.swarms] == [
            ("a", 0.0, breaker),
            ("b", 25.0, None),
        ]
        assert status.budgets == {"a": 0.0, "b": 25.0}
        assert status.breakers == {"a": breaker}
        assert status.policy == ResourcePolicy()
        assert status.trace_id == "tr"
