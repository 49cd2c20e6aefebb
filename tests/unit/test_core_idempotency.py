"""Retries are safe: a task's assignment is keyed by its `task_id`, every other changing request by its `event_id`,
in bounded windows that one client cannot flush; and reservations are bounded per swarm and in all."""

from __future__ import annotations

import pytest

from schemas.events import WitnessRecord
from schemas.policy import ResourcePolicy
from tests.factories import NOW, governed, profile
from worker.core.governor import Governor
from worker.errors import AlreadyTripped, HoldLimit

SIP = "integration:sip"


def operations(core: Governor) -> list[str]:
    return [e.operation for e in core.take_events() if isinstance(e, WitnessRecord)]


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
        assert operations(core) == []

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

    def test_assignments_survive_a_snapshot(self) -> None:
        """A task assigned before a snapshot is a duplicate on the restored core."""
        core = governed(profile("a", budget=10.0), profile("b", budget=10.0))
        core.assign("t1", [SIP], now=NOW)
        restored = Governor.from_state(core.export_state())
        assert (restored.assign("t1", [SIP], now=NOW).duplicate, restored.get_assignment_history()[-1].task_id) == (
            True,
            "t1",
        )


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
