"""The wire contract: requests decode strictly, replies encode with `ok` first and optional fields omitted."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from schemas.policy import ResourcePolicy
from schemas.profiles import SwarmProfile
from schemas.replies import (
    Assignment,
    AssignReply,
    BreakerState,
    CostReply,
    ErrorBody,
    ErrorReply,
    FailureReply,
    HistoryReply,
    ResetReply,
    StatusReply,
    SwarmReply,
    TripReply,
)
from schemas.requests import (
    AssignRequest,
    CostRequest,
    DeregisterRequest,
    FailureRequest,
    HistoryRequest,
    RegisterRequest,
    ResetRequest,
    StatusRequest,
    TripRequest,
)

COST = {"swarm_id": "a", "operation": "op", "cost": 1.5}
ASSIGN = {"task_id": "t", "required_capabilities": ["integration:sip"]}
RESET = {"swarm_id": "a", "new_budget": 25.0, "approved_by": "alice"}
TRIP = {"swarm_id": "a", "reason": "manual_override", "requested_by": "ops"}
REGISTER = {
    "swarm_id": "session-4-sip",
    "capabilities": ["integration:sip", "integration:h323"],
    "cost_per_hour": 15.0,
    "reputation_score": 0.95,
    "current_budget_remaining": 10.44,
    "model": "sonnet",
}
LONG = "x" * 257


def body(base: dict[str, Any], **changes: Any) -> bytes:
    """`base` with fields replaced (a value of `...` removes the field), as JSON."""
    merged = {**base, **changes}
    return json.dumps({k: v for k, v in merged.items() if v is not ...}).encode()


BAD_REQUESTS: list[tuple[str, type[Any], bytes]] = [
    # unknown fields
    ("cost unknown field", CostRequest, body(COST, amount=1.0)),
    ("assign unknown field", AssignRequest, body(ASSIGN, priority=1)),
    ("reset unknown field", ResetRequest, body(RESET, force=True)),
    ("register unknown field", RegisterRequest, body(REGISTER, initial_budget=5.0)),
    ("status unknown field", StatusRequest, b'{"verbose": true}'),
    ("deregister unknown field", DeregisterRequest, b'{"swarm_id": "a", "hard": true}'),
    # wrong types
    ("cost as string", CostRequest, body(COST, cost="1.5")),
    ("cost as bool", CostRequest, body(COST, cost=True)),
    ("capabilities as string", AssignRequest, body(ASSIGN, required_capabilities="integration:sip")),
    ("max_swarms as float", AssignRequest, body(ASSIGN, max_swarms=1.5)),
    ("explain as string", AssignRequest, body(ASSIGN, explain="yes")),
    ("swarm_id as number", CostRequest, body(COST, swarm_id=7)),
    ("body not an object", CostRequest, b"[1, 2]"),
    ("history limit as string", HistoryRequest, b'{"limit": "10"}'),
    # missing fields
    ("cost missing cost", CostRequest, body(COST, cost=...)),
    ("cost missing swarm", CostRequest, body(COST, swarm_id=...)),
    ("assign missing task", AssignRequest, body(ASSIGN, task_id=...)),
    ("reset missing approver", ResetRequest, body(RESET, approved_by=...)),
    ("trip missing requester", TripRequest, body(TRIP, requested_by=...)),
    ("register missing model", RegisterRequest, body(REGISTER, model=...)),
    # out of range
    ("negative cost", CostRequest, body(COST, cost=-0.01)),
    ("cost 1e400", CostRequest, b'{"swarm_id": "a", "operation": "op", "cost": 1e400}'),
    ("cost NaN literal", CostRequest, b'{"swarm_id": "a", "operation": "op", "cost": NaN}'),
    ("cost Infinity literal", CostRequest, b'{"swarm_id": "a", "operation": "op", "cost": Infinity}'),
    ("cost above maximum", CostRequest, body(COST, cost=1e10)),
    ("negative max_cost", AssignRequest, body(ASSIGN, max_cost=-1.0)),
    ("zero max_swarms", AssignRequest, body(ASSIGN, max_swarms=0)),
    ("max_swarms above 64", AssignRequest, body(ASSIGN, max_swarms=65)),
    ("reset zero budget", ResetRequest, body(RESET, new_budget=0.0)),
    ("reset negative budget", ResetRequest, body(RESET, new_budget=-5.0)),
    ("reset budget 1e400", ResetRequest, b'{"swarm_id": "a", "new_budget": 1e400, "approved_by": "a"}'),
    ("reset empty approver", ResetRequest, body(RESET, approved_by="")),
    ("reputation above 1", RegisterRequest, body(REGISTER, reputation_score=1.01)),
    ("reputation below 0", RegisterRequest, body(REGISTER, reputation_score=-0.1)),
    ("cost_per_hour 0", RegisterRequest, body(REGISTER, cost_per_hour=0)),
    ("register zero budget", RegisterRequest, body(REGISTER, current_budget_remaining=0)),
    ("no capabilities", AssignRequest, body(ASSIGN, required_capabilities=[])),
    ("65 capabilities", AssignRequest, body(ASSIGN, required_capabilities=["integration:sip"] * 65)),
    ("register 65 capabilities", RegisterRequest, body(REGISTER, capabilities=["integration:sip"] * 65)),
    ("swarm_id of 257", CostRequest, body(COST, swarm_id=LONG)),
    ("task_id of 257", AssignRequest, body(ASSIGN, task_id=LONG)),
    ("operation of 257", CostRequest, body(COST, operation=LONG)),
    ("event_id of 257", CostRequest, body(COST, event_id=LONG)),
    ("approver of 257", ResetRequest, body(RESET, approved_by=LONG)),
    ("empty swarm_id", CostRequest, body(COST, swarm_id="")),
    ("swarm_id with a space", DeregisterRequest, b'{"swarm_id": "a b"}'),
    ("trip automatic reason", TripRequest, body(TRIP, reason="budget_exhausted")),
    ("trip unknown reason", TripRequest, body(TRIP, reason="bored")),
    ("history limit 0", HistoryRequest, b'{"limit": 0}'),
    # not JSON
    ("not JSON", CostRequest, b"cost=1.5"),
    ("truncated JSON", CostRequest, b'{"swarm_id": "a"'),
]


class TestRequestDecoding:
    @pytest.mark.parametrize(
        ("kind", "data"), [(t, d) for _, t, d in BAD_REQUESTS], ids=[n for n, _, _ in BAD_REQUESTS]
    )
    def test_bad_request_is_refused(self, kind: type[Any], data: bytes) -> None:
        """A request with an unknown field, wrong type, missing field or value out of range does not decode."""
        with pytest.raises((msgspec.ValidationError, msgspec.DecodeError)):
            msgspec.json.Decoder(kind).decode(data)

    def test_error_names_the_path(self) -> None:
        """A range error names the limit and the field's path."""
        with pytest.raises(msgspec.ValidationError, match=r"^Expected `float` >= 0\.0 - at `\$\.cost`$"):
            msgspec.json.Decoder(CostRequest).decode(body(COST, cost=-1))

    def test_unknown_field_is_named(self) -> None:
        """An unknown field is refused by name."""
        with pytest.raises(msgspec.ValidationError, match="unknown field `amount`"):
            msgspec.json.Decoder(CostRequest).decode(body(COST, amount=1))

    def test_assign_defaults(self) -> None:
        """An assign request with only the required fields gets max_cost None, max_swarms 1, explain False."""
        request = msgspec.json.Decoder(AssignRequest).decode(body(ASSIGN))
        assert request == AssignRequest(task_id="t", required_capabilities=["integration:sip"])
        assert (request.max_cost, request.max_swarms, request.explain, request.trace_id) == (None, 1, False, None)

    def test_cost_full(self) -> None:
        """A cost request decodes every optional field; an integer cost becomes a float."""
        data = body(COST, cost=2, event_id="e1", task_id="t1", trace_id="tr")
        assert msgspec.json.Decoder(CostRequest).decode(data) == CostRequest(
            swarm_id="a", operation="op", cost=2.0, event_id="e1", task_id="t1", trace_id="tr"
        )

    def test_zero_cost_decodes(self) -> None:
        """A cost of exactly 0 is valid."""
        assert msgspec.json.Decoder(CostRequest).decode(body(COST, cost=0)).cost == 0.0

    def test_register_matches_the_example_profile(self) -> None:
        """`IF.governor.md`'s session-4-sip profile decodes as a RegisterRequest and as a SwarmProfile alike."""
        request = msgspec.json.Decoder(RegisterRequest).decode(body(REGISTER))
        swarm = msgspec.json.Decoder(SwarmProfile).decode(body(REGISTER))
        assert {k: v for k, v in msgspec.to_builtins(request).items() if k in REGISTER} == REGISTER
        assert request.trace_id is None
        assert msgspec.to_builtins(swarm) == REGISTER

    def test_boundaries_accepted(self) -> None:
        """64 capabilities, ids of 256 characters, reputation 0 and 1 are all accepted."""
        decode = msgspec.json.Decoder(RegisterRequest).decode
        assert len(decode(body(REGISTER, capabilities=["integration:sip"] * 64)).capabilities) == 64
        assert decode(body(REGISTER, swarm_id="s" * 256)).swarm_id == "s" * 256
        assert decode(body(REGISTER, reputation_score=0)).reputation_score == 0.0
        assert decode(body(REGISTER, reputation_score=1)).reputation_score == 1.0

    def test_trip_reasons(self) -> None:
        """The three manual reasons decode."""
        decode = msgspec.json.Decoder(TripRequest).decode
        for reason in ("repeated_failures", "performance_degradation", "manual_override"):
            assert decode(body(TRIP, reason=reason)).reason == reason

    def test_empty_bodies(self) -> None:
        """Status and history accept an empty object; failure needs only the swarm id."""
        assert msgspec.json.Decoder(StatusRequest).decode(b"{}") == StatusRequest()
        assert msgspec.json.Decoder(HistoryRequest).decode(b"{}") == HistoryRequest()
        assert msgspec.json.Decoder(FailureRequest).decode(b'{"swarm_id": "a"}') == FailureRequest(swarm_id="a")

    def test_policy_refuses_unknown_fields(self) -> None:
        """A policy with an unknown field is refused."""
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.Decoder(ResourcePolicy).decode(b'{"max_swarms": 2}')


