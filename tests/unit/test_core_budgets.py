"""The decision core's money: cost tracking, circuit breakers, resets, registration, de-duplication, presets."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import msgspec
import pytest

from schemas.events import BreakerReset, BreakerTripped, Escalation, EscalationContext, WitnessRecord
from schemas.policy import PRESETS, ResourcePolicy
from schemas.replies import BreakerState, CostReply, FailureReply, ResetReply, TripReply
from tests.factories import NOW, governed, profile
from worker.core.governor import Governor
from worker.errors import (
    AlreadyRegistered,
    AlreadyTripped,
    GovernorError,
    InvalidBudget,
    InvalidCost,
    InvalidRequest,
    NotTripped,
    UnknownCapability,
    UnknownSwarm,
)

SIP = "integration:sip"
PYTHON = "code-analysis:python"


def tripped_events(events: Sequence[object]) -> list[BreakerTripped]:
    return [e for e in events if isinstance(e, BreakerTripped)]


def snapshot(governor: Governor) -> bytes:
    """Everything observable about the state, as bytes: status, history and the metrics gauges."""
    gauges = list(governor.gauges())
    return msgspec.json.encode([governor.status(now=NOW + 100), governor.get_assignment_history(), gauges])


class TestTrackCost:
    def test_deducts_at_once(self) -> None:
        """A cost is deducted immediately: 25.0 − 2.5 leaves 22.5, breaker closed."""
        governor = governed(profile("a"))
        reply = governor.track_cost("a", "sip_integration", 2.5, now=NOW, trace_id="tr")
        assert reply == CostReply(swarm_id="a", remaining=22.5, tripped=False, trace_id="tr")
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
        assert reply == CostReply(swarm_id="a", remaining=0.0, tripped=True)
        assert governor.get_circuit_breaker_status() == {
            "a": BreakerState(reason="budget_exhausted", tripped_at=NOW + 1)
        }
        assert list(governor.gauges()) == [("a", 0.0, 100.0, True)]

    def test_trips_on_reaching_exactly_zero(self) -> None:
        """A cost equal to the remaining budget trips the breaker (≤ 0, not < 0)."""
        governor = governed(profile("a", budget=5.0))
        assert governor.track_cost("a", "op", 5.0, now=NOW) == CostReply(swarm_id="a", remaining=0.0, tripped=True)

    def test_trips_below_zero(self) -> None:
        """A cost beyond the remaining budget is still deducted in full and trips: 1.0 − 2.0 = −1.0."""
        governor = governed(profile("a", budget=1.0))
        assert governor.track_cost("a", "op", 2.0, now=NOW) == CostReply(swarm_id="a", remaining=-1.0, tripped=True)

    def test_below_budget_does_not_trip(self) -> None:
        """A cost leaving one cent does not trip."""
        governor = governed(profile("a", budget=5.0))
        assert governor.track_cost("a", "op", 4.99, now=NOW) == CostReply(swarm_id="a", remaining=0.01, tripped=False)

    def test_zero_cost_is_recorded_and_changes_no_budget(self) -> None:
        """A zero cost is a valid operation: counted, witnessed, nothing deducted."""
        governor = governed(profile("a"))
        assert governor.track_cost("a", "op", 0.0, now=NOW).remaining == 25.0
        assert governor.get_swarm_profile("a").operations_count == 1
        assert [e.operation for e in governor.take_events() if isinstance(e, WitnessRecord)] == ["cost_tracked"]

    def test_trip_events_in_order(self) -> None:
        """The exhausting cost records: witness cost_tracked, BreakerTripped, Escalation, witness trip (HIGH)."""
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

    def test_escalation_has_the_seed_shape(self) -> None:
        """The escalation encodes as the seed's `{"type": "ESCALATE", ..., "context": {...}}` with a trace id."""
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
        assert reply == CostReply(swarm_id="a", remaining=-0.5, tripped=True)
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
        before = snapshot(governor)
        with pytest.raises(InvalidCost):
            governor.track_cost("a", "op", cost, now=NOW)
        assert snapshot(governor) == before
        assert governor.take_events() == []


