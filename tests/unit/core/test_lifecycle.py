"""Task lifecycle in the core: completions (outcome, final cost, history), expiries, concurrency limits, the
`spread` strategy, `min_budget_per_task`, live profile updates, and open tasks across a snapshot and restore."""

from __future__ import annotations

import gc
from typing import Any

import msgspec
import pytest

from schemas.events import SwarmUpdated, WitnessRecord
from schemas.policy import ResourcePolicy
from schemas.profiles import SwarmProfile
from tests.factories import NOW, SIP, profile
from tests.unit.core.helpers import recorded
from worker.core.governor import Governor
from worker.core.tasks import COMPACT_SLACK
from worker.errors import InvalidRequest, OpenTaskLimit, TaskClosed, UnknownCapability, UnknownSwarm, UnknownTask

PY = "code-analysis:python"


def core_of(*profiles: SwarmProfile, **policy: Any) -> Governor:
    core = Governor(ResourcePolicy(**policy))
    for p in profiles:
        core.register_swarm(p, now=NOW)
    core.take_events()
    return core


def limited(swarm_id: str, limit: int | None, **fields: Any) -> SwarmProfile:
    return msgspec.structs.replace(profile(swarm_id, **fields), max_concurrent_tasks=limit)


def witnessed(core: Governor, operation: str) -> list[dict[str, Any]]:
    return [e.params for e in core.take_events() if isinstance(e, WitnessRecord) and e.operation == operation]


class TestCapacity:
    def test_a_swarm_at_its_limit_is_passed_over_until_a_task_completes(self) -> None:
        core = core_of(limited("a", 2, reputation_score=1.0), profile("b", reputation_score=0.5))
        assert [core.assign(f"t{i}", [SIP], now=NOW).swarm_id for i in range(3)] == ["a", "a", "b"]
        reply = core.assign("t3", [SIP], now=NOW, explain=True)
        assert reply.rejected == {"a": "at_capacity"}
        assert reply.explanation is not msgspec.UNSET
        assert [(e.swarm_id, e.in_flight) for e in reply.explanation] == [("a", 2), ("b", 1)]  # before this task
        core.complete_task("t0", "success", now=NOW + 1)
        assert core.assign("t4", [SIP], now=NOW + 2).swarm_id == "a"
        assert {s.swarm_id: (s.in_flight, s.max_concurrent_tasks) for s in core.status(now=NOW).swarms} == {
            "a": (2, 2),
            "b": (2, None),
        }

    def test_open_tasks_are_bounded(self) -> None:
        core = core_of(profile("a"), max_open_tasks=2)
        core.assign("t1", [SIP], now=NOW)
        core.assign("t2", [SIP], now=NOW)
        before = core.export_state()
        with pytest.raises(OpenTaskLimit, match="2 tasks are open"):
            core.assign("t3", [SIP], now=NOW)
        assert core.export_state() == before


class TestComplete:
    def test_a_completion_releases_settles_and_records(self) -> None:
        core = core_of(profile("a", budget=10.0))
        core.assign("t", [SIP], now=NOW, estimated_cost=3.0)
        core.track_cost("a", "step", 1.0, now=NOW + 5, task_id="t")
        core.take_events()
        reply = core.complete_task("t", "success", now=NOW + 60, cost=0.5, event_id="done-1")
        assert (reply.swarm_id, reply.outcome, reply.duration_s, reply.total_cost) == ("a", "success", 60.0, 1.5)
        assert core.get_budget_report() == {"a": 8.5}
        assert core.holds(NOW + 60) == []
        [record] = core.get_assignment_history()
        assert (record.outcome, record.duration_s, record.total_cost) == ("success", 60.0, 1.5)
        assert recorded(core)[-1] == "task_completed"
        again = core.complete_task("t", "success", now=NOW + 61, cost=0.5, event_id="done-1")
        assert again.duplicate and core.get_budget_report() == {"a": 8.5}
        with pytest.raises(TaskClosed):
            core.complete_task("t", "success", now=NOW + 62)
        with pytest.raises(UnknownTask):
            core.complete_task("never", "success", now=NOW + 62)

    def test_a_failure_counts_toward_the_breaker(self) -> None:
        core = core_of(profile("a"), circuit_breaker_failure_threshold=2)
        for i in range(2):
            core.assign(f"t{i}", [SIP], now=NOW + i)
            reply = core.complete_task(f"t{i}", "failure", now=NOW + i, error="boom")
        assert reply.tripped and core.get_circuit_breaker_status()["a"].reason == "repeated_failures"

    def test_a_success_closes_a_half_open_probe(self) -> None:
        core = core_of(profile("a"), breaker_cooldown_s=10.0)
        core.trip_circuit_breaker("a", "performance_degradation", now=NOW, requested_by="ops")
        assert core.assign("probe", [SIP], now=NOW + 11).swarm_id == "a"  # half-open: the probe
        reply = core.complete_task("probe", "success", now=NOW + 12)
        assert reply.closed and core.get_circuit_breaker_status() == {}

    def test_the_outcome_is_of_the_named_swarm(self) -> None:
        core = core_of(profile("a"), profile("b"))
        core.assign("t", [SIP], now=NOW, max_swarms=2)
        reply = core.complete_task("t", "failure", now=NOW, swarm_id="b")
        assert reply.swarm_id == "b"
        assert [s.failures_in_window for s in core.status(now=NOW).swarms] == [0, 1]
        assert [s.in_flight for s in core.status(now=NOW).swarms] == [0, 0]

    @pytest.mark.parametrize(
        ("call", "error"),
        [
            ({"swarm_id": "c"}, InvalidRequest),
            ({"cost": -1.0}, InvalidRequest),
            ({"outcome": "maybe"}, InvalidRequest),
        ],
    )
    def test_a_bad_completion_changes_nothing(self, call: dict[str, Any], error: type[Exception]) -> None:
        core = core_of(profile("a"), profile("c"))
        core.assign("t", [SIP], now=NOW)
        core.take_events()
        before = core.export_state()
        with pytest.raises(error):
            core.complete_task("t", call.pop("outcome", "success"), now=NOW, **call)
        assert core.export_state() == before


