"""Requests the governor receives, one Struct per subject.

Every request refuses unknown fields: a money-moving request that we do not fully understand is refused, clearly,
rather than half-applied. Every request may carry a `trace_id`; the `X-IF-Trace-ID` header wins over it.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from schemas.budgets import GroupId
from schemas.codes import ManualTripReason
from schemas.pricing import TokenUsage
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
    TaskLimit,
    TraceId,
)

PAGE_DEFAULT = 100
"""Items per page when a paged request names no `limit`: 100 swarms at the largest a swarm can be (64 capabilities
of 128 characters) still fit NATS's default 1 MB max_payload."""
PageLimit = Annotated[int, Meta(ge=1, le=1000)]
"""Items per page of a paged reply (`status`, `history`, `assign` with `explain`)."""
SwarmCursor = Annotated[str, Meta(pattern=r"^[0-9]{1,18}\Z", description="a reply's `next_cursor`")]
"""Where the next page of swarms starts: a reply's `next_cursor`, opaque to clients."""
HistoryCursor = Annotated[str, Meta(pattern=r"^[0-9]{1,18}\.[0-9]{1,18}\Z", description="a reply's `next_cursor`")]
"""Where the next (older) page of history starts: a reply's `next_cursor`, opaque to clients."""


class Request(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
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
    explain_limit: PageLimit | None = None
    """With `explain`: how many swarms to explain (registration order; default 100)."""
    explain_cursor: SwarmCursor | None = None
    """With `explain`: the reply's `explain_next_cursor`, to explain the swarms after that page."""
    reassign: bool = False
    """Assign this task afresh: release its earlier holds and forget its earlier assignment first. Without it, a
    repeated assign of a task assigned within `assign_window_s` gets the same assignment back (`duplicate`)."""


class CostRequest(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Deduct what an operation cost from a swarm's budget, at once: a `cost` in USD, or the tokens it used
    (`usage`), which the governor prices by the swarm's model (or `model`) from its `pricing:` table."""

    swarm_id: SwarmId
    operation: Name
    cost: Cost | None = None
    usage: TokenUsage | None = None
    model: ModelName | None = None
    """With `usage`: price the tokens as this model's, not the swarm's."""
    event_id: EventId | None = None
    task_id: Name | None = None

    def __post_init__(self) -> None:
        if (self.cost is None) == (self.usage is None):
            raise ValueError("give exactly one of `cost` and `usage`")
        if self.model is not None and self.usage is None:
            raise ValueError("`model` prices a `usage`: give it only with one")


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
    event_id: EventId | None = None


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
    budget_group: GroupId | None = None
    """A group of the config's `budgets:` list: its limits (and its ancestors') apply to this swarm's costs."""
    max_concurrent_tasks: TaskLimit | None = None
    """Tasks it may run at once (none: no limit)."""
    event_id: EventId | None = None


class CompleteRequest(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A coordinator closes an assignment: its holds and task slots are released, its outcome recorded (a failure
    counts toward the breaker, a success closes a half-open one) and an optional final cost settled."""

    task_id: Name
    outcome: Literal["success", "failure"]
    swarm_id: SwarmId | None = None
    """Which of the task's swarms the outcome (and the cost) is of; default: the first assigned."""
    cost: Cost | None = None
    usage: TokenUsage | None = None
    model: ModelName | None = None
    error: ErrorText | None = None
    event_id: EventId | None = None

    def __post_init__(self) -> None:
        if self.cost is not None and self.usage is not None:
            raise ValueError("give at most one of `cost` and `usage`")
        if self.model is not None and self.usage is None:
            raise ValueError("`model` prices a `usage`: give it only with one")


class UpdateRequest(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Change a registered swarm's profile without touching its budget, breaker or registration order (operators;
    a chassis account may send `reputation_score` only)."""

    swarm_id: SwarmId
    reputation_score: Ratio | None = None
    cost_per_hour: CostPerHour | None = None
    capabilities: Capabilities | None = None
    model: ModelName | None = None
    max_concurrent_tasks: TaskLimit | None = None
    budget_group: GroupId | None = None
    requested_by: Name
    event_id: EventId | None = None

    def __post_init__(self) -> None:
        if all(getattr(self, name) is None for name in UPDATABLE):
            raise ValueError(f"name at least one field to change: {', '.join(UPDATABLE)}")


UPDATABLE = ("reputation_score", "cost_per_hour", "capabilities", "model", "max_concurrent_tasks", "budget_group")
"""The profile fields `governor.update` changes."""


class DeregisterRequest(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Remove a swarm from the registry."""

    swarm_id: SwarmId
    event_id: EventId | None = None


class TopupRequest(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Add to a swarm's remaining budget, or to a budget group's current period, without a trip and reset
    (operators only). A top-up never closes a tripped breaker: a reset does."""

    swarm_id: SwarmId | None = None
    group: GroupId | None = None
    amount: Budget
    approved_by: Name
    event_id: EventId | None = None

    def __post_init__(self) -> None:
        if (self.swarm_id is None) == (self.group is None):
            raise ValueError("give exactly one of `swarm_id` and `group`")


class ReloadRequest(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Re-read the config file: policy, capabilities, rules and new swarms (operators only)."""


class StatusRequest(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything an operator needs to see: swarms, budgets, breakers, policy; a page of swarms at a time
    (registration order), `next_cursor` in the reply asking for the next."""

    limit: PageLimit | None = None
    """Swarms per page (default 100)."""
    cursor: SwarmCursor | None = None


class HistoryRequest(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The most recent assignments and resets, newest last, a page at a time: `next_cursor` in the reply asks for
    the page of older ones."""

    limit: HistoryLimit | None = None
    """Records of each kind per page (default 100)."""
    cursor: HistoryCursor | None = None
