"""The decision core: registry, matching, budgets, circuit breakers and policy.

Plain synchronous Python. It does no I/O and reads no clock: every operation that depends on time takes `now`
(seconds since the epoch). Each operation either raises a `GovernorError` and changes nothing, or changes the
state, returns its reply and records the events to publish (`take_events()`). Only the actor calls it.

Money is kept in integer micro-dollars, so that sums are exact however many costs arrive.
"""

from __future__ import annotations

import fnmatch
import heapq
import itertools
import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

import msgspec

from schemas.events import (
    BreakerClosed,
    BreakerHalfOpen,
    BreakerReset,
    BreakerTripped,
    Escalation,
    EscalationContext,
    Event,
    Identity,
    Severity,
    WitnessRecord,
)
from schemas.ledger import Configure, CoreState, SwarmState
from schemas.policy import PRESETS, PolicyRule, ResourcePolicy
from schemas.profiles import SwarmProfile
from schemas.replies import (
    Assignment,
    AssignmentRecord,
    AssignReply,
    BreakerState,
    CostReply,
    FailureReply,
    HoldStatus,
    ReloadReply,
    ResetRecord,
    ResetReply,
    StatusReply,
    SuccessReply,
    SwarmExplanation,
    SwarmReply,
    SwarmStatus,
    TripReply,
)
from schemas.requests import PAGE_DEFAULT
from schemas.types import MAX_USD
from worker.core.capabilities import Vocabulary
from worker.core.index import CapabilityIndex, ordinals
from worker.errors import (
    AlreadyRegistered,
    AlreadyTripped,
    HoldLimit,
    InvalidBudget,
    InvalidCost,
    InvalidRequest,
    NotTripped,
    UnknownSwarm,
)

MICROS = 1_000_000
_T = TypeVar("_T")
#: A task needing all of its capabilities walks the rarest one's value-sorted list when the first match is expected
#: within WALK_EXPECTED entries, and gives up after WALK_LIMIT; otherwise the masks name the candidates.
WALK_EXPECTED = 64
WALK_LIMIT = 256
MANUAL_TRIP_REASONS = frozenset({"repeated_failures", "performance_degradation", "manual_override"})
#: Trips that recover by themselves through half-open probes; the others need a human's reset.
RECOVERABLE = frozenset({"repeated_failures", "performance_degradation"})

# Reason codes of the filters, in the seed's order.
BELOW_THRESHOLD = "capability_match_below_threshold"
COST_ABOVE_MAX = "cost_above_max"
BUDGET_EXHAUSTED = "budget_exhausted"
BREAKER_TRIPPED = "breaker_tripped"
BELOW_ESTIMATE = "available_budget_below_estimate"
MODEL_NOT_ALLOWED = "model_not_allowed"


def to_micros(usd: float) -> int:
    """USD to integer micro-dollars (rounded to the nearest)."""
    return round(usd * MICROS)


def to_usd(micros: int) -> float:
    return micros / MICROS


def _page(records: deque[_T], total: int, limit: int, before: int | None) -> tuple[list[_T], int | None]:
    """The `limit` newest of `records` (a bounded deque that has held `total` records ever) older than the
    position `before` (None: the newest), oldest first; and the position to continue from, None when no older
    record is kept."""
    base = total - len(records)  # the position of records[0]
    end = len(records) if before is None else max(0, min(len(records), before - base))
    start = max(0, end - limit)
    return list(itertools.islice(records, start, end)), base + start if start > 0 else None


class _Swarm:
    """The mutable state of one registered swarm; private to the core."""

    __slots__ = (
        "admits",
        "allocated",
        "breaker",
        "budget",
        "capabilities",
        "cost_per_hour",
        "cost_tracked",
        "failures",
        "held",
        "holds",
        "model",
        "operations_count",
        "ordinal",
        "reputation_score",
        "soft_warned",
        "swarm_id",
        "value",
    )

    def __init__(self, profile: SwarmProfile, capabilities: list[str], ordinal: int) -> None:
        self.swarm_id = profile.swarm_id
        self.capabilities = capabilities
        self.cost_per_hour = profile.cost_per_hour
        self.reputation_score = profile.reputation_score
        self.model = profile.model
        self.ordinal = ordinal
        self.budget = to_micros(profile.current_budget_remaining)
        self.value = profile.reputation_score / profile.cost_per_hour  # the score at full coverage
        self.breaker: BreakerState | None = None
        self.failures: deque[float] | None = None  # created at the first failure: most swarms never fail
        self.operations_count = 0
        self.cost_tracked = 0
        self.admits = True  # budget > 0 and breaker closed (or half-open with probes left)
        self.allocated = self.budget  # the allocation the soft-budget warning is measured against
        self.held = 0  # micro-dollars held by open reservations
        self.holds = 0  # how many open reservations
        self.soft_warned = False