class TestRepeatedFailures:
    def test_threshold_failures_trip(self) -> None:
        """The third failure inside the window trips the breaker with `repeated_failures`."""
        governor = governed(profile("a"))
        replies = [governor.record_failure("a", now=NOW + i, task_id=f"t{i}") for i in range(3)]
        assert replies == [
            FailureReply(swarm_id="a", failures_in_window=1, tripped=False),
            FailureReply(swarm_id="a", failures_in_window=2, tripped=False),
            FailureReply(swarm_id="a", failures_in_window=3, tripped=True),
        ]
        assert governor.get_circuit_breaker_status() == {
            "a": BreakerState(
                reason="repeated_failures", tripped_at=NOW + 2, next_probe_at=NOW + 2 + 300.0, cooldown_s=300.0
            )
        }

    def test_failure_trip_events(self) -> None:
        """The tripping failure records witness failure_recorded, BreakerTripped, Escalation, witness trip."""
        governor = governed(profile("a"))
        governor.record_failure("a", now=NOW)
        governor.record_failure("a", now=NOW + 1)
        governor.take_events()
        governor.record_failure("a", now=NOW + 2, task_id="t", error="boom", trace_id="tr")
        assert governor.take_events() == [
            WitnessRecord(
                operation="failure_recorded",
                params={"swarm_id": "a", "task_id": "t", "error": "boom", "failures_in_window": 3},
                timestamp=NOW + 2,
                severity="INFO",
                trace_id="tr",
            ),
            BreakerTripped(
                swarm_id="a",
                reason="repeated_failures",
                remaining=25.0,
                operations_count=0,
                tripped_at=NOW + 2,
                trace_id="tr",
            ),
            Escalation(
                swarm_id="a",
                reason="Circuit breaker tripped - repeated failures",
                context=EscalationContext(type="circuit_breaker", reason="repeated_failures", timestamp=NOW + 2),
                trace_id="tr",
            ),
            WitnessRecord(
                operation="circuit_breaker_tripped",
                params={"swarm_id": "a", "reason": "repeated_failures", "old_budget": 25.0, "operations_count": 0},
                timestamp=NOW + 2,
                severity="HIGH",
                trace_id="tr",
            ),
        ]

    def test_failures_older_than_window_do_not_count(self) -> None:
        """Failures that left the window (default 3600 s) are forgotten: 0 s, 3000 s, 3700 s make only 2."""
        governor = governed(profile("a"))
        governor.record_failure("a", now=NOW)
        governor.record_failure("a", now=NOW + 3000)
        assert governor.record_failure("a", now=NOW + 3700) == FailureReply(
            swarm_id="a", failures_in_window=2, tripped=False
        )
        assert governor.record_failure("a", now=NOW + 3800) == FailureReply(
            swarm_id="a", failures_in_window=3, tripped=True
        )

    def test_custom_window_and_threshold(self) -> None:
        """The policy's threshold and window apply: strict trips on 2 failures within a 60 s window."""
        policy = ResourcePolicy(circuit_breaker_failure_threshold=2, failure_window_s=60.0)
        governor = governed(profile("a"), policy=policy)
        governor.record_failure("a", now=NOW)
        assert governor.record_failure("a", now=NOW + 61).tripped is False
        assert governor.record_failure("a", now=NOW + 100).tripped is True

    def test_failures_on_tripped_swarm_do_not_trip_again(self) -> None:
        """Failures on a tripped swarm are counted and witnessed but record no second trip."""
        governor = governed(profile("a"))
        governor.trip_circuit_breaker("a", "manual_override", now=NOW, requested_by="ops")
        governor.take_events()
        replies = [governor.record_failure("a", now=NOW + i) for i in range(1, 5)]
        assert [(r.failures_in_window, r.tripped) for r in replies] == [(1, True), (2, True), (3, True), (4, True)]
        events = governor.take_events()
        assert tripped_events(events) == []
        assert {e.operation for e in events if isinstance(e, WitnessRecord)} == {"failure_recorded"}
        assert governor.get_circuit_breaker_status() == {"a": BreakerState(reason="manual_override", tripped_at=NOW)}

    def test_failures_in_window_in_status(self) -> None:
        """The status counts only the failures still inside the window at `now`."""
        governor = governed(profile("a"))
        governor.record_failure("a", now=NOW)
        governor.record_failure("a", now=NOW + 1000)
        assert governor.status(now=NOW + 3000).swarms[0].failures_in_window == 2
        assert governor.status(now=NOW + 4000).swarms[0].failures_in_window == 1

    def test_unknown_swarm(self) -> None:
        """A failure for an unregistered swarm raises UnknownSwarm."""
        with pytest.raises(UnknownSwarm):
            governed(profile("a")).record_failure("ghost", now=NOW)


