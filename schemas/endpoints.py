"""The endpoint table: every subject the governor serves, once.

The bus's subscriptions and decoders, its checks (an empty body, operator-only subjects), what the actor writes to
the ledger, what the ledger may replay, $SRV INFO and the contract export are all derived from this table. A new
endpoint is one row here, its request and reply types, and the core call that `worker.service.dispatch` makes for it.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from schemas.ledger import Configure, Reload, Tick
from schemas.replies import (
    AssignReply,
    CompleteReply,
    CostReply,
    FailureReply,
    HistoryReply,
    ReloadReply,
    ResetReply,
    StatusReply,
    SuccessReply,
    SwarmReply,
    TopupReply,
    TripReply,
    UpdateReply,
)
from schemas.requests import (
    AssignRequest,
    CompleteRequest,
    CostRequest,
    DeregisterRequest,
    FailureRequest,
    HistoryRequest,
    RegisterRequest,
    ReloadRequest,
    Request,
    ResetRequest,
    StatusRequest,
    SuccessRequest,
    TopupRequest,
    TripRequest,
    UpdateRequest,
)


class Endpoint(NamedTuple):
    """One subject, `<prefix>.<name>`."""

    name: str
    request: type[Request]
    reply: type[msgspec.Struct]
    changes_state: bool
    """Written to the ledger before it is applied (reads are not)."""
    empty_body_ok: bool = False
    """An empty body means `{}` (every field of the request is optional)."""
    operator_only: bool = False
    """Reset, trip and registry or config changes: only the operators' accounts (SECURITY.md)."""
    chassis_fields: tuple[str, ...] = ()
    """An operator-only request that a chassis account (`security.chassis_accounts`) may send too, with these
    fields only (IF.chassis reports reputations)."""


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("assign", AssignRequest, AssignReply, changes_state=True),
    Endpoint("cost", CostRequest, CostReply, changes_state=True),
    Endpoint("reset", ResetRequest, ResetReply, changes_state=True, operator_only=True),
    Endpoint("trip", TripRequest, TripReply, changes_state=True, operator_only=True),
    Endpoint("topup", TopupRequest, TopupReply, changes_state=True, operator_only=True),
    Endpoint("failure", FailureRequest, FailureReply, changes_state=True),
    Endpoint("success", SuccessRequest, SuccessReply, changes_state=True),
    Endpoint("complete", CompleteRequest, CompleteReply, changes_state=True),
    Endpoint("register", RegisterRequest, SwarmReply, changes_state=True, operator_only=True),
    Endpoint("deregister", DeregisterRequest, SwarmReply, changes_state=True, operator_only=True),
    Endpoint(
        "update",
        UpdateRequest,
        UpdateReply,
        changes_state=True,
        operator_only=True,
        chassis_fields=("reputation_score",),
    ),
    Endpoint("reload", ReloadRequest, ReloadReply, changes_state=True, operator_only=True),
    Endpoint("status", StatusRequest, StatusReply, changes_state=False, empty_body_ok=True),
    Endpoint("history", HistoryRequest, HistoryReply, changes_state=False, empty_body_ok=True),
)
BY_NAME: dict[str, Endpoint] = {e.name: e for e in ENDPOINTS}
BY_REQUEST: dict[type[Request], Endpoint] = {e.request: e for e in ENDPOINTS}

#: What a ledger entry of each kind records: the request (a `reload` as the config was read), a `configure`, or the
#: actor's `tick` at a budget period's boundary.
ENTRY_TYPES: dict[str, type[msgspec.Struct]] = {
    **{e.name: e.request for e in ENDPOINTS if e.changes_state},
    "reload": Reload,
    "configure": Configure,
    "tick": Tick,
}
