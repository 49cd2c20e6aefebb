"""The decision core's façade: one method per command, over the modules beside it.

Plain synchronous Python. It does no I/O and reads no clock: every operation that depends on time takes `now`
(seconds since the epoch). Each operation either raises a `GovernorError` and changes nothing, or changes the
state, returns its reply and records the events to publish (`take_events()`). Only the actor calls it.

The core speaks the wire's language on purpose: its results are the reply and event Structs of `schemas/`
(frozen msgspec Structs, no I/O in them). A second set of domain types would be copied into these on every reply
of the hot path, and the two would have to be kept alike field by field; the Structs are the domain's types,
named so in `schemas/`, and what the core keeps of its own (swarms, holds, windows) never leaves it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, cast

import msgspec

from schemas.codes import MANUAL_TRIP_REASONS, RECOVERABLE, ManualTripReason
from schemas.events import BreakerReset, Escalation, EscalationContext, Event, Identity
from schemas.ledger import Configure, CoreState
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
from worker.core import matching, state
from worker.core.breakers import Breakers
from worker.core.capabilities import Vocabulary
from worker.core.context import Context
from worker.core.dedupe import Dedupe
from worker.core.history import History, newest
from worker.core.money import check_budget, check_cost, to_micros, to_usd
from worker.core.registry import Registry, Swarm
from worker.core.reservations import Reservations
from worker.core.rules import allowed_models, check_rules, governing, rule_name
from worker.errors import AlreadyRegistered, AlreadyTripped, InvalidRequest, NotTripped


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
        self.registry = Registry()
        self.breakers = Breakers(self.registry)
        self.reservations = Reservations()
        self.dedupe = Dedupe(dedupe_limit, dedupe_horizon_s)
        self.history_log = History(history_limit)
        self._events: list[Event] = []
        self.identity: Identity | msgspec.UnsetType = msgspec.UNSET
        """The authenticated sender of the command being applied (set around each command by `dispatch.apply`):
        it goes into that command's witness records, trip and reset events and reset history."""

    def _context(self, now: float, trace_id: str) -> Context:
        return Context(now, trace_id, self.identity, self._events)

    @property
    def evicted(self) -> dict[str, int]:
        """Ids forgotten before their horizon because their kind's window was full (assignments under `assign`)."""
        return self.dedupe.evicted

    def take_events(self) -> list[Event]:
        """Return the events recorded since the last call, oldest first, and forget them."""
        events, self._events = self._events, []
        return events

    # -- configuration ------------------------------------------------------------------------------------

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
        self, configure: Configure, profiles: Sequence[SwarmProfile], *, now: float, trace_id: str = ""
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
        ctx = self._context(now, trace_id)
        ctx.witness("config_reloaded", {"changed": changed, "registered": registered}, "MEDIUM")
        return ReloadReply(changed=changed, registered=registered, trace_id=trace_id)

    # -- registry -----------------------------------------------------------------------------------------

    def known(self, swarm_id: str) -> bool:
        """True when the id is registered or was registered once (and deregistered since)."""
        return self.registry.known(swarm_id)

    def register_swarm(
        self, profile: SwarmProfile, *, now: float, trace_id: str = "", event_id: str | None = None
    ) -> SwarmReply:
        """Register a new swarm. An existing id is refused: registration never restores budget or a breaker. A
        retry with the same `event_id` is answered as the first was (`duplicate`) and changes nothing."""
        if self.dedupe.applied_already("register", event_id):
            return SwarmReply(swarm_id=profile.swarm_id, duplicate=True, trace_id=trace_id)
        if profile.swarm_id in self.registry.swarms:
            raise AlreadyRegistered(f"swarm {profile.swarm_id!r} is already registered")
        check_budget(profile.current_budget_remaining, "current_budget_remaining", self.policy.max_amount_usd)
        if not (profile.cost_per_hour > 0 and math.isfinite(profile.cost_per_hour)):
            raise InvalidRequest(f"cost_per_hour must be a finite number > 0, got {profile.cost_per_hour!r}")
        if not 0.0 <= profile.reputation_score <= 1.0:
            raise InvalidRequest(f"reputation_score must be in [0, 1], got {profile.reputation_score!r}")
        capabilities = self.vocabulary.check(profile.capabilities)
        self.dedupe.seen("register", event_id, now)
        swarm = self.registry.new(profile, capabilities)
        self.breakers.track(swarm)
        self._context(now, trace_id).witness(
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
            "INFO",
        )
        return SwarmReply(swarm_id=swarm.swarm_id, trace_id=trace_id)

    def deregister_swarm(
        self, swarm_id: str, *, now: float, trace_id: str = "", event_id: str | None = None
    ) -> SwarmReply:
        """Remove a swarm; it gets no more work and its budget is forgotten (a retry with the same `event_id` is
        answered `duplicate`)."""
        if self.dedupe.applied_already("deregister", event_id):
            return SwarmReply(swarm_id=swarm_id, duplicate=True, trace_id=trace_id)
        swarm = self.registry.get(swarm_id)
        self.dedupe.seen("deregister", event_id, now)
        self.registry.retire(swarm)
        self.breakers.forget(swarm_id)
        self.reservations.forget(swarm_id)
        self._context(now, trace_id).witness(
            "swarm_deregistered", {"swarm_id": swarm_id, "remaining": to_usd(swarm.budget)}, "INFO"
        )
        return SwarmReply(swarm_id=swarm_id, trace_id=trace_id)

    # -- matching -----------------------------------------------------------------------------------------

    def validate_capability_match(
        self, required_capabilities: Sequence[str], swarm_capabilities: Sequence[str]
    ) -> tuple[bool, float]:
        """The design document's policy check: (coverage ≥ policy minimum, coverage)."""
        required = set(required_capabilities)
        if not required:
            return False, 0.0
        covered = len(required & set(swarm_capabilities)) / len(required)
        return covered >= self.policy.min_capability_match, covered

    def find_qualified_swarm(self, required_capabilities: Sequence[str], max_cost: float | None = None) -> str | None:
        """The design document's query: the best qualified swarm's id, or None. Records nothing."""
        required = self._required(required_capabilities)
        policy, rule = governing(self.rules, self.policy, self.policies, required)
        ceiling = policy.max_cost_per_task if max_cost is None else max_cost
        ranked = matching.rank(
            self.registry, required, policy.min_capability_match, ceiling, 1, 0, allowed_models(rule)
        )
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
        ctx = self._context(now, trace_id)
        prior = self.dedupe.assigned(task_id, now, self.policy.assign_window_s)
        if prior is not None and reassign:
            self.dedupe.forget_task(task_id)
            for earlier in prior:
                if (task_id, earlier.swarm_id) in self.reservations:
                    self.reservations.release(ctx, task_id, self.registry.swarms[earlier.swarm_id], "reassigned")
        elif prior is not None:
            return AssignReply(
                task_id=task_id, swarm_id=prior[0].swarm_id, assignments=list(prior), duplicate=True, trace_id=trace_id
            )
        if estimated_cost is not None:
            check_cost(estimated_cost, "estimated_cost", self.policy.max_amount_usd)
        estimate = to_micros(estimated_cost) if estimated_cost else 0
        policy, rule = governing(self.rules, self.policy, self.policies, required)
        limit = max(1, min(max_swarms, policy.max_swarms_per_task))
        ceiling = policy.max_cost_per_task if max_cost is None else max_cost
        models = allowed_models(rule)
        self.reservations.expire(ctx, self.registry.swarms)
        self.breakers.advance(ctx, self.policy)
        ranked = matching.rank(self.registry, required, policy.min_capability_match, ceiling, limit, estimate, models)
        explained: dict[str, Any] = {}
        if explain:
            page, next_cursor = self.registry.page(explain_limit or PAGE_DEFAULT, explain_cursor)
            explanation = self._explain(page, required, policy.min_capability_match, ceiling, estimate, models)
            explained = {
                "rejected": {e.swarm_id: e.rejected_by for e in explanation if e.rejected_by is not None},
                "explanation": explanation,
                "explain_next_cursor": next_cursor,
            }
        if not ranked:
            ctx.witness(
                "no_qualified_swarm",
                {"task_id": task_id, "required_capabilities": required, "max_cost": ceiling},
                "MEDIUM",
            )
            return AssignReply(
                task_id=task_id,
                swarm_id=None,
                assignments=[],
                reason="no_qualified_swarm",
                trace_id=trace_id,
                **explained,
            )
        if estimate:
            self.reservations.check(task_id, [swarm for _, _, swarm, _ in ranked], self.policy)
        reserved = to_usd(estimate)
        assignments = tuple(
            Assignment(swarm_id=swarm.swarm_id, capability_match=covered, score=score, reserved=reserved)
            for score, _, swarm, covered in ranked
        )
        expires_at = now + self.policy.reservation_ttl_s
        for _, _, swarm, _ in ranked:
            if swarm.breaker is not None:  # half-open: this task is one of its probes
                self.breakers.take_probe(swarm)
            if estimate:
                self.reservations.hold(task_id, swarm, estimate, expires_at)
        self._assigned(ctx, task_id, required, assignments, rule, reserved if estimate else None)
        self.dedupe.remember_task(task_id, assignments, now, self.policy.assign_window_s)
        best = assignments[0]
        return AssignReply(
            task_id=task_id, swarm_id=best.swarm_id, assignments=list(assignments), trace_id=trace_id, **explained
        )

    def _assigned(
        self,
        ctx: Context,
        task_id: str,
        required: list[str],
        assignments: tuple[Assignment, ...],
        rule: PolicyRule | None,
        reserved: float | None,
    ) -> None:
        """Keep the assignment in the history and witness it."""
        best = assignments[0]
        swarm_ids = [a.swarm_id for a in assignments]
        name = rule_name(rule)
        self.history_log.assigned(
            AssignmentRecord(
                task_id=task_id,
                swarm_id=best.swarm_id,
                swarm_ids=swarm_ids,
                required_capabilities=required,
                capability_match=best.capability_match,
                score=best.score,
                timestamp=ctx.now,
                trace_id=ctx.trace_id,
                rule=name,
            )
        )
        params: dict[str, Any] = {
            "task_id": task_id,
            "swarm_id": best.swarm_id,
            "swarm_ids": swarm_ids,
            "required_capabilities": required,
            "capability_match": best.capability_match,
            "score": best.score,
        }
        if reserved is not None:
            params["reserved"] = reserved
        if name is not None:
            params["rule"] = name
        ctx.witness("task_assigned", params, "INFO")

    @staticmethod
    def _explain(
        page: list[Swarm], required: list[str], min_match: float, ceiling: float, estimate: int, models: set[str] | None
    ) -> list[SwarmExplanation]:
        """Each swarm of a page with its coverage, score and the first filter it failed."""
        req = set(required)
        explained: list[SwarmExplanation] = []
        for swarm in page:
            covered = matching.coverage(req, swarm.capabilities)
            explained.append(
                SwarmExplanation(
                    swarm_id=swarm.swarm_id,
                    capability_match=covered,
                    score=matching.score(covered, swarm),
                    rejected_by=matching.rejection(swarm, covered, min_match, ceiling, estimate, models),
                )
            )
        return explained

    def _required(self, required_capabilities: Sequence[str]) -> list[str]:
        required = self.vocabulary.check(required_capabilities)
        if not required:
            raise InvalidRequest("required_capabilities must name at least one capability")
        return required

    # -- money --------------------------------------------------------------------------------------------

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
        swarm = self.registry.get(swarm_id)
        check_cost(cost, "cost", self.policy.max_amount_usd)
        if self.dedupe.seen("cost", event_id, now):
            return CostReply(
                swarm_id=swarm_id,
                remaining=to_usd(swarm.budget),
                tripped=swarm.breaker is not None,
                duplicate=True,
                trace_id=trace_id,
            )
        ctx = self._context(now, trace_id)
        self.reservations.expire(ctx, self.registry.swarms)
        micros = to_micros(cost)
        swarm.budget -= micros
        swarm.cost_tracked += micros
        swarm.operations_count += 1
        remaining = to_usd(swarm.budget)
        params: dict[str, Any] = {"swarm_id": swarm_id, "operation": operation, "cost": cost, "remaining": remaining}
        if task_id is not None:
            params["task_id"] = task_id
        if event_id is not None:
            params["event_id"] = event_id
        ctx.witness("cost_tracked", params, "INFO")
        if task_id is not None and (task_id, swarm_id) in self.reservations:
            self.reservations.release(ctx, task_id, swarm, "settled", actual=cost)
        self._soft_budget(ctx, swarm)
        if swarm.budget <= 0 and (swarm.breaker is None or swarm.breaker.reason in RECOVERABLE):
            self.breakers.trip(ctx, swarm, "budget_exhausted", self.policy)  # money always needs a human
        elif swarm.budget <= 0:
            self.registry.refresh(swarm)
        return CostReply(swarm_id=swarm_id, remaining=remaining, tripped=swarm.breaker is not None, trace_id=trace_id)

    def _soft_budget(self, ctx: Context, swarm: Swarm) -> None:
        """The first time a budget falls below `soft_budget_ratio` of its allocation: a MEDIUM escalation."""
        if swarm.soft_warned or swarm.budget >= swarm.allocated * self.policy.soft_budget_ratio:
            return
        swarm.soft_warned = True
        if swarm.budget <= 0:  # exhausted at once: the trip's HIGH escalation says it
            return
        remaining, allocated = to_usd(swarm.budget), to_usd(swarm.allocated)
        ctx.emit(
            Escalation(
                swarm_id=swarm.swarm_id,
                reason=f"Budget running low - {remaining:.2f} of {allocated:.2f} USD left",
                context=EscalationContext(type="soft_budget", reason="budget_low", timestamp=ctx.now),
                trace_id=ctx.trace_id,
                severity="MEDIUM",
            )
        )
        ctx.witness(
            "budget_low", {"swarm_id": swarm.swarm_id, "remaining": remaining, "allocated": allocated}, "MEDIUM"
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
        swarm = self.registry.get(swarm_id)
        if self.dedupe.applied_already("reset", event_id):
            return ResetReply(swarm_id=swarm_id, remaining=to_usd(swarm.budget), duplicate=True, trace_id=trace_id)
        if swarm.breaker is None:
            raise NotTripped(f"swarm {swarm_id!r} is not tripped; nothing to reset")
        check_budget(new_budget, "new_budget", self.policy.max_amount_usd)
        if not approved_by.strip():
            raise InvalidRequest("approved_by must name the human who approved the reset")
        self.dedupe.seen("reset", event_id, now)
        previous = swarm.breaker
        swarm.budget = swarm.allocated = to_micros(new_budget)
        swarm.soft_warned = False
        self.breakers.clear(swarm)
        ctx = self._context(now, trace_id)
        self.history_log.reset(
            ResetRecord(
                swarm_id=swarm_id,
                new_budget=new_budget,
                approved_by=approved_by,
                previous_reason=previous.reason,
                tripped_at=previous.tripped_at,
                reset_at=now,
                trace_id=trace_id,
                identity=ctx.identity,
            )
        )
        ctx.emit(
            BreakerReset(
                swarm_id=swarm_id,
                new_budget=new_budget,
                approved_by=approved_by,
                reset_at=now,
                trace_id=trace_id,
                identity=ctx.identity,
            )
        )
        ctx.witness(
            "circuit_breaker_reset",
            {
                "swarm_id": swarm_id,
                "new_budget": new_budget,
                "approved_by": approved_by,
                "previous_reason": previous.reason,
                "tripped_at": previous.tripped_at,
            },
            "MEDIUM",
        )
        return ResetReply(swarm_id=swarm_id, remaining=to_usd(swarm.budget), trace_id=trace_id)

    # -- breakers -----------------------------------------------------------------------------------------

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
        swarm = self.registry.get(swarm_id)
        window_s = self.policy.failure_window_s
        if self.dedupe.seen("failure", event_id, now):
            horizon = now - window_s
            return FailureReply(
                swarm_id=swarm_id,
                failures_in_window=sum(1 for t in swarm.failures or () if t > horizon),
                tripped=swarm.breaker is not None,
                duplicate=True,
                trace_id=trace_id,
            )
        count = self.breakers.failed(swarm, now, window_s)
        ctx = self._context(now, trace_id)
        ctx.witness(
            "failure_recorded",
            {"swarm_id": swarm_id, "task_id": task_id, "error": error, "failures_in_window": count},
            "INFO",
        )
        if swarm.breaker is not None and swarm.breaker.state == "half_open":
            self.breakers.reopen(ctx, swarm, self.policy)
        elif count >= self.policy.circuit_breaker_failure_threshold and swarm.breaker is None:
            self.breakers.trip(ctx, swarm, "repeated_failures", self.policy)
        return FailureReply(
            swarm_id=swarm_id, failures_in_window=count, tripped=swarm.breaker is not None, trace_id=trace_id
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
        swarm = self.registry.get(swarm_id)
        if self.dedupe.seen("success", event_id, now):
            return SuccessReply(swarm_id=swarm_id, closed=False, duplicate=True, trace_id=trace_id)
        closed = self.breakers.close(self._context(now, trace_id), swarm, task_id)
        return SuccessReply(swarm_id=swarm_id, closed=closed, trace_id=trace_id)

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
        swarm = self.registry.get(swarm_id)
        if reason not in MANUAL_TRIP_REASONS:
            raise InvalidRequest(f"reason must be one of {sorted(MANUAL_TRIP_REASONS)}, got {reason!r}")
        if self.dedupe.applied_already("trip", event_id):
            return TripReply(swarm_id=swarm_id, duplicate=True, trace_id=trace_id)
        if swarm.breaker is not None:
            raise AlreadyTripped(f"swarm {swarm_id!r} is already tripped ({swarm.breaker.reason})")
        self.dedupe.seen("trip", event_id, now)
        manual = cast(ManualTripReason, reason)
        self.breakers.trip(self._context(now, trace_id), swarm, manual, self.policy, requested_by=requested_by)
        return TripReply(swarm_id=swarm_id, trace_id=trace_id)

    # -- reports ------------------------------------------------------------------------------------------

    def get_budget_report(self) -> dict[str, float]:
        """Remaining budget (USD) of every swarm, in registration order."""
        return {s.swarm_id: to_usd(s.budget) for s in self.registry}

    def get_circuit_breaker_status(self) -> dict[str, BreakerState]:
        """The tripped breakers: swarm id -> (reason, tripped_at)."""
        return {s.swarm_id: s.breaker for s in self.registry if s.breaker is not None}

    def history(
        self, limit: int | None = None, cursor: str | None = None
    ) -> tuple[list[AssignmentRecord], list[ResetRecord], str | None]:
        """A page of the assignment and reset history, newest last (see `History.page`)."""
        return self.history_log.page(limit or PAGE_DEFAULT, cursor)

    def get_reset_history(self, limit: int | None = None) -> list[ResetRecord]:
        """The most recent resets, each with its approver, newest last."""
        return newest(self.history_log.resets, limit)

    def get_assignment_history(self, limit: int | None = None) -> list[AssignmentRecord]:
        """The most recent assignments, newest last."""
        return newest(self.history_log.assignments, limit)

    def holds(self, now: float) -> list[HoldStatus]:
        """The open reservations at `now` (expired ones excluded, whether or not swept yet)."""
        return self.reservations.at(now)

    def get_swarm_profile(self, swarm_id: str, *, now: float | None = None) -> SwarmStatus:
        """A swarm's profile with its live budget and breaker."""
        return self._status_of(self.registry.get(swarm_id), now)

    def _status_of(self, swarm: Swarm, now: float | None) -> SwarmStatus:
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
            held=to_usd(self.reservations.held_at(swarm, now)),
        )

    def status(
        self, *, now: float, trace_id: str = "", limit: int | None = None, cursor: str | None = None
    ) -> StatusReply:
        """A page of swarms (registration order) with their budgets, breakers and holds, and the policy in force."""
        page, next_cursor = self.registry.page(limit or PAGE_DEFAULT, cursor)
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
        for s in list(self.registry):
            yield s.swarm_id, to_usd(s.budget), to_usd(s.cost_tracked), s.breaker is not None

    # -- state --------------------------------------------------------------------------------------------

    def export_state(self, seq: int = 0) -> CoreState:
        """Everything the core holds, as one Struct (a snapshot covering ledger sequence `seq`)."""
        return state.export(self, seq)

    @classmethod
    def from_state(
        cls,
        stored: CoreState,
        *,
        history_limit: int = 1000,
        dedupe_limit: int = 200_000,
        dedupe_horizon_s: float = 7 * 86400.0,
    ) -> Governor:
        """A core holding exactly the exported state."""
        core = cls(
            stored.policy,
            capabilities=stored.capabilities,
            history_limit=history_limit,
            dedupe_limit=dedupe_limit,
            dedupe_horizon_s=dedupe_horizon_s,
        )
        state.restore(core, stored)
        return core

    def __len__(self) -> int:
        return len(self.registry)
