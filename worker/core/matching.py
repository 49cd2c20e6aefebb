"""Matching: which swarms qualify for a task, how they score, and why the others were passed over.

A swarm qualifies when its coverage `|swarm ∩ required| / |required|` reaches the policy minimum, its cost per hour
is within the ceiling, its budget is above zero (and its available budget, remaining less open holds, covers the
estimate and the policy's `min_budget_per_task`), no budget group on its chain is exhausted, its breaker is closed
(or half-open with probes left), it has a task slot free and, under a rule that names models, its model is one of
them. Qualified swarms score `(coverage × reputation) / cost_per_hour` (under the `spread` strategy divided by
1 + its tasks in flight); the best wins, the first registered on equal scores.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Sequence

from schemas.codes import RejectionCode
from worker.core.index import ordinals
from worker.core.registry import Registry, Swarm

#: A task needing all of its capabilities walks the rarest one's value-sorted list when the first match is expected
#: within WALK_EXPECTED entries, and gives up after WALK_LIMIT; otherwise the masks name the candidates.
WALK_EXPECTED = 64
WALK_LIMIT = 256
#: In a registry of at most SMALL_REGISTRY swarms the masks are a few machine words: the core ANDs them first, and
#: scores the candidates they name directly when there are at most DIRECT_LIMIT (no walk is shorter than that).
SMALL_REGISTRY = 4096
DIRECT_LIMIT = 16

#: (score, ordinal, swarm, coverage): one qualified swarm.
Ranked = tuple[float, int, Swarm, float]


def score(coverage: float, swarm: Swarm) -> float:
    """The design document's score: (coverage × reputation) / cost per hour."""
    return (coverage * swarm.reputation_score) / swarm.cost_per_hour


def coverage(required: set[str], capabilities: list[str]) -> float:
    return len(required.intersection(capabilities)) / len(required)


@functools.lru_cache(maxsize=4096)
def needed(k: int, min_match: float) -> int:
    """How many of a task's `k` capabilities a swarm must hold: the least c with c / k >= min_match (as the
    coverage is computed, so no rounding can differ from it)."""
    return next(c for c in range(k + 1) if c / k >= min_match)


def load_factor(swarm: Swarm) -> float:
    """The `spread` strategy's discount: a swarm running n tasks scores 1 / (1 + n) of its score."""
    return 1.0 / (1 + swarm.in_flight)


def rank(
    registry: Registry,
    required: list[str],
    min_match: float,
    max_cost: float,
    limit: int,
    estimate: int,
    models: set[str] | None,
    spread: bool = False,
) -> list[Ranked]:
    """The best `limit` qualified swarms, best first: higher score first, the earlier registered on equal scores.
    `estimate`: the available budget a swarm needs (micro-dollars). With `spread`, scores are discounted by load."""
    k = len(required)
    need = needed(k, min_match)
    index = registry.index
    mask = 0
    if need == k:
        # Coverage is 1 for every candidate, so the value order is the score order (under `spread`, an upper bound
        # of it): walk the value-sorted list of the rarest capability, testing the others' mask bytes, and stop
        # once no later entry can do better. When the walk would be long (few of its swarms hold the other
        # capabilities too), the masks name the candidates at once instead.
        if k == 1:
            ranked = index.ranked_for(required[0])
            return walk(registry, ranked, (), max_cost, limit, estimate, models, None, spread) or []
        small = len(registry) <= SMALL_REGISTRY
        if small:  # the masks first: a few machine words, and most often no swarm holds them all
            mask = index.all_of(required)
            if not mask:
                return []
        if not small or mask.bit_count() > DIRECT_LIMIT:
            lists = [index.ranked_for(cap) for cap in required]
            rarest = min(range(k), key=lambda i: len(lists[i]))
            if not lists[rarest]:
                return []
            expected_steps = 1.0  # to the first swarm holding every other capability, if they were independent
            for i in range(k):
                if i != rarest:
                    expected_steps *= len(registry) / len(lists[i])
            if expected_steps * limit <= WALK_EXPECTED:
                # A byte of another capability's mask says in O(1) whether an entry holds it, without touching
                # the swarm: with 100,000 swarms, reading each one's capabilities costs a cache miss per entry.
                others = [index.members(cap) for i, cap in enumerate(required) if i != rarest]
                walked = walk(registry, lists[rarest], others, max_cost, limit, estimate, models, WALK_LIMIT, spread)
                if walked is not None:
                    return walked
            mask = mask or index.all_of(required)
            if not mask:
                return []
    if need == 0:  # a zero minimum admits swarms that share nothing: no index can help
        candidates = [s for s in registry if s.admits]
    else:
        by_ordinal = registry.by_ordinal
        candidates = [by_ordinal[o] for o in ordinals(mask or index.at_least(required, need))]
    req = set(required)
    scored: list[Ranked] = []
    for swarm in candidates:
        if swarm.cost_per_hour > max_cost:
            continue
        if estimate and swarm.budget - swarm.held < estimate:
            continue
        if models is not None and swarm.model not in models:
            continue
        covered = 1.0 if need == k else coverage(req, swarm.capabilities)
        value = score(covered, swarm) / (1 + swarm.in_flight) if spread else score(covered, swarm)
        scored.append((value, swarm.ordinal, swarm, covered))
    if limit == 1:
        return [min(scored, key=lambda item: (-item[0], item[1]))] if scored else []
    return heapq.nsmallest(limit, scored, key=lambda item: (-item[0], item[1]))


