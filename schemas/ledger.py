"""What the durable ledger stores: the accepted commands, in order, and snapshots of the core's state.

The ledger records commands (a request as received, with the time and trace id the actor applied it with), not
their outcomes: the core is deterministic, so replaying the same commands from a snapshot rebuilds the same state.
A `configure` entry records the policy and capabilities in force from that point, so that a later change of the
config file never changes how earlier commands replay.
"""

from __future__ import annotations

import msgspec

from schemas.budgets import BudgetGroup
from schemas.events import Identity
from schemas.policy import PolicyRule, ResourcePolicy
from schemas.pricing import ModelPrice
from schemas.replies import Assignment, AssignmentRecord, BreakerState, ResetRecord
from schemas.requests import RegisterRequest, Request


class LedgerEntry(msgspec.Struct, frozen=True, array_like=True, omit_defaults=True):
    """One applied command: `kind` is the endpoint name (`cost`, `register`, ...) or `configure`; `identity` the
    authenticated sender, when the deployment stamps one (entries of earlier versions have four fields)."""

    kind: str
    now: float
    trace_id: str
    body: msgspec.Raw
    identity: Identity | None = None


class LedgerBatch(msgspec.Struct, frozen=True, array_like=True):
    """One ledger message: the commands of one actor batch (group commit), chained to the message before it."""

    entries: list[LedgerEntry]
    prev: str = ""
    """The SHA-256 (hex) of the previous ledger message as stored ("" for the first, and in earlier versions'
    messages): `governor ledger verify` walks the chain and reports the first message that does not follow."""


class Configure(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Body of a `configure` entry."""

    policy: ResourcePolicy
    capabilities: list[str]
    policies: dict[str, ResourcePolicy] = {}
    rules: list[PolicyRule] = []
    pricing: dict[str, ModelPrice] = {}
    budgets: list[BudgetGroup] = []


class Reload(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Body of a `reload` entry: the config as re-read, applied at once (swarms only if never seen before)."""

    configure: Configure
    swarms: list[RegisterRequest]


class Tick(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Body of a `tick` entry: the actor writes one when a budget period ends or an open task's time is up, so that
    the refill or the expiry is a ledger entry of its own, applied once, at the same place in every replay (a
    command applied later would also do it first; the tick then finds nothing to do)."""


class GroupState(msgspec.Struct, frozen=True, array_like=True):
    """A budget group's current period (its configuration is in the `configure` entry or the snapshot)."""

    id: str
    start: float | None
    end: float | None
    spent_micros: int
    topped_up_micros: int
    alerted: float
    forecasted: bool
    exhausted: bool
    since: float | None
    burn: list[tuple[int, int]]


class SwarmState(msgspec.Struct, frozen=True, array_like=True):
    swarm_id: str
    capabilities: list[str]
    cost_per_hour: float
    reputation_score: float
    model: str
    ordinal: int
    budget_micros: int
    cost_tracked_micros: int
    operations_count: int
    breaker: BreakerState | None
    failures: list[float]
    allocated_micros: int = 0
    soft_warned: bool = False
    alerted: float = 0.0
    """The highest `budget_alerts` fraction fired for the current allocation (older snapshots: `soft_warned`)."""
    budget_group: str | None = None
    max_tasks: int | None = None


class CoreState(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the core holds, for snapshots. `seq` is the last ledger sequence it includes."""

    seq: int = 0
    policy: ResourcePolicy
    capabilities: list[str]
    swarms: list[SwarmState]
    next_ordinal: int
    history: list[AssignmentRecord]
    applied: list[tuple[str, str, float]]
    retired: list[tuple[str, BreakerState | None]]
    holds: list[tuple[str, str, int, float]] = []
    """(task_id, swarm_id, micro-dollars, expires_at) of the open reservations."""
    policies: dict[str, ResourcePolicy] = {}
    rules: list[PolicyRule] = []
    pricing: dict[str, ModelPrice] = {}
    resets: list[ResetRecord] = []
    tasks: list[tuple[str, list[Assignment], float]] = []
    """(task_id, its assignments, when) of the assignments remembered for repeated assigns."""
    history_seq: int = 0
    """Assignment records ever kept (the position of the next one, for history cursors); 0 in older snapshots."""
    resets_seq: int = 0
    budgets: list[BudgetGroup] = []
    groups: list[GroupState] = []
    task_spend: list[tuple[str, int, int, str, bool]] = []
    open_tasks: list[tuple[str, list[str], float, float, str, int, int]] = []
    """(task_id, swarm ids, assigned_at, expires_at, expire_as, history position, micro-dollars) of the open tasks."""
    """(task_id, micro-dollars spent, cap, action, fired) of the tasks under a `max_spend_per_task`."""
    ledger_hash: str = ""
    """The SHA-256 of the ledger message at `seq` (the chain's link for the entries after the snapshot)."""
