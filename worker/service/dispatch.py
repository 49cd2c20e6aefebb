"""From a decoded request to the core call that applies it: shared by the actor (live) and replay
(`worker.service.replay`, which reads the ledger's entries and applies them here).

Each endpoint name (`kind`) has one request type (the endpoint table, `schemas.endpoints`) and one decoder,
built once. `apply` is the only translation of request fields into core arguments, one `match` over the request
types, so a replayed command does exactly what the live one did.
"""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec

from schemas.endpoints import ENDPOINTS
from schemas.events import Identity
from schemas.ledger import Configure, Reload, Tick
from schemas.profiles import SwarmProfile
from schemas.replies import HistoryReply
from schemas.requests import (
    AssignRequest,
    CompleteRequest,
    CostRequest,
    DeregisterRequest,
    FailureRequest,
    HistoryRequest,
    RegisterRequest,
    Request,
    ResetRequest,
    StatusRequest,
    SuccessRequest,
    TopupRequest,
    TripRequest,
    UpdateRequest,
)
from worker.core.governor import Governor
from worker.errors import GovernorError

#: Endpoint name -> request type (from the endpoint table). The subject is `<prefix>.<name>`.
REQUEST_TYPES: dict[str, type[Request]] = {e.name: e.request for e in ENDPOINTS}

#: Kinds that change nothing: never written to the ledger.
READ_ONLY = frozenset(e.name for e in ENDPOINTS if not e.changes_state)

DECODERS: dict[str, msgspec.json.Decoder[Any]] = {k: msgspec.json.Decoder(t) for k, t in REQUEST_TYPES.items()}


def register_request(p: SwarmProfile) -> RegisterRequest:
    """The `register` command that registers this profile (the ledger records commands): the same fields."""
    return RegisterRequest(**msgspec.structs.asdict(p))


def profile_of(r: RegisterRequest) -> SwarmProfile:
    """The profile a `register` command carries (the request has a trace id and deadline besides)."""
    return SwarmProfile(**{name: getattr(r, name) for name in SwarmProfile.__struct_fields__})


def _apply(core: Governor, request: Request, now: float, trace_id: str) -> msgspec.Struct:
    match request:
        case AssignRequest() as r:
            return core.assign(
                r.task_id,
                r.required_capabilities,
                now=now,
                max_cost=r.max_cost,
                max_swarms=r.max_swarms,
                explain=r.explain,
                estimated_cost=r.estimated_cost,
                trace_id=trace_id,
                explain_limit=r.explain_limit,
                explain_cursor=r.explain_cursor,
                reassign=r.reassign,
            )
        case CostRequest() as r:
            return core.track_cost(
                r.swarm_id,
                r.operation,
                r.cost,
                usage=r.usage,
                model=r.model,
                now=now,
                event_id=r.event_id,
                task_id=r.task_id,
                trace_id=trace_id,
            )
        case ResetRequest() as r:
            return core.reset_circuit_breaker(
                r.swarm_id, r.new_budget, approved_by=r.approved_by, now=now, event_id=r.event_id, trace_id=trace_id
            )
        case TripRequest() as r:
            return core.trip_circuit_breaker(
                r.swarm_id, r.reason, now=now, requested_by=r.requested_by, event_id=r.event_id, trace_id=trace_id
            )
        case FailureRequest() as r:
            return core.record_failure(
                r.swarm_id, now=now, task_id=r.task_id, error=r.error, event_id=r.event_id, trace_id=trace_id
            )
        case SuccessRequest() as r:
            return core.record_success(r.swarm_id, now=now, task_id=r.task_id, event_id=r.event_id, trace_id=trace_id)
        case TopupRequest() as r:
            return core.top_up(
                amount=r.amount,
                approved_by=r.approved_by,
                now=now,
                swarm_id=r.swarm_id,
                group=r.group,
                event_id=r.event_id,
                trace_id=trace_id,
            )
        case CompleteRequest() as r:
            return core.complete_task(
                r.task_id,
                r.outcome,
                now=now,
                swarm_id=r.swarm_id,
                cost=r.cost,
                usage=r.usage,
                model=r.model,
                error=r.error,
                event_id=r.event_id,
                trace_id=trace_id,
            )
        case UpdateRequest() as r:
            return core.update_swarm(
                r.swarm_id,
                requested_by=r.requested_by,
                now=now,
                reputation_score=r.reputation_score,
                cost_per_hour=r.cost_per_hour,
                capabilities=r.capabilities,
                model=r.model,
                max_concurrent_tasks=r.max_concurrent_tasks,
                budget_group=r.budget_group,
                event_id=r.event_id,
                trace_id=trace_id,
            )
        case Tick():
            return core.tick(now=now, trace_id=trace_id)
        case Reload() as r:
            return core.reload(r.configure, [profile_of(s) for s in r.swarms], now=now, trace_id=trace_id)
        case RegisterRequest() as r:
            return core.register_swarm(profile_of(r), now=now, trace_id=trace_id, event_id=r.event_id)
        case DeregisterRequest() as r:
            return core.deregister_swarm(r.swarm_id, now=now, trace_id=trace_id, event_id=r.event_id)
        case StatusRequest() as r:
            return core.status(now=now, trace_id=trace_id, limit=r.limit, cursor=r.cursor)
        case HistoryRequest() as r:
            assignments, resets, next_cursor = core.history(r.limit, r.cursor)
            return HistoryReply(assignments=assignments, resets=resets, next_cursor=next_cursor, trace_id=trace_id)
    raise TypeError(f"no core call for {type(request).__name__}")  # a reload not read from its file, say


def apply(
    core: Governor, request: Request, now: float, trace_id: str, identity: Identity | None = None
) -> msgspec.Struct:
    """Apply one request to the core, sent by `identity`; return its reply or raise its GovernorError."""
    if identity is None:  # the core's identity is unset between commands
        return _apply(core, request, now, trace_id)
    core.identity = identity
    try:
        return _apply(core, request, now, trace_id)
    finally:
        core.identity = msgspec.UNSET


def replay_command(
    core: Governor, command: Request | Configure, now: float, trace_id: str, identity: Identity | None = None
) -> None:
    """Apply one decoded ledger entry again. Refusals are part of history too: they changed nothing then, nor now
    (a refused `configure` too: the core checks it before it changes anything)."""
    with contextlib.suppress(GovernorError):
        if isinstance(command, Configure):
            core.apply_configuration(command)
        else:
            apply(core, command, now, trace_id, identity)
