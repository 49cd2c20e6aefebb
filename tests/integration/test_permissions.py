"""The shipped `deploy/nats-server.conf`, unchanged but for its data directory and ports, keeps every role in its own
account: nothing a client sends reaches the governor's storage, no role reads another's replies, and approvals
carry the identity the server authenticated.

A real nats-server runs that file with the six passwords in its environment; the worker logs in as `governor`
with the security settings shipped beside it (tests/integration/shipped.py). Each attack is made the way
nats-server's own account tests make theirs: do the forbidden thing with the credentials a real client has, then
check that nothing changed, nothing leaked and service never stopped. A refused publish never reaches the
governor: the server drops it and tells the client (`nats: permissions violation for publish to "<subject>"`).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.msg import Msg

from schemas.endpoints import BY_NAME
from schemas.events import BreakerReset, BreakerTripped, Escalation, SwarmUpdated
from schemas.ledger import LedgerEntry
from schemas.replies import StatusReply
from tests.factories import profile
from tests.integration.helpers import (
    GOVERNOR_REPLY_TARGETS,
    REPO,
    Recorder,
    ServerErrors,
    answering,
    eventually,
    record,
    start_worker_process,
)
from tests.integration.shipped import (
    LEDGER,
    START_TIMEOUT,
    STORAGE_LOGIN_USERS,
    STORAGE_USER,
    Login,
    LoginFactory,
    ShippedServer,
    connect,
    identity,
    lease_holder,
    ledger_entries,
    publish_violation,
    start_governor,
    start_shipped_server,
    subscription_violation,
    write_worker_config,
)
from worker.service.app import Worker
from worker.service.bus import ENDPOINTS
from worker.storage.audit import AuditLog, stream_names

REFUSAL_WAIT = 1.0
AUDIT_STREAM = stream_names("governor")[0]
"""Seconds a refused request waits for a reply that must never come."""

SWARMS: list[dict[str, Any]] = [
    {
        "swarm_id": "sip",
        "capabilities": ["integration:sip", "architecture:security"],
        "cost_per_hour": 15.0,
        "reputation_score": 0.95,
        "initial_budget": 25.0,
        "model": "sonnet",
    },
    {
        "swarm_id": "ndi",
        "capabilities": ["integration:ndi", "code-analysis:cpp"],
        "cost_per_hour": 2.0,
        "reputation_score": 0.9,
        "initial_budget": 25.0,
        "model": "haiku",
    },
]
NEW_SWARM = profile(
    "webrtc", ["integration:webrtc"], cost_per_hour=3.0, reputation_score=0.8, budget=10.0, model="haiku"
)
#: Requests only an operator may send, each one that the governor would apply if the server let it through.
OPERATOR_ONLY: dict[str, dict[str, Any]] = {
    "reset": {"swarm_id": "sip", "new_budget": 500.0, "approved_by": "operator"},
    "trip": {"swarm_id": "ndi", "reason": "manual_override", "requested_by": "operator"},
    "topup": {"swarm_id": "sip", "amount": 5.0, "approved_by": "operator"},
    "register": msgspec.to_builtins(NEW_SWARM),
    "deregister": {"swarm_id": "ndi"},
    "update": {"swarm_id": "ndi", "reputation_score": 0.1, "requested_by": "operator"},
    "reload": {},
}
REQUEST_SUBJECTS = tuple(ENDPOINTS)

#: Reply subjects that would aim the governor's answer at its own storage, the JetStream API, its event and witness
#: subjects or its request subjects, were the reply sent where the requester says.
HOSTILE_REPLIES = (*GOVERNOR_REPLY_TARGETS, "governor.reset")
ATTACK_COST = 0.01
#: (subject, body) of the requests sent with each hostile reply subject: a read, two writes and discovery.
ATTACKS: tuple[tuple[str, dict[str, Any] | None], ...] = (
    ("governor.status", {}),
    ("governor.cost", {"swarm_id": "ndi", "operation": "attack", "cost": ATTACK_COST}),
    ("governor.assign", {"task_id": "attack", "required_capabilities": ["integration:ndi"]}),
    ("$SRV.PING", None),
    ("$SRV.INFO.governor", None),
)
#: The body of the ordinary request that follows the attack on each subject (changes no budget).
AFTER_ATTACK: dict[str, dict[str, Any]] = {
    "governor.cost": {"swarm_id": "ndi", "operation": "after-attack", "cost": 0.0},
    "governor.assign": {"task_id": "after-attack", "required_capabilities": ["integration:ndi"]},
}
#: Where a coordinator tries to listen: everything, others' replies, response mappings, JetStream, the governor's
#: subjects, its lease and snapshots. Only its own account's inboxes and the event stream are allowed.
SNOOP_REFUSED = (
    ">",
    "_R_.>",
    "$JS.>",
    "$JS.API.>",
    "$KV.>",
    "$O.>",
    "governor.>",
    "governor.ledger",
    "governor.witness.>",
)
SNOOP_ALLOWED = ("_INBOX.>", "governor.events.>")
FORGED_INFO = {"acc": "OPS", "user": "operator", "name": "cli"}
#: What a chassis user may not publish: every request subject but `governor.update`, discovery, and the governor's
#: event, witness and storage subjects.
CHASSIS_REFUSED = (
    *(f"governor.{name}" for name in ENDPOINTS if name != "update"),
    "$SRV.PING",
    "$SRV.INFO.governor",
    "governor.events.swarm.updated",
    "governor.witness.swarm_updated",
    "governor.ledger",
    "$JS.API.STREAM.INFO.GOVERNOR_LEDGER",
)


@pytest.fixture
def shipped(tmp_path: Path) -> Iterator[ShippedServer]:
    """nats-server running exactly the shipped accounts and permissions, stopped after the test."""
    server = start_shipped_server(tmp_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def governor(shipped: ShippedServer) -> AsyncIterator[Worker]:
    """The worker serving under the shipped config, stopped after the test."""
    worker = await start_governor(shipped, SWARMS)
    try:
        yield worker
    finally:
        await worker.__aexit__(None, None, None)


@pytest.fixture
async def login(shipped: ShippedServer) -> AsyncIterator[LoginFactory]:
    """`await login(role)`: a connection as that role; all closed after the test."""
    logins: list[Login] = []

    async def open_login(role: str) -> Login:
        session = await connect(shipped, role)
        logins.append(session)
        return session

    yield open_login
    for session in logins:
        await session.nc.close()


def blank_trace(status: StatusReply) -> StatusReply:
    return msgspec.structs.replace(status, trace_id="")


def received(worker: Worker, subject: str) -> float:
    """How many requests the governor received on `governor.<subject>`."""
    value = worker.metrics.registry.get_sample_value("if_governor_requests_total", {"subject": subject})
    return 0.0 if value is None else value


def rejected(worker: Worker, code: str) -> float:
    value = worker.metrics.registry.get_sample_value("if_governor_requests_rejected_total", {"code": code})
    return 0.0 if value is None else value


def info_header(info: dict[str, str]) -> dict[str, str]:
    return {"Nats-Request-Info": msgspec.json.encode(info).decode()}


async def request(login: Login, subject: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Msg:
    msg: Msg = await login.nc.request(subject, msgspec.json.encode(body), timeout=5, headers=headers)
    return msg


def error_of(msg: Msg) -> tuple[bool, str, str]:
    """(ok, error code, Nats-Service-Error-Code header) of an error reply."""
    body = msgspec.json.decode(msg.data)
    return body["ok"], body["error"]["code"], (msg.headers or {}).get("Nats-Service-Error-Code", "")


async def attack(attacker: Login) -> None:
    """Send every ATTACKS request with every hostile reply subject from `attacker`, then one ordinary request per
    attacked subject and wait for its answer.

    Why the ordinary request tells that the attack is over: the governor reads each subject on one subscription, in
    order, and answers through one mailbox, in order; so once it answered the ordinary request, it has handled
    (and answered, through its response mapping) every hostile one on that subject before it.
    """
    n = 0
    for reply in HOSTILE_REPLIES:
        for subject, body in ATTACKS:
            n += 1
            if body is not None and "task_id" in body:
                body = {**body, "task_id": f"attack-{n}"}  # a repeated task id is answered from the window
            data = b"" if body is None else msgspec.json.encode({**body, "trace_id": f"attack-{n}"})
            await attacker.nc.publish(subject, data, reply=reply)
    for subject, body in ATTACKS:
        data = b"" if body is None else msgspec.json.encode(AFTER_ATTACK.get(subject, body))
        answer = msgspec.json.decode((await attacker.nc.request(subject, data, timeout=5)).data)
        assert answer.get("ok", True) is True, answer


def sender(who: Any) -> str:
    """`ACCOUNT/user` of a recorded identity (an `Identity` or its JSON form), `-` for none."""
    if who is None:
        return "-"
    who = msgspec.to_builtins(who)
    return f"{who['account']}/{who['user']}"


def attack_entries(entries: list[LedgerEntry]) -> list[tuple[str, str]]:
    """(kind, sender) of the ledger entries the attack's requests caused, sorted."""
    return sorted((e.kind, sender(e.identity)) for e in entries if e.trace_id.startswith("attack-"))