class TestManualTrip:
    @pytest.mark.parametrize("reason", ["repeated_failures", "performance_degradation", "manual_override"])
    def test_trip_with_each_manual_reason(self, reason: str) -> None:
        """A manual trip with each valid reason opens the breaker and records the three trip events."""
        governor = governed(profile("a", budget=7.5))
        reply = governor.trip_circuit_breaker("a", reason, now=NOW, requested_by="ops", trace_id="tr")
        assert reply == TripReply(swarm_id="a", trace_id="tr")
        recovers = reason != "manual_override"  # failure and degradation trips get half-open probes
        assert governor.get_circuit_breaker_status() == {
            "a": BreakerState(
                reason=reason,
                tripped_at=NOW,
                next_probe_at=NOW + 300.0 if recovers else None,
                cooldown_s=300.0 if recovers else 0.0,
            )
        }
        text = reason.replace("_", " ")
        assert governor.take_events() == [
            BreakerTripped(
                swarm_id="a", reason=reason, remaining=7.5, operations_count=0, tripped_at=NOW, trace_id="tr"
            ),
            Escalation(
                swarm_id="a",
                reason=f"Circuit breaker tripped - {text}",
                context=EscalationContext(type="circuit_breaker", reason=reason, timestamp=NOW),
                trace_id="tr",
            ),
            WitnessRecord(
                operation="circuit_breaker_tripped",
                params={
                    "swarm_id": "a",
                    "reason": reason,
                    "old_budget": 7.5,
                    "operations_count": 0,
                    "requested_by": "ops",
                },
                timestamp=NOW,
                severity="HIGH",
                trace_id="tr",
            ),
        ]

    def test_tripped_swarm_is_not_assigned(self) -> None:
        """A manually tripped swarm keeps its budget but gets no work."""
        governor = governed(profile("a"))
        governor.trip_circuit_breaker("a", "performance_degradation", now=NOW, requested_by="ops")
        assert governor.find_qualified_swarm([SIP]) is None
        assert governor.get_budget_report() == {"a": 25.0}

    def test_already_tripped(self) -> None:
        """Tripping a tripped breaker raises AlreadyTripped and keeps the first reason and time."""
        governor = governed(profile("a", budget=1.0))
        governor.track_cost("a", "op", 1.0, now=NOW)
        with pytest.raises(AlreadyTripped):
            governor.trip_circuit_breaker("a", "manual_override", now=NOW + 1, requested_by="ops")
        assert governor.get_circuit_breaker_status() == {"a": BreakerState(reason="budget_exhausted", tripped_at=NOW)}

    @pytest.mark.parametrize("reason", ["budget_exhausted", "bogus", "", "Manual_Override"])
    def test_invalid_reason(self, reason: str) -> None:
        """A reason outside the three manual ones (including the automatic `budget_exhausted`) is refused."""
        governor = governed(profile("a"))
        with pytest.raises(InvalidRequest):
            governor.trip_circuit_breaker("a", reason, now=NOW, requested_by="ops")
        assert governor.get_circuit_breaker_status() == {}

    def test_unknown_swarm(self) -> None:
        """Tripping an unregistered swarm raises UnknownSwarm."""
        with pytest.raises(UnknownSwarm):
            governed().trip_circuit_breaker("ghost", "manual_override", now=NOW, requested_by="ops")


