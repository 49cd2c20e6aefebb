"""The trust boundary on a single-account server (the bundled dev server, or a deployment without accounts).

Every client there may publish anywhere, so the worker defends itself: it answers only reply subjects that are
inboxes or response mappings (`_INBOX.`, `_R_.` and the configured prefixes), so no reply it sends with its own
credentials can land in its ledger, its lease, its snapshots, the JetStream API or its event subjects; and it
believes a `Nats-Request-Info` header only where the config says the server stamps it.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.client import Client

from schemas.ledger import LedgerBatch
from tests.factories import EXAMPLE_SWARMS, make_config
from tests.integration.helpers import GOVERNOR_REPLY_TARGETS, Recorder, WorkerFactory, ledger_messages, record
from worker.ops.natsserver import NatsServer
from worker.service.app import Worker

SIP = "session-4-sip"
NDI = "session-1-ndi"
#: Reply subjects that aim the governor's answer at its own storage, the JetStream API or its event subjects.
HOSTILE_REPLIES = (*GOVERNOR_REPLY_TARGETS, "_INBOXX.lookalike")
#: (subject, body) of the requests sent with each hostile reply subject: a read, a write and discovery.
ATTACKS: tuple[tuple[str, dict[str, Any] | None], ...] = (
    ("governor.status", {}),
    ("governor.cost", {"swarm_id": SIP, "operation": "attack", "cost": 1.0}),
    ("governor.assign", {"task_id": "attack", "required_capabilities": ["integration:sip"]}),
    ("$SRV.PING", None),
    ("$SRV.INFO.governor", None),
)
OPERATOR = {"acc": "OPS", "user": "operator", "name": "cli"}


def info_header(info: dict[str, Any]) -> dict[str, str]:
    return {"Nats-Request-Info": msgspec.json.encode(info).decode()}


async def request(nc: Client, subject: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    return msgspec.json.decode((await nc.request(subject, msgspec.json.encode(body), timeout=5, headers=headers)).data)


def rejected(worker: Worker, code: str) -> float:
    value = worker.metrics.registry.get_sample_value("if_governor_requests_rejected_total", {"code": code})
    return value or 0.0


class TestReplySubjects:
    async def test_replies_aimed_at_the_governors_subjects_are_never_sent(
        self, start_worker: WorkerFactory, nc: Client, nats_server: NatsServer, recorder: Recorder
    ) -> None:
        """A request whose reply subject is the ledger, the lease key, the snapshot store, the JetStream API, an
        event or witness subject (or a look-alike inbox) is not answered there, changes nothing, is counted and
        witnessed, and operator requests sent at the same time are all answered."""
        worker = await start_worker(make_config(EXAMPLE_SWARMS))
        spy = await nats.connect(nats_server.url)
        arrived = await record(spy, *HOSTILE_REPLIES)
        holder_before = (await (await nc.jetstream().key_value("GOVERNOR_LEDGER_LEASE")).get("holder")).value

        async def attack() -> None:
            for reply in HOSTILE_REPLIES:
                for subject, body in ATTACKS:
                    data = b"" if body is None else msgspec.json.encode({**body, "trace_id": "attack"})
                    await nc.publish(subject, data, reply=reply)
            await nc.flush()

        async def operate() -> list[Any]:
            answers = []
            for i in range(20):
                answers.append(
                    await request(
                        nc, "governor.cost", {"swarm_id": NDI, "operation": "op", "cost": 0.25, "event_id": f"o{i}"}
                    )
                )
            return answers

        _, answers = await asyncio.gather(attack(), operate())
        await asyncio.sleep(0.5)  # what the worker would have sent has arrived by now
        await spy.close()

        # The governor's answers, not the attacker's requests (which carry the hostile reply subject).
        landed = [m for m in arrived.messages if not m.reply and (b"attack" in m.data or b"_response" in m.data)]
        assert landed == []
        assert [a["ok"] for a in answers] == [True] * 20
        attacks = len(HOSTILE_REPLIES) * len(ATTACKS)
        assert rejected(worker, "reply_subject_refused") == attacks
        witnessed = [
            r
            for r in recorder.bodies("governor.witness.request_rejected")
            if r["params"]["code"] == "reply_subject_refused"
        ]
        assert len(witnessed) == attacks
        status = await request(nc, "governor.status", {})
        assert status["budgets"] == {SIP: 25.0, NDI: 20.0}
        for data in await ledger_messages(nc):
            msgspec.json.decode(data, type=LedgerBatch)  # every message is the governor's own batch
        lease = await nc.jetstream().key_value("GOVERNOR_LEDGER_LEASE")
        assert (await lease.get("holder")).value == holder_before
        assert worker.ready

    async def test_after_the_attack_a_restart_recovers_exact_budgets(
        self, start_worker: WorkerFactory, nc: Client
    ) -> None:
        """After replies were aimed at the ledger, a fresh worker on the same stream recovers and serves with the
        budgets exact to the cent."""
        first = await start_worker(make_config(EXAMPLE_SWARMS))
        for i in range(7):
            body = {"swarm_id": NDI, "operation": "op", "cost": 1.13, "event_id": f"c{i}"}
            await nc.publish("governor.cost", msgspec.json.encode(body), reply="governor.ledger")
            await request(nc, "governor.cost", {**body, "event_id": f"ok{i}"})
        await first.__aexit__(None, None, None)
        await start_worker(make_config(EXAMPLE_SWARMS))
        status = await request(nc, "governor.status", {})
        assert status["budgets"] == {SIP: 25.0, NDI: 17.09}

    async def test_configured_reply_prefixes_are_answered(
        self, start_worker: WorkerFactory, nats_server: NatsServer
    ) -> None:
        """A client with its own inbox prefix is answered when the config names that prefix, and only then."""
        await start_worker(make_config(EXAMPLE_SWARMS, security={"reply_prefixes": ["_INBOX_alice."]}))
        alice = await nats.connect(nats_server.url, inbox_prefix=b"_INBOX_alice")
        bob = await nats.connect(nats_server.url, inbox_prefix=b"_INBOX_bob")
        try:
            assert (await request(alice, "governor.status", {}))["ok"] is True
            with pytest.raises(nats.errors.TimeoutError):
                await bob.request("governor.status", b"{}", timeout=0.5)
        finally:
            await alice.close()
            await bob.close()


class TestRequestInfo:
    async def test_an_untrusted_identity_header_is_refused_on_operator_subjects(
        self, start_worker: WorkerFactory, nc: Client, recorder: Recorder
    ) -> None:
        """Where the server is not said to stamp `Nats-Request-Info`, a reset carrying one claims an identity
        nobody checked: refused (`forbidden`, 403) and nothing changes; other subjects ignore the header and
        record no identity."""
        await start_worker(make_config(EXAMPLE_SWARMS))
        assert (await request(nc, "governor.cost", {"swarm_id": SIP, "operation": "op", "cost": 30.0}))["tripped"]
        msg = await nc.request(
            "governor.reset",
            msgspec.json.encode({"swarm_id": SIP, "new_budget": 500.0, "approved_by": "operator"}),
            timeout=5,
            headers=info_header(OPERATOR),
        )
        reply = msgspec.json.decode(msg.data)
        assert (reply["ok"], reply["error"]["code"], (msg.headers or {})["Nats-Service-Error-Code"]) == (
            False,
            "forbidden",
            "403",
        )
        status = await request(nc, "governor.status", {}, headers=info_header(OPERATOR))
        assert status["budgets"][SIP] == -5.0
        assert SIP in status["breakers"]
        tracked = await recorder.wait_for("governor.witness.cost_tracked")
        assert "identity" not in tracked[0]

    async def test_a_trusted_identity_is_recorded_and_roles_are_checked(
        self, start_worker: WorkerFactory, nc: Client, recorder: Recorder
    ) -> None:
        """With `trust_request_info`, the stamped user and account go into the witness record, the reset event and
        the history (also after a restart replays the ledger); a reset from a non-operator account, without a
        stamp, or naming another approver (with `require_authenticated_approver`) is refused, and the refusal's
        witness record names who sent it."""
        settings = {"trust_request_info": True, "operator_accounts": ["OPS"], "require_authenticated_approver": True}
        first = await start_worker(make_config(EXAMPLE_SWARMS, security=settings))
        coordinator = {"acc": "COORD", "user": "coordinator"}
        coordinator_identity = {"account": "COORD", "user": "coordinator"}
        operator_identity = {"account": "OPS", "user": "operator"}
        await request(nc, "governor.cost", {"swarm_id": SIP, "operation": "op", "cost": 30.0}, info_header(coordinator))
        reset = {"swarm_id": SIP, "new_budget": 40.0, "approved_by": "operator"}
        refused = [
            await request(nc, "governor.reset", reset, info_header(coordinator)),
            await request(nc, "governor.reset", reset),
            await request(nc, "governor.reset", {**reset, "approved_by": "mallory"}, info_header(OPERATOR)),
        ]
        assert [(r["ok"], r["error"]["code"]) for r in refused] == [(False, "forbidden")] * 3
        rejected = await recorder.wait_for("governor.witness.request_rejected", 3)
        assert [r.get("identity") for r in rejected] == [coordinator_identity, None, operator_identity]
        assert (await request(nc, "governor.reset", reset, info_header(OPERATOR)))["ok"] is True

        identity = {"account": "OPS", "user": "operator"}
        assert (await recorder.wait_for("governor.events.breaker.reset"))[0]["identity"] == identity
        assert (await recorder.wait_for("governor.witness.circuit_breaker_reset"))[0]["identity"] == identity
        tripped = await recorder.wait_for("governor.events.breaker.tripped")
        assert tripped[0]["identity"] == {"account": "COORD", "user": "coordinator"}
        history = await request(nc, "governor.history", {})
        assert [(r["approved_by"], r["identity"]) for r in history["resets"]] == [("operator", identity)]

        await first.__aexit__(None, None, None)
        await start_worker(make_config(EXAMPLE_SWARMS, security=settings))
        history = await request(nc, "governor.history", {})
        assert [(r["approved_by"], r["identity"]) for r in history["resets"]] == [("operator", identity)]


class TestTraceIds:
    async def test_an_unsafe_trace_id_is_never_echoed(self, start_worker: WorkerFactory, nc: Client) -> None:
        """A body `trace_id` holding CR/LF in a request refused for another reason is not echoed in the reply
        (nor its header): the governor answers with a trace id of its own; a header trace id with a space is
        refused `invalid_request`."""
        await start_worker(make_config(EXAMPLE_SWARMS))
        body = msgspec.json.encode({"swarm_id": SIP, "operation": "op", "cost": -1.0, "trace_id": "evil\r\nline"})
        msg = await nc.request("governor.cost", body, timeout=5)
        reply = msgspec.json.decode(msg.data)
        assert reply["error"]["code"] == "invalid_cost"
        assert re.fullmatch(r"[0-9a-f]{20}", reply["trace_id"]), reply["trace_id"]
        assert (msg.headers or {})["X-IF-Trace-ID"] == reply["trace_id"]
        spaced = await nc.request("governor.status", b"{}", timeout=5, headers={"X-IF-Trace-ID": "a b"})
        assert msgspec.json.decode(spaced.data)["error"] == {
            "code": "invalid_request",
            "message": "header X-IF-Trace-ID must be 1 to 128 of A-Z a-z 0-9 . _ : @ / + = -",
        }