def witnessed_by_trace(seen: Recorder, prefix: str) -> list[tuple[str, str]]:
    """(operation, sender) of the witness records of applied requests whose trace id starts with `prefix`, sorted.

    Not `request_rejected`: a reply aimed at a request subject that the requester's account imports comes back to
    the governor as a request without a reply subject, whose body (a reply) no request type accepts; how many of
    those the server routes back is its business, and each is refused without changing anything."""
    records = [msgspec.json.decode(m.data) for m in seen.messages if m.subject.startswith("governor.witness.")]
    return sorted(
        (r["operation"], sender(r.get("identity")))
        for r in records
        if r["trace_id"].startswith(prefix) and r["operation"] != "request_rejected"
    )


class TestGovernorUser:
    async def test_worker_runs_a_full_term_without_a_permission_violation(self, shipped: ShippedServer) -> None:
        """As `governor` the worker starts, writes its ledger, snapshots on stop, recovers, and is never refused."""
        worker = await start_governor(shipped, SWARMS)
        try:
            operator = await connect(shipped, "operator")
            try:
                cost = await operator.client().cost("sip", "sip_integration", 5.0)
                assert (cost.remaining, cost.tripped) == (20.0, False)
            finally:
                await operator.nc.close()
        finally:
            await worker.__aexit__(None, None, None)
        restarted = await start_governor(shipped, SWARMS)
        try:
            operator = await connect(shipped, "operator")
            try:
                budgets = (await operator.client().status()).budgets
            finally:
                await operator.nc.close()
            assert budgets == {"sip": 20.0, "ndi": 25.0}
        finally:
            await restarted.__aexit__(None, None, None)
        assert shipped.violations("governor") == []

    async def test_discovery_reaches_every_instance(self, governor: Worker, login: LoginFactory) -> None:
        """A coordinator's `$SRV.PING` is answered by every responder in the governor's account (streamed
        responses, not only the first), and `$SRV.INFO.governor.<id>` by that instance alone."""
        second = await login("governor")

        async def pong(msg: Msg) -> None:
            await msg.respond(msgspec.json.encode({"name": "governor", "id": "second-instance"}))

        await second.nc.subscribe("$SRV.PING", cb=pong)
        await second.nc.flush()
        coordinator = await login("coordinator")
        inbox = coordinator.nc.new_inbox()
        answers = await record(coordinator.nc, inbox)
        await coordinator.nc.publish("$SRV.PING", b"", reply=inbox)
        pings = await answers.wait_for(inbox, count=2)
        assert governor.bus is not None
        assert sorted(p["id"] for p in pings) == sorted([governor.bus.service_id, "second-instance"])

        info = msgspec.json.decode(
            (await coordinator.nc.request(f"$SRV.INFO.governor.{governor.bus.service_id}", b"", timeout=5)).data
        )
        assert (info["id"], [e["subject"] for e in info["endpoints"]]) == (
            governor.bus.service_id,
            [f"governor.{name}" for name in ENDPOINTS],
        )
        assert (coordinator.errors, second.errors, governor.ready) == ([], [], True)