class TestReset:
    def test_reset_restores_budget_and_closes_breaker(self) -> None:
        """A reset sets the new budget, closes the breaker and makes the swarm assignable again."""
        governor = governed(profile("a", budget=1.0))
        governor.track_cost("a", "op", 3.0, now=NOW)
        governor.take_events()
        reply = governor.reset_circuit_breaker("a", 25.0, approved_by="alice", now=NOW + 60, trace_id="tr")
        assert reply == ResetReply(swarm_id="a", remaining=25.0, trace_id="tr")
        assert governor.get_budget_report() == {"a": 25.0}
        assert governor.get_circuit_breaker_status() == {}
        assert governor.find_qualified_swarm([SIP]) == "a"

    def test_reset_events(self) -> None:
        """A reset records BreakerReset then a MEDIUM witness naming the approver and the previous trip."""
        governor = governed(profile("a"))
        governor.trip_circuit_breaker("a", "manual_override", now=NOW, requested_by="ops")
        governor.take_events()
        governor.reset_circuit_breaker("a", 30.0, approved_by="alice", now=NOW + 60, trace_id="tr")
        assert governor.take_events() == [
            BreakerReset(swarm_id="a", new_budget=30.0, approved_by="alice", reset_at=NOW + 60, trace_id="tr"),
            WitnessRecord(
                operation="circuit_breaker_reset",
                params={
                    "swarm_id": "a",
                    "new_budget": 30.0,
                    "approved_by": "alice",
                    "previous_reason": "manual_override",
                    "tripped_at": NOW,
                },
                timestamp=NOW + 60,
                severity="MEDIUM",
                trace_id="tr",
            ),
        ]

    def test_reset_clears_failures(self) -> None:
        """After a reset of a repeated-failures trip, one more failure does not trip again at once."""
        governor = governed(profile("a"))
        for i in range(3):
            governor.record_failure("a", now=NOW + i)
        governor.reset_circuit_breaker("a", 25.0, approved_by="alice", now=NOW + 10)
        assert governor.record_failure("a", now=NOW + 11) == FailureReply(
            swarm_id="a", failures_in_window=1, tripped=False
        )

    def test_exhausted_swarm_can_trip_again_after_reset(self) -> None:
        """A reset swarm that exhausts its new budget trips again, a second BreakerTripped."""
        governor = governed(profile("a", budget=1.0))
        governor.track_cost("a", "op", 1.0, now=NOW)
        governor.reset_circuit_breaker("a", 2.0, approved_by="alice", now=NOW + 1)
        assert governor.track_cost("a", "op", 2.0, now=NOW + 2).tripped is True
        assert [e.tripped_at for e in tripped_events(governor.take_events())] == [NOW, NOW + 2]

    def test_unknown_swarm_first(self) -> None:
        """An unknown swarm is reported before any other problem of the request."""
        with pytest.raises(UnknownSwarm):
            governed(profile("a")).reset_circuit_breaker("ghost", math.nan, approved_by="", now=NOW)

    def test_not_tripped_before_budget(self) -> None:
        """Resetting a closed breaker raises NotTripped, even with an invalid budget and approver."""
        governor = governed(profile("a"))
        with pytest.raises(NotTripped):
            governor.reset_circuit_breaker("a", -5.0, approved_by="", now=NOW)

    @pytest.mark.parametrize("budget", [0.0, -0.0, -1.0, math.nan, math.inf, -math.inf, 2e9])
    def test_invalid_budget_before_approver(self, budget: float) -> None:
        """A budget ≤ 0, NaN, infinite or absurd raises InvalidBudget, checked before the approver."""
        governor = governed(profile("a"))
        governor.trip_circuit_breaker("a", "manual_override", now=NOW, requested_by="ops")
        with pytest.raises(InvalidBudget):
            governor.reset_circuit_breaker("a", budget, approved_by="", now=NOW)

    @pytest.mark.parametrize("budget", [1e-7, 5e-7])
    def test_budget_below_one_micro_dollar_refused(self, budget: float) -> None:
        """A new budget that rounds to 0 micro-dollars is refused, not stored as 0 with the breaker closed."""
        governor = governed(profile("a"))
        governor.trip_circuit_breaker("a", "manual_override", now=NOW, requested_by="ops")
        governor.take_events()
        with pytest.raises(InvalidBudget):
            governor.reset_circuit_breaker("a", budget, approved_by="alice", now=NOW)
        assert governor.get_circuit_breaker_status() == {"a": BreakerState(reason="manual_override", tripped_at=NOW)}
        assert governor.take_events() == []

    @pytest.mark.parametrize("approver", ["", "   ", "\t\n"])
    def test_empty_approver(self, approver: str) -> None:
        """A reset must name a human: an empty or blank approver raises InvalidRequest itself."""
        governor = governed(profile("a"))
        governor.trip_circuit_breaker("a", "manual_override", now=NOW, requested_by="ops")
        with pytest.raises(InvalidRequest) as caught:
            governor.reset_circuit_breaker("a", 25.0, approved_by=approver, now=NOW)
        assert type(caught.value) is InvalidRequest
        assert caught.value.code == "invalid_request"


