"""Every request subject over a real nats-server: ok replies, every error code with its headers, unchanged state
after each rejected request, trace ids, witness records and `nats.micro` discovery.

Malformed bodies go through raw `nc.request(...)` so that the bytes on the wire are exactly the ones under test.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.micro.service import ServiceInfo, ServicePing, ServiceStats

from tests.factories import EXAMPLE_SWARMS, make_config, swarm_entry
from tests.integration.helpers import Recorder, WorkerFactory, project

ERROR_HEADER = "Nats-Service-Error"
ERROR_CODE_HEADER = "Nats-Service-Error-Code"
TRACE_HEADER = "X-IF-Trace-ID"

SUBJECTS = ("assign", "cost", "reset", "trip", "failure", "register", "deregister", "status", "history")
SIP = "session-4-sip"
NDI = "session-1-ndi"
PYTHON = "code-analysis:python"
WITNESS_KEYS = {"component", "operation", "params", "timestamp", "severity", "trace_id"}

NEW_SWARM: dict[str, Any] = {
    "swarm_id": "session-2-webrtc",
    "capabilities": ["integration:webrtc", "docs:technical-writing"],
    "cost_per_hour": 15.0,
    "reputation_score": 0.92,
    "current_budget_remaining": 25.0,
    "model": "sonnet",
}

_trace_ids = itertools.count(1)


def with_literal(body: dict[str, Any], key: str, literal: str) -> bytes:
    """`body` as JSON with `key` set to a raw JSON token (`NaN`, `1e400`), which `json.dumps` cannot write."""
    marker = "@@literal@@"
    return json.dumps({**body, key: marker}).replace(f'"{marker}"', literal).encode()


@dataclass
class Api:
    """Raw requests to the governor, with the checks every reply must pass."""

    nc: Client
    recorder: Recorder
    prefix: str = "governor"

    async def request(
        self, name: str, body: dict[str, Any] | bytes, *, trace_id: str | None = None
    ) -> tuple[Msg, dict[str, Any]]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {TRACE_HEADER: trace_id} if trace_id is not None else None
        msg = await self.nc.request(f"{self.prefix}.{name}", data, timeout=5.0, headers=headers)
        return msg, json.loads(msg.data)

    async def ok(self, name: str, body: dict[str, Any] | bytes, *, trace_id: str | None = None) -> dict[str, Any]:
        """Send a request that must succeed; return its reply."""
        msg, reply = await self.request(name, body, trace_id=trace_id)
        assert reply["ok"] is True, reply
        assert ERROR_CODE_HEADER not in (msg.headers or {})
        assert isinstance(reply["trace_id"], str) and reply["trace_id"]
        return reply

    async def state(self) -> dict[str, Any]:
        """Everything a request could change: swarms, budgets, breakers, policy and the assignment history."""
        status = await self.ok("status", {})
        history = await self.ok("history", {})
        snapshot = {key: status[key] for key in ("swarms", "budgets", "breakers", "policy")}
        snapshot["history"] = history["assignments"]
        return snapshot

    async def reject(self, name: str, body: dict[str, Any] | bytes, code: str, status: int) -> str:
        """Send a request that must be refused with `code`; check the reply, headers, witness and unchanged state.

        Returns the error message.
        """
        before = await self.state()
        trace_id = f"rejected-{next(_trace_ids)}"
        msg, reply = await self.request(name, body, trace_id=trace_id)
        assert reply["ok"] is False, reply
        assert set(reply["error"]) == {"code", "message"}
        assert reply["error"]["code"] == code, reply
        message = reply["error"]["message"]
        assert isinstance(message, str) and message
        headers = msg.headers or {}
        assert headers.get(ERROR_CODE_HEADER) == str(status)
        assert headers.get(ERROR_HEADER) == message
        assert reply["trace_id"] == trace_id
        record = await wait_for_trace(self.recorder, f"{self.prefix}.witness.request_rejected", trace_id)
        assert record["severity"] == "INFO"
        assert (record["params"]["subject"], record["params"]["code"]) == (f"{self.prefix}.{name}", code)
        assert await self.state() == before
        return str(message)


async def wait_for_trace(recorder: Recorder, subject: str, trace_id: str, timeout: float = 5.0) -> dict[str, Any]:
    """Wait for the message on `subject` that carries `trace_id`; return it."""
    async with asyncio.timeout(timeout):
        count = 1
        while True:
            messages = await recorder.wait_for(subject, count, timeout)
            for message in messages:
                if message.get("trace_id") == trace_id:
                    return message
            count = len(messages) + 1


@pytest.fixture
async def api(start_worker: WorkerFactory, nc: Client, recorder: Recorder) -> Api:
    """A governor with the two example swarms (session-4-sip and session-1-ndi, $25 each) and a raw client."""
    await start_worker()
    return Api(nc, recorder)


@pytest.fixture
def raw_api(nc: Client, recorder: Recorder) -> Api:
    """A raw client for tests that start the worker with their own config (through `start_worker`)."""
    return Api(nc, recorder)


async def exhaust(api: Api, swarm_id: str = SIP, amount: float = 25.0) -> None:
    """Spend an example swarm's whole budget so that its breaker trips."""
    reply = await api.ok("cost", {"swarm_id": swarm_id, "operation": "exhaust", "cost": amount})
    assert reply["tripped"] is True


# -- malformed requests, for every subject ---------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """A valid body for a subject and how to break it."""

    valid: dict[str, Any]
    wrong_type: dict[str, Any]
    required: str | None
    number: str
    """A key where a NaN or Infinity literal goes."""