def walk(
    registry: Registry,
    ranked: list[tuple[float, int]],
    others: Sequence[bytes],
    max_cost: float,
    limit: int,
    estimate: int,
    models: set[str] | None,
    steps: int | None,
    spread: bool = False,
) -> list[Ranked] | None:
    """The best `limit` qualified swarms of a value-sorted list, best first, among those whose bit is set in every
    mask of `others` (the bytes of a task's other capabilities' masks, lowest ordinal first).

    Without `spread` they are the first `limit` that qualify. With it, a swarm's score is its value discounted by
    its load, never above its value: the walk goes on until the next entry's value is below the `limit`-th best
    score found (an equal value could still tie, and win on its ordinal).

    None when `steps` entries were looked at before the answer was certain (the caller then uses the masks).
    """
    best: list[Ranked] = []
    floor: list[float] = []  # under `spread`: the best `limit` scores so far, a min-heap
    by_ordinal = registry.by_ordinal
    first, size = (others[0], len(others[0])) if others else (b"", 0)
    rest = others[1:]
    for step, (negative_value, ordinal) in enumerate(ranked):
        if spread and len(floor) == limit and -negative_value < floor[0]:
            break
        if step == steps:
            return None
        if others:
            byte = ordinal >> 3
            if byte >= size or not first[byte] >> (ordinal & 7) & 1:
                continue
            if rest and not _in_all(rest, byte, ordinal & 7):
                continue
        swarm = by_ordinal[ordinal]
        if swarm.cost_per_hour > max_cost or not swarm.admits:
            continue
        if estimate and swarm.budget - swarm.held < estimate:
            continue
        if models is not None and swarm.model not in models:
            continue
        if not spread:
            best.append((score(1.0, swarm), ordinal, swarm, 1.0))
            if len(best) == limit:
                break
            continue
        value = score(1.0, swarm) / (1 + swarm.in_flight)
        best.append((value, ordinal, swarm, 1.0))
        if len(floor) < limit:
            heapq.heappush(floor, value)
        elif value > floor[0]:
            heapq.heapreplace(floor, value)
    if spread:
        return heapq.nsmallest(limit, best, key=lambda item: (-item[0], item[1]))
    return best


def _in_all(masks: Sequence[bytes], byte: int, bit: int) -> bool:
    """Whether bit `bit` of byte `byte` is set in every mask (a loop: no generator per walked entry)."""
    for m in masks:  # noqa: SIM110
        if byte >= len(m) or not m[byte] >> bit & 1:
            return False
    return True


def blocking_group(swarm: Swarm) -> str | None:
    """The nearest exhausted group on a swarm's chain."""
    if swarm.group is None:
        return None
    return next((g.id for g in swarm.group.chain() if g.exhausted), None)


def rejection(
    swarm: Swarm,
    covered: float,
    min_match: float,
    max_cost: float,
    estimate: int,
    models: set[str] | None,
    min_budget: int = 0,
) -> RejectionCode | None:
    """The first filter, in the design document's order, that a swarm fails for a task (None: it qualifies)."""
    if covered < min_match:
        return "capability_match_below_threshold"
    if models is not None and swarm.model not in models:
        return "model_not_allowed"
    if swarm.cost_per_hour > max_cost:
        return "cost_above_max"
    if swarm.budget <= 0:
        return "budget_exhausted"
    if swarm.group is not None and swarm.group.blocked:
        return "group_budget_exhausted"
    if min_budget and swarm.budget - swarm.held < min_budget:
        return "budget_below_task_minimum"
    if estimate and swarm.budget - swarm.held < estimate:
        return "available_budget_below_estimate"
    breaker = swarm.breaker
    if breaker is not None and not (breaker.state == "half_open" and breaker.probes_left > 0):
        return "breaker_tripped"
    if not swarm.admits:
        return "at_capacity"
    return None