class TestRegistration:
    def test_register_witnessed(self) -> None:
        """Registration records one `swarm_registered` witness record with the profile's values."""
        governor = Governor()
        governor.register_swarm(profile("a", budget=12.5), now=NOW, trace_id="tr")
        assert governor.take_events() == [
            WitnessRecord(
                operation="swarm_registered",
                params={
                    "swarm_id": "a",
                    "capabilities": [SIP],
                    "cost_per_hour": 2.0,
                    "reputation_score": 0.9,
                    "budget": 12.5,
                    "model": "haiku",
                    "tripped": False,
                },
                timestamp=NOW,
                severity="INFO",
                trace_id="tr",
            )
        ]

    def test_deregistered_while_tripped_comes_back_tripped(self) -> None:
        """Deregistering and registering a tripped swarm again does not close its breaker: only a reset does."""
        governor = governed(profile("a"))
        governor.trip_circuit_breaker("a", "manual_override", now=NOW, requested_by="ops")
        governor.deregister_swarm("a", now=NOW + 1)
        governor.register_swarm(profile("a", budget=99.0), now=NOW + 2)
        assert governor.get_circuit_breaker_status() == {"a": BreakerState(reason="manual_override", tripped_at=NOW)}
        assert governor.find_qualified_swarm([SIP], 100.0) is None

    def test_existing_id_refused(self) -> None:
        """Registering an id that exists raises AlreadyRegistered."""
        governor = governed(profile("a"))
        with pytest.raises(AlreadyRegistered, match="'a'"):
            governor.register_swarm(profile("a"), now=NOW)

    def test_registration_never_restores_budget_or_closes_breaker(self) -> None:
        """Re-registering an exhausted, tripped swarm with a fresh budget is refused and changes nothing."""
        governor = governed(profile("a", budget=1.0))
        governor.track_cost("a", "op", 1.5, now=NOW)
        governor.take_events()
        before = snapshot(governor)
        with pytest.raises(AlreadyRegistered):
            governor.register_swarm(profile("a", budget=1000.0), now=NOW + 1)
        assert snapshot(governor) == before
        assert governor.get_budget_report() == {"a": -0.5}
        assert "a" in governor.get_circuit_breaker_status()
        assert governor.take_events() == []

    @pytest.mark.parametrize("budget", [0.0, -1.0, math.nan, math.inf])
    def test_invalid_initial_budget(self, budget: float) -> None:
        """A profile whose budget is ≤ 0 or not finite is refused with InvalidBudget."""
        governor = Governor()
        with pytest.raises(InvalidBudget):
            governor.register_swarm(profile("a", budget=budget), now=NOW)
        assert len(governor) == 0

    @pytest.mark.parametrize("budget", [1e-7, 4e-7, 5e-7])
    def test_budget_below_one_micro_dollar_refused(self, budget: float) -> None:
        """A budget that rounds to 0 micro-dollars is refused: no swarm may start at 0 with its breaker closed."""
        governor = Governor()
        with pytest.raises(InvalidBudget):
            governor.register_swarm(profile("a", budget=budget), now=NOW)
        assert len(governor) == 0

    @pytest.mark.parametrize("cost_per_hour", [0.0, -2.0, math.nan, math.inf])
    def test_invalid_cost_per_hour(self, cost_per_hour: float) -> None:
        """A profile whose cost_per_hour is ≤ 0 or not finite is refused (the score divides by it)."""
        governor = Governor()
        with pytest.raises(InvalidRequest):
            governor.register_swarm(profile("a", cost_per_hour=cost_per_hour), now=NOW)
        assert len(governor) == 0

    @pytest.mark.parametrize("reputation", [-0.01, 1.01, math.nan])
    def test_invalid_reputation(self, reputation: float) -> None:
        """A reputation outside [0, 1] is refused."""
        governor = Governor()
        with pytest.raises(InvalidRequest):
            governor.register_swarm(profile("a", reputation_score=reputation), now=NOW)
        assert len(governor) == 0

    def test_deregister(self) -> None:
        """Deregistering removes the swarm from the registry, the budgets and the candidates."""
        governor = governed(profile("a"), profile("b"))
        governor.deregister_swarm("a", now=NOW)
        assert "a" not in governor
        assert governor.get_budget_report() == {"b": 25.0}
        assert governor.find_qualified_swarm([SIP]) == "b"

    def test_deregister_unknown(self) -> None:
        """Deregistering an unknown swarm raises UnknownSwarm."""
        with pytest.raises(UnknownSwarm):
            governed().deregister_swarm("ghost", now=NOW)