SHAPES: dict[str, Shape] = {
    "assign": Shape(
        {"task_id": "t-1", "required_capabilities": ["integration:sip"], "max_cost": 20.0},
        {"task_id": "t-1", "required_capabilities": "integration:sip"},
        "required_capabilities",
        "max_cost",
    ),
    "cost": Shape(
        {"swarm_id": SIP, "operation": "op", "cost": 2.5},
        {"swarm_id": SIP, "operation": "op", "cost": "2.5"},
        "operation",
        "cost",
    ),
    "reset": Shape(
        {"swarm_id": SIP, "new_budget": 25.0, "approved_by": "alice"},
        {"swarm_id": SIP, "new_budget": "25.0", "approved_by": "alice"},
        "approved_by",
        "new_budget",
    ),
    "trip": Shape(
        {"swarm_id": SIP, "reason": "manual_override", "requested_by": "bob"},
        {"swarm_id": 4, "reason": "manual_override", "requested_by": "bob"},
        "requested_by",
        "swarm_id",
    ),
    "failure": Shape({"swarm_id": SIP}, {"swarm_id": SIP, "task_id": 17}, "swarm_id", "task_id"),
    "register": Shape(NEW_SWARM, {**NEW_SWARM, "current_budget_remaining": "lots"}, "model", "cost_per_hour"),
    "deregister": Shape({"swarm_id": NDI}, {"swarm_id": None}, "swarm_id", "swarm_id"),
    "status": Shape({}, {"trace_id": 42}, None, "trace_id"),
    "history": Shape({"limit": 10}, {"limit": "ten"}, None, "limit"),
}

MALFORMED: list[tuple[str, str, bytes]] = []
for _name, _shape in SHAPES.items():
    MALFORMED += [
        (_name, "not-json", b'{"swarm_id": "session-4-sip",'),
        (_name, "json-array", b'["session-4-sip"]'),
        (_name, "wrong-type", json.dumps(_shape.wrong_type).encode()),
        (_name, "unknown-field", json.dumps({**_shape.valid, "priority": "high"}).encode()),
        (_name, "nan-literal", with_literal(_shape.valid, _shape.number, "NaN")),
        (_name, "infinity-literal", with_literal(_shape.valid, _shape.number, "Infinity")),
    ]
    if _shape.required is not None:
        missing = {k: v for k, v in _shape.valid.items() if k != _shape.required}
        MALFORMED.append((_name, f"missing-{_shape.required}", json.dumps(missing).encode()))
    if _name not in ("status", "history"):
        MALFORMED.append((_name, "empty-body", b""))


class TestMalformedRequests:
    @pytest.mark.parametrize(
        ("name", "body"), [(n, b) for n, _, b in MALFORMED], ids=[f"{n}-{c}" for n, c, _ in MALFORMED]
    )
    async def test_refused_as_invalid_request(self, api: Api, name: str, body: bytes) -> None:
        """A body that is not JSON, not an object, mistyped, incomplete, over-complete or holds NaN/Infinity is refused
        with `invalid_request` (400) and changes nothing."""
        await api.reject(name, body, "invalid_request", 400)

    @pytest.mark.parametrize("name", ["status", "history"])
    async def test_empty_body_means_empty_object(self, api: Api, name: str) -> None:
        """An empty body on `status` and `history` is read as `{}`."""
        reply = await api.ok(name, b"")
        assert reply == await api.ok(name, {}) | {"trace_id": reply["trace_id"]}

    async def test_plain_publish_of_a_bad_request_is_witnessed(self, api: Api, nc: Client, recorder: Recorder) -> None:
        """A malformed plain publish gets no reply but is witnessed as `request_rejected` and changes nothing."""
        before = await api.state()
        await nc.publish("governor.cost", b'{"swarm_id": "session-4-sip"}', headers={TRACE_HEADER: "pub-bad"})
        record = await wait_for_trace(recorder, "governor.witness.request_rejected", "pub-bad")
        assert (record["params"]["subject"], record["params"]["code"]) == ("governor.cost", "invalid_request")
        assert await api.state() == before


# -- governor.assign -------------------------------------------------------------------------------------------