class TestReplyEncoding:
    @pytest.mark.parametrize(
        "reply",
        [
            AssignReply(task_id="t", swarm_id="a", assignments=[Assignment(swarm_id="a", capability_match=1, score=1)]),
            CostReply(swarm_id="a", remaining=1.0, tripped=False),
            ResetReply(swarm_id="a", remaining=1.0),
            TripReply(swarm_id="a"),
            FailureReply(swarm_id="a", failures_in_window=1, tripped=False),
            SwarmReply(swarm_id="a"),
            HistoryReply(assignments=[]),
            StatusReply(swarms=[], budgets={}, breakers={}, policy=ResourcePolicy()),
        ],
        ids=lambda r: type(r).__name__,
    )
    def test_ok_reply_starts_with_ok_true(self, reply: msgspec.Struct) -> None:
        """Every successful reply encodes with `"ok": true` as its first field."""
        assert msgspec.json.encode(reply).startswith(b'{"ok":true,')

    def test_error_reply_shape(self) -> None:
        """The one error shape is `{"ok": false, "error": {"code", "message"}}`, `ok` first."""
        reply = ErrorReply(error=ErrorBody(code="unknown_swarm", message="no swarm 'x' is registered"))
        assert msgspec.json.encode(reply) == (
            b'{"ok":false,"error":{"code":"unknown_swarm","message":"no swarm \'x\' is registered"},"trace_id":""}'
        )

    def test_cost_reply_exact(self) -> None:
        """A cost reply encodes exactly as specified, duplicate defaulting to false."""
        reply = CostReply(swarm_id="a", remaining=-1.0, tripped=True, trace_id="tr")
        assert msgspec.json.decode(msgspec.json.encode(reply)) == {
            "ok": True,
            "trace_id": "tr",
            "swarm_id": "a",
            "remaining": -1.0,
            "tripped": True,
            "duplicate": False,
            "cost": None,
        }

    def test_assign_reply_omits_rejected_unless_set(self) -> None:
        """`rejected` is absent from a normal assign reply."""
        reply = AssignReply(task_id="t", swarm_id=None, assignments=[], reason="no_qualified_swarm")
        assert msgspec.json.decode(msgspec.json.encode(reply)) == {
            "ok": True,
            "trace_id": "",
            "task_id": "t",
            "swarm_id": None,
            "assignments": [],
            "reason": "no_qualified_swarm",
        }

    def test_assign_reply_with_rejected(self) -> None:
        """`rejected` appears when set, even empty."""
        explained = AssignReply(task_id="t", swarm_id=None, assignments=[], rejected={"a": "cost_above_max"})
        assert msgspec.json.decode(msgspec.json.encode(explained))["rejected"] == {"a": "cost_above_max"}
        empty = AssignReply(task_id="t", swarm_id=None, assignments=[], rejected={})
        assert msgspec.json.decode(msgspec.json.encode(empty))["rejected"] == {}

    def test_status_reply_breakers(self) -> None:
        """A breaker encodes as `{"reason", "tripped_at"}`."""
        reply = StatusReply(
            swarms=[],
            budgets={"a": 0.0},
            breakers={"a": BreakerState(reason="budget_exhausted", tripped_at=1699824000.0)},
            policy=ResourcePolicy(),
        )
        assert msgspec.json.decode(msgspec.json.encode(reply))["breakers"] == {
            "a": {
                "reason": "budget_exhausted",
                "tripped_at": 1699824000.0,
                "state": "open",
                "next_probe_at": None,
                "cooldown_s": 0.0,
                "probes_left": 0,
            }
        }