class TestDeduplication:
    def test_duplicate_cost(self) -> None:
        """A cost with a seen event_id replies duplicate=True, deducts nothing and records nothing."""
        governor = governed(profile("a"))
        governor.track_cost("a", "op", 2.0, now=NOW, event_id="e1")
        governor.take_events()
        reply = governor.track_cost("a", "op", 2.0, now=NOW, event_id="e1")
        assert reply == CostReply(swarm_id="a", remaining=23.0, tripped=False, duplicate=True)
        assert governor.get_swarm_profile("a").operations_count == 1
        assert governor.take_events() == []

    def test_duplicate_cost_after_trip_reports_tripped(self) -> None:
        """A duplicate of the cost that tripped the breaker replies tripped=True and trips nothing again."""
        governor = governed(profile("a", budget=1.0))
        governor.track_cost("a", "op", 1.0, now=NOW, event_id="e1")
        governor.take_events()
        assert governor.track_cost("a", "op", 1.0, now=NOW, event_id="e1") == CostReply(
            swarm_id="a", remaining=0.0, tripped=True, duplicate=True
        )
        assert governor.take_events() == []

    def test_duplicate_failure(self) -> None:
        """A failure with a seen event_id replies duplicate=True and does not count again."""
        governor = governed(profile("a"))
        governor.record_failure("a", now=NOW, event_id="f1")
        governor.take_events()
        for _ in range(3):
            reply = governor.record_failure("a", now=NOW + 1, event_id="f1")
            assert reply == FailureReply(swarm_id="a", failures_in_window=1, tripped=False, duplicate=True)
        assert governor.get_circuit_breaker_status() == {}
        assert governor.take_events() == []

    def test_duplicate_reset(self) -> None:
        """A reset with a seen event_id replies duplicate=True, even though the breaker is now closed."""
        governor = governed(profile("a", budget=1.0))
        governor.track_cost("a", "op", 1.0, now=NOW)
        governor.reset_circuit_breaker("a", 10.0, approved_by="alice", now=NOW, event_id="r1")
        governor.track_cost("a", "op", 4.0, now=NOW)
        governor.take_events()
        reply = governor.reset_circuit_breaker("a", 10.0, approved_by="alice", now=NOW, event_id="r1")
        assert reply == ResetReply(swarm_id="a", remaining=6.0, duplicate=True)
        assert governor.take_events() == []

    def test_kinds_do_not_collide(self) -> None:
        """The same event_id used for a cost and for a failure is applied once for each."""
        governor = governed(profile("a"))
        governor.track_cost("a", "op", 1.0, now=NOW, event_id="same")
        assert governor.record_failure("a", now=NOW, event_id="same").duplicate is False

    def test_rejected_call_does_not_consume_event_id(self) -> None:
        """A cost refused as invalid leaves its event_id free for the corrected retry."""
        governor = governed(profile("a"))
        with pytest.raises(InvalidCost):
            governor.track_cost("a", "op", -1.0, now=NOW, event_id="e1")
        assert governor.track_cost("a", "op", 1.0, now=NOW, event_id="e1").duplicate is False
        assert governor.get_budget_report() == {"a": 24.0}

    def test_refused_reset_does_not_consume_event_id(self) -> None:
        """A reset refused as NotTripped does not remember its event_id; the later valid reset applies."""
        governor = governed(profile("a", budget=1.0))
        with pytest.raises(NotTripped):
            governor.reset_circuit_breaker("a", 10.0, approved_by="alice", now=NOW, event_id="r1")
        governor.track_cost("a", "op", 1.0, now=NOW)
        reply = governor.reset_circuit_breaker("a", 10.0, approved_by="alice", now=NOW, event_id="r1")
        assert reply == ResetReply(swarm_id="a", remaining=10.0)

    def test_bounded_memory_forgets_oldest(self) -> None:
        """With dedupe_limit 2, the oldest of three ids is forgotten and applies again."""
        governor = governed(profile("a"), dedupe_limit=2)
        for event_id in ("e1", "e2", "e3"):
            governor.track_cost("a", "op", 1.0, now=NOW, event_id=event_id)
        assert governor.track_cost("a", "op", 1.0, now=NOW, event_id="e3").duplicate is True
        assert governor.track_cost("a", "op", 1.0, now=NOW, event_id="e1").duplicate is False
        assert governor.get_budget_report() == {"a": 21.0}