class TestCoordinator:
    def test_every_operator_only_endpoint_is_attacked(self) -> None:
        """The table above covers every operator-only row of the endpoint table (a new one is tried here too)."""
        assert set(OPERATOR_ONLY) == {name for name, endpoint in BY_NAME.items() if endpoint.operator_only}

    @pytest.mark.parametrize("subject", sorted(OPERATOR_ONLY))
    async def test_operator_only_request_is_refused_by_the_server(
        self, governor: Worker, login: LoginFactory, shipped: ShippedServer, subject: str
    ) -> None:
        """A coordinator's reset, trip, topup, register, deregister, update (even of `reputation_score` alone, which
        a chassis may send) or reload, even with a forged identity header, is refused by the server (its account
        may not publish there), gets no reply and changes nothing."""
        operator = await login("operator")
        await operator.client().trip("sip", "manual_override", requested_by="operator")  # so a reset would apply
        before = blank_trace(await operator.client().status())
        coordinator = await login("coordinator")
        with pytest.raises(nats.errors.TimeoutError):
            await coordinator.nc.request(
                f"governor.{subject}",
                msgspec.json.encode(OPERATOR_ONLY[subject]),
                timeout=REFUSAL_WAIT,
                headers=info_header(FORGED_INFO),
            )
        await coordinator.wait_error(publish_violation(f"governor.{subject}"))
        assert received(governor, subject) == (1.0 if subject == "trip" else 0.0)  # the operator's trip only
        assert blank_trace(await operator.client().status()) == before
        assert shipped.violations("coordinator") == [f'Publish Violation - Subject "governor.{subject}"']

    async def test_coordinator_requests_are_answered(self, governor: Worker, login: LoginFactory) -> None:
        """A coordinator's assign, cost, failure, status and history are served."""
        coordinator = (await login("coordinator")).client()
        assigned = await coordinator.assign(["integration:sip"], task_id="t-1", max_cost=20.0)
        assert (assigned.swarm_id, [a.swarm_id for a in assigned.assignments]) == ("sip", ["sip"])
        cost = await coordinator.cost("sip", "sip_integration", 2.5)
        assert (cost.swarm_id, cost.remaining, cost.tripped) == ("sip", 22.5, False)
        failure = await coordinator.failure("ndi", task_id="t-2", error="timeout")
        assert (failure.swarm_id, failure.failures_in_window, failure.tripped) == ("ndi", 1, False)
        status = await coordinator.status()
        assert status.budgets == {"sip": 22.5, "ndi": 25.0}
        assert status.breakers == {}
        history = await coordinator.history()
        assert [(r.task_id, r.swarm_id) for r in history.assignments] == [("t-1", "sip")]

    async def test_coordinator_completes_its_task(self, governor: Worker, login: LoginFactory) -> None:
        """A coordinator's `complete` of a task it was assigned is answered and applied: the final cost is settled,
        the task leaves the swarm's tasks in flight, the history records its outcome and the witness record names
        the coordinator the server authenticated."""
        seen = await record((await login("witness")).nc, "governor.witness.>")
        coordinator = (await login("coordinator")).client()
        assigned = await coordinator.assign(["integration:sip"], task_id="t-done", max_cost=20.0)
        assert assigned.swarm_id == "sip"
        in_flight = {s.swarm_id: s.in_flight for s in (await coordinator.status()).swarms}
        assert in_flight == {"sip": 1, "ndi": 0}
        done = await coordinator.complete("t-done", "success", cost=1.5)
        assert (done.task_id, done.swarm_id, done.outcome, done.total_cost, done.duplicate, done.tripped) == (
            "t-done",
            "sip",
            "success",
            1.5,
            False,
            False,
        )
        status = await coordinator.status()
        assert ({s.swarm_id: s.in_flight for s in status.swarms}, status.budgets) == (
            {"sip": 0, "ndi": 0},
            {"sip": 23.5, "ndi": 25.0},
        )
        history = await coordinator.history()
        assert [(r.task_id, r.swarm_id, r.outcome) for r in history.assignments] == [("t-done", "sip", "success")]
        [completed] = await seen.wait_for("governor.witness.task_completed")
        assert (completed["params"]["task_id"], completed["params"]["swarm_id"], completed["identity"]) == (
            "t-done",
            "sip",
            identity("coordinator"),
        )

    async def test_coordinator_cannot_serve_or_read_request_subjects(
        self, governor: Worker, login: LoginFactory
    ) -> None:
        """A coordinator may not subscribe to `governor.>`, so it can neither impersonate the governor nor snoop."""
        coordinator = await login("coordinator")
        await coordinator.nc.subscribe("governor.reset")
        await coordinator.wait_error(subscription_violation("governor.reset"))

    async def test_coordinator_cannot_forge_events_or_witness_records(
        self, governor: Worker, login: LoginFactory
    ) -> None:
        """A coordinator's publish to an event or witness subject is dropped before any consumer sees it."""
        seen = await record((await login("witness")).nc, "governor.events.>", "governor.witness.>")
        coordinator = await login("coordinator")
        forged = {"swarm_id": "sip", "new_budget": 1e6, "approved_by": "mallory", "reset_at": 0.0, "trace_id": "x"}
        await coordinator.nc.publish("governor.events.breaker.reset", msgspec.json.encode(forged))
        await coordinator.nc.publish("governor.witness.circuit_breaker_reset", msgspec.json.encode(forged))
        await coordinator.wait_error(publish_violation("governor.events.breaker.reset"))
        await coordinator.wait_error(publish_violation("governor.witness.circuit_breaker_reset"))
        await (await login("operator")).client().status()  # a round trip through the governor after the forgeries
        assert seen.messages == []


