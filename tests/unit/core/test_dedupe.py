"""Retries are safe: a task's assignment is keyed by its `task_id`, every other changing request by its
`event_id`, in bounded windows that one client cannot flush."""

from __future__ import annotations

import pytest

from schemas.policy import ResourcePolicy
from schemas.replies import CostReply, FailureReply, ResetReply
from tests.factories import NOW, SIP, governed, profile
from tests.unit.core.helpers import recorded
from worker.errors import AlreadyTripped, InvalidCost, NotTripped


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


class TestRepeatedAssign:
    def test_a_repeated_assign_gets_the_same_assignment_and_changes_nothing(self) -> None:
        """The same task_id again: the same swarm and hold, marked duplicate; no second hold, history entry,
        witness record or half-open probe."""
        core = governed(profile("a", budget=10.0), profile("b", budget=10.0, cost_per_hour=3.0))
        first = core.assign("t1", [SIP], now=NOW, estimated_cost=4.0)
        core.take_events()
        again = core.assign("t1", [SIP, SIP], now=NOW + 1, estimated_cost=9.0, max_swarms=2)
        assert (again.swarm_id, again.assignments, again.duplicate) == ("a", first.assignments, True)
        assert [(h.task_id, h.swarm_id, h.amount) for h in core.status(now=NOW + 1).holds] == [("t1", "a", 4.0)]
        assert [r.task_id for r in core.get_assignment_history()] == ["t1"]
        assert recorded(core) == []

    def test_a_repeat_takes_no_second_probe_of_a_half_open_swarm(self) -> None:
        """A half-open swarm with one probe: the task that took it, asked again, gets it again; another task does
        not (the probe is spent once)."""
        policy = ResourcePolicy(breaker_cooldown_s=10.0, half_open_probes=1, max_cost_per_task=100.0)
        core = governed(profile("a", budget=10.0), policy=policy)
        core.trip_circuit_breaker("a", "repeated_failures", now=NOW, requested_by="op")
        assert core.assign("probe", [SIP], now=NOW + 11).swarm_id == "a"
        assert core.assign("probe", [SIP], now=NOW + 12).swarm_id == "a"
        assert core.assign("other", [SIP], now=NOW + 12).swarm_id is None

    def test_reassign_releases_the_earlier_hold_first(self) -> None:
        """With `reassign`, the task's own earlier hold no longer counts against the swarm: a budget of 10 with a
        hold of 6 takes the same task again at 8, and only the new hold stays."""
        core = governed(profile("a", budget=10.0))
        core.assign("t1", [SIP], now=NOW, estimated_cost=6.0)
        moved = core.assign("t1", [SIP], now=NOW + 1, estimated_cost=8.0, reassign=True)
        assert (moved.swarm_id, moved.duplicate is True) == ("a", False)
        assert [(h.task_id, h.amount) for h in core.status(now=NOW + 1).holds] == [("t1", 8.0)]
        assert [r.task_id for r in core.get_assignment_history()] == ["t1", "t1"]

    def test_after_the_window_a_task_is_assigned_afresh(self) -> None:
        """Past `assign_window_s`, the same task_id is a new assignment."""
        core = governed(profile("a", budget=10.0), policy=ResourcePolicy(assign_window_s=60.0))
        core.assign("t1", [SIP], now=NOW)
        assert core.assign("t1", [SIP], now=NOW + 59).duplicate is True
        assert core.assign("t1", [SIP], now=NOW + 61).duplicate is not True

    def test_a_task_with_no_qualified_swarm_is_not_remembered(self) -> None:
        """A refused assign leaves nothing behind: once a swarm qualifies, the same task_id is assigned."""
        core = governed(profile("a", budget=10.0, cost_per_hour=50.0))
        assert core.assign("t1", [SIP], now=NOW).swarm_id is None
        core.register_swarm(profile("b", budget=10.0), now=NOW)
        assert core.assign("t1", [SIP], now=NOW).swarm_id == "b"


class TestDedupeWindows:
    def test_a_flood_of_cost_ids_cannot_push_a_reset_id_out(self) -> None:
        """With a window of 100 ids per kind, 300 fresh zero-cost ids push 200 cost ids out (counted) and leave the
        reset's id alone: its retry is still a duplicate."""
        core = governed(profile("a", budget=10.0), dedupe_limit=100)
        core.track_cost("a", "op", 20.0, now=NOW)
        core.reset_circuit_breaker("a", 10.0, approved_by="op", now=NOW, event_id="r1")
        for i in range(300):
            core.track_cost("a", "op", 0.0, now=NOW, event_id=f"flood{i}")
        retry = core.reset_circuit_breaker("a", 10.0, approved_by="op", now=NOW, event_id="r1")
        assert (retry.duplicate, core.evicted) == (True, {"cost": 200})

    def test_trip_register_and_deregister_retries_are_duplicates(self) -> None:
        """A retried trip, register or deregister with its event_id is answered `duplicate` and changes nothing;
        without one, the retry is refused as a conflict."""
        core = governed(profile("a", budget=10.0))
        core.trip_circuit_breaker("a", "manual_override", now=NOW, requested_by="op", event_id="t1")
        again = core.trip_circuit_breaker("a", "manual_override", now=NOW, requested_by="op", event_id="t1")
        assert again.duplicate is True
        with pytest.raises(AlreadyTripped):
            core.trip_circuit_breaker("a", "manual_override", now=NOW, requested_by="op")
        assert core.register_swarm(profile("b", budget=10.0), now=NOW, event_id="g1").duplicate is False
        assert core.register_swarm(profile("b", budget=10.0), now=NOW, event_id="g1").duplicate is True
        assert core.deregister_swarm("b", now=NOW, event_id="d1").duplicate is False
        assert core.deregister_swarm("b", now=NOW, event_id="d1").duplicate is True
        assert len(core) == 1