class TestAssign:
    async def test_best_swarm(self, api: Api) -> None:
        """A SIP task under $20/h goes to session-4-sip with coverage 1.0 and score (1.0 × 0.95) / 15."""
        reply = await api.ok(
            "assign", {"task_id": "t-1", "required_capabilities": ["integration:sip"], "max_cost": 20.0}
        )
        expected = {
            "ok": True,
            "task_id": "t-1",
            "swarm_id": SIP,
            "assignments": [{"swarm_id": SIP, "capability_match": 1.0, "score": (1.0 * 0.95) / 15.0}],
            "reason": None,
        }
        assert project(reply, expected) == expected
        assert "rejected" not in reply

    async def test_partial_coverage_above_threshold(self, start_worker: WorkerFactory, raw_api: Api) -> None:
        """A swarm holding 3 of 4 required capabilities qualifies with coverage 0.75 and score 0.75 × rep / cost."""
        swarm = {
            "swarm_id": "polyglot",
            "capabilities": ["code-analysis:python", "code-analysis:rust", "code-analysis:go"],
            "cost_per_hour": 2.0,
            "reputation_score": 0.8,
            "model": "haiku",
        }
        await start_worker(make_config([swarm]))
        required = ["code-analysis:python", "code-analysis:rust", "code-analysis:go", "code-analysis:cpp"]
        reply = await raw_api.ok("assign", {"task_id": "t-2", "required_capabilities": required})
        expected = [{"swarm_id": "polyglot", "capability_match": 0.75, "score": 0.75 * 0.8 / 2.0}]
        assert project(reply["assignments"], expected) == expected

    async def test_max_cost_absent_uses_policy(self, api: Api) -> None:
        """Without `max_cost` the policy's $10/h applies, so the $15/h SIP swarm does not qualify."""
        reply = await api.ok("assign", {"task_id": "t-3", "required_capabilities": ["integration:sip"]})
        expected: dict[str, Any] = {
            "task_id": "t-3",
            "swarm_id": None,
            "assignments": [],
            "reason": "no_qualified_swarm",
        }
        assert project(reply, expected) == expected

    async def test_explain_lists_every_reason_code(self, start_worker: WorkerFactory, raw_api: Api) -> None:
        """With `explain`, each swarm that does not qualify is listed with the first filter it failed, in order."""
        await start_worker(
            make_config(
                [
                    swarm_entry("below", ["integration:sip"], cost_per_hour=2.0, initial_budget=25.0),
                    swarm_entry("pricey", [PYTHON], cost_per_hour=50.0, initial_budget=25.0),
                    swarm_entry("broke", [PYTHON], cost_per_hour=2.0, initial_budget=1.0),
                    swarm_entry("halted", [PYTHON], cost_per_hour=2.0, initial_budget=25.0),
                    swarm_entry("fine", [PYTHON], cost_per_hour=2.0, initial_budget=25.0),
                ]
            )
        )
        await raw_api.ok("cost", {"swarm_id": "broke", "operation": "op", "cost": 1.0})
        await raw_api.ok("trip", {"swarm_id": "halted", "reason": "performance_degradation", "requested_by": "bob"})
        body = {"task_id": "t-4", "required_capabilities": ["code-analysis:python"], "max_cost": 20.0, "explain": True}
        reply = await raw_api.ok("assign", body)
        assert reply["swarm_id"] == "fine"
        assert reply["rejected"] == {
            "below": "capability_match_below_threshold",
            "pricey": "cost_above_max",
            "broke": "budget_exhausted",
            "halted": "breaker_tripped",
        }
        without = await raw_api.ok("assign", {**body, "explain": False})
        assert "rejected" not in without

    async def test_max_swarms(self, start_worker: WorkerFactory, raw_api: Api) -> None:
        """`max_swarms` returns up to that many by score, ties to the earliest registered, never over the policy's 3."""
        prices = {"mid": (15.0, 0.95), "tie-a": (2.0, 0.9), "tie-b": (2.0, 0.9), "cheap": (1.5, 0.9)}
        swarms = [
            swarm_entry(swarm_id, [PYTHON], cost_per_hour=cost, reputation_score=rep, initial_budget=None, model="m")
            for swarm_id, (cost, rep) in prices.items()
        ]
        await start_worker(make_config(swarms))
        body = {"task_id": "t-5", "required_capabilities": ["code-analysis:python"], "max_cost": 100.0}
        two = await raw_api.ok("assign", {**body, "max_swarms": 2})
        assert two["swarm_id"] == "cheap"
        expected = [
            {"swarm_id": "cheap", "capability_match": 1.0, "score": 0.9 / 1.5},
            {"swarm_id": "tie-a", "capability_match": 1.0, "score": 0.9 / 2.0},
        ]
        assert project(two["assignments"], expected) == expected
        capped = await raw_api.ok("assign", {**body, "task_id": "t-6", "max_swarms": 64})
        assert [a["swarm_id"] for a in capped["assignments"]] == ["cheap", "tie-a", "tie-b"]
        history = await raw_api.ok("history", {})
        assert [(a["task_id"], a["swarm_id"], a["swarm_ids"]) for a in history["assignments"]] == [
            ("t-5", "cheap", ["cheap", "tie-a"]),
            ("t-6", "cheap", ["cheap", "tie-a", "tie-b"]),
        ]
        await raw_api.reject("assign", {**body, "max_swarms": 0}, "invalid_request", 400)

    async def test_unknown_capability_suggests(self, api: Api) -> None:
        """A misspelt capability is refused with `unknown_capability` (400), suggesting the closest known name."""
        message = await api.reject(
            "assign", {"task_id": "t-7", "required_capabilities": ["integration:sipp"]}, "unknown_capability", 400
        )
        assert message.startswith("unknown capability 'integration:sipp'")
        assert "did you mean" in message and "'integration:sip'" in message

    @pytest.mark.parametrize(
        "body",
        [
            {"task_id": "t-8", "required_capabilities": []},
            {"task_id": "", "required_capabilities": ["integration:sip"]},
            {"task_id": "t-8", "required_capabilities": ["integration:sip"], "max_cost": -1.0},
            {"task_id": "t-8", "required_capabilities": ["integration:sip"], "explain": "yes"},
        ],
        ids=["no-capabilities", "empty-task-id", "negative-max-cost", "explain-not-bool"],
    )
    async def test_out_of_range_values(self, api: Api, body: dict[str, Any]) -> None:
        """Values outside their type's limits are refused with `invalid_request` (400)."""
        await api.reject("assign", body, "invalid_request", 400)


# -- governor.cost ---------------------------------------------------------------------------------------------


