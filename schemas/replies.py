"""Replies the governor sends. Every reply carries `ok`; replies only grow, each new field with a default."""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.events import Identity
from schemas.policy import PolicyRule, ResourcePolicy


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every successful reply."""

    ok: Literal[True] = True
    trace_id: str = ""


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    message: str


class ErrorReply(msgspec.Struct, frozen=True, kw_only=True):
    """The one error shape: `{"ok": false, "error": {"code", "message"}}`."""

    ok: Literal[False] = False
    error: ErrorBody
    trace_id: str = ""


class Assignment(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One swarm chosen for a task. (Not tracked by the cyclic garbage collector: it holds only strings and
    numbers, and the core keeps one per remembered assignment.)"""

    swarm_id: str
    capability_match: float
    score: float
    reserved: float = 0.0
    """USD held on this swarm for the task (its `estimated_cost`)."""


class SwarmExplanation(msgspec.Struct, frozen=True, kw_only=True):
    """Why a swarm was or was not chosen: its coverage, its score, and the first filter that rejected it."""

    swarm_id: str
    capability_match: float
    score: float
    rejected_by: str | None
    group: str | None = None
    """With `rejected_by: group_budget_exhausted`: the exhausted group on the swarm's chain (the nearest)."""
    in_flight: int = 0
    """Its tasks assigned and neither completed nor expired."""
    load_factor: float | None = None
    """Under the `spread` strategy: the factor its score was multiplied by, 1 / (1 + in_flight)."""


class AssignReply(Reply, frozen=True, kw_only=True):
    task_id: str
    swarm_id: str | None
    assignments: list[Assignment]
    reason: Literal["no_qualified_swarm"] | None = None
    rejected: dict[str, str] | msgspec.UnsetType = msgspec.UNSET
    """Only with `explain`: the first filter that rejected each swarm."""
    explanation: list[SwarmExplanation] | msgspec.UnsetType = msgspec.UNSET
    """Only with `explain`: a page of the registered swarms, in registration order."""
    explain_next_cursor: str | msgspec.UnsetType | None = msgspec.UNSET
    """Only with `explain`: the `explain_cursor` of the next page (None: every swarm was explained)."""
    duplicate: bool | msgspec.UnsetType = msgspec.UNSET
    """True when the task was assigned already (within `assign_window_s`): this is that assignment, unchanged."""


class CostReply(Reply, frozen=True, kw_only=True):
    swarm_id: str
    remaining: float
    tripped: bool
    duplicate: bool = False
    cost: float | None = None
    """The amount deducted, USD: the request's `cost`, or its `usage` priced (None in a duplicate's reply)."""


class ResetReply(Reply, frozen=True, kw_only=True):
    swarm_id: str
    remaining: float
    duplicate: bool = False


class TripReply(Reply, frozen=True, kw_only=True):
    swarm_id: str
    duplicate: bool = False


class FailureReply(Reply, frozen=True, kw_only=True):
    swarm_id: str
    failures_in_window: int
    tripped: bool
    duplicate: bool = False


class SuccessReply(Reply, frozen=True, kw_only=True):
    swarm_id: str
    closed: bool
    """True when this success closed a half-open breaker."""
    duplicate: bool = False


class ReloadReply(Reply, frozen=True, kw_only=True):
    changed: bool
    """True when the policy, capabilities or rules changed."""
    registered: list[str]
    """Swarms of the config that were new, and are registered now."""


class SwarmReply(Reply, frozen=True, kw_only=True):
    """Reply to register and deregister."""

    swarm_id: str
    duplicate: bool = False


class BreakerState(msgspec.Struct, frozen=True, kw_only=True):
    reason: str
    tripped_at: float
    state: str = "open"
    """`open`, or `half_open` while probes are admitted (only for failure and degradation trips)."""
    next_probe_at: float | None = None
    """When probes will be admitted (failure and degradation trips; budget trips need a human)."""
    cooldown_s: float = 0.0
    probes_left: int = 0


class SwarmStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A swarm's profile as registered, with its live budget and breaker."""

    swarm_id: str
    capabilities: list[str]
    cost_per_hour: float
    reputation_score: float
    current_budget_remaining: float
    model: str
    budget_remaining: float
    breaker: BreakerState | None
    failures_in_window: int = 0
    operations_count: int = 0
    held: float = 0.0
    """USD held by open reservations: available = budget_remaining - held."""
    budget_group: str | None = None
    in_flight: int = 0
    """Tasks assigned to it and neither completed nor expired."""
    max_concurrent_tasks: int | None = None


