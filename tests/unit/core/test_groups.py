"""Budget groups in the core: chains of groups, exhaustion and what it blocks, refills once per boundary (fixed and
calendar periods), thresholds once per period, top-ups, burn rate and forecast, per-task caps, and all of it
across a snapshot and restore."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest

from schemas.budgets import BudgetGroup
from schemas.events import BudgetExhausted, BudgetForecast, BudgetRefilled, BudgetThreshold, Escalation
from schemas.policy import ResourcePolicy
from tests.factories import NOW, SIP, profile
from tests.unit.core.helpers import recorded
from worker.core.governor import Governor
from worker.errors import InvalidRequest, UnknownGroup, UnknownSwarm

#: NOW lies in the 30-second period [NOW - 20, NOW + 10).
BOUNDARY = NOW + 10


def group(gid: str, limit: float, parent: str | None = None, **fields: Any) -> BudgetGroup:
    return BudgetGroup(id=gid, parent=parent, limit=limit, **fields)


def core_with(
    groups: list[BudgetGroup], *swarms: tuple[str, str | None, float], policy: ResourcePolicy | None = None
) -> Governor:
    """A core with these groups and swarms (id, group, budget), registered at NOW, events taken."""
    core = Governor(policy)
    core.configure(core.policy, [], budgets=groups)
    for swarm_id, gid, budget in swarms:
        core.register_swarm(profile(swarm_id, group=gid, budget=budget), now=NOW)
    core.take_events()
    return core


def org_tree(period: str | None = "30s") -> Governor:
    """org (100) > team (50) > project (20); swarm p in project, t in team, o in org, free in none."""
    return core_with(
        [
            group("org", 100.0, period=period),
            group("team", 50.0, "org", period=period),
            group("project", 20.0, "team", period=period),
        ],
        ("p", "project", 1000.0),
        ("t", "team", 1000.0),
        ("o", "org", 1000.0),
        ("free", None, 1000.0),
    )


def groups_of(core: Governor, now: float = NOW) -> dict[str, tuple[float, float, bool]]:
    """Each group's (spent, remaining, blocked) as status reports it."""
    return {g.id: (g.spent, g.remaining, g.blocked) for g in core.groups(now)}