class Governor:
    """Capability-aware assignment and budget governance for a registry of swarms."""

    def __init__(
        self,
        policy: ResourcePolicy | None = None,
        *,
        capabilities: Iterable[str] = (),
        history_limit: int = 1000,
        dedupe_limit: int = 200_000,
        dedupe_horizon_s: float = 7 * 86400.0,
    ) -> None:
        self.policy = policy if policy is not None else ResourcePolicy()
        self.policies: dict[str, ResourcePolicy] = dict(PRESETS)
        self.rules: list[PolicyRule] = []
        self.vocabulary = Vocabulary(capabilities)
        self._swarms: dict[str, _Swarm] = {}
        self._by_ordinal: dict[int, _Swarm] = {}
        self._index = CapabilityIndex()
        # (task_id, swarm_id) -> (micro-dollars, expires_at): budget reserved by assigns with an estimated cost.
        self._holds: dict[tuple[str, str], tuple[int, float]] = {}
        self._hold_expiry: list[tuple[float, str, str]] = []  # heap of (expires_at, task_id, swarm_id)
        # Swarms whose breaker may recover by itself (failure or degradation trips), by id.
        self._recovering: dict[str, _Swarm] = {}
        self._next_ordinal = 0
        self._history: deque[AssignmentRecord] = deque(maxlen=history_limit)
        self._resets: deque[ResetRecord] = deque(maxlen=history_limit)
        self._history_seq = 0  # records ever appended to each: the position of the next one (history cursors)
        self._resets_seq = 0
        self._events: list[Event] = []
        self.identity: Identity | msgspec.UnsetType = msgspec.UNSET
        """The authenticated sender of the command being applied (set around each command by `dispatch.apply`):
        it goes into that command's witness records, trip and reset events and reset history."""
        # kind -> event_id -> when applied, oldest first, one window per kind (so a flood of fresh cost ids never
        # pushes a reset's id out). Kept for `dedupe_horizon_s` and at most `dedupe_limit` per kind: a retry inside
        # that is a no-op; an id pushed out by the limit before its horizon is counted in `evicted`.
        self._applied: dict[str, OrderedDict[str, float]] = {}
        self._dedupe_limit = dedupe_limit
        self._dedupe_horizon_s = dedupe_horizon_s
        self.evicted: dict[str, int] = {}
        """Ids forgotten before their horizon because their kind's window was full (assignments under `assign`)."""
        # task_id -> (its assignments, when): a repeated assign within `policy.assign_window_s` gets them back.
        self._tasks: OrderedDict[str, tuple[tuple[Assignment, ...], float]] = OrderedDict()
        # (tuples of untracked Structs: the cyclic GC need not scan up to `dedupe_limit` of them)
        # Ids that were deregistered, with the breaker they had: the config's swarms seed the registry only with
        # ids never seen before, and a swarm deregistered while tripped comes back tripped (only a reset closes it).
        self._retired: dict[str, BreakerState | None] = {}

    def configure(
        self,
        policy: ResourcePolicy,
        capabilities: Iterable[str],
        policies: dict[str, ResourcePolicy] | None = None,
        rules: Sequence[PolicyRule] = (),
    ) -> None:
        """Change the policy, capabilities, named policies and rules from now on (recorded in the ledger)."""
        check_rules(rules, policies or {})
        self.policy = policy
        self.vocabulary = Vocabulary(capabilities)
        self.policies = {**PRESETS, **(policies or {})}
        self.rules = list(rules)

    def reload(
        self,
        configure: Configure,
        profiles: Sequence[SwarmProfile],
        *,
        now: float,
        trace_id: str = "",
    ) -> ReloadReply:
        """Apply a re-read config without losing budgets, holds or breakers: new swarms only are registered."""
        check_rules(configure.rules, configure.policies)
        current = (
            self.policy,
            self.vocabulary.extra,
            self.rules,
            {k: v for k, v in self.policies.items() if PRESETS.get(k) != v},
        )
        wanted = (configure.policy, configure.capabilities, configure.rules, configure.policies)
        changed = current != wanted
        if changed:
            self.configure(configure.policy, configure.capabilities, configure.policies, configure.rules)
        registered: list[str] = []
        for profile in profiles:
            if not self.known(profile.swarm_id):
                self.register_swarm(profile, now=now, trace_id=trace_id)
                registered.append(profile.swarm_id)
        self._witness("config_reloaded", {"changed": changed, "registered": registered}, now, "MEDIUM", trace_id)
        return ReloadReply(changed=changed, registered=registered, trace_id=trace_id)

    def _governing(self, required: list[str]) -> tuple[ResourcePolicy, PolicyRule | None]:
        """The policy for a task: the first rule whose pattern matches one of its capabilities, else the default."""
        for rule in self.rules:
            if any(fnmatch.fnmatchcase(cap, rule.match) for cap in required):
                policy = self.policy if rule.policy == "default" else self.policies[rule.policy]
                return policy, rule
        return self.policy, None

    def known(self, swarm_id: str) -> bool:
        """True when the id is registered or was registered once (and deregistered since)."""
        return swarm_id in self._swarms or swarm_id in self._retired

    # -- events -------------------------------------------------------------------------------------------

    def take_events(self) -> list[Event]:
        """Return the events recorded since the last call, oldest first, and forget them."""
        events, self._events = self._events, []
        return events

    def _witness(self, operation: str, params: dict[str, Any], now: float, severity: Severity, trace_id: str) -> None:
        self._events.append(
            WitnessRecord(
                operation=operation,
                params=params,
                timestamp=now,
                severity=severity,
                trace_id=trace_id,
                identity=self.identity,
            )
        )

    # -- registry -----------------------------------------------------------------------------------------

    def register_swarm(
        self, profile: SwarmProfile, *, now: float, trace_id: str = "", event_id: str | None = None
    ) -> SwarmReply:
        """Register a new swarm. An existing id is refused: registration never restores budget or a breaker. A
        retry with the same `event_id` is answered as the first was (`duplicate`) and changes nothing."""
        if self._applied_already("register", event_id):
            return SwarmReply(swarm_id=profile.swarm_id, duplicate=True, trace_id=trace_id)
        if profile.swarm_id in self._swarms:
            raise AlreadyRegistered(f"swarm {profile.swarm_id!r} is already registered")
        _check_budget(profile.current_budget_remaining, "current_budget_remaining", self.policy.max_amount_usd)
        if not (profile.cost_per_hour > 0 and math.isfinite(profile.cost_per_hour)):
            raise InvalidRequest(f"cost_per_hour must be a finite number > 0, got {profile.cost_per_hour!r}")
        if not 0.0 <= profile.reputation_score <= 1.0:
            raise InvalidRequest(f"reputation_score must be in [0, 1], got {profile.reputation_score!r}")
        capabilities = self.vocabulary.check(profile.capabilities)
        self._seen("register", event_id, now)
        swarm = _Swarm(profile, capabilities, self._next_ordinal)
        swarm.breaker = self._retired.pop(swarm.swarm_id, None)
        self._next_ordinal += 1
        self._add(swarm)
        self._witness(
            "swarm_registered",
            {
                "swarm_id": swarm.swarm_id,
                "capabilities": capabilities,
                "cost_per_hour": swarm.cost_per_hour,
                "reputation_score": swarm.reputation_score,
                "budget": to_usd(swarm.budget),
                "model": swarm.model,
                "tripped": swarm.breaker is not None,
            },
            now,
            "INFO",
            trace_id,
        )
        return SwarmReply(swarm_id=swarm.swarm_id, trace_id=trace_id)

    def deregister_swarm(
        self, swarm_id: str, *, now: float, trace_id: str = "", event_id: str | None = None
    ) -> SwarmReply:
        """Remove a swarm; it gets no more work and its budget is forgotten (a retry with the same `event_id` is
        answered `duplicate`)."""
        if self._applied_already("deregister", event_id):
            return SwarmReply(swarm_id=swarm_id, duplicate=True, trace_id=trace_id)
        swarm = self._get(swarm_id)
        self._seen("deregister", event_id, now)
        del self._swarms[swarm_id]
        del self._by_ordinal[swarm.ordinal]
        self._index.remove(swarm)
        self._recovering.pop(swarm_id, None)
        for key in [k for k in self._holds if k[1] == swarm_id]:
            del self._holds[key]
        self._retired[swarm_id] = swarm.breaker
        self._witness(
            "swarm_deregistered",
            {"swarm_id": swarm_id, "remaining": to_usd(swarm.budget)},
            now,
            "INFO",
            trace_id,
        )
        return SwarmReply(swarm_id=swarm_id, trace_id=trace_id)

    def _add(self, swarm: _Swarm) -> None:
        self._swarms[swarm.swarm_id] = swarm
        self._by_ordinal[swarm.ordinal] = swarm
        swarm.admits = _admits(swarm)
        self._index.add(swarm, swarm.admits)
        if swarm.breaker is not None and swarm.breaker.reason in RECOVERABLE:
            self._recovering[swarm.swarm_id] = swarm

    def _eligibility(self, swarm: _Swarm) -> None:
        """Keep the index's eligible mask in step after a budget or breaker change."""
        admits = _admits(swarm)
        if admits != swarm.admits:
            swarm.admits = admits
            self._index.set_eligible(swarm.ordinal, admits)

    def _get(self, swarm_id: str) -> _Swarm:
        try:
            return self._swarms[swarm_id]
        except KeyError:
            raise UnknownSwarm(f"no swarm {swarm_id!r} is registered") from None

    # -- matching -----------------------------------------------------------------------------------------

    def validate_capability_match(
        self, required_capabilities: Sequence[str], swarm_capabilities: Sequence[str]
    ) -> tuple[bool, float]:
        """The seed's policy check: (coverage ≥ policy minimum, coverage)."""
        required = set(required_capabilities)
        if not required:
            return False, 0.0
        score = len(required & set(swarm_capabilities)) / len(required)
        return score >= self.policy.min_capability_match, score

    def find_qualified_swarm(self, required_capabilities: Sequence[str], max_cost: float | None = None) -> str | None:
        """The seed's query: the best qualified swarm's id, or None. Records nothing."""
        required = self._required(required_capabilities)
        policy, rule = self._governing(required)
        ranked = self._rank(required, self._max_cost(max_cost, policy), 1, 0, policy, rule)
        return ranked[0][2].swarm_id if ranked else None

    def assign(
        self,
        task_id: str,
        required_capabilities: Sequence[str],
        *,
        now: float,
        max_cost: float | None = None,
        max_swarms: int = 1,
        explain: bool = False,
        estimated_cost: float | None = None,
        trace_id: str = "",
        explain_limit: int | None = None,
        explain_cursor: str | None = None,
        reassign: bool = False,
    ) -> AssignReply:
        """Choose up to `max_swarms` (at most the policy's `max_swarms_per_task`) swarms for a task.

        With `estimated_cost`, a swarm qualifies only if its available budget (remaining minus open holds) covers
        the estimate, and the estimate is held on each chosen swarm until a cost with this `task_id` settles it
        or `policy.reservation_ttl_s` passes.

        `task_id` is the assignment's key: a repeated assign of a task assigned within `policy.assign_window_s`
        gets the same assignment back (`duplicate`: no second hold, history entry or probe), whatever else it
        asks; `reassign` releases the task's earlier holds and assigns it afresh.
        """
        required = self._required(required_capabilities)
        tasks = self._tasks
        horizon = now - self.policy.assign_window_s
        prior = tasks.get(task_id)
        if prior is not None and prior[1] < horizon:  # out of its window: forgotten
            del tasks[task_id]
            prior = None
        if prior is not None and reassign:
            del tasks[task_id]
            for earlier in prior[0]:
                if (task_id, earlier.swarm_id) in self._holds:
                    self._release(task_id, earlier.swarm_id, now, "reassigned", trace_id)
        elif prior is not None:
            return AssignReply(
                task_id=task_id,
                swarm_id=prior[0][0].swarm_id,
                assignments=list(prior[0]),
                duplicate=True,
                trace_id=trace_id,
            )
        limit = self.policy.max_amount_usd
        if estimated_cost is not None and not 0.0 <= estimated_cost <= limit:
            raise InvalidCost(f"estimated_cost must be a finite number from 0 to {limit:g}, got {estimated_cost!r}")
        estimate = to_micros(estimated_cost) if estimated_cost else 0
        policy, rule = self._governing(required)
        limit = max(1, min(max_swarms, policy.max_swarms_per_task))
        cost_ceiling = self._max_cost(max_cost, policy)
        self._expire_holds(now, trace_id)
        self._advance_breakers(now, trace_id)
        ranked = self._rank(required, cost_ceiling, limit, estimate, policy, rule)
        explanation, explain_next = (
            self._explain(required, cost_ceiling, estimate, policy, rule, explain_limit, explain_cursor)
            if explain
            else (None, None)
        )
        rejected = (
            {e.swarm_id: e.rejected_by for e in explanation if e.rejected_by is not None}
            if explanation is not None
            else None
        )
        if not ranked:
            self._witness(
                "no_qualified_swarm",
                {"task_id": task_id, "required_capabilities": required, "max_cost": cost_ceiling},
                now,
                "MEDIUM",
                trace_id,
            )
            return AssignReply(
                task_id=task_id,
                swarm_id=None,
                assignments=[],
                reason="no_qualified_swarm",
                trace_id=trace_id,
                rejected=rejected if rejected is not None else msgspec.UNSET,
                explanation=explanation if explanation is not None else msgspec.UNSET,
                explain_next_cursor=explain_next if explanation is not None else msgspec.UNSET,
            )
        if estimate:
            self._check_holds(task_id, [swarm for _, _, swarm, _ in ranked])
        reserved = to_usd(estimate)
        assignments = [
            Assignment(swarm_id=swarm.swarm_id, capability_match=coverage, score=score, reserved=reserved)
            for score, _, swarm, coverage in ranked
        ]
        for _, _, swarm, _ in ranked:
            if swarm.breaker is not None:  # half-open: this task is one of its probes
                self._take_probe(swarm)
            if estimate:
                self._hold(task_id, swarm, estimate, now)
        best = assignments[0]
        self._history_seq += 1
        self._history.append(
            AssignmentRecord(
                task_id=task_id,
                swarm_id=best.swarm_id,
                swarm_ids=[a.swarm_id for a in assignments],
                required_capabilities=required,
                capability_match=best.capability_match,
                score=best.score,
                timestamp=now,
                trace_id=trace_id,
                rule=_rule_name(rule),
            )
        )
        params: dict[str, Any] = {
            "task_id": task_id,
            "swarm_id": best.swarm_id,
            "swarm_ids": [a.swarm_id for a in assignments],
            "required_capabilities": required,
            "capability_match": best.capability_match,
            "score": best.score,
        }
        if estimate:
            params["reserved"] = reserved
        if rule is not None:
            params["rule"] = _rule_name(rule)
        self._witness("task_assigned", params, now, "INFO", trace_id)
        tasks.pop(task_id, None)  # (a reassigned task goes to the end: the window is oldest first)
        tasks[task_id] = (tuple(assignments), now)
        if len(tasks) > self._dedupe_limit or next(iter(tasks.values()))[1] < horizon:
            self._bound("assign", tasks, horizon)
        return AssignReply(
            task_id=task_id,
            swarm_id=best.swarm_id,
            assignments=assignments,
            trace_id=trace_id,
            rejected=rejected if rejected is not None else msgspec.UNSET,
            explanation=explanation if explanation is not None else msgspec.UNSET,
            explain_next_cursor=explain_next if explanation is not None else msgspec.UNSET,
        )

    def _check_holds(self, task_id: str, chosen: list[_Swarm]) -> None:
        """Refuse an assign whose holds would pass the policy's limits (in all, or on one swarm)."""
        policy = self.policy
        new = [s for s in chosen if (task_id, s.swarm_id) not in self._holds]
        if len(self._holds) + len(new) > policy.max_holds:
            raise HoldLimit(
                f"{len(self._holds)} reservations are open, the most the policy allows is {policy.max_holds}"
            )
        for swarm in new:
            if swarm.holds >= policy.max_holds_per_swarm:
                raise HoldLimit(
                    f"swarm {swarm.swarm_id!r} has {swarm.holds} open reservations, the most the policy allows is "
                    f"{policy.max_holds_per_swarm}: settle or release some first"
                )

    def _required(self, required_capabilities: Sequence[str]) -> list[str]:
        required = self.vocabulary.check(required_capabilities)
        if not required:
            raise InvalidRequest("required_capabilities must name at least one capability")
        return required

    def _max_cost(self, max_cost: float | None, policy: ResourcePolicy) -> float:
        return policy.max_cost_per_task if max_cost is None else max_cost

    def _rank(
        self,
        required: list[str],
        max_cost: float,
        limit: int,
        estimate: int,
        policy: ResourcePolicy,
        rule: PolicyRule | None,
    ) -> list[tuple[float, int, _Swarm, float]]:
        """The best `limit` qualified swarms as (score, ordinal, swarm, coverage), best first.

        Higher score first; on equal scores the earlier registered swarm first.
        """
        k = len(required)
        min_match = policy.min_capability_match
        need = next(c for c in range(k + 1) if c / k >= min_match)
        by_ordinal = self._by_ordinal
        index = self._index
        models = set(rule.models) if rule is not None and rule.models is not None else None
        mask = 0
        if need == k:
            # Coverage is 1 for every candidate, so the value order is the score order: walk the value-sorted list
            # of the rarest capability and stop at the first `limit` that qualify. When the walk would be long
            # (few of its swarms hold the other capabilities too), the masks name the candidates at once instead.
            lists = [index.ranked_for(cap) for cap in required]
            rarest = min(range(k), key=lambda i: len(lists[i]))
            if not lists[rarest]:
                return []
            if k == 1:
                return self._walk(lists[0], None, max_cost, limit, estimate, models, None) or []
            mask = index.all_of(required)
            if not mask:
                return []
            expected_steps = 1.0  # to the first swarm holding every other capability, if they were independent
            for i in range(k):
                if i != rarest:
                    expected_steps *= len(self._swarms) / len(lists[i])
            if expected_steps * limit <= WALK_EXPECTED:
                # The mask's bytes say in O(1) whether an entry holds them all (and is eligible), without touching
                # the swarm: with 100,000 swarms, reading each one's capabilities costs a cache miss per entry.
                members = mask.to_bytes((mask.bit_length() + 7) // 8, "little")
                walked = self._walk(lists[rarest], members, max_cost, limit, estimate, models, WALK_LIMIT)
                if walked is not None:
                    return walked
        if need == 0:  # a zero minimum admits swarms that share nothing: no index can help
            candidates = [s for s in self._swarms.values() if s.admits]
        else:
            candidates = [by_ordinal[o] for o in ordinals(mask or index.at_least(required, need))]
        req = set(required)
        scored: list[tuple[float, int, _Swarm, float]] = []
        for swarm in candidates:
            if swarm.cost_per_hour > max_cost:
                continue
            if estimate and swarm.budget - swarm.held < estimate:
                continue
            if models is not None and swarm.model not in models:
                continue
            coverage = 1.0 if need == k else sum(1 for cap in swarm.capabilities if cap in req) / k
            scored.append(((coverage * swarm.reputation_score) / swarm.cost_per_hour, swarm.ordinal, swarm, coverage))
        if limit == 1:
            return [min(scored, key=lambda item: (-item[0], item[1]))] if scored else []
        return heapq.nsmallest(limit, scored, key=lambda item: (-item[0], item[1]))

    def _walk(
        self,
        ranked: list[tuple[float, int]],
        members: bytes | None,
        max_cost: float,
        limit: int,
        estimate: int,
        models: set[str] | None,
        steps: int | None,
    ) -> list[tuple[float, int, _Swarm, float]] | None:
        """The first `limit` qualified swarms of a value-sorted list, best first; with `members` (a bitmask's bytes,
        lowest ordinal first) only those whose bit is set.

        None when `steps` entries were looked at before `limit` were found (the caller then uses the masks).
        """
        best: list[tuple[float, int, _Swarm, float]] = []
        by_ordinal = self._by_ordinal
        size = len(members) if members is not None else 0
        for step, (_, ordinal) in enumerate(ranked):
            if step == steps:
                return None
            if members is not None:
                byte = ordinal >> 3
                if byte >= size or not members[byte] >> (ordinal & 7) & 1:
                    continue
            swarm = by_ordinal[ordinal]
            if swarm.cost_per_hour > max_cost or not swarm.admits:
                continue
            if estimate and swarm.budget - swarm.held < estimate:
                continue
            if models is not None and swarm.model not in models:
                continue
            best.append(((1.0 * swarm.reputation_score) / swarm.cost_per_hour, ordinal, swarm, 1.0))
            if len(best) == limit:
                break
        return best

    def _explain(
        self,
        required: list[str],
        max_cost: float,
        estimate: int,
        policy: ResourcePolicy,
        rule: PolicyRule | None,
        limit: int | None,
        cursor: str | None,
    ) -> tuple[list[SwarmExplanation], str | None]:
        """A page of the registered swarms with their coverage, score and the first filter (in the seed's order)
        each failed; and the cursor of the next page."""
        page, next_cursor = self._swarm_page(limit, cursor)
        req = set(required)
        k = len(req)
        min_match = policy.min_capability_match
        models = set(rule.models) if rule is not None and rule.models is not None else None
        explained: list[SwarmExplanation] = []
        for swarm in page:
            coverage = sum(1 for cap in swarm.capabilities if cap in req) / k
            rejected_by: str | None = None
            if coverage < min_match:
                rejected_by = BELOW_THRESHOLD
            elif models is not None and swarm.model not in models:
                rejected_by = MODEL_NOT_ALLOWED
            elif swarm.cost_per_hour > max_cost:
                rejected_by = COST_ABOVE_MAX
            elif swarm.budget <= 0:
                rejected_by = BUDGET_EXHAUSTED
            elif estimate and swarm.budget - swarm.held < estimate:
                rejected_by = BELOW_ESTIMATE
            elif not swarm.admits:
                rejected_by = BREAKER_TRIPPED
            score = (coverage * swarm.reputation_score) / swarm.cost_per_hour
            explained.append(
                SwarmExplanation(
                    swarm_id=swarm.swarm_id, capability_match=coverage, score=score, rejected_by=rejected_by
                )
            )
        return explained, next_cursor

    def _swarm_page(self, limit: int | None, cursor: str | None) -> tuple[list[_Swarm], str | None]:
        """Up to `limit` swarms in registration order from the ordinal `cursor` names, and the next page's cursor
        (None: no swarm after these). Ordinals never change, so a swarm registered or removed between two pages
        neither shifts nor repeats the others."""
        limit = limit or PAGE_DEFAULT
        by_ordinal = self._by_ordinal
        end = self._next_ordinal
        page: list[_Swarm] = []
        ordinal = int(cursor) if cursor is not None else 0
        while ordinal < end:
            swarm = by_ordinal.get(ordinal)
            if swarm is not None:
                if len(page) == limit:
                    return page, str(ordinal)
                page.append(swarm)
            ordinal += 1
        return page, None

    # -- reservations ---------------------------------------------------------------------------------------------

    def _hold(self, task_id: str, swarm: _Swarm, micros: int, now: float) -> None:
        key = (task_id, swarm.swarm_id)
        previous = self._holds.pop(key, None)
        if previous is not None:
            swarm.held -= previous[0]
        else:
            swarm.holds += 1
        expires_at = now + self.policy.reservation_ttl_s
        self._holds[key] = (micros, expires_at)
        swarm.held += micros
        heapq.heappush(self._hold_expiry, (expires_at, task_id, swarm.swarm_id))

    def _release(
        self, task_id: str, swarm_id: str, now: float, why: str, trace_id: str, actual: float | None = None
    ) -> None:
        micros, _ = self._holds.pop((task_id, swarm_id))
        swarm = self._swarms[swarm_id]
        swarm.held -= micros
        swarm.holds -= 1
        params: dict[str, Any] = {"task_id": task_id, "swarm_id": swarm_id, "held": to_usd(micros), "why": why}
        if actual is not None:
            params["actual"] = actual
        self._witness("reservation_released", params, now, "INFO", trace_id)

    def _expire_holds(self, now: float, trace_id: str) -> None:
        """Release every hold whose time is up (a hold never outlives `reservation_ttl_s`)."""
        heap = self._hold_expiry
        while heap and heap[0][0] <= now:
            expires_at, task_id, swarm_id = heapq.heappop(heap)
            hold = self._holds.get((task_id, swarm_id))
            if hold is not None and hold[1] == expires_at:
                self._release(task_id, swarm_id, now, "expired", trace_id)

    def _held_at(self, swarm: _Swarm, now: float | None) -> int:
        """Micro-dollars held on a swarm by holds still open at `now` (swept or not)."""
        if not swarm.held or now is None:
            return swarm.held
        sid = swarm.swarm_id
        return sum(m for (_, s), (m, exp) in self._holds.items() if s == sid and exp > now)

    def holds(self, now: float) -> list[HoldStatus]:
        """The open reservations at `now` (expired ones excluded, whether or not swept yet)."""
        return [
            HoldStatus(task_id=task_id, swarm_id=swarm_id, amount=to_usd(micros), expires_at=expires_at)
            for (task_id, swarm_id), (micros, expires_at) in self._holds.items()
            if expires_at > now
        ]

    # -- half-open recovery ----------------------------------------------------------------------------------

    def _advance_breakers(self, now: float, trace_id: str) -> None:
        """Open breakers of recoverable trips whose cool-down has passed become half-open and admit probes."""
        for swarm in list(self._recovering.values()):
            breaker = swarm.breaker
            if breaker is None or breaker.state != "open" or breaker.next_probe_at is None:
                continue
            if now < breaker.next_probe_at:
                continue
            probes = self.policy.half_open_probes
            swarm.breaker = msgspec.structs.replace(breaker, state="half_open", probes_left=probes)
            self._eligibility(swarm)
            self._events.append(
                BreakerHalfOpen(
                    swarm_id=swarm.swarm_id, reason=breaker.reason, probes=probes, at=now, trace_id=trace_id
                )
            )
            self._witness(
                "circuit_breaker_half_open",
                {"swarm_id": swarm.swarm_id, "reason": breaker.reason, "probes": probes},
                now,
                "MEDIUM",
                trace_id,
            )

    def _take_probe(self, swarm: _Swarm) -> None:
        assert swarm.breaker is not None
        swarm.breaker = msgspec.structs.replace(swarm.breaker, probes_left=swarm.breaker.probes_left - 1)
        self._eligibility(swarm)

    # -- budgets and breakers -----------------------------------------------------------------------------

    def _applied_already(self, kind: str, event_id: str | None) -> bool:
        """Whether this event id of this kind was applied (within its window), without remembering it: for
        requests that check for a retry before they validate, and remember the id (`_seen`) only once valid."""
        return event_id is not None and event_id in self._applied.get(kind, ())

    def _seen(self, kind: str, event_id: str | None, now: float) -> bool:
        """True when this event id was applied already; otherwise remember it (bounded, oldest forgotten)."""
        if event_id is None:
            return False
        applied = self._applied.get(kind)
        if applied is None:
            applied = self._applied[kind] = OrderedDict()
        if event_id in applied:
            return True
        applied[event_id] = now
        horizon = now - self._dedupe_horizon_s
        if len(applied) > self._dedupe_limit or next(iter(applied.values())) < horizon:
            self._bound(kind, applied, horizon)
        return False

    def _bound(self, kind: str, window: OrderedDict[str, Any], horizon: float) -> None:
        """Forget a window's entries older than `horizon`, and its oldest beyond `dedupe_limit` (counted)."""
        while window:
            oldest = next(iter(window.values()))
            at = oldest[1] if isinstance(oldest, tuple) else oldest
            if at < horizon:
                window.popitem(last=False)
            elif len(window) > self._dedupe_limit:
                window.popitem(last=False)
                self.evicted[kind] = self.evicted.get(kind, 0) + 1
            else:
                return

    def track_cost(
        self,
        swarm_id: str,
        operation: str,
        cost: float,
        *,
        now: float,
        event_id: str | None = None,
        task_id: str | None = None,
        trace_id: str = "",
    ) -> CostReply:
        """Deduct a cost at once. Reaching ≤ 0 trips the breaker (once; later costs are still recorded)."""
        swarm = self._get(swarm_id)
        if not 0.0 <= cost <= self.policy.max_amount_usd:  # also refuses NaN
            raise InvalidCost(f"cost must be a finite number from 0 to {self.policy.max_amount_usd:g}, got {cost!r}")
        if self._seen("cost", event_id, now):
            return CostReply(
                swarm_id=swarm_id,
                remaining=to_usd(swarm.budget),
                tripped=swarm.breaker is not None,
                duplicate=True,
                trace_id=trace_id,
            )
        self._expire_holds(now, trace_id)
        micros = to_micros(cost)
        swarm.budget -= micros
        swarm.cost_tracked += micros
        swarm.operations_count += 1
        remaining = to_usd(swarm.budget)
        params: dict[str, Any] = {
            "swarm_id": swarm_id,
            "operation": operation,
            "cost": cost,
            "remaining": remaining,
        }
        if task_id is not None:
            params["task_id"] = task_id
        if event_id is not None:
            params["event_id"] = event_id
        self._witness("cost_tracked", params, now, "INFO", trace_id)
        if task_id is not None and (task_id, swarm_id) in self._holds:
            self._release(task_id, swarm_id, now, "settled", trace_id, actual=cost)
        self._soft_budget(swarm, now, trace_id)
        if swarm.budget <= 0 and (swarm.breaker is None or swarm.breaker.reason in RECOVERABLE):
            self._trip(swarm, BUDGET_EXHAUSTED, now, trace_id)  # money always needs a human
        elif swarm.budget <= 0:
            self._eligibility(swarm)
        return CostReply(swarm_id=swarm_id, remaining=remaining, tripped=swarm.breaker is not None, trace_id=trace_id)

    def record_failure(
        self,
        swarm_id: str,
        *,
        now: float,
        task_id: str | None = None,
        error: str | None = None,
        event_id: str | None = None,
        trace_id: str = "",
    ) -> FailureReply:
        """Record a failed task; `circuit_breaker_failure_threshold` failures inside the window trip the breaker."""
        swarm = self._get(swarm_id)
        if swarm.failures is None:
            swarm.failures = deque()
        failures = swarm.failures
        horizon = now - self.policy.failure_window_s
        if self._seen("failure", event_id, now):
            return FailureReply(
                swarm_id=swarm_id,
                failures_in_window=sum(1 for t in failures if t > horizon),
                tripped=swarm.breaker is not None,
                duplicate=True,
                trace_id=trace_id,
            )
        failures.append(now)
        while failures and failures[0] <= horizon:
            failures.popleft()
        count = len(failures)
        self._witness(
            "failure_recorded",
            {"swarm_id": swarm_id, "task_id": task_id, "error": error, "failures_in_window": count},
            now,
            "INFO",
            trace_id,
        )
        if swarm.breaker is not None and swarm.breaker.state == "half_open":
            self._reopen(swarm, now, trace_id)
        elif count >= self.policy.circuit_breaker_failure_threshold and swarm.breaker is None:
            self._trip(swarm, "repeated_failures", now, trace_id)
        return FailureReply(
            swarm_id=swarm_id, failures_in_window=count, tripped=swarm.breaker is not None, trace_id=trace_id
        )

    def trip_circuit_breaker(
        self,
        swarm_id: str,
        reason: str,
        *,
        now: float,
        requested_by: str,
        trace_id: str = "",
        event_id: str | None = None,
    ) -> TripReply:
        """Trip a breaker by hand, for one of the manual reasons (a retry with the same `event_id` is a no-op)."""
        swarm = self._get(swarm_id)
        if reason not in MANUAL_TRIP_REASONS:
            raise InvalidRequest(f"reason must be one of {sorted(MANUAL_TRIP_REASONS)}, got {reason!r}")
        if self._applied_already("trip", event_id):
            return TripReply(swarm_id=swarm_id, duplicate=True, trace_id=trace_id)
        if swarm.breaker is not None:
            raise AlreadyTripped(f"swarm {swarm_id!r} is already tripped ({swarm.breaker.reason})")
        self._seen("trip", event_id, now)
        self._trip(swarm, reason, now, trace_id, requested_by=requested_by)
        return TripReply(swarm_id=swarm_id, trace_id=trace_id)

    def _trip(self, swarm: _Swarm, reason: str, now: float, trace_id: str, requested_by: str | None = None) -> None:
        if reason in RECOVERABLE:
            cooldown = self.policy.breaker_cooldown_s
            swarm.breaker = BreakerState(
                reason=reason, tripped_at=now, next_probe_at=now + cooldown, cooldown_s=cooldown
            )
            self._recovering[swarm.swarm_id] = swarm
        else:
            swarm.breaker = BreakerState(reason=reason, tripped_at=now)
            self._recovering.pop(swarm.swarm_id, None)
        self._eligibility(swarm)
        remaining = to_usd(swarm.budget)
        self._events.append(
            BreakerTripped(
                swarm_id=swarm.swarm_id,
                reason=reason,
                remaining=remaining,
                operations_count=swarm.operations_count,
                tripped_at=now,
                trace_id=trace_id,
                identity=self.identity,
            )
        )
        self._events.append(
            Escalation(
                swarm_id=swarm.swarm_id,
                reason=f"Circuit breaker tripped - {reason.replace('_', ' ')}",
                context=EscalationContext(type="circuit_breaker", reason=reason, timestamp=now),
                trace_id=trace_id,
            )
        )
        params: dict[str, Any] = {
            "swarm_id": swarm.swarm_id,
            "reason": reason,
            "old_budget": remaining,
            "operations_count": swarm.operations_count,
        }
        if requested_by is not None:
            params["requested_by"] = requested_by
        self._witness("circuit_breaker_tripped", params, now, "HIGH", trace_id)

    def _reopen(self, swarm: _Swarm, now: float, trace_id: str) -> None:
        """A probe failed: open again, with the cool-down doubled (capped)."""
        assert swarm.breaker is not None
        cooldown = min(swarm.breaker.cooldown_s * 2, self.policy.breaker_max_cooldown_s)
        swarm.breaker = msgspec.structs.replace(
            swarm.breaker, state="open", next_probe_at=now + cooldown, cooldown_s=cooldown, probes_left=0
        )
        self._eligibility(swarm)
        self._events.append(
            BreakerTripped(
                swarm_id=swarm.swarm_id,
                reason=swarm.breaker.reason,
                remaining=to_usd(swarm.budget),
                operations_count=swarm.operations_count,
                tripped_at=now,
                trace_id=trace_id,
                identity=self.identity,
            )
        )
        self._witness(
            "circuit_breaker_reopened",
            {"swarm_id": swarm.swarm_id, "reason": swarm.breaker.reason, "cooldown_s": cooldown},
            now,
            "HIGH",
            trace_id,
        )

    def record_success(
        self,
        swarm_id: str,
        *,
        now: float,
        task_id: str | None = None,
        event_id: str | None = None,
        trace_id: str = "",
    ) -> SuccessReply:
        """A task succeeded: a half-open breaker closes by itself (a budget trip still needs a human)."""
        swarm = self._get(swarm_id)
        if self._seen("success", event_id, now):
            return SuccessReply(swarm_id=swarm_id, closed=False, duplicate=True, trace_id=trace_id)
        breaker = swarm.breaker
        if breaker is None or breaker.state != "half_open":
            return SuccessReply(swarm_id=swarm_id, closed=False, trace_id=trace_id)
        swarm.breaker = None
        swarm.failures = None
        self._recovering.pop(swarm_id, None)
        self._eligibility(swarm)
        self._events.append(BreakerClosed(swarm_id=swarm_id, reason=breaker.reason, closed_at=now, trace_id=trace_id))
        self._witness(
            "circuit_breaker_closed",
            {"swarm_id": swarm_id, "reason": breaker.reason, "task_id": task_id},
            now,
            "MEDIUM",
            trace_id,
        )
        return SuccessReply(swarm_id=swarm_id, closed=True, trace_id=trace_id)

    def _soft_budget(self, swarm: _Swarm, now: float, trace_id: str) -> None:
        """The first time a budget falls below `soft_budget_ratio` of its allocation: a MEDIUM escalation."""
        if swarm.soft_warned or swarm.budget >= swarm.allocated * self.policy.soft_budget_ratio:
            return
        swarm.soft_warned = True
        if swarm.budget <= 0:  # exhausted at once: the trip's HIGH escalation says it
            return
        remaining, allocated = to_usd(swarm.budget), to_usd(swarm.allocated)
        self._events.append(
            Escalation(
                swarm_id=swarm.swarm_id,
                reason=f"Budget running low - {remaining:.2f} of {allocated:.2f} USD left",
                context=EscalationContext(type="soft_budget", reason="budget_low", timestamp=now),
                trace_id=trace_id,
                severity="MEDIUM",
            )
        )
        self._witness(
            "budget_low",
            {"swarm_id": swarm.swarm_id, "remaining": remaining, "allocated": allocated},
            now,
            "MEDIUM",
            trace_id,
        )

    def reset_circuit_breaker(
        self,
        swarm_id: str,
        new_budget: float,
        *,
        approved_by: str,
        now: float,
        event_id: str | None = None,
        trace_id: str = "",
    ) -> ResetReply:
        """A named human closes a tripped breaker and allocates a new budget."""
        swarm = self._get(swarm_id)
        if self._applied_already("reset", event_id):
            return ResetReply(swarm_id=swarm_id, remaining=to_usd(swarm.budget), duplicate=True, trace_id=trace_id)
        if swarm.breaker is None:
            raise NotTripped(f"swarm {swarm_id!r} is not tripped; nothing to reset")
        _check_budget(new_budget, "new_budget", self.policy.max_amount_usd)
        if not approved_by.strip():
            raise InvalidRequest("approved_by must name the human who approved the reset")
        self._seen("reset", event_id, now)
        previous = swarm.breaker
        swarm.breaker = None
        swarm.budget = swarm.allocated = to_micros(new_budget)
        swarm.soft_warned = False
        swarm.failures = None
        self._recovering.pop(swarm_id, None)
        self._eligibility(swarm)
        self._resets_seq += 1
        self._resets.append(
            ResetRecord(
                swarm_id=swarm_id,
                new_budget=new_budget,
                approved_by=approved_by,
                previous_reason=previous.reason,
                tripped_at=previous.tripped_at,
                reset_at=now,
                trace_id=trace_id,
                identity=self.identity,
            )
        )
        self._events.append(
            BreakerReset(
                swarm_id=swarm_id,
                new_budget=new_budget,
                approved_by=approved_by,
                reset_at=now,
                trace_id=trace_id,
                identity=self.identity,
            )
        )
        self._witness(
            "circuit_breaker_reset",
            {
                "swarm_id": swarm_id,
                "new_budget": new_budget,
                "approved_by": approved_by,
                "previous_reason": previous.reason,
                "tripped_at": previous.tripped_at,
            },
            now,
            "MEDIUM",
            trace_id,
        )
        return ResetReply(swarm_id=swarm_id, remaining=to_usd(swarm.budget), trace_id=trace_id)

    # -- reports ------------------------------------------------------------------------------------------

    def get_budget_report(self) -> dict[str, float]:
        """Remaining budget (USD) of every swarm, in registration order."""
        return {swarm_id: to_usd(s.budget) for swarm_id, s in self._swarms.items()}

    def get_circuit_breaker_status(self) -> dict[str, BreakerState]:
        """The tripped breakers: swarm id -> (reason, tripped_at)."""
        return {swarm_id: s.breaker for swarm_id, s in self._swarms.items() if s.breaker is not None}

    def history(
        self, limit: int | None = None, cursor: str | None = None
    ) -> tuple[list[AssignmentRecord], list[ResetRecord], str | None]:
        """A page of the assignment and reset history, newest last: the `limit` newest records of each kind older
        than the positions `cursor` names (None: the newest), and the cursor of the page before (None: no older
        records are kept). Positions count every record ever kept, so new records never shift a walk."""
        limit = limit or PAGE_DEFAULT
        before_a, before_r = (int(p) for p in cursor.split(".")) if cursor is not None else (None, None)
        assignments, at_a = _page(self._history, self._history_seq, limit, before_a)
        resets, at_r = _page(self._resets, self._resets_seq, limit, before_r)
        more = at_a is not None or at_r is not None
        return assignments, resets, f"{at_a or 0}.{at_r or 0}" if more else None

    def get_reset_history(self, limit: int | None = None) -> list[ResetRecord]:
        """The most recent resets, each with its approver, newest last."""
        resets = list(self._resets)
        return resets if limit is None else resets[-limit:] if limit > 0 else []

    def get_assignment_history(self, limit: int | None = None) -> list[AssignmentRecord]:
        """The most recent assignments, newest last."""
        history = list(self._history)
        return history if limit is None else history[-limit:] if limit > 0 else []

    def get_swarm_profile(self, swarm_id: str, *, now: float | None = None) -> SwarmStatus:
        """A swarm's profile with its live budget and breaker."""
        return self._status_of(self._get(swarm_id), now)

    def _status_of(self, swarm: _Swarm, now: float | None) -> SwarmStatus:
        failures = swarm.failures or ()
        if now is None:
            in_window = len(failures)
        else:
            horizon = now - self.policy.failure_window_s
            in_window = sum(1 for t in failures if t > horizon)
        remaining = to_usd(swarm.budget)
        return SwarmStatus(
            swarm_id=swarm.swarm_id,
            capabilities=list(swarm.capabilities),
            cost_per_hour=swarm.cost_per_hour,
            reputation_score=swarm.reputation_score,
            current_budget_remaining=remaining,
            model=swarm.model,
            budget_remaining=remaining,
            breaker=swarm.breaker,
            failures_in_window=in_window,
            operations_count=swarm.operations_count,
            held=to_usd(self._held_at(swarm, now)),
        )

    def status(
        self, *, now: float, trace_id: str = "", limit: int | None = None, cursor: str | None = None
    ) -> StatusReply:
        """A page of swarms (registration order) with their budgets, breakers and holds, and the policy in force."""
        page, next_cursor = self._swarm_page(limit, cursor)
        ids = {s.swarm_id for s in page}
        return StatusReply(
            swarms=[self._status_of(s, now) for s in page],
            budgets={s.swarm_id: to_usd(s.budget) for s in page},
            breakers={s.swarm_id: s.breaker for s in page if s.breaker is not None},
            policy=self.policy,
            holds=[h for h in self.holds(now) if h.swarm_id in ids],
            rules=list(self.rules),
            recent_assignments=self.get_assignment_history(10),
            next_cursor=next_cursor,
            trace_id=trace_id,
        )

    def gauges(self) -> Iterator[tuple[str, float, float, bool]]:
        """(swarm id, remaining USD, cost tracked USD, tripped) of every swarm: for metrics, read-only."""
        for s in list(self._swarms.values()):
            yield s.swarm_id, to_usd(s.budget), to_usd(s.cost_tracked), s.breaker is not None

    def export_state(self, seq: int = 0) -> CoreState:
        """Everything the core holds, as one Struct (a snapshot covering ledger sequence `seq`)."""
        return CoreState(
            seq=seq,
            policy=self.policy,
            capabilities=list(self.vocabulary.extra),
            swarms=[
                SwarmState(
                    s.swarm_id,
                    s.capabilities,
                    s.cost_per_hour,
                    s.reputation_score,
                    s.model,
                    s.ordinal,
                    s.budget,
                    s.cost_tracked,
                    s.operations_count,
                    s.breaker,
                    list(s.failures or ()),
                    s.allocated,
                    s.soft_warned,
                )
                for s in self._swarms.values()
            ],
            next_ordinal=self._next_ordinal,
            history=list(self._history),
            resets=list(self._resets),
            history_seq=self._history_seq,
            resets_seq=self._resets_seq,
            applied=[(kind, event_id, at) for kind, window in self._applied.items() for event_id, at in window.items()],
            tasks=[(task_id, list(assignments), at) for task_id, (assignments, at) in self._tasks.items()],
            retired=sorted(self._retired.items()),
            holds=[(task_id, swarm_id, m, exp) for (task_id, swarm_id), (m, exp) in self._holds.items()],
            policies={k: v for k, v in self.policies.items() if PRESETS.get(k) != v},
            rules=list(self.rules),
        )

    @classmethod
    def from_state(
        cls,
        state: CoreState,
        *,
        history_limit: int = 1000,
        dedupe_limit: int = 200_000,
        dedupe_horizon_s: float = 7 * 86400.0,
    ) -> Governor:
        """A core holding exactly the exported state."""
        core = cls(
            state.policy,
            capabilities=state.capabilities,
            history_limit=history_limit,
            dedupe_limit=dedupe_limit,
            dedupe_horizon_s=dedupe_horizon_s,
        )
        for st in state.swarms:
            profile = SwarmProfile(
                swarm_id=st.swarm_id,
                capabilities=st.capabilities,
                cost_per_hour=st.cost_per_hour,
                reputation_score=st.reputation_score,
                current_budget_remaining=1.0,  # replaced below by the exact micro-dollar amount
                model=st.model,
            )
            swarm = _Swarm(profile, list(st.capabilities), st.ordinal)
            swarm.budget = st.budget_micros
            swarm.cost_tracked = st.cost_tracked_micros
            swarm.operations_count = st.operations_count
            swarm.breaker = st.breaker
            swarm.failures = deque(st.failures) if st.failures else None
            swarm.allocated = st.allocated_micros or st.budget_micros
            swarm.soft_warned = st.soft_warned
            core._add(swarm)
        core._next_ordinal = state.next_ordinal
        core._history.extend(state.history)
        core._resets.extend(state.resets)
        core._history_seq = max(state.history_seq, len(state.history))
        core._resets_seq = max(state.resets_seq, len(state.resets))
        for kind, event_id, at in state.applied:
            core._applied.setdefault(kind, OrderedDict())[event_id] = at
        core._tasks.update((task_id, (tuple(assignments), at)) for task_id, assignments, at in state.tasks)
        core._retired.update(state.retired)
        core.policies = {**PRESETS, **state.policies}
        core.rules = list(state.rules)
        for task_id, swarm_id, micros, expires_at in state.holds:
            core._holds[(task_id, swarm_id)] = (micros, expires_at)
            core._swarms[swarm_id].held += micros
            core._swarms[swarm_id].holds += 1
            heapq.heappush(core._hold_expiry, (expires_at, task_id, swarm_id))
        return core

    def __len__(self) -> int:
        return len(self._swarms)

    def __contains__(self, swarm_id: object) -> bool:
        return swarm_id in self._swarms


def _rule_name(rule: PolicyRule | None) -> str | None:
    return None if rule is None else f"{rule.match} -> {rule.policy}"


def check_rules(rules: Sequence[PolicyRule], policies: dict[str, ResourcePolicy]) -> None:
    """Every rule names a known policy (raises InvalidRequest naming the rule)."""
    known = {"default", *PRESETS, *policies}
    for i, rule in enumerate(rules):
        if rule.policy not in known:
            raise InvalidRequest(f"rules[{i}].policy: unknown policy {rule.policy!r}; known: {sorted(known)}")


def rule_conflicts(rules: Sequence[PolicyRule], capabilities: Iterable[str]) -> list[str]:
    """Human-readable notes on rules that another rule shadows for some capability, or that match nothing."""
    caps = list(capabilities)
    notes: list[str] = []
    for i, rule in enumerate(rules):
        matched = [c for c in caps if fnmatch.fnmatchcase(c, rule.match)]
        if not matched:
            notes.append(f"rules[{i}] ({rule.match} -> {rule.policy}) matches no known capability")
            continue
        for cap in matched:
            first = next(j for j, r in enumerate(rules) if fnmatch.fnmatchcase(cap, r.match))
            if first != i and (rules[first].policy != rule.policy or rules[first].models != rule.models):
                other = rules[first]
                notes.append(
                    f"rules[{i}] ({rule.match} -> {rule.policy}) is shadowed for {cap} by rules[{first}] "
                    f"({other.match} -> {other.policy}): the first match wins"
                )
    return notes


def _admits(swarm: _Swarm) -> bool:
    """Budget above zero and breaker closed, or half-open with probes left."""
    breaker = swarm.breaker
    return swarm.budget > 0 and (breaker is None or (breaker.state == "half_open" and breaker.probes_left > 0))


def _check_budget(value: float, field: str, limit: float = MAX_USD) -> None:
    # Also refuses NaN, infinity, and amounts that round to zero micro-dollars.
    if not (0.0 < value <= limit) or to_micros(value) <= 0:
        raise InvalidBudget(f"{field} must be a finite number > 0 (at most {limit:g}), got {value!r}")