class TestOperator:
    async def test_operator_trips_resets_registers_and_deregisters(self, governor: Worker, login: LoginFactory) -> None:
        """An operator's trip, reset (naming itself as the approver), register and deregister are applied."""
        operator = (await login("operator")).client()
        tripped = await operator.trip("sip", "manual_override", requested_by="operator")
        assert tripped.swarm_id == "sip"
        assert set((await operator.status()).breakers) == {"sip"}
        reset = await operator.reset("sip", 40.0, approved_by="operator")
        assert (reset.swarm_id, reset.remaining, reset.duplicate) == ("sip", 40.0, False)
        registered = await operator.register(NEW_SWARM)
        assert registered.swarm_id == "webrtc"
        assert (await operator.status()).budgets == {"sip": 40.0, "ndi": 25.0, "webrtc": 10.0}
        deregistered = await operator.deregister("ndi")
        assert deregistered.swarm_id == "ndi"
        status = await operator.status()
        assert (status.budgets, status.breakers) == ({"sip": 40.0, "webrtc": 10.0}, {})

    async def test_operator_updates_any_profile_field(self, governor: Worker, login: LoginFactory) -> None:
        """An operator's `update` may change any profile field, not only the reputation a chassis reports."""
        operator = (await login("operator")).client()
        updated = await operator.update("ndi", cost_per_hour=0.5, model="sonnet", requested_by="operator")
        assert (updated.changed, updated.duplicate) == (["cost_per_hour", "model"], False)
        ndi = next(s for s in (await operator.status()).swarms if s.swarm_id == "ndi")
        assert (ndi.cost_per_hour, ndi.model, ndi.reputation_score, ndi.budget_remaining) == (0.5, "sonnet", 0.9, 25.0)


