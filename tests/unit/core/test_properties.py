"""Properties of the decision core, checked by hypothesis against brute-force reference implementations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from unittest import mock

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.budgets import BudgetGroup
from schemas.events import BreakerTripped
from schemas.policy import ResourcePolicy
from schemas.profiles import SwarmProfile
from tests.factories import NOW, governed, profile
from worker.core import matching
from worker.core.governor import Governor

POOL = (
    "integration:sip",
    "integration:ndi",
    "integration:webrtc",
    "integration:h323",
    "code-analysis:python",
    "code-analysis:cpp",
    "architecture:security",
    "docs:technical-writing",
)

# Few distinct values make ties likely (two of three draws); the float ranges cover everything else.
costs = st.sampled_from([1.0, 2.0, 15.0]) | st.sampled_from([0.5, 1.5, 75.0]) | st.floats(0.01, 100.0)
reputations = st.sampled_from([0.9, 1.0]) | st.sampled_from([0.0, 0.5, 0.95]) | st.floats(0.0, 1.0)
budgets = st.sampled_from([1.0, 10.44, 25.0]) | st.floats(0.01, 1000.0)
ratios = st.sampled_from([0.0, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 1.0]) | st.floats(0.0, 1.0)


@dataclass(frozen=True)
class Spec:
    """One swarm of a generated registry, and what happens to it after registration."""

    swarm_id: str
    capabilities: list[str]
    cost_per_hour: float
    reputation_score: float
    budget: float
    state: str  # "open", "tripped" (manual trip), "exhausted" (a cost of at least the budget), "blocked" (its group is)
    reregister: bool  # deregistered and registered again, which moves it to the end of the order

    def profile(self) -> SwarmProfile:
        return profile(
            self.swarm_id,
            self.capabilities,
            cost_per_hour=self.cost_per_hour,
            reputation_score=self.reputation_score,
            budget=self.budget,
            group="team" if self.state == "blocked" else "org",
        )


@st.composite
def registries(draw: st.DrawFn) -> list[Spec]:
    n = draw(st.integers(1, 30))
    # Half the registries price every swarm alike, so that equal scores (and the tie-break) are common.
    alike = draw(st.booleans())
    swarm_costs = st.sampled_from([1.0, 2.0]) if alike else costs
    swarm_reputations = st.just(0.9) if alike else reputations
    return [
        Spec(
            swarm_id=f"s{i:02d}",
            capabilities=draw(st.lists(st.sampled_from(POOL), min_size=1, max_size=6)),
            cost_per_hour=draw(swarm_costs),
            reputation_score=draw(swarm_reputations),
            budget=draw(budgets),
            state=draw(st.sampled_from(["open", "open", "open", "tripped", "exhausted", "blocked"])),
            reregister=draw(st.booleans()),
        )
        for i in range(n)
    ]


policies = st.builds(
    ResourcePolicy,
    max_swarms_per_task=st.integers(1, 5),
    max_cost_per_task=costs,
    min_capability_match=ratios,
)


def build(specs: list[Spec], policy: ResourcePolicy) -> tuple[Governor, list[Spec]]:
    """Register the specs (each in the budget group `org`, or `team` under it when it is to be blocked), re-register
    the flagged ones, apply trips and exhaustion, exhaust `team` (one cent from its first swarm); return the
    registry order."""
    governor = Governor(policy)
    governor.configure(
        policy, [], budgets=[BudgetGroup(id="org", limit=1e6), BudgetGroup(id="team", parent="org", limit=0.01)]
    )
    for spec in specs:
        governor.register_swarm(spec.profile(), now=NOW)
    moved = [s for s in specs if s.reregister]
    for spec in moved:
        governor.deregister_swarm(spec.swarm_id, now=NOW)
        governor.register_swarm(spec.profile(), now=NOW)
    for spec in specs:
        if spec.state == "tripped":
            governor.trip_circuit_breaker(spec.swarm_id, "manual_override", now=NOW, requested_by="test")
        elif spec.state == "exhausted":
            governor.track_cost(spec.swarm_id, "burn", spec.budget, now=NOW)
    order = [s for s in specs if not s.reregister] + moved
    payer = next((s for s in order if s.state == "blocked"), None)  # the reference knows it as the first one
    if payer is not None:
        governor.track_cost(payer.swarm_id, "burn", 0.01, now=NOW)
    governor.take_events()
    return governor, order


def reference(
    order: list[Spec],
    required: list[str],
    max_cost: float,
    max_swarms: int,
    policy: ResourcePolicy,
    load: dict[str, int] | None = None,
) -> tuple[list[tuple[str, float, float]], dict[str, str]]:
    """Scan every swarm, filter in the order `IF.governor.md` gives, score, sort by (-score, registration order).
    With `load` (tasks in flight by swarm: the `spread` strategy), each score is divided by 1 + its load."""
    req = set(required)
    ranked: list[tuple[float, int, str, float]] = []
    rejected: dict[str, str] = {}
    for ordinal, spec in enumerate(order):
        coverage = len(set(spec.capabilities) & req) / len(req)
        if coverage < policy.min_capability_match:
            rejected[spec.swarm_id] = "capability_match_below_threshold"
        elif spec.cost_per_hour > max_cost:
            rejected[spec.swarm_id] = "cost_above_max"
        elif spec.state == "exhausted":
            rejected[spec.swarm_id] = "budget_exhausted"
        elif spec.state == "blocked":  # the payer of the group's cent may have spent its own budget with it
            payer = spec is next(s for s in order if s.state == "blocked") and round(spec.budget * 1e6) <= 10_000
            rejected[spec.swarm_id] = "budget_exhausted" if payer else "group_budget_exhausted"
        elif spec.state == "tripped":
            rejected[spec.swarm_id] = "breaker_tripped"
        else:
            score = (coverage * spec.reputation_score) / spec.cost_per_hour
            if load is not None:
                score /= 1 + load[spec.swarm_id]
            ranked.append((score, ordinal, spec.swarm_id, coverage))
    ranked.sort(key=lambda r: (-r[0], r[1]))
    best = ranked[: min(max_swarms, policy.max_swarms_per_task)]
    return [(swarm_id, coverage, score) for score, _, swarm_id, coverage in best], rejected


#: (WALK_EXPECTED, WALK_LIMIT) for `walked`: through the masks only, walks cut short after 1-3 entries, whole walks.
WALKS = st.sampled_from([(0, 256), (10**9, 1), (10**9, 2), (10**9, 3), (10**9, 10**9)])


def walked(
    governor: Governor, walk: tuple[int, int], required: list[str], max_cost: float | None, max_swarms: int
) -> list[tuple[str, float, float]]:
    """(swarm, coverage, score) of one assign with the walk's thresholds set to `walk` (WALK_EXPECTED, WALK_LIMIT):
    0 expected steps never walks; otherwise small registries walk too, cut short after WALK_LIMIT entries."""
    expected_steps, limit = walk
    with (
        mock.patch.object(matching, "WALK_EXPECTED", expected_steps),
        mock.patch.object(matching, "WALK_LIMIT", limit),
        mock.patch.object(matching, "SMALL_REGISTRY", -1 if expected_steps else matching.SMALL_REGISTRY),
    ):
        reply = governor.assign("task", required, now=NOW, max_cost=max_cost, max_swarms=max_swarms)
    return [(a.swarm_id, a.capability_match, a.score) for a in reply.assignments]


#: A registry, a policy and one assign request's arguments.
ASSIGN_CASES: dict[str, st.SearchStrategy[Any]] = {
    "specs": registries(),
    "policy": policies,
    "required": st.lists(st.sampled_from(POOL), min_size=1, max_size=5),
    "max_cost": st.none() | costs,
    "max_swarms": st.integers(1, 8),
}


class TestAssignProperties:
    @settings(max_examples=300, deadline=None)
    @given(**ASSIGN_CASES)
    def test_assign_agrees_with_brute_force(
        self,
        specs: list[Spec],
        policy: ResourcePolicy,
        required: list[str],
        max_cost: float | None,
        max_swarms: int,
    ) -> None:
        """assign returns exactly the brute-force ranking and the brute-force rejection reasons."""
        governor, order = build(specs, policy)
        ceiling = policy.max_cost_per_task if max_cost is None else max_cost
        expected, expected_rejected = reference(order, required, ceiling, max_swarms, policy)

        reply = governor.assign("task", required, now=NOW, max_cost=max_cost, max_swarms=max_swarms, explain=True)

        assert [(a.swarm_id, a.capability_match, a.score) for a in reply.assignments] == expected
        assert reply.swarm_id == (expected[0][0] if expected else None)
        assert reply.reason == (None if expected else "no_qualified_swarm")
        assert reply.rejected == expected_rejected
        assert governor.find_qualified_swarm(required, max_cost) == reply.swarm_id

    @settings(max_examples=300, deadline=None)
    @given(**ASSIGN_CASES, walk=WALKS)
    def test_walk_and_masks_agree(
        self,
        specs: list[Spec],
        policy: ResourcePolicy,
        required: list[str],
        max_cost: float | None,
        max_swarms: int,
        walk: tuple[int, int],
    ) -> None:
        """Walked in value order (whole, or cut short after a few entries) or not at all: the brute-force ranking."""
        governor, order = build(specs, policy)
        ceiling = policy.max_cost_per_task if max_cost is None else max_cost
        expected, _ = reference(order, required, ceiling, max_swarms, policy)
        assert walked(governor, walk, required, max_cost, max_swarms) == expected

    @settings(max_examples=300, deadline=None)
    @given(
        **ASSIGN_CASES,
        walk=WALKS,
        earlier=st.lists(st.lists(st.sampled_from(POOL), min_size=1, max_size=3), max_size=12),
    )
    def test_spread_agrees_with_brute_force(
        self,
        specs: list[Spec],
        policy: ResourcePolicy,
        required: list[str],
        max_cost: float | None,
        max_swarms: int,
        walk: tuple[int, int],
        earlier: list[list[str]],
    ) -> None:
        """Under `spread`, after earlier tasks left some swarms busy: walked (whole or cut short) or through the
        masks, the brute-force ranking of scores divided by 1 + tasks in flight."""
        policy = msgspec.structs.replace(policy, strategy="spread")
        governor, order = build(specs, policy)
        for i, caps in enumerate(earlier):
            governor.assign(f"earlier-{i}", caps, now=NOW, max_swarms=3)
        load = {s.swarm_id: governor.registry.swarms[s.swarm_id].in_flight for s in order}
        ceiling = policy.max_cost_per_task if max_cost is None else max_cost
        expected, _ = reference(order, required, ceiling, max_swarms, policy, load)
        assert walked(governor, walk, required, max_cost, max_swarms) == expected


cost_sequences = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 2000)), max_size=80)


class TestBudgetProperties:
    @settings(max_examples=300, deadline=None)
    @given(budgets_cents=st.lists(st.integers(1, 10_000), min_size=5, max_size=5), charges=cost_sequences)
    def test_remaining_is_exact_and_trip_happens_once(
        self, budgets_cents: list[int], charges: list[tuple[int, int]]
    ) -> None:
        """Remaining = initial − Σ costs to the cent; the breaker trips iff a prefix sum reached the budget, once."""
        ids = [f"s{i}" for i in range(5)]
        governor = governed(
            *(
                profile(swarm_id, ["integration:sip"], cost_per_hour=1.0, reputation_score=1.0, budget=cents / 100)
                for swarm_id, cents in zip(ids, budgets_cents, strict=True)
            )
        )

        spent = [0] * 5
        operations = [0] * 5
        trip_at: list[tuple[int, int] | None] = [None] * 5  # (operations_count, remaining cents) at the trip
        for step, (i, cents) in enumerate(charges):
            reply = governor.track_cost(ids[i], "op", cents / 100, now=NOW + step)
            spent[i] += cents
            operations[i] += 1
            if trip_at[i] is None and spent[i] >= budgets_cents[i]:
                trip_at[i] = (operations[i], budgets_cents[i] - spent[i])
            assert round(reply.remaining, 6) == round((budgets_cents[i] - spent[i]) / 100, 6)
            assert reply.tripped is (trip_at[i] is not None)

        report = governor.get_budget_report()
        breakers = governor.get_circuit_breaker_status()
        trips: dict[str, list[BreakerTripped]] = {}
        for event in governor.take_events():
            if isinstance(event, BreakerTripped):
                trips.setdefault(event.swarm_id, []).append(event)
        for i, swarm_id in enumerate(ids):
            assert round(report[swarm_id], 6) == round((budgets_cents[i] - spent[i]) / 100, 6)
            assert (swarm_id in breakers) is (trip_at[i] is not None)
            assert len(trips.get(swarm_id, [])) == (0 if trip_at[i] is None else 1)
            if trip_at[i] is not None:
                (event,) = trips[swarm_id]
                count, remaining_cents = trip_at[i]  # type: ignore[misc]
                assert (event.reason, event.operations_count) == ("budget_exhausted", count)
                assert round(event.remaining, 6) == round(remaining_cents / 100, 6)

    @settings(max_examples=300, deadline=None)
    @given(
        budget_cents=st.integers(1, 10_000),
        charges=st.lists(st.tuples(st.sampled_from(["e1", "e2", "e3", None]), st.integers(0, 2000)), max_size=40),
    )
    def test_event_ids_apply_at_most_once(self, budget_cents: int, charges: list[tuple[str | None, int]]) -> None:
        """Costs carrying an event_id already applied are ignored; the remaining budget counts each id once."""
        governor = governed(
            profile("s", ["integration:sip"], cost_per_hour=1.0, reputation_score=1.0, budget=budget_cents / 100)
        )
        seen: set[str] = set()
        spent = 0
        for event_id, cents in charges:
            reply = governor.track_cost("s", "op", cents / 100, now=NOW, event_id=event_id)
            duplicate = event_id is not None and event_id in seen
            assert reply.duplicate is duplicate
            if not duplicate:
                spent += cents
                if event_id is not None:
                    seen.add(event_id)
        assert round(governor.get_budget_report()["s"], 6) == round((budget_cents - spent) / 100, 6)
        assert ("s" in governor.get_circuit_breaker_status()) is (spent >= budget_cents)
