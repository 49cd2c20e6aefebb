"""Resource policy: the declarative limits the governor applies, and the seed's three presets."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from schemas.types import MAX_USD, NAME_PATTERN, Cost, ModelName, Ratio

FailureThreshold = Annotated[int, Meta(ge=1, le=1_000_000)]
"""Failures inside the window that trip a breaker."""


class ResourcePolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Policy constraints for resource allocation (defaults are the seed's production policy)."""

    max_swarms_per_task: Annotated[int, Meta(ge=1, le=64)] = 3
    max_cost_per_task: Cost = 10.0
    min_capability_match: Ratio = 0.7
    circuit_breaker_failure_threshold: FailureThreshold = 3
    failure_window_s: Annotated[float, Meta(gt=0.0, le=365 * 86400.0)] = 3600.0
    reservation_ttl_s: Annotated[float, Meta(gt=0.0, le=7 * 86400.0)] = 900.0
    """A hold made by an assign with `estimated_cost` is released if no cost settles it within this time."""
    breaker_cooldown_s: Annotated[float, Meta(gt=0.0, le=7 * 86400.0)] = 300.0
    """After a `repeated_failures` or `performance_degradation` trip, probes are admitted after this long."""
    breaker_max_cooldown_s: Annotated[float, Meta(gt=0.0, le=30 * 86400.0)] = 3600.0
    """A failed probe doubles the cool-down, up to this."""
    half_open_probes: Annotated[int, Meta(ge=1, le=1000)] = 1
    soft_budget_ratio: Ratio = 0.2
    """The seed-era warning below this fraction of a swarm's allocation: now the threshold `1 - soft_budget_ratio`
    of `budget_alerts` (0.8 by default, already in the list)."""
    budget_alerts: Annotated[list[Annotated[float, Meta(gt=0.0, le=1.0)]], Meta(max_length=16)] = msgspec.field(
        default_factory=lambda: [0.5, 0.8, 0.95]
    )
    """Fractions of a swarm's allocation (its budget as registered, reset or topped up) whose spending publishes
    `governor.events.budget.threshold` and a MEDIUM escalation, once each per allocation."""
    max_spend_per_task: Cost | None = None
    """When the costs reported with one `task_id` pass this (USD): a `task_over_budget` escalation, once."""
    on_task_over_budget: Literal["escalate", "trip"] = "escalate"
    """`trip`: the swarm whose cost passed `max_spend_per_task` is also tripped (`task_over_budget`; a human's
    reset closes it)."""
    max_amount_usd: Annotated[float, Meta(gt=0.0, le=MAX_USD)] = 1_000_000.0
    """The largest cost, estimate or budget a request may carry (USD); anything above is refused."""
    max_holds: Annotated[int, Meta(ge=1, le=10_000_000)] = 100_000
    """Open reservations in all; an assign with `estimated_cost` beyond it is refused (`hold_limit`)."""
    max_holds_per_swarm: Annotated[int, Meta(ge=1, le=1_000_000)] = 1_000
    """Open reservations on one swarm; beyond it, an assign that would hold on that swarm is refused."""
    task_timeout_s: Annotated[float, Meta(gt=0.0, le=30 * 86400.0)] = 3600.0
    """An assignment neither completed (`governor.complete`) nor reassigned within this expires: its holds and
    its swarms' task slots are released (`task_expired`)."""
    expire_as: Literal["none", "failure"] = "none"
    """`failure`: an expired task counts as a failure of the swarm it was assigned to first."""
    strategy: Literal["best", "spread"] = "best"
    """`best`: the seed's rule. `spread`: each swarm's score is divided by 1 + its tasks in flight, so that equally
    good swarms share the work."""
    min_budget_per_task: Cost | None = None
    """A swarm whose available budget is below this is passed over (`budget_below_task_minimum`)."""
    max_open_tasks: Annotated[int, Meta(ge=1, le=10_000_000)] = 100_000
    """Assignments open at once (not completed nor expired); an assign beyond it is refused (`task_limit`)."""
    assign_window_s: Annotated[float, Meta(gt=0.0, le=30 * 86400.0)] = 3600.0
    """How long an assignment is remembered by its task_id: a repeated assign inside it gets the same answer."""


class PolicyRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which policy governs a task, chosen by its capabilities: the first rule whose pattern matches wins."""

    match: Annotated[str, Meta(min_length=1, max_length=128, pattern=NAME_PATTERN)]
    """A shell-style pattern over required capabilities, e.g. `architecture:*`."""
    policy: Annotated[str, Meta(min_length=1, max_length=64, pattern=NAME_PATTERN)] = "default"
    """A preset (`strict`, `permissive`, `production`), a policy named under `policies:`, or `default`."""
    models: list[ModelName] | None = None
    """Only swarms of these models may take such a task (none: any model)."""


PRESETS: dict[str, ResourcePolicy] = {
    "strict": ResourcePolicy(
        max_swarms_per_task=1,
        max_cost_per_task=5.0,
        min_capability_match=0.9,
        circuit_breaker_failure_threshold=2,
    ),
    "permissive": ResourcePolicy(
        max_swarms_per_task=5,
        max_cost_per_task=50.0,
        min_capability_match=0.6,
        circuit_breaker_failure_threshold=5,
    ),
    "production": ResourcePolicy(
        max_swarms_per_task=3,
        max_cost_per_task=10.0,
        min_capability_match=0.7,
        circuit_breaker_failure_threshold=3,
    ),
}
"""The seed's presets, exactly."""