class HoldStatus(msgspec.Struct, frozen=True, kw_only=True):
    task_id: str
    swarm_id: str
    amount: float
    expires_at: float


class GroupStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A budget group in its current period (USD; times in Unix seconds)."""

    id: str
    parent: str | None
    period: str | None
    """How it refills (`day (Europe/Paris)`, `6h`, `90s`, ...); None: a lifetime limit."""
    period_start: float | None
    period_end: float | None
    limit: float
    topped_up: float
    spent: float
    remaining: float
    """limit + topped_up - spent: below 0 by the costs that were already in flight when it ran out."""
    exhausted: bool
    blocked: bool
    """It or an ancestor is exhausted: its swarms get no work."""
    rate_usd_per_hour: float
    """Spent over the last hour (over the group's history when shorter), per hour."""
    forecast_exhausted_at: float | None
    """When it runs out at that rate, if before its period ends."""
    swarms: int


class TopupReply(Reply, frozen=True, kw_only=True):
    swarm_id: str | None = None
    group: str | None = None
    amount: float
    remaining: float
    """The swarm's remaining budget, or the group's remaining in its period, after the top-up."""
    tripped: bool = False
    """The swarm's breaker is still tripped: a top-up never closes it, a reset does."""
    unblocked: bool = False
    """The group had nothing left and now admits work again."""
    note: str | None = None
    duplicate: bool = False


class CompleteReply(Reply, frozen=True, kw_only=True):
    task_id: str
    swarm_id: str
    """The swarm the outcome was recorded for."""
    outcome: str
    duration_s: float
    total_cost: float
    """Every cost reported with this task while it was open, the final one included (USD)."""
    tripped: bool = False
    """That swarm's breaker is tripped after this outcome."""
    closed: bool = False
    """This success closed a half-open breaker."""
    duplicate: bool = False


class UpdateReply(Reply, frozen=True, kw_only=True):
    swarm_id: str
    changed: list[str] = []
    """The fields whose value changed (none: the swarm had these values already)."""
    duplicate: bool = False


class TickReply(Reply, frozen=True, kw_only=True):
    """What a `tick` entry did (answered to nobody: the actor writes ticks itself)."""

    refilled: list[str] = []
    expired: list[str] = []


class StatusReply(Reply, frozen=True, kw_only=True):
    swarms: list[SwarmStatus]
    budgets: dict[str, float]
    breakers: dict[str, BreakerState]
    policy: ResourcePolicy
    holds: list[HoldStatus] = []
    rules: list[PolicyRule] = []
    recent_assignments: list[AssignmentRecord] = []
    """The last assignments (up to 10), each with the rule that applied."""
    next_cursor: str | None = None
    """The `cursor` of the next page of swarms (None: this was the last page). Budgets, breakers and holds are
    those of this page's swarms."""
    groups: list[GroupStatus] = []
    """Every budget group, in config order, on the first page only (a request without `cursor`)."""


class AssignmentRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of the assignment history."""

    task_id: str
    swarm_id: str
    swarm_ids: list[str]
    required_capabilities: list[str]
    capability_match: float
    score: float
    timestamp: float
    trace_id: str
    rule: str | None = None
    outcome: str | None = None
    """`success`, `failure` or `expired` once the task was closed (None: still open, or closed by a reassign)."""
    duration_s: float | None = None
    total_cost: float | None = None
    """The policy rule that governed the task (`pattern -> policy`), none for the default policy."""


class ResetRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One breaker reset: who approved giving the swarm new money, and why it had been tripped."""

    swarm_id: str
    new_budget: float
    approved_by: str
    previous_reason: str
    tripped_at: float
    reset_at: float
    trace_id: str
    identity: Identity | msgspec.UnsetType = msgspec.UNSET
    """Who the NATS server authenticated as the sender (beside `approved_by`, the human's name as claimed)."""


class HistoryReply(Reply, frozen=True, kw_only=True):
    assignments: list[AssignmentRecord]
    resets: list[ResetRecord] = []
    """The most recent resets by a human, newest last (bounded like the assignments)."""
    next_cursor: str | None = None
    """The `cursor` of the page of older records (None: nothing older is kept)."""