class TestCost:
    async def test_deducts_at_once(self, api: Api) -> None:
        """A $2.50 cost leaves $22.50 and the breaker closed; status shows the new budget."""
        reply = await api.ok("cost", {"swarm_id": SIP, "operation": "sip_integration", "cost": 2.5})
        expected = {"ok": True, "swarm_id": SIP, "remaining": 22.5, "tripped": False}
        assert project(reply, expected) == expected
        status = await api.ok("status", {})
        assert status["budgets"] == {SIP: 22.5, NDI: 25.0}

    async def test_reaching_zero_trips_once(self, api: Api, recorder: Recorder) -> None:
        """Spending exactly the budget trips the breaker; a later cost is recorded without a second trip."""
        first = await api.ok("cost", {"swarm_id": SIP, "operation": "op-1", "cost": 25.0})
        assert project(first, {"remaining": 0.0, "tripped": True}) == {"remaining": 0.0, "tripped": True}
        second = await api.ok("cost", {"swarm_id": SIP, "operation": "op-2", "cost": 1.5})
        assert project(second, {"remaining": -1.5, "tripped": True}) == {"remaining": -1.5, "tripped": True}
        await wait_for_trace(recorder, "governor.witness.cost_tracked", second["trace_id"])
        assert len(recorder.bodies("governor.events.breaker.tripped")) == 1
        assert len(recorder.bodies("governor.events.escalation")) == 1
        status = await api.ok("status", {})
        assert status["budgets"][SIP] == -1.5
        assert status["breakers"][SIP]["reason"] == "budget_exhausted"

    async def test_zero_cost_is_accepted(self, api: Api) -> None:
        """A zero cost is a valid (free) operation and leaves the budget as it was."""
        reply = await api.ok("cost", {"swarm_id": SIP, "operation": "noop", "cost": 0.0})
        assert project(reply, {"remaining": 25.0, "tripped": False}) == {"remaining": 25.0, "tripped": False}

    async def test_plain_publish_is_applied(self, api: Api, nc: Client, recorder: Recorder) -> None:
        """A cost sent as a plain publish (no reply subject) is applied and witnessed."""
        body = {"swarm_id": NDI, "operation": "ndi_stream", "cost": 4.0, "task_id": "t-9"}
        await nc.publish("governor.cost", json.dumps(body).encode(), headers={TRACE_HEADER: "pub-1"})
        record = await wait_for_trace(recorder, "governor.witness.cost_tracked", "pub-1")
        params = {"swarm_id": NDI, "operation": "ndi_stream", "cost": 4.0, "remaining": 21.0, "task_id": "t-9"}
        assert project(record["params"], params) == params
        status = await api.ok("status", {})
        assert status["budgets"] == {SIP: 25.0, NDI: 21.0}

    async def test_unknown_swarm(self, api: Api) -> None:
        """A cost for an unregistered swarm is refused with `unknown_swarm` (404)."""
        message = await api.reject("cost", {"swarm_id": "ghost", "operation": "op", "cost": 1.0}, "unknown_swarm", 404)
        assert "ghost" in message

    async def test_negative_cost(self, api: Api) -> None:
        """A negative cost is refused with `invalid_cost` (400): it would add budget."""
        await api.reject("cost", {"swarm_id": SIP, "operation": "op", "cost": -5.0}, "invalid_cost", 400)


# -- governor.reset --------------------------------------------------------------------------------------------


class TestReset:
    async def test_closes_breaker_with_new_budget(self, api: Api, recorder: Recorder) -> None:
        """A reset by a named approver closes the breaker and sets the new budget."""
        await exhaust(api)
        reply = await api.ok("reset", {"swarm_id": SIP, "new_budget": 30.0, "approved_by": "alice"})
        expected = {"ok": True, "swarm_id": SIP, "remaining": 30.0}
        assert project(reply, expected) == expected
        status = await api.ok("status", {})
        assert (status["budgets"][SIP], status["breakers"]) == (30.0, {})
        event = await wait_for_trace(recorder, "governor.events.breaker.reset", reply["trace_id"])
        assert project(event, {"swarm_id": SIP, "new_budget": 30.0, "approved_by": "alice"}) == {
            "swarm_id": SIP,
            "new_budget": 30.0,
            "approved_by": "alice",
        }

    async def test_unknown_swarm(self, api: Api) -> None:
        """A reset of an unregistered swarm is refused with `unknown_swarm` (404)."""
        await api.reject(
            "reset", {"swarm_id": "ghost", "new_budget": 5.0, "approved_by": "alice"}, "unknown_swarm", 404
        )

    async def test_not_tripped(self, api: Api) -> None:
        """A reset of a swarm whose breaker is closed is refused with `not_tripped` (409) and restores no budget."""
        await api.ok("cost", {"swarm_id": SIP, "operation": "op", "cost": 10.0})
        await api.reject("reset", {"swarm_id": SIP, "new_budget": 100.0, "approved_by": "alice"}, "not_tripped", 409)

    @pytest.mark.parametrize("literal", ["0", "0.0", "-5", "1e400"])
    async def test_invalid_budget(self, api: Api, literal: str) -> None:
        """A new budget that is zero, negative or not finite is refused with `invalid_budget` (400)."""
        await exhaust(api)
        body = with_literal({"swarm_id": SIP, "approved_by": "alice"}, "new_budget", literal)
        await api.reject("reset", body, "invalid_budget", 400)

    @pytest.mark.parametrize("approver", ["", "   "])
    async def test_approver_must_be_named(self, api: Api, approver: str) -> None:
        """A reset without a named approver is refused with `invalid_request` (400)."""
        await exhaust(api)
        await api.reject(
            "reset", {"swarm_id": SIP, "new_budget": 25.0, "approved_by": approver}, "invalid_request", 400
        )


# -- governor.trip ---------------------------------------------------------------------------------------------


class TestTrip:
    @pytest.mark.parametrize("reason", ["repeated_failures", "performance_degradation", "manual_override"])
    async def test_manual_trip(self, api: Api, recorder: Recorder, reason: str) -> None:
        """A manual trip opens the breaker with its reason and escalates naming that reason."""
        reply = await api.ok("trip", {"swarm_id": NDI, "reason": reason, "requested_by": "bob"})
        assert project(reply, {"ok": True, "swarm_id": NDI}) == {"ok": True, "swarm_id": NDI}
        status = await api.ok("status", {})
        assert status["breakers"][NDI]["reason"] == reason
        assert status["budgets"][NDI] == 25.0
        escalation = await wait_for_trace(recorder, "governor.events.escalation", reply["trace_id"])
        assert escalation["reason"] == f"Circuit breaker tripped - {reason.replace('_', ' ')}"
        assert escalation["context"]["reason"] == reason
        assigned = await api.ok("assign", {"task_id": "t-10", "required_capabilities": ["integration:ndi"]})
        assert assigned["swarm_id"] is None

    async def test_already_tripped(self, api: Api) -> None:
        """A manual trip of a tripped swarm is refused with `already_tripped` (409)."""
        await api.ok("trip", {"swarm_id": NDI, "reason": "manual_override", "requested_by": "bob"})
        await api.reject(
            "trip",
            {"swarm_id": NDI, "reason": "performance_degradation", "requested_by": "bob"},
            "already_tripped",
            409,
        )

    async def test_already_tripped_by_budget(self, api: Api) -> None:
        """A manual trip of a swarm tripped by its budget is refused with `already_tripped` and keeps the reason."""
        await exhaust(api)
        await api.reject(
            "trip", {"swarm_id": SIP, "reason": "manual_override", "requested_by": "bob"}, "already_tripped", 409
        )

    async def test_unknown_swarm(self, api: Api) -> None:
        """A trip of an unregistered swarm is refused with `unknown_swarm` (404)."""
        await api.reject(
            "trip", {"swarm_id": "ghost", "reason": "manual_override", "requested_by": "bob"}, "unknown_swarm", 404
        )

    async def test_budget_exhausted_is_not_a_manual_reason(self, api: Api) -> None:
        """`budget_exhausted` is automatic only: a manual trip with it is refused with `invalid_request`."""
        await api.reject(
            "trip", {"swarm_id": SIP, "reason": "budget_exhausted", "requested_by": "bob"}, "invalid_request", 400
        )


