"""Budget reservations, half-open recovery, soft-budget warnings, explanations, snapshots, the reset history."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import BreakerClosed, BreakerHalfOpen, BreakerTripped, Escalation, WitnessRecord
from schemas.policy import ResourcePolicy
from schemas.replies import HoldStatus, SwarmExplanation
from tests.factories import NOW, governed, profile
from worker.core.governor import Governor, to_micros

SIP = "integration:sip"
PY = "code-analysis:python"


def operations(governor: Governor) -> list[str]:
    return [e.operation if isinstance(e, WitnessRecord) else type(e).__name__ for e in governor.take_events()]


class TestReservations:
    def test_hold_created_with_the_assignment(self) -> None:
        """An assign with an estimated cost holds it on the chosen swarm and says so in the reply and status."""
        governor = governed(profile("a", budget=10.0))
        reply = governor.assign("t1", [SIP], now=NOW, estimated_cost=4.0)
        assert (reply.swarm_id, reply.assignments[0].reserved) == ("a", 4.0)
        status = governor.status(now=NOW)
        assert status.holds == [HoldStatus(task_id="t1", swarm_id="a", amount=4.0, expires_at=NOW + 900.0)]
        assert status.swarms[0].held == 4.0
        assert status.budgets == {"a": 10.0}

    def test_swarm_qualifies_only_if_available_budget_covers_estimate(self) -> None:
        """Available budget is remaining minus open holds: a second hold that does not fit goes elsewhere."""
        governor = governed(profile("a", budget=10.0), profile("b", budget=10.0, cost_per_hour=4.0))
        assert governor.assign("t1", [SIP], now=NOW, estimated_cost=7.0).swarm_id == "a"
        assert governor.assign("t2", [SIP], now=NOW, estimated_cost=7.0).swarm_id == "b"
        reply = governor.assign("t3", [SIP], now=NOW, estimated_cost=7.0, explain=True)
        assert reply.swarm_id is None
        assert reply.rejected == {"a": "available_budget_below_estimate", "b": "available_budget_below_estimate"}
        assert governor.assign("t4", [SIP], now=NOW, estimated_cost=3.0).swarm_id == "a"

    def test_cost_with_task_id_settles_the_hold(self) -> None:
        """The actual cost replaces the estimate: the hold is released and the cost deducted."""
        governor = governed(profile("a", budget=10.0))
        governor.assign("t1", [SIP], now=NOW, estimated_cost=6.0)
        governor.take_events()
        reply = governor.track_cost("a", "op", 2.5, now=NOW + 1, task_id="t1")
        assert reply.remaining == 7.5
        assert governor.status(now=NOW + 1).holds == []
        assert governor.assign("t2", [SIP], now=NOW + 1, estimated_cost=7.5).swarm_id == "a"
        assert operations(governor)[:2] == ["cost_tracked", "reservation_released"]

    def test_unsettled_hold_released_after_ttl(self) -> None:
        """A hold no cost settles is released at its TTL, and a witness record says so."""
        governor = governed(profile("a", budget=10.0), policy=ResourcePolicy(reservation_ttl_s=60.0))
        governor.assign("t1", [SIP], now=NOW, estimated_cost=9.0)
        governor.take_events()
        assert governor.status(now=NOW + 60.0).holds == []  # not open any more, even before a sweep
        assert governor.assign("t2", [SIP], now=NOW + 60.0, estimated_cost=9.0).swarm_id == "a"
        events = governor.take_events()
        released = [e for e in events if isinstance(e, WitnessRecord) and e.operation == "reservation_released"]
        assert [r.params for r in released] == [{"task_id": "t1", "swarm_id": "a", "held": 9.0, "why": "expired"}]

    @settings(max_examples=1000, deadline=None)
    @given(
        st.lists(
            st.one_of(
                st.tuples(st.just("assign"), st.integers(0, 5), st.integers(0, 900)),
                st.tuples(st.just("reassign"), st.integers(0, 5), st.integers(0, 900)),
                st.tuples(st.just("cost"), st.integers(0, 5), st.integers(0, 900)),
                st.tuples(st.just("clock"), st.integers(1, 400), st.just(0)),
            ),
            max_size=40,
        )
    )
    def test_holds_never_exceed_budget_nor_outlive_ttl(self, steps: list[tuple[str, int, int]]) -> None:
        """Any interleaving of assigns, reassigns, costs and clock steps: holds fit the budget at admission and
        expire on time (a repeated assign of a task admits nothing: it is answered with the earlier assignment)."""
        governor = governed(
            profile("a", budget=20.0),
            profile("b", budget=15.0, cost_per_hour=3.0),
            policy=ResourcePolicy(reservation_ttl_s=300.0),
        )
        now = NOW
        for op, task, amount in steps:
            if op == "clock":
                now += task
            elif op in ("assign", "reassign"):
                reply = governor.assign(
                    f"t{task}", [SIP], now=now, estimated_cost=amount / 100, reassign=op == "reassign"
                )
                admitted = reply.duplicate is not True
                for a in reply.assignments if amount and admitted else []:  # a zero estimate holds nothing
                    held = sum(to_micros(h.amount) for h in governor.status(now=now).holds if h.swarm_id == a.swarm_id)
                    assert held <= to_micros(governor.get_budget_report()[a.swarm_id])
            else:
                governor.track_cost("a" if task % 2 else "b", "op", amount / 100, now=now, task_id=f"t{task}")
            for hold in governor.status(now=now).holds:
                assert hold.expires_at > now
                assert hold.expires_at - 300.0 <= now


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


class TestSoftBudget:
    def test_medium_escalation_once_per_allocation(self) -> None:
        """Falling below the soft ratio raises one MEDIUM escalation; a reset re-arms it."""
        governor = governed(profile("a", budget=10.0))
        governor.track_cost("a", "op", 8.5, now=NOW)
        escalations = [e for e in governor.take_events() if isinstance(e, Escalation)]
        assert [(e.severity, e.context.type, e.reason) for e in escalations] == [
            ("MEDIUM", "soft_budget", "Budget running low - 1.50 of 10.00 USD left")
        ]
        governor.track_cost("a", "op", 0.5, now=NOW)
        assert [e for e in governor.take_events() if isinstance(e, Escalation)] == []
        governor.track_cost("a", "op", 5.0, now=NOW)
        governor.reset_circuit_breaker("a", 20.0, approved_by="alice", now=NOW)
        governor.take_events()
        governor.track_cost("a", "op", 17.0, now=NOW)
        assert [e.severity for e in governor.take_events() if isinstance(e, Escalation)] == ["MEDIUM"]


class TestExplain:
    def test_every_swarm_with_coverage_score_and_filter(self) -> None:
        """Explain lists every registered swarm, in order, with coverage, score and the first failing filter."""
        governor = governed(profile("a", capabilities=[SIP, PY]), profile("b", capabilities=[PY], cost_per_hour=4.0))
        reply = governor.assign("t", [SIP, PY], now=NOW, explain=True)
        assert reply.explanation == [
            SwarmExplanation(swarm_id="a", capability_match=1.0, score=0.45, rejected_by=None),
            SwarmExplanation(
                swarm_id="b", capability_match=0.5, score=0.1125, rejected_by="capability_match_below_threshold"
            ),
        ]


class TestSnapshots:
    def test_state_round_trips(self) -> None:
        """Export then import gives the same status, holds, breakers and dedupe memory."""
        governor = governed(profile("a", budget=10.0), profile("b"), policy=ResourcePolicy(breaker_cooldown_s=60.0))
        governor.assign("t1", [SIP], now=NOW, estimated_cost=3.0)
        for i in range(3):
            governor.record_failure("b", now=NOW + i)
        governor.track_cost("a", "op", 1.0, now=NOW, event_id="e1")
        governor.deregister_swarm("b", now=NOW + 5)
        state = governor.export_state(seq=42)
        copy = Governor.from_state(msgspec.msgpack.decode(msgspec.msgpack.encode(state), type=type(state)))
        assert copy.export_state(seq=42) == state
        assert msgspec.json.encode(copy.status(now=NOW + 6)) == msgspec.json.encode(governor.status(now=NOW + 6))
        assert copy.track_cost("a", "op", 1.0, now=NOW + 7, event_id="e1").duplicate is True


class TestConfiguredMaximum:
    def test_amounts_above_the_configured_maximum_are_refused(self) -> None:
        """Costs, estimates and budgets above `max_amount_usd` are refused and change nothing."""
        from worker.errors import InvalidBudget, InvalidCost

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
