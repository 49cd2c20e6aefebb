"""Circuit breakers: trips on repeated failures and by hand, resets approved by a human, half-open recovery,
and the reset history."""

from __future__ import annotations

import math

import pytest

from schemas.events import (
    BreakerClosed,
    BreakerHalfOpen,
    BreakerReset,
    BreakerTripped,
    Escalation,
    EscalationContext,
    WitnessRecord,
)
from schemas.policy import ResourcePolicy
from schemas.replies import BreakerState, FailureReply, ResetReply, TripReply
from tests.factories import NOW, SIP, governed, profile
from tests.unit.core.helpers import tripped_events
from worker.core.governor import Governor
from worker.errors import AlreadyTripped, InvalidBudget, InvalidRequest, NotTripped, UnknownSwarm


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


class TestHalfOpen:
    def failing(self, policy: ResourcePolicy) -> Governor:
        """Swarm `a` under `policy`, its breaker tripped by three failures at NOW, NOW + 1 and NOW + 2."""
        governor = governed(profile("a"), policy=policy)
        for i in range(3):
            governor.record_failure("a", now=NOW + i)
        governor.take_events()
        return governor

    def test_probe_admitted_after_cooldown_and_success_closes(self) -> None:
        """After the cool-down the breaker turns half-open, admits one probe, and a success closes it."""
        governor = self.failing(ResourcePolicy(breaker_cooldown_s=60.0))
        assert governor.assign("early", [SIP], now=NOW + 61.0).swarm_id is None  # cool-down runs from the trip
        governor.take_events()
        reply = governor.assign("probe", [SIP], now=NOW + 62.0)
        assert reply.swarm_id == "a"
        assert governor.get_circuit_breaker_status()["a"].state == "half_open"
        assert governor.assign("second", [SIP], now=NOW + 63.0).swarm_id is None  # one probe only
        events = governor.take_events()
        assert BreakerHalfOpen(swarm_id="a", reason="repeated_failures", probes=1, at=NOW + 62.0, trace_id="") in events
        assert governor.record_success("a", now=NOW + 70.0, task_id="probe").closed is True
        assert governor.get_circuit_breaker_status() == {}
        assert BreakerClosed(swarm_id="a", reason="repeated_failures", closed_at=NOW + 70.0, trace_id="") in (
            governor.take_events()
        )
        assert governor.assign("after", [SIP], now=NOW + 71.0).swarm_id == "a"

    def test_failed_probe_reopens_with_doubled_capped_cooldown(self) -> None:
        """A failure while half-open re-opens the breaker with the cool-down doubled, never above the cap."""
        governor = self.failing(ResourcePolicy(breaker_cooldown_s=60.0, breaker_max_cooldown_s=100.0))
        governor.assign("probe", [SIP], now=NOW + 62.0)
        governor.record_failure("a", now=NOW + 63.0)
        breaker = governor.get_circuit_breaker_status()["a"]
        assert (breaker.state, breaker.cooldown_s, breaker.next_probe_at) == ("open", 100.0, NOW + 163.0)
        assert any(isinstance(e, BreakerTripped) for e in governor.take_events())

    def test_budget_trip_needs_a_human(self) -> None:
        """A budget trip never turns half-open, and exhausting a recovering swarm makes it a budget trip."""
        governor = self.failing(ResourcePolicy(breaker_cooldown_s=60.0))
        governor.track_cost("a", "op", 30.0, now=NOW + 10.0)
        assert governor.get_circuit_breaker_status()["a"].reason == "budget_exhausted"
        assert governor.assign("probe", [SIP], now=NOW + 10_000.0).swarm_id is None
        assert governor.get_circuit_breaker_status()["a"].state == "open"


class TestResetHistory:
    def test_every_reset_names_its_approver_in_the_history(self) -> None:
        """A reset is kept in the reset history with its approver, the previous reason and the times."""
        from schemas.replies import ResetRecord

        governor = governed(profile("a", budget=1.0))
        governor.track_cost("a", "op", 2.0, now=NOW)
        governor.reset_circuit_breaker("a", 30.0, approved_by="alice", now=NOW + 5, trace_id="r1")
        assert governor.get_reset_history() == [
            ResetRecord(
                swarm_id="a",
                new_budget=30.0,
                approved_by="alice",
                previous_reason="budget_exhausted",
                tripped_at=NOW,
                reset_at=NOW + 5,
                trace_id="r1",
            )
        ]
        copy = Governor.from_state(governor.export_state())
        assert copy.get_reset_history() == governor.get_reset_history()