# -- governor.failure ------------------------------------------------------------------------------------------


class TestFailure:
    async def test_threshold_trips(self, api: Api, recorder: Recorder) -> None:
        """Failures are counted in the window; the third (the policy's threshold) trips with `repeated_failures`."""
        replies = [
            await api.ok("failure", {"swarm_id": NDI, "task_id": f"t-{i}", "error": "timeout"}) for i in range(1, 4)
        ]
        assert [project(r, {"swarm_id": NDI, "failures_in_window": 0, "tripped": False}) for r in replies] == [
            {"swarm_id": NDI, "failures_in_window": 1, "tripped": False},
            {"swarm_id": NDI, "failures_in_window": 2, "tripped": False},
            {"swarm_id": NDI, "failures_in_window": 3, "tripped": True},
        ]
        tripped = await wait_for_trace(recorder, "governor.events.breaker.tripped", replies[2]["trace_id"])
        assert (tripped["swarm_id"], tripped["reason"]) == (NDI, "repeated_failures")
        status = await api.ok("status", {})
        assert status["breakers"][NDI]["reason"] == "repeated_failures"

    async def test_optional_fields(self, api: Api) -> None:
        """A failure needs only the swarm id."""
        reply = await api.ok("failure", {"swarm_id": SIP})
        assert project(reply, {"failures_in_window": 1, "tripped": False}) == {
            "failures_in_window": 1,
            "tripped": False,
        }

    async def test_unknown_swarm(self, api: Api) -> None:
        """A failure on an unregistered swarm is refused with `unknown_swarm` (404)."""
        await api.reject("failure", {"swarm_id": "ghost"}, "unknown_swarm", 404)


# -- governor.register / governor.deregister -------------------------------------------------------------------


class TestRegister:
    async def test_registers_last(self, api: Api) -> None:
        """A registered swarm appears last in status with its budget and a closed breaker, and gets work."""
        reply = await api.ok("register", NEW_SWARM)
        assert project(reply, {"ok": True, "swarm_id": NEW_SWARM["swarm_id"]}) == {
            "ok": True,
            "swarm_id": "session-2-webrtc",
        }
        status = await api.ok("status", {})
        assert [s["swarm_id"] for s in status["swarms"]] == [SIP, NDI, "session-2-webrtc"]
        expected = {**NEW_SWARM, "budget_remaining": 25.0, "breaker": None}
        assert project(status["swarms"][2], expected) == expected
        assigned = await api.ok(
            "assign", {"task_id": "t-11", "required_capabilities": ["integration:webrtc"], "max_cost": 20.0}
        )
        assert assigned["swarm_id"] == "session-2-webrtc"

    async def test_already_registered_restores_nothing(self, api: Api) -> None:
        """Registering an existing id is refused with `already_registered` (409): no budget back, breaker stays open."""
        await exhaust(api)
        again = {
            "swarm_id": SIP,
            "capabilities": ["integration:sip"],
            "cost_per_hour": 1.0,
            "reputation_score": 1.0,
            "current_budget_remaining": 1000.0,
            "model": "opus",
        }
        await api.reject("register", again, "already_registered", 409)

    async def test_deregistered_while_tripped_comes_back_tripped(self, api: Api) -> None:
        """A swarm deregistered while tripped and registered again is still tripped: only a reset closes a breaker."""
        await exhaust(api)
        await api.ok("deregister", {"swarm_id": SIP})
        again = {**NEW_SWARM, "swarm_id": SIP, "capabilities": ["integration:sip"]}
        await api.ok("register", again)
        status = await api.ok("status", {})
        assert status["breakers"][SIP]["reason"] == "budget_exhausted"
        assigned = await api.ok(
            "assign", {"task_id": "t-13", "required_capabilities": ["integration:sip"], "max_cost": 20.0}
        )
        assert assigned["swarm_id"] is None

    @pytest.mark.parametrize("literal", ["0", "-5.0", "1e400"])
    async def test_invalid_budget(self, api: Api, literal: str) -> None:
        """A starting budget that is zero, negative or not finite is refused with `invalid_budget` (400)."""
        await api.reject(
            "register", with_literal(NEW_SWARM, "current_budget_remaining", literal), "invalid_budget", 400
        )

    async def test_unknown_capability(self, api: Api) -> None:
        """A profile with an unknown capability is refused with `unknown_capability`, suggesting the closest."""
        body = {**NEW_SWARM, "capabilities": ["integration:webrtcc"]}
        message = await api.reject("register", body, "unknown_capability", 400)
        assert "did you mean" in message and "'integration:webrtc'" in message

    @pytest.mark.parametrize(
        ("key", "value"),
        [("reputation_score", 1.5), ("cost_per_hour", 0.0), ("swarm_id", "has space"), ("capabilities", [])],
    )
    async def test_out_of_range_profile(self, api: Api, key: str, value: Any) -> None:
        """A profile value outside its limits is refused with `invalid_request` (400)."""
        await api.reject("register", {**NEW_SWARM, key: value}, "invalid_request", 400)


