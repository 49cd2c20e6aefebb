"""The decision core's façade: one method per command. The commands are grouped by concept (`assigning`,
`spending`, `outcomes`, `reports`) over the stores of `parts`; the configuration, the registry and the state
codec are here.

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
from collections.abc import Iterable, Sequence
from typing import Any

from schemas.budgets import BudgetGroup
from schemas.events import SwarmUpdated
from schemas.ledger import Configure, CoreState
from schemas.policy import PRESETS, PolicyRule, ResourcePolicy
from schemas.pricing import ModelPrice
from schemas.profiles import SwarmProfile
from schemas.replies import ReloadReply, SwarmReply, UpdateReply
from worker.core import state
from worker.core.assigning import Assigning
from worker.core.capabilities import Vocabulary
from worker.core.completing import Completing
from worker.core.money import check_budget, to_usd
from worker.core.outcomes import Outcomes
from worker.core.reports import Reports
from worker.core.rules import check_rules
from worker.errors import AlreadyRegistered, InvalidRequest


class Governor(Assigning, Completing, Outcomes, Reports):
    """Capability-aware assignment and budget governance for a registry of swarms: one method per command."""

    # -- configuration ------------------------------------------------------------------------------------

    def configure(
        self,
        policy: ResourcePolicy,
        capabilities: Iterable[str],
        policies: dict[str, ResourcePolicy] | None = None,
        rules: Sequence[PolicyRule] = (),
        pricing: dict[str, ModelPrice] | None = None,
        budgets: Sequence[BudgetGroup] = (),
    ) -> None:
        """Change the policy, capabilities, named policies, rules, token prices and budget groups from now on
        (recorded in the ledger). Refused, changing nothing, when the rules or groups do not hold together."""
        check_rules(rules, policies or {})
        self.budgets.configure(list(budgets), self.registry.refresh)  # checks them all before it changes any
        self.policy = policy
        self.vocabulary = Vocabulary(capabilities)
        self.policies = {**PRESETS, **(policies or {})}
        self.rules = list(rules)
        self.pricing = dict(pricing or {})

    def configuration(self) -> Configure:
        """The configuration in effect, as a `configure` entry would set it."""
        return Configure(
            policy=self.policy,
            capabilities=list(self.vocabulary.extra),
            policies={k: v for k, v in self.policies.items() if PRESETS.get(k) != v},
            rules=list(self.rules),
            pricing=dict(self.pricing),
            budgets=self.budgets.configs(),
        )

    def check_configuration(self, body: Configure) -> None:
        """Raise the InvalidRequest that `apply_configuration(body)` would, changing nothing."""
        check_rules(body.rules, body.policies)
        self.budgets.check(list(body.budgets))

    def apply_configuration(self, body: Configure) -> None:
        """`configure` with a `configure` entry's body."""
        self.configure(body.policy, body.capabilities, body.policies, body.rules, body.pricing, body.budgets)

    def reload(
        self, configure: Configure, profiles: Sequence[SwarmProfile], *, now: float, trace_id: str = ""
    ) -> ReloadReply:
        """Apply a re-read config without losing budgets, holds or breakers: new swarms only are registered."""
        check_rules(configure.rules, configure.policies)
        listed = {g.id for g in configure.budgets}
        for profile in profiles:
            if profile.budget_group is not None and profile.budget_group not in listed:
                raise InvalidRequest(
                    f"swarm {profile.swarm_id!r} names budget group {profile.budget_group!r}, not listed"
                )
        changed = self.configuration() != configure
        if changed:
            self.apply_configuration(configure)
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
        group = self.budgets.get(profile.budget_group) if profile.budget_group is not None else None
        self.dedupe.seen("register", event_id, now)
        swarm = self.registry.new(profile, capabilities, group)
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
                **({"budget_group": group.id} if group is not None else {}),
            },
            "INFO",
        )
        return SwarmReply(swarm_id=swarm.swarm_id, trace_id=trace_id)

    def update_swarm(
        self,
        swarm_id: str,
        *,
        requested_by: str,
        now: float,
        reputation_score: float | None = None,
        cost_per_hour: float | None = None,
        capabilities: Sequence[str] | None = None,
        model: str | None = None,
        max_concurrent_tasks: int | None = None,
        budget_group: str | None = None,
        event_id: str | None = None,
        trace_id: str = "",
    ) -> UpdateReply:
        """Change a swarm's profile; its budget, breaker, holds, tasks and registration order stay. Every field is
        checked before anything changes; a retry with the same `event_id` is answered `duplicate`."""
        if self.dedupe.applied_already("update", event_id):
            return UpdateReply(swarm_id=swarm_id, duplicate=True, trace_id=trace_id)
        swarm = self.registry.get(swarm_id)
        if not requested_by.strip():
            raise InvalidRequest("requested_by must name who asked for the update")
        if cost_per_hour is not None and not (cost_per_hour > 0 and math.isfinite(cost_per_hour)):
            raise InvalidRequest(f"cost_per_hour must be a finite number > 0, got {cost_per_hour!r}")
        if reputation_score is not None and not 0.0 <= reputation_score <= 1.0:
            raise InvalidRequest(f"reputation_score must be in [0, 1], got {reputation_score!r}")
        caps = self.vocabulary.check(capabilities) if capabilities is not None else None
        group = self.budgets.get(budget_group) if budget_group is not None else None
        changed: dict[str, Any] = {}
        for name, value, current in (
            ("reputation_score", reputation_score, swarm.reputation_score),
            ("cost_per_hour", cost_per_hour, swarm.cost_per_hour),
            ("capabilities", caps, swarm.capabilities),
            ("model", model, swarm.model),
            ("max_concurrent_tasks", max_concurrent_tasks, swarm.max_tasks),
            ("budget_group", budget_group, swarm.group.id if swarm.group is not None else None),
        ):
            if value is not None and value != current:
                changed[name] = value
        self.dedupe.seen("update", event_id, now)
        if not changed:
            return UpdateReply(swarm_id=swarm_id, trace_id=trace_id)
        if reputation_score is not None:
            swarm.reputation_score = reputation_score
        if cost_per_hour is not None:
            swarm.cost_per_hour = cost_per_hour
        if model is not None:
            swarm.model = model
        if max_concurrent_tasks is not None:
            swarm.max_tasks = max_concurrent_tasks
        if group is not None and group is not swarm.group:
            if swarm.group is not None:
                del swarm.group.members[swarm_id]
            swarm.group = group
            group.members[swarm_id] = swarm
        self.registry.reindex(swarm, caps)  # its value, capabilities and eligibility, under the same ordinal
        ctx = self._context(now, trace_id)
        ctx.emit(
            SwarmUpdated(
                swarm_id=swarm_id,
                changed=changed,
                requested_by=requested_by,
                at=now,
                trace_id=trace_id,
                identity=ctx.identity,
            )
        )
        ctx.witness("swarm_updated", {"swarm_id": swarm_id, "changed": changed, "requested_by": requested_by}, "MEDIUM")
        return UpdateReply(swarm_id=swarm_id, changed=sorted(changed), trace_id=trace_id)

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
        self.tasks.forget(swarm_id)
        self._context(now, trace_id).witness(
            "swarm_deregistered", {"swarm_id": swarm_id, "remaining": to_usd(swarm.budget)}, "INFO"
        )
        return SwarmReply(swarm_id=swarm_id, trace_id=trace_id)

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