class TestExpiry:
    def test_an_unfinished_task_expires_and_frees_its_slot(self) -> None:
        core = core_of(limited("a", 1), task_timeout_s=30.0)
        core.assign("t", [SIP], now=NOW, estimated_cost=1.0)
        assert core.assign("u", [SIP], now=NOW + 29).swarm_id is None
        assert core.next_due() == NOW + 30
        reply = core.tick(now=NOW + 30)
        assert reply.expired == ["t"]
        [params] = witnessed(core, "task_expired")
        assert (params["task_id"], params["swarm_ids"]) == ("t", ["a"])
        assert core.assign("v", [SIP], now=NOW + 31).swarm_id == "a"
        assert core.get_assignment_history()[0].outcome == "expired"
        with pytest.raises(TaskClosed):
            core.complete_task("t", "success", now=NOW + 32)

    def test_expire_as_failure_counts_a_failure(self) -> None:
        core = core_of(profile("a"), task_timeout_s=30.0, expire_as="failure")
        core.assign("t", [SIP], now=NOW)
        core.track_cost("a", "op", 0.0, now=NOW + 31)  # any command sweeps what expired
        assert core.status(now=NOW + 31).swarms[0].failures_in_window == 1

    def test_closed_tasks_behind_a_long_open_one_leave_no_trail(self) -> None:
        """A task stays open for hours while thousands are assigned and completed after it: the expiry heap keeps
        at most twice the open tasks plus a slack (it was the entry of every task closed after the first, for as
        long as that one's timeout), and the open task still expires on time."""
        core = core_of(profile("a"), task_timeout_s=3600.0)
        core.assign("long", [SIP], now=NOW)
        for i in range(3 * COMPACT_SLACK):
            core.assign(f"t{i}", [SIP], now=NOW + 1)
            core.complete_task(f"t{i}", "success", now=NOW + 1)
        core.take_events()
        assert len(core.tasks) == 1
        assert len(core.tasks._expiry) <= 2 * len(core.tasks) + COMPACT_SLACK
        assert core.next_due() == NOW + 3600.0
        assert core.tick(now=NOW + 3600.0).expired == ["long"]

    def test_open_tasks_are_not_tracked_by_the_cyclic_collector(self) -> None:
        """Up to max_open_tasks live for a task's whole run: they hold no containers that could form a cycle, so
        a full collection (which stalls the actor) need not scan them."""
        core = core_of(profile("a"))
        core.assign("t", [SIP], now=NOW)
        assert not gc.is_tracked(core.tasks.open["t"])