class TestDeregister:
    async def test_removes_swarm(self, api: Api) -> None:
        """A deregistered swarm leaves status and gets no more work or costs."""
        reply = await api.ok("deregister", {"swarm_id": NDI})
        assert project(reply, {"ok": True, "swarm_id": NDI}) == {"ok": True, "swarm_id": NDI}
        status = await api.ok("status", {})
        assert [s["swarm_id"] for s in status["swarms"]] == [SIP]
        assert status["budgets"] == {SIP: 25.0}
        assigned = await api.ok("assign", {"task_id": "t-12", "required_capabilities": ["integration:ndi"]})
        assert assigned["swarm_id"] is None
        await api.reject("cost", {"swarm_id": NDI, "operation": "op", "cost": 1.0}, "unknown_swarm", 404)

    async def test_unknown_swarm(self, api: Api) -> None:
        """Deregistering an unregistered swarm is refused with `unknown_swarm` (404)."""
        await api.reject("deregister", {"swarm_id": "ghost"}, "unknown_swarm", 404)


# -- governor.status / governor.history ------------------------------------------------------------------------


class TestStatus:
    async def test_example_swarms(self, api: Api) -> None:
        """Status lists profiles with live budget and breaker, the budgets, no breakers and the production policy."""
        reply = await api.ok("status", {})
        expected_swarms = [
            {
                "swarm_id": s["swarm_id"],
                "capabilities": s["capabilities"],
                "cost_per_hour": s["cost_per_hour"],
                "reputation_score": s["reputation_score"],
                "current_budget_remaining": 25.0,
                "model": s["model"],
                "budget_remaining": 25.0,
                "breaker": None,
            }
            for s in EXAMPLE_SWARMS
        ]
        assert [project(s, e) for s, e in zip(reply["swarms"], expected_swarms, strict=True)] == expected_swarms
        assert reply["budgets"] == {SIP: 25.0, NDI: 25.0}
        assert reply["breakers"] == {}
        policy = {
            "max_swarms_per_task": 3,
            "max_cost_per_task": 10.0,
            "min_capability_match": 0.7,
            "circuit_breaker_failure_threshold": 3,
            "failure_window_s": 3600.0,
        }
        assert project(reply["policy"], policy) == policy

    async def test_breaker_state(self, api: Api, recorder: Recorder) -> None:
        """A tripped breaker shows in `breakers` and on its swarm with its reason and trip time."""
        reply = await api.ok("trip", {"swarm_id": SIP, "reason": "manual_override", "requested_by": "bob"})
        event = await wait_for_trace(recorder, "governor.events.breaker.tripped", reply["trace_id"])
        status = await api.ok("status", {})
        breaker = {"reason": "manual_override", "tripped_at": event["tripped_at"]}
        assert project(status["breakers"], {SIP: breaker}) == {SIP: breaker}
        assert list(status["breakers"]) == [SIP]
        assert project(status["swarms"][0]["breaker"], breaker) == breaker
        assert status["swarms"][1]["breaker"] is None

    async def test_policy_from_config(self, start_worker: WorkerFactory, raw_api: Api) -> None:
        """The policy in status is the one the config sets."""
        await start_worker(make_config([], min_capability_match=0.5, max_cost_per_task=8.0, max_swarms_per_task=2))
        status = await raw_api.ok("status", {})
        policy = {
            "max_swarms_per_task": 2,
            "max_cost_per_task": 8.0,
            "min_capability_match": 0.5,
            "circuit_breaker_failure_threshold": 3,
            "failure_window_s": 3600.0,
        }
        assert project(status["policy"], policy) == policy
        assert (status["swarms"], status["budgets"], status["breakers"]) == ([], {}, {})


class TestHistory:
    async def test_newest_last_and_limit(self, api: Api) -> None:
        """History holds the assignments made, newest last; `limit` keeps the newest ones."""
        first = await api.ok(
            "assign", {"task_id": "h-1", "required_capabilities": ["integration:ndi"]}, trace_id="tr-h1"
        )
        await api.ok("assign", {"task_id": "h-2", "required_capabilities": ["integration:sip"], "max_cost": 20.0})
        history = await api.ok("history", {})
        assert [(a["task_id"], a["swarm_id"]) for a in history["assignments"]] == [("h-1", NDI), ("h-2", SIP)]
        record = history["assignments"][0]
        expected = {
            "task_id": "h-1",
            "swarm_id": NDI,
            "swarm_ids": [NDI],
            "required_capabilities": ["integration:ndi"],
            "capability_match": 1.0,
            "score": (1.0 * 0.9) / 2.0,
            "trace_id": "tr-h1",
        }
        assert project(record, expected) == expected
        assert first["trace_id"] == "tr-h1"
        newest = await api.ok("history", {"limit": 1})
        assert [a["task_id"] for a in newest["assignments"]] == ["h-2"]

    async def test_no_qualified_swarm_is_witnessed_not_recorded(self, api: Api, recorder: Recorder) -> None:
        """A task without a qualified swarm stays out of history and is witnessed as `no_qualified_swarm` (MEDIUM)."""
        body = {"task_id": "h-3", "required_capabilities": ["infra:kubernetes"], "max_cost": 5.0}
        reply = await api.ok("assign", body, trace_id="tr-none")
        assert project(reply, {"swarm_id": None, "reason": "no_qualified_swarm"}) == {
            "swarm_id": None,
            "reason": "no_qualified_swarm",
        }
        record = await wait_for_trace(recorder, "governor.witness.no_qualified_swarm", "tr-none")
        assert record["severity"] == "MEDIUM"
        assert record["params"]["task_id"] == "h-3"
        assert record["params"]["required_capabilities"] == ["infra:kubernetes"]
        assert (await api.ok("history", {}))["assignments"] == []

    @pytest.mark.parametrize("limit", [0, -1, 1.5])
    async def test_bad_limit(self, api: Api, limit: Any) -> None:
        """A limit that is not a positive integer is refused with `invalid_request` (400)."""
        await api.reject("history", {"limit": limit}, "invalid_request", 400)


# -- trace ids -------------------------------------------------------------------------------------------------


