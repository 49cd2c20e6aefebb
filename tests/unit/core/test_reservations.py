"""Reservations: an assign's estimated cost held on the chosen swarm until a cost settles it or its TTL ends,
bounded per swarm and in all."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import WitnessRecord
from schemas.policy import ResourcePolicy
from schemas.replies import HoldStatus
from tests.factories import NOW, SIP, governed, profile
from tests.unit.core.helpers import recorded
from worker.core.money import to_micros
from worker.core.reservations import COMPACT_SLACK
from worker.errors import HoldLimit


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
        assert recorded(governor)[:2] == ["cost_tracked", "reservation_released"]

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

    def test_settled_holds_behind_a_long_one_leave_no_trail(self) -> None:
        """One hold waits for its TTL while thousands are held and settled after it: the expiry heap keeps at most
        twice the open holds plus a slack, and the waiting hold is still released at its time."""
        governor = governed(profile("a", budget=1e6), policy=ResourcePolicy(reservation_ttl_s=600.0))
        governor.assign("long", [SIP], now=NOW, estimated_cost=1.0)
        for i in range(3 * COMPACT_SLACK):
            governor.assign(f"t{i}", [SIP], now=NOW + 1, estimated_cost=1.0)
            governor.track_cost("a", "op", 0.5, now=NOW + 1, task_id=f"t{i}")
        governor.take_events()
        assert len(governor.reservations) == 1
        assert len(governor.reservations._expiry) <= 2 * len(governor.reservations) + COMPACT_SLACK
        governor.assign("after", [SIP], now=NOW + 600.0)
        released = [
            e.params["task_id"]
            for e in governor.take_events()
            if isinstance(e, WitnessRecord) and e.operation == "reservation_released"
        ]
        assert released == ["long"]


class TestHoldLimits:
    def test_holds_per_swarm_are_bounded(self) -> None:
        """A swarm with two open holds (the limit) refuses a third, saying why; a settled hold frees a place."""
        core = governed(profile("a", budget=100.0), policy=ResourcePolicy(max_holds_per_swarm=2))
        core.assign("t1", [SIP], now=NOW, estimated_cost=1.0)
        core.assign("t2", [SIP], now=NOW, estimated_cost=1.0)
        with pytest.raises(HoldLimit) as refused:
            core.assign("t3", [SIP], now=NOW, estimated_cost=1.0)
        assert refused.value.message == (
            "swarm 'a' has 2 open reservations, the most the policy allows is 2: settle or release some first"
        )
        core.track_cost("a", "op", 0.5, now=NOW, task_id="t1")
        assert core.assign("t3", [SIP], now=NOW, estimated_cost=1.0).swarm_id == "a"

    def test_holds_in_all_are_bounded(self) -> None:
        """With at most three holds in all, a fourth on another swarm is refused; an assign without an estimate
        still works."""
        core = governed(profile("a", budget=100.0), profile("b", budget=100.0), policy=ResourcePolicy(max_holds=3))
        for i in range(3):
            core.assign(f"t{i}", [SIP], now=NOW, estimated_cost=1.0)
        with pytest.raises(HoldLimit):
            core.assign("t3", [SIP], now=NOW, estimated_cost=1.0)
        assert core.assign("t4", [SIP], now=NOW).swarm_id == "a"