def _rejected_calls() -> list[tuple[str, Callable[[Governor], object], type[GovernorError]]]:
    return [
        ("register existing", lambda g: g.register_swarm(profile("ok", budget=99.0), now=NOW), AlreadyRegistered),
        ("register bad budget", lambda g: g.register_swarm(profile("new", budget=0.0), now=NOW), InvalidBudget),
        (
            "register unknown capability",
            lambda g: g.register_swarm(profile("new", capabilities=["integration:sipp"]), now=NOW),
            UnknownCapability,
        ),
        ("deregister unknown", lambda g: g.deregister_swarm("ghost", now=NOW), UnknownSwarm),
        ("assign unknown capability", lambda g: g.assign("t", ["nope:nope"], now=NOW), UnknownCapability),
        ("cost unknown swarm", lambda g: g.track_cost("ghost", "op", 1.0, now=NOW), UnknownSwarm),
        ("cost negative", lambda g: g.track_cost("ok", "op", -1.0, now=NOW, event_id="x"), InvalidCost),
        ("cost nan", lambda g: g.track_cost("ok", "op", math.nan, now=NOW), InvalidCost),
        ("cost inf", lambda g: g.track_cost("ok", "op", math.inf, now=NOW), InvalidCost),
        ("failure unknown swarm", lambda g: g.record_failure("ghost", now=NOW), UnknownSwarm),
        (
            "trip unknown swarm",
            lambda g: g.trip_circuit_breaker("ghost", "manual_override", now=NOW, requested_by="o"),
            UnknownSwarm,
        ),
        (
            "trip bad reason",
            lambda g: g.trip_circuit_breaker("ok", "budget_exhausted", now=NOW, requested_by="o"),
            InvalidRequest,
        ),
        (
            "trip already tripped",
            lambda g: g.trip_circuit_breaker("off", "manual_override", now=NOW, requested_by="o"),
            AlreadyTripped,
        ),
        (
            "reset unknown swarm",
            lambda g: g.reset_circuit_breaker("ghost", 5.0, approved_by="a", now=NOW),
            UnknownSwarm,
        ),
        ("reset not tripped", lambda g: g.reset_circuit_breaker("ok", 5.0, approved_by="a", now=NOW), NotTripped),
        ("reset zero budget", lambda g: g.reset_circuit_breaker("off", 0.0, approved_by="a", now=NOW), InvalidBudget),
        (
            "reset nan budget",
            lambda g: g.reset_circuit_breaker("off", math.nan, approved_by="a", now=NOW),
            InvalidBudget,
        ),
        (
            "reset inf budget",
            lambda g: g.reset_circuit_breaker("off", math.inf, approved_by="a", now=NOW),
            InvalidBudget,
        ),
        (
            "reset no approver",
            lambda g: g.reset_circuit_breaker("off", 5.0, approved_by="", now=NOW, event_id="r"),
            InvalidRequest,
        ),
    ]


