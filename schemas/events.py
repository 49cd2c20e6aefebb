"""Events the governor publishes for witness and human-alert consumers.

Events only grow: a new field always comes with a default, so consumers built on an older version keep working.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

Severity = Literal["INFO", "MEDIUM", "HIGH"]


class Identity(msgspec.Struct, frozen=True, kw_only=True):
    """Who sent a request, as the NATS server authenticated them (its `Nats-Request-Info` header): recorded only
    where the deployment makes the server stamp it (`security.trust_request_info`), never as a client claims it."""

    account: str
    user: str


class Position(msgspec.Struct, frozen=True, kw_only=True):
    """Where a stored record comes from: the ledger message (`seq`, and its hash `batch`) whose commands caused it,
    and its place among that message's records (`index`). `<seq>.<index>` is its `Nats-Msg-Id`: a record published
    again after a crash is stored once."""

    seq: int
    index: int
    batch: str
    """The SHA-256 (hex) of the ledger message: an exported audit can be checked against the ledger."""


class BreakerTripped(msgspec.Struct, frozen=True, kw_only=True):
    """Published on `<prefix>.events.breaker.tripped`."""

    swarm_id: str
    reason: str
    remaining: float
    operations_count: int
    tripped_at: float
    trace_id: str
    identity: Identity | msgspec.UnsetType = msgspec.UNSET
    """The authenticated sender of the request that caused it (absent where the deployment does not stamp one)."""
    position: Position | msgspec.UnsetType = msgspec.UNSET
    """Where it comes from in the ledger (absent when no ledger entry caused it: a refused request, memory mode)."""


class BreakerReset(msgspec.Struct, frozen=True, kw_only=True):
    """Published on `<prefix>.events.breaker.reset`."""

    swarm_id: str
    new_budget: float
    approved_by: str
    reset_at: float
    trace_id: str
    identity: Identity | msgspec.UnsetType = msgspec.UNSET
    """The authenticated sender of the request that caused it (absent where the deployment does not stamp one)."""
    position: Position | msgspec.UnsetType = msgspec.UNSET
    """Where it comes from in the ledger (absent when no ledger entry caused it: a refused request, memory mode)."""


class BreakerHalfOpen(msgspec.Struct, frozen=True, kw_only=True):
    """Published on `<prefix>.events.breaker.half_open`: the cool-down passed, probes are admitted."""

    swarm_id: str
    reason: str
    probes: int
    at: float
    trace_id: str
    position: Position | msgspec.UnsetType = msgspec.UNSET
    """Where it comes from in the ledger (absent when no ledger entry caused it: a refused request, memory mode)."""


class BreakerClosed(msgspec.Struct, frozen=True, kw_only=True):
    """Published on `<prefix>.events.breaker.closed`: a probe succeeded and the breaker closed by itself."""

    swarm_id: str
    reason: str
    closed_at: float
    trace_id: str
    position: Position | msgspec.UnsetType = msgspec.UNSET
    """Where it comes from in the ledger (absent when no ledger entry caused it: a refused request, memory mode)."""


class EscalationContext(msgspec.Struct, frozen=True, kw_only=True):
    type: str
    reason: str
    timestamp: float


class Escalation(msgspec.Struct, frozen=True, kw_only=True):
    """Published on `<prefix>.events.escalation`: a human must look at this swarm (or, with `group`, at this
    budget group: `swarm_id` is then "")."""

    type: Literal["ESCALATE"] = "ESCALATE"
    swarm_id: str
    reason: str
    context: EscalationContext
    trace_id: str
    severity: Severity = "HIGH"
    group: str | msgspec.UnsetType = msgspec.UNSET
    """The budget group the escalation is about (absent for a swarm's)."""
    position: Position | msgspec.UnsetType = msgspec.UNSET
    """Where it comes from in the ledger (absent when no ledger entry caused it: a refused request, memory mode)."""


class WitnessRecord(msgspec.Struct, frozen=True, kw_only=True):
    """Published on `<prefix>.witness.<operation>`: the audit trail of every operation."""

    component: Literal["IF.governor"] = "IF.governor"
    operation: str
    params: dict[str, Any]
    timestamp: float
    severity: Severity
    trace_id: str
    identity: Identity | msgspec.UnsetType = msgspec.UNSET
    """The authenticated sender of the request (absent where the deployment does not stamp one)."""
    position: Position | msgspec.UnsetType = msgspec.UNSET
    """Where it comes from in the ledger (absent when no ledger entry caused it: a refused request, memory mode)."""


class BudgetExhausted(msgspec.Struct, frozen=True, kw_only=True):
    """Published on `<prefix>.events.budget.exhausted`: a budget group has nothing left in its period; its swarms
    (and its descendants') get no work until the period refills or an operator tops it up."""

    group: str
    period_start: float | None
    """None: a lifetime limit (no period)."""
    period_end: float | None
    limit: float
    """The period's limit, top-ups included (USD)."""
    spent: float
    trace_id: str
    position: Position | msgspec.UnsetType = msgspec.UNSET
    """Where it comes from in the ledger (absent when no ledger entry caused it: memory mode)."""


class BudgetRefilled(msgspec.Struct, frozen=True, kw_only=True):
    """Published on `<prefix>.events.budget.refilled`: a group's period ended and the next one began, once per
    boundary (`periods` counts the boundaries passed while the governor was away)."""

    group: str
    period_start: float
    period_end: float
    limit: float
    previous_spent: float
    """What the group spent in the period that ended (USD)."""
    was_exhausted: bool
    periods: int = 1
    trace_id: str
    position: Position | msgspec.UnsetType = msgspec.UNSET
    """Where it comes from in the ledger (absent when no ledger entry caused it: memory mode)."""


class BudgetThreshold(msgspec.Struct, frozen=True, kw_only=True):
    """Published on `<prefix>.events.budget.threshold`: a group spent `fraction` of its period's limit, or a swarm
    of its budget as last allocated (registered, reset or topped up); once per threshold per period (per
    allocation, for a swarm)."""

    group: str | msgspec.UnsetType = msgspec.UNSET
    swarm_id: str | msgspec.UnsetType = msgspec.UNSET
    fraction: float
    spent: float
    limit: float
    period_start: float | None = None
    """The group's period (None: a lifetime limit, or a swarm's threshold)."""
    trace_id: str
    position: Position | msgspec.UnsetType = msgspec.UNSET
    """Where it comes from in the ledger (absent when no ledger entry caused it: memory mode)."""


class BudgetForecast(msgspec.Struct, frozen=True, kw_only=True):
    """Published on `<prefix>.events.budget.forecast` (groups with `forecast_alert`): at the spend rate of the last
    hour the group runs out at `exhausted_at`, before its period ends; once per period."""

    group: str
    exhausted_at: float
    period_start: float | None
    period_end: float | None
    rate_usd_per_hour: float
    remaining: float
    trace_id: str
    position: Position | msgspec.UnsetType = msgspec.UNSET
    """Where it comes from in the ledger (absent when no ledger entry caused it: memory mode)."""


class SwarmUpdated(msgspec.Struct, frozen=True, kw_only=True):
    """Published on `<prefix>.events.swarm.updated`: a swarm's profile changed (`governor.update`); its budget,
    breaker and registration order did not."""

    swarm_id: str
    changed: dict[str, Any]
    """Each field that changed, with its new value."""
    requested_by: str
    at: float
    trace_id: str
    identity: Identity | msgspec.UnsetType = msgspec.UNSET
    position: Position | msgspec.UnsetType = msgspec.UNSET
    """Where it comes from in the ledger (absent when no ledger entry caused it: memory mode)."""


Event = (
    BreakerTripped
    | BreakerReset
    | BreakerHalfOpen
    | BreakerClosed
    | Escalation
    | BudgetExhausted
    | BudgetRefilled
    | BudgetThreshold
    | BudgetForecast
    | SwarmUpdated
    | WitnessRecord
)

#: Event type -> its subject under the prefix (witness records go to `<prefix>.witness.<operation>`).
EVENT_SUBJECTS: dict[type[Event], str] = {
    BreakerTripped: "events.breaker.tripped",
    BreakerReset: "events.breaker.reset",
    BreakerHalfOpen: "events.breaker.half_open",
    BreakerClosed: "events.breaker.closed",
    Escalation: "events.escalation",
    BudgetExhausted: "events.budget.exhausted",
    BudgetRefilled: "events.budget.refilled",
    BudgetThreshold: "events.budget.threshold",
    BudgetForecast: "events.budget.forecast",
    SwarmUpdated: "events.swarm.updated",
}