class TestChassis:
    """IF.chassis reports reputations: its account imports `governor.update` alone, and the governor applies it
    only with `reputation_score` (`security.chassis_accounts: [CHASSIS]`, `Bus._check_chassis`)."""

    async def test_a_reputation_update_is_applied(
        self, governor: Worker, login: LoginFactory, shipped: ShippedServer
    ) -> None:
        """A chassis user's `update` with only `reputation_score` is applied: `status` shows the new reputation and
        nothing else of any swarm changed; `governor.events.swarm.updated`, the `swarm_updated` witness record and
        the ledger's `update` entry carry the identity CHASSIS/chassis."""
        seen = await record((await login("witness")).nc, "governor.events.>", "governor.witness.>")
        operator = (await login("operator")).client()
        before = {s.swarm_id: s for s in (await operator.status()).swarms}
        chassis = await login("chassis")
        updated = await chassis.client().update("ndi", reputation_score=0.5, requested_by="chassis")
        assert (updated.swarm_id, updated.changed, updated.duplicate) == ("ndi", ["reputation_score"], False)
        after = {s.swarm_id: s for s in (await operator.status()).swarms}
        assert after == {**before, "ndi": msgspec.structs.replace(before["ndi"], reputation_score=0.5)}
        [event] = await seen.wait_for("governor.events.swarm.updated")
        msgspec.json.decode(msgspec.json.encode(event), type=SwarmUpdated)
        who = identity("chassis")
        assert (event["swarm_id"], event["changed"], event["requested_by"], event["identity"]) == (
            "ndi",
            {"reputation_score": 0.5},
            "chassis",
            who,
        )
        [witnessed] = await seen.wait_for("governor.witness.swarm_updated")
        assert (witnessed["params"]["changed"], witnessed["identity"]) == ({"reputation_score": 0.5}, who)
        updates = [e for e in await ledger_entries((await login("governor")).nc) if e.kind == "update"]
        assert [msgspec.to_builtins(e.identity) for e in updates] == [who]
        assert (chassis.errors, shipped.violations("chassis")) == ([], [])

    async def test_any_other_field_is_refused_forbidden(
        self, governor: Worker, login: LoginFactory, shipped: ShippedServer
    ) -> None:
        """A chassis user's `update` that sets another field (`cost_per_hour`, alone or beside `reputation_score`,
        `capabilities`, `budget_group`), or that names another requester, is refused `forbidden` by the governor
        and changes nothing: no swarm changed, no `swarm.updated` event, and the refusals are witnessed with the
        identity CHASSIS/chassis."""
        seen = await record((await login("witness")).nc, "governor.events.>", "governor.witness.>")
        operator = await login("operator")
        before = blank_trace(await operator.client().status())
        chassis = await login("chassis")
        bodies: list[dict[str, Any]] = [
            {"swarm_id": "ndi", "cost_per_hour": 0.5, "requested_by": "chassis"},
            {"swarm_id": "ndi", "reputation_score": 0.1, "cost_per_hour": 0.5, "requested_by": "chassis"},
            {"swarm_id": "sip", "capabilities": ["integration:ndi"], "requested_by": "chassis"},
            {"swarm_id": "sip", "budget_group": "other", "requested_by": "chassis"},
            {"swarm_id": "ndi", "reputation_score": 0.1, "requested_by": "operator"},  # not the authenticated user
        ]
        refused = [await request(chassis, "governor.update", body) for body in bodies]
        assert [error_of(msg) for msg in refused] == [(False, "forbidden", "403")] * len(bodies)
        messages = [msgspec.json.decode(msg.data)["error"]["message"] for msg in refused]
        assert messages[0] == "a chassis account may change only reputation_score, not cost_per_hour"
        assert messages[1] == "a chassis account may change only reputation_score, not cost_per_hour"
        assert blank_trace(await operator.client().status()) == before
        rejections = await seen.wait_for("governor.witness.request_rejected", len(bodies))
        expected = [("forbidden", identity("chassis"))] * len(bodies)
        assert [(r["params"]["code"], r["identity"]) for r in rejections] == expected
        assert rejected(governor, "forbidden") == len(bodies)
        assert [s for s in seen.subjects() if s.startswith("governor.events.")] == []
        assert (chassis.errors, shipped.violations("chassis")) == ([], [])

    async def test_a_chassis_cannot_publish_anything_else(
        self, governor: Worker, login: LoginFactory, shipped: ShippedServer
    ) -> None:
        """Every other request subject, discovery, and the governor's event, witness, ledger and JetStream
        subjects are refused to a chassis user by the server: nothing reaches the governor and nothing changes."""
        operator = (await login("operator")).client()
        before = blank_trace(await operator.status())
        counts = {subject: received(governor, subject) for subject in REQUEST_SUBJECTS}
        witness = await login("witness")
        seen = await record(witness.nc, "governor.events.>", "governor.witness.>")
        chassis = await login("chassis")
        bodies = {
            **OPERATOR_ONLY,
            "assign": {"task_id": "t", "required_capabilities": ["integration:sip"]},
            "cost": {"swarm_id": "sip", "operation": "op", "cost": 1.0},
        }
        for subject in CHASSIS_REFUSED:
            name = subject.removeprefix("governor.")
            await chassis.nc.publish(subject, msgspec.json.encode(bodies.get(name, {})))
        for subject in CHASSIS_REFUSED:
            await chassis.wait_error(publish_violation(subject))
        await operator.status()  # a round trip through the governor after the chassis's publishes
        assert {subject: received(governor, subject) for subject in REQUEST_SUBJECTS} == {
            **counts,
            "status": counts["status"] + 1,
        }
        assert blank_trace(await operator.status()) == before
        await witness.nc.flush()
        assert [s for s in seen.subjects() if s.startswith("governor.events.")] == []
        assert [m for m in seen.messages if m.subject == "governor.witness.swarm_updated"] == []
        assert shipped.violations("chassis") == sorted(f'Publish Violation - Subject "{s}"' for s in CHASSIS_REFUSED)

    async def test_a_chassis_reads_nothing_but_its_replies(self, governor: Worker, login: LoginFactory) -> None:
        """A chassis user may subscribe to its own account's inboxes only: the events, the witness records, the
        request subjects and everything else are refused."""
        chassis = await login("chassis")
        refused = (">", "governor.>", "governor.events.>", "governor.witness.>", "governor.update", "_R_.>")
        for subject in refused:
            await chassis.nc.subscribe(subject)
        for subject in refused:
            await chassis.wait_error(subscription_violation(subject))
        await chassis.nc.subscribe("_INBOX.mine")
        await chassis.nc.flush()
        assert sorted(chassis.errors) == sorted(subscription_violation(s) for s in refused)


class TestIdentity:
    async def test_an_approver_other_than_the_authenticated_user_is_refused(
        self, governor: Worker, login: LoginFactory, shipped: ShippedServer
    ) -> None:
        """From the `operator` login, a reset approved by "mallory" (or a trip requested by her) is refused
        `forbidden` and changes nothing; one approved by "operator" is recorded with the identity OPS/operator in
        the reset event, the witness record, `governor.history` and the ledger."""
        seen = await record((await login("witness")).nc, "governor.events.>", "governor.witness.>")
        operator = await login("operator")
        await operator.client().trip("sip", "manual_override", requested_by="operator")
        before = blank_trace(await operator.client().status())
        refused = [
            await request(
                operator, "governor.reset", {"swarm_id": "sip", "new_budget": 500.0, "approved_by": "mallory"}
            ),
            await request(
                operator, "governor.trip", {"swarm_id": "ndi", "reason": "manual_override", "requested_by": "mallory"}
            ),
        ]
        assert [error_of(msg) for msg in refused] == [(False, "forbidden", "403")] * 2
        assert blank_trace(await operator.client().status()) == before

        reset = await operator.client().reset("sip", 40.0, approved_by="operator")
        assert (reset.remaining, reset.duplicate) == (40.0, False)
        who = identity("operator")
        [event] = await seen.wait_for("governor.events.breaker.reset")
        assert (event["approved_by"], event["new_budget"], event["identity"]) == ("operator", 40.0, who)
        [witnessed] = await seen.wait_for("governor.witness.circuit_breaker_reset")
        assert witnessed["identity"] == who
        history = await operator.client().history()
        assert [(r.approved_by, msgspec.to_builtins(r.identity)) for r in history.resets] == [("operator", who)]
        governor_login = await login("governor")
        resets = [e for e in await ledger_entries(governor_login.nc) if e.kind == "reset"]
        assert [msgspec.to_builtins(e.identity) for e in resets] == [who]
        assert shipped.violations("operator") == []

    async def test_a_forged_request_info_header_is_replaced_by_the_server(
        self, governor: Worker, login: LoginFactory
    ) -> None:
        """A `Nats-Request-Info` header a client writes itself never reaches the governor: a coordinator claiming
        OPS/operator is recorded as COORD/coordinator, and an operator claiming to be "alice" cannot approve as
        her."""
        seen = await record((await login("witness")).nc, "governor.witness.>")
        coordinator = await login("coordinator")
        body = {"swarm_id": "ndi", "operation": "op", "cost": 1.25, "trace_id": "forged-1"}
        cost = msgspec.json.decode((await request(coordinator, "governor.cost", body, info_header(FORGED_INFO))).data)
        assert (cost["ok"], cost["remaining"]) == (True, 23.75)
        [tracked] = await seen.wait_for("governor.witness.cost_tracked")
        assert (tracked["trace_id"], tracked["identity"]) == ("forged-1", identity("coordinator"))

        operator = await login("operator")
        await operator.client().trip("sip", "manual_override", requested_by="operator")
        as_alice = {"swarm_id": "sip", "new_budget": 500.0, "approved_by": "alice"}
        refused = await request(operator, "governor.reset", as_alice, info_header({"acc": "OPS", "user": "alice"}))
        assert error_of(refused) == (False, "forbidden", "403")
        status = await operator.client().status()
        assert (status.budgets, set(status.breakers)) == ({"sip": 25.0, "ndi": 23.75}, {"sip"})