class TestTraceId:
    async def events_of(self, recorder: Recorder, trace_id: str, last: str) -> list[tuple[str, str]]:
        """Wait for `last` carrying `trace_id`; return (subject, trace id) of every message but the config's."""
        await wait_for_trace(recorder, last, trace_id)
        return [
            (m.subject, json.loads(m.data)["trace_id"])
            for m in recorder.messages
            if json.loads(m.data)["trace_id"] != "config"
        ]

    async def test_header_wins_over_body(self, api: Api, recorder: Recorder) -> None:
        """With both, the `X-IF-Trace-ID` header is the trace id of the reply and of every event the request caused."""
        body = {"swarm_id": SIP, "operation": "op", "cost": 30.0, "trace_id": "from-body"}
        reply = await api.ok("cost", body, trace_id="from-header")
        assert reply["trace_id"] == "from-header"
        seen = await self.events_of(recorder, "from-header", "governor.witness.circuit_breaker_tripped")
        assert {subject for subject, _ in seen} >= {
            "governor.events.breaker.tripped",
            "governor.events.escalation",
            "governor.witness.circuit_breaker_tripped",
            "governor.witness.cost_tracked",
        }
        assert {trace_id for _, trace_id in seen} == {"from-header"}

    async def test_body_without_header(self, api: Api, recorder: Recorder) -> None:
        """Without the header, the body's `trace_id` is used for the reply and the events."""
        await exhaust(api)
        reply = await api.ok("reset", {"swarm_id": SIP, "new_budget": 5.0, "approved_by": "alice", "trace_id": "b-1"})
        assert reply["trace_id"] == "b-1"
        reset = await wait_for_trace(recorder, "governor.events.breaker.reset", "b-1")
        witness = await wait_for_trace(recorder, "governor.witness.circuit_breaker_reset", "b-1")
        assert (reset["swarm_id"], witness["params"]["swarm_id"]) == (SIP, SIP)

    async def test_generated_when_absent(self, api: Api, recorder: Recorder) -> None:
        """Without header or body trace id, one is generated per request and used by its events."""
        first = await api.ok("assign", {"task_id": "g-1", "required_capabilities": ["integration:ndi"]})
        second = await api.ok("assign", {"task_id": "g-2", "required_capabilities": ["integration:ndi"]})
        assert first["trace_id"] != second["trace_id"]
        record = await wait_for_trace(recorder, "governor.witness.task_assigned", second["trace_id"])
        assert record["params"]["task_id"] == "g-2"

    async def test_error_reply_echoes_trace(self, api: Api, recorder: Recorder) -> None:
        """A refused request echoes its body trace id in the error reply, the header and the witness record."""
        msg, reply = await api.request("cost", {"swarm_id": "ghost", "operation": "op", "cost": 1.0, "trace_id": "e-1"})
        assert reply["trace_id"] == "e-1"
        assert (msg.headers or {}).get(TRACE_HEADER) == "e-1"
        await wait_for_trace(recorder, "governor.witness.request_rejected", "e-1")

    async def test_generated_for_undecodable_body(self, api: Api, recorder: Recorder) -> None:
        """A body that cannot be decoded still gets a generated trace id, shared by its reply and witness record."""
        _, reply = await api.request("cost", b"not json")
        assert isinstance(reply["trace_id"], str) and reply["trace_id"]
        await wait_for_trace(recorder, "governor.witness.request_rejected", reply["trace_id"])


# -- witness records -------------------------------------------------------------------------------------------


class TestWitness:
    async def test_every_operation(self, api: Api, recorder: Recorder) -> None:
        """Every operation publishes its witness record in the shape of `IF.governor.md`, with its severity."""
        steps: list[tuple[str, dict[str, Any], str]] = [
            ("assign", {"task_id": "w-1", "required_capabilities": ["integration:ndi"]}, "task_assigned"),
            ("assign", {"task_id": "w-2", "required_capabilities": ["infra:kubernetes"]}, "no_qualified_swarm"),
            ("cost", {"swarm_id": SIP, "operation": "op", "cost": 25.0}, "circuit_breaker_tripped"),
            ("reset", {"swarm_id": SIP, "new_budget": 10.0, "approved_by": "alice"}, "circuit_breaker_reset"),
            ("failure", {"swarm_id": NDI, "task_id": "w-1", "error": "boom"}, "failure_recorded"),
            ("register", NEW_SWARM, "swarm_registered"),
            ("deregister", {"swarm_id": NEW_SWARM["swarm_id"]}, "swarm_deregistered"),
            ("deregister", {"swarm_id": "ghost"}, "request_rejected"),
        ]
        severities = {}
        for i, (name, body, operation) in enumerate(steps):
            trace_id = f"w-{i}"
            await api.request(name, body, trace_id=trace_id)
            record = await wait_for_trace(recorder, f"governor.witness.{operation}", trace_id)
            assert set(record) >= WITNESS_KEYS
            assert (record["component"], record["operation"]) == ("IF.governor", operation)
            assert isinstance(record["timestamp"], float)
            severities[operation] = record["severity"]
        cost_record = await wait_for_trace(recorder, "governor.witness.cost_tracked", "w-2")
        severities["cost_tracked"] = cost_record["severity"]
        assert severities == {
            "task_assigned": "INFO",
            "no_qualified_swarm": "MEDIUM",
            "circuit_breaker_tripped": "HIGH",
            "cost_tracked": "INFO",
            "circuit_breaker_reset": "MEDIUM",
            "failure_recorded": "INFO",
            "swarm_registered": "INFO",
            "swarm_deregistered": "INFO",
            "request_rejected": "INFO",
        }

    async def test_trip_record_params(self, api: Api, recorder: Recorder) -> None:
        """The trip record has `IF.governor.md`'s params: swarm, reason, the budget left and the operations count."""
        await api.ok("cost", {"swarm_id": SIP, "operation": "op-1", "cost": 20.0})
        await api.ok("cost", {"swarm_id": SIP, "operation": "op-2", "cost": 7.5}, trace_id="trip-1")
        record = await wait_for_trace(recorder, "governor.witness.circuit_breaker_tripped", "trip-1")
        params = {"swarm_id": SIP, "reason": "budget_exhausted", "old_budget": -2.5, "operations_count": 2}
        assert project(record["params"], params) == params