def of_type(events: list[Any], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


class TestChains:
    def test_a_cost_counts_against_its_group_and_every_ancestor(self) -> None:
        core = org_tree()
        core.track_cost("p", "op", 3.0, now=NOW)
        core.track_cost("t", "op", 2.0, now=NOW)
        core.track_cost("free", "op", 7.0, now=NOW)
        assert groups_of(core) == {
            "org": (5.0, 95.0, False),
            "team": (5.0, 45.0, False),
            "project": (3.0, 17.0, False),
        }
        assert core.get_budget_report()["p"] == 997.0  # the swarm's own budget counts too (the seed's rule)

    def test_an_exhausted_group_blocks_its_subtree_only(self) -> None:
        core = org_tree()
        core.track_cost("t", "op", 50.0, now=NOW)  # team reaches 0: team and project blocked, org not
        assert groups_of(core)["team"] == (50.0, 0.0, True)
        assert groups_of(core)["project"] == (0.0, 20.0, True)
        assert groups_of(core)["org"] == (50.0, 50.0, False)
        reply = core.assign("task", [SIP], now=NOW, max_swarms=4, explain=True)
        assert [a.swarm_id for a in reply.assignments] == ["o", "free"]
        assert reply.rejected == {"p": "group_budget_exhausted", "t": "group_budget_exhausted"}
        assert reply.explanation is not msgspec.UNSET
        assert {e.swarm_id: e.group for e in reply.explanation if e.group} == {"p": "team", "t": "team"}

    def test_exhaustion_is_published_once_with_an_escalation(self) -> None:
        core = org_tree()
        core.track_cost("p", "op", 15.0, now=NOW, trace_id="tr-1")
        core.take_events()
        core.track_cost("p", "op", 6.0, now=NOW + 1, trace_id="tr-2")  # project: 21 of 20
        events = core.take_events()
        assert of_type(events, BudgetExhausted) == [
            BudgetExhausted(
                group="project",
                period_start=NOW - 20,
                period_end=BOUNDARY,
                limit=20.0,
                spent=21.0,
                trace_id="tr-2",
            )
        ]
        escalations = of_type(events, Escalation)
        assert [(e.group, e.swarm_id, e.severity, e.context.reason) for e in escalations] == [
            ("project", "", "HIGH", "group_budget_exhausted")
        ]
        core.track_cost("p", "op", 1.0, now=NOW + 2)  # costs in flight are still counted, nothing published again
        assert of_type(core.take_events(), BudgetExhausted) == []
        assert groups_of(core)["project"] == (22.0, -2.0, True)

    def test_a_swarm_in_an_unknown_group_is_refused_and_nothing_changes(self) -> None:
        core = org_tree()
        before = core.export_state()
        with pytest.raises(UnknownGroup, match="no budget group 'nope'"):
            core.register_swarm(profile("x", group="nope"), now=NOW)
        assert core.export_state() == before

    def test_deregistering_leaves_the_group(self) -> None:
        core = org_tree()
        core.deregister_swarm("p", now=NOW)
        assert {g.id: g.swarms for g in core.groups(NOW)} == {"org": 1, "team": 1, "project": 0}


class TestValidation:
    @pytest.mark.parametrize(
        ("groups", "message"),
        [
            ([group("a", 1.0), group("a", 2.0)], "listed twice"),
            ([group("a", 1.0, "b")], "names parent 'b', which is not listed"),
            ([group("a", 1.0, "b"), group("b", 1.0, "a")], "its own ancestor"),
            ([group(f"g{i}", 1.0, f"g{i - 1}" if i else None) for i in range(9)], "more than 8 levels deep"),
            ([group("a", 1.0, period="day", timezone="Mars/Olympus")], "not an IANA time zone"),
        ],
    )
    def test_a_bad_budgets_list_is_refused_and_changes_nothing(self, groups: list[BudgetGroup], message: str) -> None:
        core = org_tree()
        before = core.export_state()
        with pytest.raises(InvalidRequest, match=message):
            core.configure(core.policy, [], budgets=groups)
        assert core.export_state() == before

    def test_a_group_with_swarms_cannot_be_removed(self) -> None:
        core = org_tree()
        with pytest.raises(InvalidRequest, match="'project' still has swarms"):
            core.configure(core.policy, [], budgets=[group("org", 100.0), group("team", 50.0, "org")])

    def test_a_reconfiguration_keeps_what_was_spent(self) -> None:
        core = org_tree()
        core.track_cost("p", "op", 5.0, now=NOW)
        configs = [group("org", 100.0, period="30s"), group("team", 80.0, "org", period="30s")]
        configs.append(group("project", 4.0, "team", period="30s"))  # lowered below what it spent: blocked at once
        core.configure(core.policy, [], budgets=configs)
        assert groups_of(core)["team"] == (5.0, 75.0, False)
        assert groups_of(core)["project"] == (5.0, -1.0, True)
        core.track_cost("o", "op", 0.0, now=NOW + 1)  # the next command publishes the exhaustion
        assert [e.group for e in of_type(core.take_events(), BudgetExhausted)] == ["project"]


class TestRefills:
    def test_a_fixed_period_refills_once_at_its_boundary(self) -> None:
        core = org_tree()
        core.track_cost("p", "op", 20.0, now=NOW)
        assert core.assign("x", [SIP], now=NOW + 1, max_swarms=4).assignments[0].swarm_id == "t"
        assert core.budgets.due(BOUNDARY - 0.001) is False
        assert core.budgets.due(BOUNDARY) is True
        reply = core.tick(now=BOUNDARY + 0.5, trace_id="tick-1")
        assert reply.refilled == ["org", "team", "project"]
        refills = of_type(core.take_events(), BudgetRefilled)
        assert [(r.group, r.period_start, r.period_end, r.previous_spent, r.was_exhausted) for r in refills] == [
            ("org", BOUNDARY, BOUNDARY + 30, 20.0, False),
            ("team", BOUNDARY, BOUNDARY + 30, 20.0, False),
            ("project", BOUNDARY, BOUNDARY + 30, 20.0, True),
        ]
        assert groups_of(core, BOUNDARY + 1) == {
            "org": (0.0, 100.0, False),
            "team": (0.0, 50.0, False),
            "project": (0.0, 20.0, False),
        }
        assert core.tick(now=BOUNDARY + 1).refilled == []  # a second tick finds nothing to do
        assert core.take_events() == []
        assert core.assign("y", [SIP], now=BOUNDARY + 2).swarm_id == "p"

    def test_a_command_after_the_boundary_rolls_over_first(self) -> None:
        """Without a tick (the actor writes one, but the core never relies on it), the first command that counts
        money rolls the period over before it applies: the cost counts in the new period."""
        core = org_tree()
        core.track_cost("p", "op", 20.0, now=NOW)
        core.take_events()
        core.track_cost("p", "op", 3.0, now=BOUNDARY)
        assert [r.group for r in of_type(core.take_events(), BudgetRefilled)] == ["org", "team", "project"]
        assert groups_of(core, BOUNDARY)["project"] == (3.0, 17.0, False)

    def test_periods_missed_while_away_refill_once(self) -> None:
        core = org_tree()
        core.track_cost("p", "op", 1.0, now=NOW)
        core.take_events()
        core.tick(now=BOUNDARY + 95)  # three boundaries passed (+10, +40, +70, +100 would be the fourth)
        refills = of_type(core.take_events(), BudgetRefilled)
        assert [(r.group, r.periods, r.period_start) for r in refills] == [
            ("org", 4, BOUNDARY + 90),
            ("team", 4, BOUNDARY + 90),
            ("project", 4, BOUNDARY + 90),
        ]

    def test_a_lifetime_limit_never_refills(self) -> None:
        core = org_tree(period=None)
        core.track_cost("p", "op", 20.0, now=NOW)
        assert core.budgets.due(NOW + 10**9) is False
        assert core.tick(now=NOW + 10**9).refilled == []
        assert groups_of(core, NOW + 10**9)["project"] == (20.0, 0.0, True)

    @pytest.mark.parametrize(
        ("period", "zone", "before", "boundary"),
        [
            # Europe/Paris springs forward on 2024-03-31: that day has 23 hours, its local midnight is 22:00 UTC.
            ("day", "Europe/Paris", dt.datetime(2024, 3, 31, 21, 59, 59), dt.datetime(2024, 3, 31, 22, 0, 0)),
            # ... and falls back on 2024-10-27 (25 hours): the next midnight is 23:00 UTC.
            ("day", "Europe/Paris", dt.datetime(2024, 10, 27, 22, 59, 59), dt.datetime(2024, 10, 27, 23, 0, 0)),
            # The last day of February in a leap year, in New York (UTC-5 in winter).
            ("month", "America/New_York", dt.datetime(2024, 3, 1, 4, 59, 59), dt.datetime(2024, 3, 1, 5, 0, 0)),
            # A week starting on Sunday, in Tokyo (UTC+9, no daylight saving): Sunday 2024-06-09 00:00 local.
            ("week", "Asia/Tokyo", dt.datetime(2024, 6, 8, 14, 59, 59), dt.datetime(2024, 6, 8, 15, 0, 0)),
        ],
    )
    def test_calendar_periods_refill_at_local_midnight(
        self, period: str, zone: str, before: dt.datetime, boundary: dt.datetime
    ) -> None:
        t_before = before.replace(tzinfo=dt.UTC).timestamp()
        t_boundary = boundary.replace(tzinfo=dt.UTC).timestamp()
        core = Governor()
        core.configure(
            core.policy,
            [],
            budgets=[group("g", 10.0, period=period, timezone=zone, week_starts="sunday")],
        )
        core.register_swarm(profile("a", group="g"), now=t_before - 3600)
        core.track_cost("a", "op", 10.0, now=t_before)
        assert groups_of(core, t_before)["g"] == (10.0, 0.0, True)
        core.tick(now=t_before + 0.5)
        assert of_type(core.take_events(), BudgetRefilled) == []  # still the same period
        core.tick(now=t_boundary)
        refills = of_type(core.take_events(), BudgetRefilled)
        assert [(r.period_start, r.was_exhausted) for r in refills] == [(t_boundary, True)]
        local = dt.datetime.fromtimestamp(refills[0].period_start, ZoneInfo(zone))
        assert (local.hour, local.minute) == (0, 0)
        assert groups_of(core, t_boundary)["g"] == (0.0, 10.0, False)


class TestThresholds:
    def test_each_threshold_fires_once_per_period(self) -> None:
        core = core_with([group("g", 100.0, period="30s", alerts=[0.5, 0.8])], ("a", "g", 1000.0))
        fired: list[float] = []
        for t in range(12):  # 12 costs of 9: 108 spent, crossing 0.5 at the 6th and 0.8 at the 9th
            core.track_cost("a", "op", 9.0, now=NOW + t / 10)
            fired += [e.fraction for e in of_type(core.take_events(), BudgetThreshold) if e.group == "g"]
        assert fired == [0.5, 0.8]
        core.track_cost("a", "op", 60.0, now=BOUNDARY)  # the next period: armed again, both crossed at once
        thresholds = [e for e in of_type(core.take_events(), BudgetThreshold) if e.group == "g"]
        assert [(e.fraction, e.spent, e.limit, e.period_start) for e in thresholds] == [
            (0.5, 60.0, 100.0, BOUNDARY),
        ]

    def test_a_group_threshold_escalates_once_for_the_highest_crossed(self) -> None:
        core = core_with([group("g", 100.0)], ("a", "g", 1000.0))
        core.track_cost("a", "op", 85.0, now=NOW)
        escalations = [e for e in of_type(core.take_events(), Escalation) if e.group == "g"]
        assert [(e.severity, e.reason) for e in escalations] == [
            ("MEDIUM", "Budget group g has spent 80% of its limit")
        ]

    def test_a_swarm_threshold_measures_its_allocation(self) -> None:
        core = core_with([], ("a", None, 10.0), policy=ResourcePolicy(budget_alerts=[0.25, 0.5]))
        core.track_cost("a", "op", 3.0, now=NOW)
        events = of_type(core.take_events(), BudgetThreshold)
        assert [(e.swarm_id, e.fraction, e.spent, e.limit, e.group) for e in events] == [
            ("a", 0.25, 3.0, 10.0, msgspec.UNSET)
        ]
        core.track_cost("a", "op", 0.1, now=NOW)
        assert of_type(core.take_events(), BudgetThreshold) == []
        core.track_cost("a", "op", 2.0, now=NOW)  # 5.1 of 10: 0.5; and 0.8 (1 - soft_budget_ratio) not yet
        assert [e.fraction for e in of_type(core.take_events(), BudgetThreshold)] == [0.5]


class TestTopUps:
    def test_a_group_top_up_unblocks_its_swarms_for_this_period(self) -> None:
        core = org_tree()
        core.track_cost("p", "op", 20.0, now=NOW)
        core.take_events()
        reply = core.top_up(group="project", amount=5.0, approved_by="alice", now=NOW + 1, event_id="top-1")
        assert (reply.group, reply.remaining, reply.unblocked, reply.duplicate) == ("project", 5.0, True, False)
        assert core.assign("x", [SIP], now=NOW + 2).swarm_id == "p"
        again = core.top_up(group="project", amount=5.0, approved_by="alice", now=NOW + 3, event_id="top-1")
        assert (again.duplicate, again.remaining) == (True, 5.0)
        assert recorded(core)[-1:] == ["task_assigned"]  # the duplicate recorded nothing
        core.tick(now=BOUNDARY)
        assert groups_of(core, BOUNDARY)["project"] == (0.0, 20.0, False)  # a top-up is for its period only

    def test_a_swarm_top_up_never_closes_a_tripped_breaker(self) -> None:
        core = core_with([], ("a", None, 5.0))
        core.track_cost("a", "op", 6.0, now=NOW)
        reply = core.top_up(swarm_id="a", amount=10.0, approved_by="alice", now=NOW + 1)
        assert (reply.remaining, reply.tripped) == (9.0, True)
        assert reply.note is not None and "reset" in reply.note
        assert core.assign("x", [SIP], now=NOW + 2).swarm_id is None
        core.reset_circuit_breaker("a", 5.0, approved_by="alice", now=NOW + 3)
        assert core.assign("y", [SIP], now=NOW + 4).swarm_id == "a"

    def test_a_swarm_top_up_adds_to_its_allocation(self) -> None:
        core = core_with([], ("a", None, 10.0), policy=ResourcePolicy(budget_alerts=[0.5]))
        core.top_up(swarm_id="a", amount=10.0, approved_by="alice", now=NOW)
        core.track_cost("a", "op", 9.0, now=NOW)  # 9 of 20: under half
        assert of_type(core.take_events(), BudgetThreshold) == []

    @pytest.mark.parametrize(
        "call",
        [
            {"group": "nope", "amount": 1.0, "approved_by": "alice"},
            {"swarm_id": "nope", "amount": 1.0, "approved_by": "alice"},
            {"group": "team", "amount": 1.0, "approved_by": "  "},
            {"group": "team", "amount": 0.0, "approved_by": "alice"},
            {"amount": 1.0, "approved_by": "alice"},
        ],
    )
    def test_a_bad_top_up_changes_nothing(self, call: dict[str, Any]) -> None:
        core = org_tree()
        before = core.export_state()
        with pytest.raises((InvalidRequest, UnknownGroup, UnknownSwarm)):
            core.top_up(now=NOW, **call)
        assert core.export_state() == before
        assert core.take_events() == []


class TestBurnRate:
    def test_rate_and_forecast(self) -> None:
        core = core_with([group("g", 100.0, period="day", forecast_alert=True)], ("a", "g", 1000.0))
        start = core.groups(NOW)[0].period_start
        assert start is not None
        t0 = start + 3600.0
        for minute in range(30):  # 1 USD a minute for half an hour: 60 USD an hour
            core.track_cost("a", "op", 1.0, now=t0 + 60 * minute)
        status = core.groups(t0 + 1800)[0]
        assert status.rate_usd_per_hour == pytest.approx(60.0, rel=0.04)
        assert status.forecast_exhausted_at == pytest.approx(t0 + 1800 + 70 * 60, rel=0.001)
        forecasts = of_type(core.take_events(), BudgetForecast)
        assert len(forecasts) == 1  # once per period, when the forecast first fell before the period's end
        assert forecasts[0].group == "g" and forecasts[0].period_end == start + 86400

    def test_no_forecast_when_the_period_ends_first(self) -> None:
        core = core_with([group("g", 100.0, period="1h", forecast_alert=True)], ("a", "g", 1000.0))
        core.track_cost("a", "op", 1.0, now=NOW)
        assert core.groups(NOW + 60)[0].forecast_exhausted_at is None
        assert of_type(core.take_events(), BudgetForecast) == []


class TestTaskCap:
    def test_over_budget_escalates_once(self) -> None:
        core = core_with([], ("a", None, 100.0), policy=ResourcePolicy(max_spend_per_task=5.0))
        core.assign("task-1", [SIP], now=NOW)
        core.take_events()
        for _ in range(3):
            core.track_cost("a", "op", 2.0, now=NOW, task_id="task-1")
        events = core.take_events()
        assert [e.context.type for e in of_type(events, Escalation)] == ["task_over_budget"]
        assert "task_over_budget" in [getattr(e, "operation", None) for e in events]
        core.track_cost("a", "op", 2.0, now=NOW, task_id="task-1")
        assert of_type(core.take_events(), Escalation) == []
        assert core.get_circuit_breaker_status() == {}

    def test_trip_on_task_over_budget(self) -> None:
        policy = ResourcePolicy(max_spend_per_task=5.0, on_task_over_budget="trip")
        core = core_with([], ("a", None, 100.0), policy=policy)
        core.track_cost("a", "op", 5.0, now=NOW, task_id="t")  # at the cap, not past it
        assert core.get_circuit_breaker_status() == {}
        core.track_cost("a", "op", 0.01, now=NOW, task_id="t")
        assert core.get_circuit_breaker_status()["a"].reason == "task_over_budget"
        assert core.assign("x", [SIP], now=NOW + 10**6).swarm_id is None  # no cool-down: a human resets it
        core.reset_circuit_breaker("a", 50.0, approved_by="alice", now=NOW + 10**6)
        assert core.assign("y", [SIP], now=NOW + 10**6).swarm_id == "a"


class TestState:
    def test_restore_keeps_periods_thresholds_and_refills_once(self) -> None:
        """A snapshot mid-period restores what each group spent and which thresholds fired: after the restore the
        same thresholds do not fire again, and the boundary refills exactly once."""
        core = org_tree()
        core.track_cost("p", "op", 12.0, now=NOW)  # project at 60%: its 0.5 fired
        core.top_up(group="team", amount=1.0, approved_by="alice", now=NOW)
        core.take_events()
        state = core.export_state(seq=7)
        twin = Governor.from_state(msgspec.json.decode(msgspec.json.encode(state), type=type(state)))
        assert twin.export_state(seq=7) == state
        for each in (core, twin):
            each.track_cost("p", "op", 1.0, now=NOW + 1)
        assert recorded(core) == recorded(twin)
        assert [e.fraction for e in of_type(twin.take_events(), BudgetThreshold)] == []
        for each in (core, twin):
            each.tick(now=BOUNDARY)
        assert of_type(core.take_events(), BudgetRefilled) == of_type(twin.take_events(), BudgetRefilled)
        assert twin.tick(now=BOUNDARY + 1).refilled == []
        assert core.export_state() == twin.export_state()

    def test_a_blocked_group_stays_blocked_after_restore(self) -> None:
        core = org_tree()
        core.track_cost("t", "op", 50.0, now=NOW)
        twin = Governor.from_state(core.export_state())
        assert twin.assign("x", [SIP], now=NOW + 1, max_swarms=4).rejected is msgspec.UNSET
        reply = twin.assign("y", [SIP], now=NOW + 1, max_swarms=4)
        assert [a.swarm_id for a in reply.assignments] == ["o", "free"]