class TestReplySubjects:
    @pytest.mark.parametrize("attacker_role", ["coordinator", "operator"])
    async def test_replies_aimed_at_the_governors_subjects_change_nothing(
        self, governor: Worker, login: LoginFactory, shipped: ShippedServer, attacker_role: str
    ) -> None:
        """Requests whose reply subject is the ledger, the lease key, the snapshot store, the JetStream API, an
        event, witness or request subject store nothing but the governor's own batches, leave the lease with the
        worker and the witness without a forged event, and 20 costs and a reset sent at the same time by an
        operator are all answered."""
        witness = await login("witness")
        seen = await record(witness.nc, "governor.events.>", "governor.witness.>")
        governor_login = await login("governor")
        holder = await lease_holder(governor_login.nc)
        assert holder == governor.holder_id.encode()
        operator = (await login("operator")).client()
        await operator.trip("sip", "manual_override", requested_by="operator")
        attacker = await login(attacker_role)

        async def operate() -> tuple[list[float], float]:
            costs = await asyncio.gather(
                *(operator.cost("ndi", "op", 0.25, event_id=f"op-{i}") for i in range(20)),
            )
            reset = await operator.reset("sip", 40.0, approved_by="operator")
            return sorted(c.remaining for c in costs), reset.remaining

        _, (remaining, reset_to) = await asyncio.gather(attack(attacker), operate())

        attacked = len(HOSTILE_REPLIES)
        assert len(set(remaining)) == 20  # 20 answers, each after its own cost
        assert reset_to == 40.0
        status = await operator.status()
        assert (status.budgets, status.breakers) == ({"sip": 40.0, "ndi": round(25.0 - 5.0 - attacked * 0.01, 2)}, {})
        entries = await ledger_entries(governor_login.nc)  # every message is one of the governor's batches
        who = sender(identity(attacker_role))
        assert attack_entries(entries) == sorted([("assign", who)] * attacked + [("cost", who)] * attacked)
        assert await lease_holder(governor_login.nc) == holder
        assert governor.ready
        assert rejected(governor, "reply_subject_refused") == 0.0  # the server mapped every reply: nothing to refuse

        expected = sorted([("cost_tracked", who)] * attacked + [("task_assigned", who)] * attacked)
        await seen.wait_until(lambda: len(witnessed_by_trace(seen, "attack-")) == len(expected))
        await seen.wait_for("governor.events.breaker.reset")
        await witness.nc.flush()
        assert witnessed_by_trace(seen, "attack-") == expected
        assert [s for s in seen.subjects() if s.startswith("governor.events.")] == [
            "governor.events.breaker.tripped",
            "governor.events.escalation",
            "governor.events.breaker.reset",
        ]
        assert [m.subject for m in seen.messages if b'"ok":' in m.data] == []  # no reply landed as an event or record
        assert shipped.violations(attacker_role) == []


class TestSnooping:
    async def test_a_coordinator_reads_no_operator_reply_and_no_storage_traffic(
        self, governor: Worker, login: LoginFactory, shipped: ShippedServer
    ) -> None:
        """A coordinator is refused every subscription but its own account's inboxes and the event stream, and on
        those reads no operator reply and no ledger or JetStream traffic while an operator trips, resets and spends,
        the governor writes its ledger and a standby replays it."""
        snooper = await login("coordinator")
        seen = await record(snooper.nc, *SNOOP_ALLOWED)
        for subject in SNOOP_REFUSED:
            await snooper.nc.subscribe(subject, cb=seen.receive)
        for subject in SNOOP_REFUSED:
            await snooper.wait_error(subscription_violation(subject))
        standby = await start_governor(shipped, SWARMS, wait=False)
        try:
            operator = (await login("operator")).client()
            await operator.trip("sip", "manual_override", requested_by="operator")
            await operator.reset("sip", 40.0, approved_by="operator")
            for i in range(5):
                await operator.cost("ndi", "op", 1.0, event_id=f"snooped-{i}")
            history = await operator.history()
            assert [r.approved_by for r in history.resets] == ["operator"]
            assert governor.ledger is not None
            serving = governor.ledger
            await eventually(
                lambda: standby.ledger is not None and standby.ledger.seq == serving.seq,
                "the standby replays the ledger to its end",
            )
            assert standby.state == "standby"
        finally:
            await standby.__aexit__(None, None, None)
        await snooper.nc.flush()
        assert [m.subject for m in seen.messages if not m.subject.startswith("governor.events.")] == []
        events = [m for m in seen.messages if m.subject.startswith("governor.events.")]
        assert [m.subject for m in events] == [
            "governor.events.breaker.tripped",
            "governor.events.escalation",
            "governor.events.breaker.reset",
        ]
        msgspec.json.decode(events[0].data, type=BreakerTripped)
        msgspec.json.decode(events[1].data, type=Escalation)
        msgspec.json.decode(events[2].data, type=BreakerReset)
        assert sorted(snooper.errors) == sorted(subscription_violation(s) for s in SNOOP_REFUSED)
        assert (shipped.violations("governor"), governor.ready) == ([], True)