class TestSpread:
    def test_equal_swarms_share_tasks_in_registration_order(self) -> None:
        core = core_of(profile("a"), profile("b"), profile("c"), strategy="spread")
        assert [core.assign(f"t{i}", [SIP], now=NOW).swarm_id for i in range(7)] == list("abcabca")
        reply = core.assign("x", [SIP], now=NOW, explain=True)
        assert reply.explanation is not msgspec.UNSET
        assert [(e.swarm_id, e.in_flight, e.load_factor) for e in reply.explanation] == [
            ("a", 3, 0.25),
            ("b", 2, 1 / 3),
            ("c", 2, 1 / 3),
        ]

    def test_best_keeps_every_task_on_the_best_value(self) -> None:
        core = core_of(profile("a"), profile("b"))
        assert {core.assign(f"t{i}", [SIP], now=NOW).swarm_id for i in range(5)} == {"a"}

    def test_a_better_swarm_takes_more_under_spread(self) -> None:
        core = core_of(profile("a", reputation_score=0.9), profile("b", reputation_score=0.3), strategy="spread")
        picks = [core.assign(f"t{i}", [SIP], now=NOW).swarm_id for i in range(8)]
        assert picks.count("a") == 6 and picks.count("b") == 2  # 0.45/(1+n) against 0.15/(1+m)

    def test_a_busy_swarm_tied_with_a_cheaper_value_loses_to_the_earlier_registered(self) -> None:
        """b (0.9 / 2.0 = 0.45) was registered first; a (0.9 / 1.0) with one task in flight also scores 0.45. The
        value-ordered walk meets a first: it must go on to b, whose value equals a's discounted score, and give the
        tie to the earlier registered."""
        core = core_of(
            profile("b", reputation_score=0.9, cost_per_hour=2.0),
            profile("a", reputation_score=0.9, cost_per_hour=1.0),
            strategy="spread",
        )
        assert core.assign("t0", [SIP], now=NOW).swarm_id == "a"
        reply = core.assign("t1", [SIP], now=NOW)
        assert (reply.swarm_id, reply.assignments[0].score) == ("b", 0.45)

    def test_min_budget_per_task(self) -> None:
        core = core_of(profile("a", budget=0.5, reputation_score=1.0), profile("b"), min_budget_per_task=1.0)
        reply = core.assign("t", [SIP], now=NOW, explain=True)
        assert (reply.swarm_id, reply.rejected) == ("b", {"a": "budget_below_task_minimum"})


class TestUpdate:
    def test_an_update_keeps_budget_breaker_and_order(self) -> None:
        core = core_of(profile("a", budget=5.0), profile("b", budget=7.0))
        core.track_cost("a", "op", 1.0, now=NOW)
        core.take_events()
        reply = core.update_swarm("b", requested_by="chassis", now=NOW, reputation_score=0.9, event_id="u-1")
        assert reply.changed == []  # the same value: nothing changed
        reply = core.update_swarm(
            "a", requested_by="ops", now=NOW, cost_per_hour=2.0, capabilities=[SIP, PY], model="sonnet"
        )
        assert reply.changed == ["capabilities", "model"]
        [event] = [e for e in core.take_events() if isinstance(e, SwarmUpdated)]
        assert event.changed == {"capabilities": [SIP, PY], "model": "sonnet"}
        assert core.get_budget_report() == {"a": 4.0, "b": 7.0}
        assert core.assign("t", [SIP], now=NOW).swarm_id == "a"  # equal scores: the first registered still
        assert core.assign("p", [PY], now=NOW).swarm_id == "a"  # its new capability is indexed
        core.update_swarm("a", requested_by="chassis", now=NOW, reputation_score=0.1)
        assert core.assign("t2", [SIP], now=NOW).swarm_id == "b"
        again = core.update_swarm("b", requested_by="chassis", now=NOW, reputation_score=0.1, event_id="u-1")
        assert again.duplicate and core.get_swarm_profile("b").reputation_score == 0.9

    def test_a_limit_set_by_update_applies_at_once(self) -> None:
        core = core_of(profile("a"), profile("b", reputation_score=0.1))
        core.assign("t1", [SIP], now=NOW)
        core.update_swarm("a", requested_by="ops", now=NOW, max_concurrent_tasks=1)
        assert core.assign("t2", [SIP], now=NOW).swarm_id == "b"

    @pytest.mark.parametrize(
        ("fields", "error"),
        [
            ({"swarm_id": "nope", "reputation_score": 0.5}, UnknownSwarm),
            ({"capabilities": ["no:such"]}, UnknownCapability),
            ({"reputation_score": 1.5}, InvalidRequest),
            ({"cost_per_hour": 0.0}, InvalidRequest),
            ({"budget_group": "nope"}, Exception),
        ],
    )
    def test_a_bad_update_changes_nothing(self, fields: dict[str, Any], error: type[Exception]) -> None:
        core = core_of(profile("a"))
        before = core.export_state()
        with pytest.raises(error):
            core.update_swarm(fields.pop("swarm_id", "a"), requested_by="ops", now=NOW, **fields)
        assert core.export_state() == before
        assert core.take_events() == []


class TestState:
    def test_open_tasks_survive_a_restore(self) -> None:
        core = core_of(limited("a", 2), profile("b", reputation_score=0.1), task_timeout_s=60.0)
        core.assign("t1", [SIP], now=NOW)
        core.assign("t2", [SIP], now=NOW + 1)
        core.track_cost("a", "op", 1.0, now=NOW + 2, task_id="t1")
        twin = Governor.from_state(
            msgspec.json.decode(msgspec.json.encode(core.export_state()), type=type(core.export_state()))
        )
        assert twin.export_state() == core.export_state()
        assert twin.assign("t3", [SIP], now=NOW + 3).swarm_id == "b"  # a is at its limit there too
        assert twin.complete_task("t1", "success", now=NOW + 4).total_cost == 1.0
        assert twin.tick(now=NOW + 61).expired == ["t2"]