class TestRejectedCallsChangeNothing:
    @pytest.fixture
    def governor(self) -> Governor:
        """A governor with history, costs, failures and one tripped swarm."""
        governor = governed(profile("ok", budget=20.0), profile("off", budget=5.0))
        governor.assign("task-1", [SIP], now=NOW)
        governor.track_cost("ok", "op", 1.25, now=NOW, event_id="e0")
        governor.record_failure("ok", now=NOW)
        governor.track_cost("off", "op", 6.0, now=NOW)
        governor.take_events()
        return governor

    @pytest.mark.parametrize(
        ("call", "error"),
        [(call, error) for _, call, error in _rejected_calls()],
        ids=[name for name, _, _ in _rejected_calls()],
    )
    def test_rejected_call(
        self, governor: Governor, call: Callable[[Governor], object], error: type[GovernorError]
    ) -> None:
        """A refused call raises its error, leaves the status byte-for-byte equal and records no event."""
        before = snapshot(governor)
        with pytest.raises(error):
            call(governor)
        assert snapshot(governor) == before
        assert governor.take_events() == []

    def test_fixture_state(self, governor: Governor) -> None:
        """The fixture's state is what the rejected calls are compared against."""
        assert governor.get_budget_report() == {"ok": 18.75, "off": -1.0}
        assert list(governor.get_circuit_breaker_status()) == ["off"]


class TestPresets:
    def test_strict(self) -> None:
        """The strict preset is the seed's: 1 swarm, 5.0, 0.9, threshold 2."""
        assert PRESETS["strict"] == ResourcePolicy(
            max_swarms_per_task=1, max_cost_per_task=5.0, min_capability_match=0.9, circuit_breaker_failure_threshold=2
        )

    def test_permissive(self) -> None:
        """The permissive preset is the seed's: 5 swarms, 50.0, 0.6, threshold 5."""
        assert PRESETS["permissive"] == ResourcePolicy(
            max_swarms_per_task=5,
            max_cost_per_task=50.0,
            min_capability_match=0.6,
            circuit_breaker_failure_threshold=5,
        )

    def test_production(self) -> None:
        """The production preset is the seed's (3 swarms, 10.0, 0.7, threshold 3) and the default policy."""
        assert PRESETS["production"] == ResourcePolicy(
            max_swarms_per_task=3,
            max_cost_per_task=10.0,
            min_capability_match=0.7,
            circuit_breaker_failure_threshold=3,
        )
        assert PRESETS["production"] == ResourcePolicy()
        assert Governor().policy == PRESETS["production"]

    def test_exact_field_values(self) -> None:
        """Each preset's seed fields, as builtins, are exactly the seed's numbers, with the default 3600 s window."""
        seed_fields = (
            "max_swarms_per_task",
            "max_cost_per_task",
            "min_capability_match",
            "circuit_breaker_failure_threshold",
            "failure_window_s",
        )
        presets = {name: msgspec.to_builtins(p) for name, p in PRESETS.items()}
        assert {name: {f: p[f] for f in seed_fields} for name, p in presets.items()} == {
            "strict": {
                "max_swarms_per_task": 1,
                "max_cost_per_task": 5.0,
                "min_capability_match": 0.9,
                "circuit_breaker_failure_threshold": 2,
                "failure_window_s": 3600.0,
            },
            "permissive": {
                "max_swarms_per_task": 5,
                "max_cost_per_task": 50.0,
                "min_capability_match": 0.6,
                "circuit_breaker_failure_threshold": 5,
                "failure_window_s": 3600.0,
            },
            "production": {
                "max_swarms_per_task": 3,
                "max_cost_per_task": 10.0,
                "min_capability_match": 0.7,
                "circuit_breaker_failure_threshold": 3,
                "failure_window_s": 3600.0,
            },
        }


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