class TestReadOnlyConsumers:
    @pytest.mark.parametrize("role", ["witness", "alerting"])
    async def test_consumer_receives_events_and_audit_records(
        self, governor: Worker, login: LoginFactory, role: str
    ) -> None:
        """A witness or alerting user receives the trip and the reset, whose event and record name the approver
        and the identity the server authenticated."""
        consumer = await login(role)
        seen = await record(consumer.nc, "governor.events.>", "governor.witness.>")
        operator = (await login("operator")).client()
        await operator.trip("ndi", "manual_override", requested_by="operator")
        await operator.reset("ndi", 30.0, approved_by="operator")
        tripped = await seen.wait_for("governor.events.breaker.tripped")
        assert [(e["swarm_id"], e["reason"], e["identity"]) for e in tripped] == [
            ("ndi", "manual_override", identity("operator"))
        ]
        reset = await seen.wait_for("governor.events.breaker.reset")
        assert [(e["swarm_id"], e["new_budget"], e["approved_by"]) for e in reset] == [("ndi", 30.0, "operator")]
        [record_] = await seen.wait_for("governor.witness.circuit_breaker_reset")
        assert (record_["params"]["approved_by"], record_["identity"]) == ("operator", identity("operator"))
        assert consumer.errors == []

    @pytest.mark.parametrize("role", ["witness", "alerting"])
    async def test_consumer_cannot_publish_requests(self, governor: Worker, login: LoginFactory, role: str) -> None:
        """Every request a witness or alerting user publishes is refused by the server, never reaching the governor."""
        operator = (await login("operator")).client()
        before = blank_trace(await operator.status())
        counts = {subject: received(governor, subject) for subject in REQUEST_SUBJECTS}
        consumer = await login(role)
        bodies = {**OPERATOR_ONLY, "assign": {"task_id": "t", "required_capabilities": ["integration:sip"]}}
        for subject in REQUEST_SUBJECTS:
            await consumer.nc.publish(f"governor.{subject}", msgspec.json.encode(bodies.get(subject, {})))
        for subject in REQUEST_SUBJECTS:
            await consumer.wait_error(publish_violation(f"governor.{subject}"))
        await operator.status()  # a round trip through the governor after the consumer's publishes
        assert {subject: received(governor, subject) for subject in REQUEST_SUBJECTS} == {
            **counts,
            "status": counts["status"] + 1,
        }
        assert blank_trace(await operator.status()) == before

    @pytest.mark.parametrize("role", ["witness", "alerting"])
    async def test_a_reader_pulls_the_stored_trail_and_changes_nothing(
        self, governor: Worker, shipped: ShippedServer, role: str
    ) -> None:
        """A witness or alerting user reads the stored audit trail through its own durable consumer (the only
        JetStream subjects its account imports: that consumer's next messages and acknowledgements), and can
        neither purge the stream, delete a record, read the ledger nor create a consumer of its own."""
        operator = (await connect(shipped, "operator")).client()
        await operator.trip("ndi", "manual_override", requested_by="operator")
        errors = ServerErrors()
        reader = await nats.connect(
            shipped.url,
            user=role,
            password=shipped.passwords[role],
            inbox_prefix=f"_INBOX_{role}",
            error_cb=errors.on_error,
            max_reconnect_attempts=0,
        )
        try:
            js = reader.jetstream()
            sub = await js.pull_subscribe_bind(role, stream=AUDIT_STREAM)
            records: list[dict[str, Any]] = []
            async with asyncio.timeout(10):
                while not any(r.get("operation") == "circuit_breaker_tripped" for r in records):
                    for msg in await sub.fetch(50, timeout=5):
                        records += msgspec.json.decode(msg.data)
                        await msg.ack()
            tripped = next(r for r in records if r.get("operation") == "circuit_breaker_tripped")
            assert (tripped["params"]["swarm_id"], tripped["identity"]) == ("ndi", identity("operator"))
            assert {r["params"]["swarm_id"] for r in records if r.get("operation") == "swarm_registered"} == {
                "sip",
                "ndi",
            }
            for attempt in (
                js.purge_stream(AUDIT_STREAM),
                js.delete_msg(AUDIT_STREAM, 1),
                js.stream_info(LEDGER),
                js.add_consumer(AUDIT_STREAM, durable_name=f"{role}-own"),
            ):
                with pytest.raises((nats.errors.Error, nats.js.errors.Error, TimeoutError)):
                    await asyncio.wait_for(attempt, REFUSAL_WAIT)
        finally:
            await reader.close()
        assert governor.storage_nc is not None  # what the governor stored is intact
        stored = [r async for r in AuditLog(governor.storage_nc).read()]
        assert [msgspec.json.decode(r.body).get("operation") for r in stored].count("circuit_breaker_tripped") == 1

    async def test_witness_cannot_make_requests(self, governor: Worker, login: LoginFactory) -> None:
        """A witness cannot even wait for a reply: `request` fails and the server reports both refusals."""
        witness = await login("witness")
        with pytest.raises(nats.errors.TimeoutError):
            await witness.nc.request("governor.status", b"{}", timeout=REFUSAL_WAIT)
        await witness.wait_error(publish_violation("governor.status"))
        # nats-py lower-cases the server's message, inbox name included.
        assert any(e.startswith('nats: permissions violation for subscription to "_inbox.') for e in witness.errors)