# -- subject prefix and discovery ------------------------------------------------------------------------------


class TestDiscovery:
    async def test_ping(self, api: Api, nc: Client) -> None:
        """`$SRV.PING.governor` answers with the service's name and version."""
        reply = json.loads((await nc.request("$SRV.PING.governor", b"", timeout=5.0)).data)
        assert (reply["type"], reply["name"], reply["version"]) == (
            "io.nats.micro.v1.ping_response",
            "governor",
            "0.1.0",
        )

    async def test_info_lists_the_nine_endpoints(self, api: Api, nc: Client) -> None:
        """`$SRV.INFO.governor` lists the nine endpoints with their subjects."""
        reply = json.loads((await nc.request("$SRV.INFO.governor", b"", timeout=5.0)).data)
        assert reply["type"] == "io.nats.micro.v1.info_response"
        endpoints = {e["name"]: e["subject"] for e in reply["endpoints"]}
        expected = {name: f"governor.{name}" for name in SUBJECTS}
        assert project(endpoints, expected) == expected

    async def test_stats_count_requests(self, api: Api, nc: Client) -> None:
        """`$SRV.STATS.governor` answers with per-endpoint request counts."""

        async def counts() -> dict[str, int]:
            reply = json.loads((await nc.request("$SRV.STATS.governor", b"", timeout=5.0)).data)
            assert reply["type"] == "io.nats.micro.v1.stats_response"
            return {e["name"]: e["num_requests"] for e in reply["endpoints"]}

        before = await counts()
        await api.ok("status", {})
        await api.ok("status", {})
        await api.ok("history", {})
        after = await counts()
        assert {name: after[name] - before[name] for name in SUBJECTS} == dict.fromkeys(SUBJECTS, 0) | {
            "status": 2,
            "history": 1,
        }

    async def test_stats_count_errors_and_time_to_reply(self, api: Api, nc: Client) -> None:
        """Errors answered by the decoder and by the actor both count, with the last one; replies add their time."""

        async def cost_stats() -> dict[str, Any]:
            reply = json.loads((await nc.request("$SRV.STATS.governor", b"", timeout=5.0)).data)
            return next(e for e in reply["endpoints"] if e["name"] == "cost")

        before = await cost_stats()
        await api.reject("cost", b"not json", "invalid_request", 400)
        await api.reject("cost", {"swarm_id": "nobody", "operation": "op", "cost": 1.0}, "unknown_swarm", 404)
        await api.ok("cost", {"swarm_id": SIP, "operation": "op", "cost": 1.0})
        after = await cost_stats()
        assert after["num_requests"] - before["num_requests"] == 3
        assert after["num_errors"] - before["num_errors"] == 2
        assert after["last_error"].startswith("unknown_swarm: ")
        assert after["processing_time"] > before["processing_time"]
        assert 0 < after["average_processing_time"] <= after["processing_time"]

    async def test_every_discovery_subject_answers(self, api: Api, nc: Client) -> None:
        """PING, INFO and STATS answer on `$SRV.<VERB>`, `.governor` and `.governor.<id>`, with the same id."""
        ping = json.loads((await nc.request("$SRV.PING", b"", timeout=5.0)).data)
        service_id = ping["id"]
        for verb, kind in (("PING", "ping"), ("INFO", "info"), ("STATS", "stats")):
            for subject in (f"$SRV.{verb}", f"$SRV.{verb}.governor", f"$SRV.{verb}.governor.{service_id}"):
                reply = json.loads((await nc.request(subject, b"", timeout=5.0)).data)
                assert (reply["type"], reply["id"]) == (f"io.nats.micro.v1.{kind}_response", service_id), subject
        stats = json.loads((await nc.request("$SRV.STATS.governor", b"", timeout=5.0)).data)
        assert stats["started"].endswith("Z") and stats["metadata"] == {"subject_prefix": "governor", "pool": ""}

    async def test_replies_parse_as_nats_micro_replies(self, api: Api, nc: Client) -> None:
        """nats-py's own micro types read the replies: a client of the micro protocol sees a micro service."""
        ping = ServicePing.from_dict(json.loads((await nc.request("$SRV.PING.governor", b"", timeout=5.0)).data))
        info = ServiceInfo.from_dict(json.loads((await nc.request("$SRV.INFO.governor", b"", timeout=5.0)).data))
        stats = ServiceStats.from_dict(json.loads((await nc.request("$SRV.STATS.governor", b"", timeout=5.0)).data))
        assert ping.id == info.id == stats.id
        assert {e.name for e in info.endpoints} == {e.name for e in stats.endpoints} >= set(SUBJECTS)
        assert all(e.queue_group == "q" for e in info.endpoints)

    async def test_subject_prefix(self, start_worker: WorkerFactory, nc: Client) -> None:
        """With `subject_prefix: fleet`, the endpoints and events live under `fleet.`."""
        await start_worker(make_config(EXAMPLE_SWARMS, subject_prefix="fleet"))
        recorder = Recorder()
        await nc.subscribe("fleet.events.>", cb=recorder.receive)
        await nc.flush()
        api = Api(nc, recorder, prefix="fleet")
        await api.ok("trip", {"swarm_id": SIP, "reason": "manual_override", "requested_by": "bob"}, trace_id="pfx")
        await wait_for_trace(recorder, "fleet.events.escalation", "pfx")
        info = json.loads((await nc.request("$SRV.INFO.governor", b"", timeout=5.0)).data)
        subjects = {e["subject"] for e in info["endpoints"]}
        assert subjects >= {f"fleet.{n}" for n in SUBJECTS}
        assert all(subject.startswith("fleet.") for subject in subjects)
