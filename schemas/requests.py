"""Requests the governor receives, one Struct per subject.

Every request refuses unknown fields: a money-moving request that we do not fully understand is refused, clearly,
rather than half-applied. Every request may carry a `trace_id`; the `X-IF-Trace-ID` header wins over it.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.types import (
    Budget,
    Capabilities,
    Cost,
    CostPerHour,
    Deadline,
    ErrorText,
    EventId,
    HistoryLimit,
    ModelName,
    Name,
    Ratio,
    SwarmCount,
    SwarmId,
    TraceId,
)

ManualTripReason = Literal["repeated_failures", "performance_degradation", "manual_override"]


class Request(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every request: strict, immutable, with an optional trace id and deadline."""

    trace_id: TraceId | None = None
    deadline: Deadline | None = None
    """Unix time (seconds) after which the request must not be applied: a late delivery is dropped, not applied."""


class AssignRequest(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which swarm(s) should take this task? `max_cost` absent means the policy's `max_cost_per_task`."""

    task_id: Name
    required_capabilities: Capabilities
    max_cost: Cost | None = None
    max_swarms: SwarmCount = 1
    explain: bool = False
    estimated_cost: Cost | None = None
    """Reserve this much of the chosen swarm's budget until a cost with this task_id settles it."""


class CostRequest(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Deduct what an operation cost from a swarm's budget, at once."""

    swarm_id: SwarmId
    operation: Name
    cost: Cost
    event_id: EventId | None = None
    task_id: Name | None = None


class ResetRequest(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A human closes a tripped breaker and allocates a new budget."""

    swarm_id: SwarmId
    new_budget: Budget
    approved_by: Name
    event_id: EventId | None = None


class TripRequest(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Trip a swarm's breaker by hand."""

    swarm_id: SwarmId
    reason: ManualTripReason
    requested_by: Name


class FailureRequest(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A task failed on a swarm; enough of them inside the window trip its breaker."""

    swarm_id: SwarmId
    task_id: Name | None = None
    error: ErrorText | None = None
    event_id: EventId | None = None


class SuccessRequest(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A task succeeded on a swarm: closes a half-open breaker whose probe it was."""

    swarm_id: SwarmId
    task_id: Name | None = None
    event_id: EventId | None = None


class RegisterRequest(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Register a new swarm with the seed's profile fields."""

    swarm_id: SwarmId
    capabilities: Capabilities
    cost_per_hour: CostPerHour
    reputation_score: Ratio
    current_budget_remaining: Budget
    model: ModelName


class DeregisterRequest(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Remove a swarm from the registry."""

    swarm_id: SwarmId


class ReloadRequest(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Re-read the config file: policy, capabilities, rules and new swarms (operators only)."""


class StatusRequest(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything an operator needs to see: swarms, budgets, breakers, policy."""


class HistoryRequest(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The most recent assignments, newest last."""

    limit: HistoryLimit | None = None