class TestRecovery:
    async def test_kill_9_after_the_attacks_recovers_exact_budgets(
        self, shipped: ShippedServer, login: LoginFactory, tmp_path: Path
    ) -> None:
        """After hostile replies from a coordinator and an operator, real costs and a reset, `governor run` killed
        with SIGKILL and started again recovers from its ledger with every budget exact to the cent, each
        acknowledged cost applied once, the reset's identity kept, and the lease taken by the new process."""
        config = write_worker_config(shipped, tmp_path / "governor.yaml", SWARMS)
        first = start_worker_process(shipped.url, config, tmp_path / "worker.log")
        try:
            operator = await login("operator")
            coordinator = await login("coordinator")
            await answering(operator.nc, timeout=START_TIMEOUT, worker=first)
            await answering(coordinator.nc, timeout=START_TIMEOUT, worker=first)
            await operator.client().trip("sip", "manual_override", requested_by="operator")
            await attack(coordinator)
            await attack(operator)
            for i in range(7):
                await coordinator.client().cost("ndi", "op", 1.13, event_id=f"c{i}")
            await operator.client().reset("sip", 40.0, approved_by="operator")
            await operator.client().cost("sip", "op", 2.34, event_id="s0")
        finally:
            first.kill()
        assert first.process.returncode == -9

        second = start_worker_process(shipped.url, config, tmp_path / "worker.log")
        try:
            await answering(operator.nc, timeout=START_TIMEOUT, worker=second)
            await answering(coordinator.nc, timeout=START_TIMEOUT, worker=second)
            status = await operator.client().status()
            expected_ndi = round(25.0 - 2 * len(HOSTILE_REPLIES) * ATTACK_COST - 7 * 1.13, 2)
            assert (status.budgets, status.breakers) == ({"sip": 37.66, "ndi": expected_ndi}, {})
            again = await coordinator.client().cost("ndi", "op", 1.13, event_id="c0")
            assert (again.duplicate, again.remaining) == (True, expected_ndi)
            history = await operator.client().history()
            assert [(r.approved_by, msgspec.to_builtins(r.identity)) for r in history.resets] == [
                ("operator", identity("operator"))
            ]
            governor_login = await login("governor")
            entries = await ledger_entries(governor_login.nc)
            attacked = len(HOSTILE_REPLIES)
            assert attack_entries(entries) == sorted(
                [("assign", "COORD/coordinator"), ("cost", "COORD/coordinator")] * attacked
                + [("assign", "OPS/operator"), ("cost", "OPS/operator")] * attacked
            )
            holder = await lease_holder(governor_login.nc)
            assert holder.decode().startswith(f"{socket.gethostname()}-{second.process.pid}-")
        finally:
            second.stop()
        assert second.process.returncode == 0, second.log()
        assert shipped.violations("governor") == []


class TestStorageLogin:
    async def test_the_serving_login_needs_no_jetstream_permission(self, tmp_path: Path) -> None:
        """With the governor's user split in two as SECURITY.md shows, the worker (storage connections logged in
        through `nats.storage`) serves, writes its ledger, snapshots on stop and recovers exact budgets, refused
        nothing, while its serving login may not touch the JetStream API."""
        server = start_shipped_server(tmp_path, storage_login=True)
        try:
            worker = await start_governor(server, SWARMS)
            try:
                operator = await connect(server, "operator")
                await operator.client().trip("sip", "manual_override", requested_by="operator")
                assert (await operator.client().reset("sip", 40.0, approved_by="operator")).remaining == 40.0
                assert (await operator.client().cost("ndi", "op", 1.13, event_id="s1")).remaining == 23.87
            finally:
                await worker.__aexit__(None, None, None)
            restarted = await start_governor(server, SWARMS)
            try:
                # The operator's connection predates this worker: wait out the known no-responders blink while the
                # new subscriptions' interest reaches it (tests/integration/helpers.py, `answering`).
                await answering(operator.nc, timeout=START_TIMEOUT)
                status = await operator.client().status()
                assert (status.budgets, status.breakers) == ({"sip": 40.0, "ndi": 23.87}, {})
                assert (server.violations("governor"), server.violations(STORAGE_USER)) == ([], [])
                serving = await connect(server, "governor")
                await serving.nc.publish("$JS.API.STREAM.INFO.GOVERNOR_LEDGER", b"", reply="governor.events.x")
                await serving.wait_error(publish_violation("$JS.API.STREAM.INFO.GOVERNOR_LEDGER"))
                await serving.nc.close()
            finally:
                await restarted.__aexit__(None, None, None)
            await operator.nc.close()
        finally:
            server.stop()

    def test_security_md_shows_the_tested_lines(self) -> None:
        """SECURITY.md shows exactly the GOVERNOR account users that the test above runs."""
        assert STORAGE_LOGIN_USERS in (REPO / "SECURITY.md").read_text(encoding="utf-8")
