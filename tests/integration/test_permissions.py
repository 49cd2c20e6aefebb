"""The shipped `deploy/nats-server.conf`, unchanged but for its data directory and ports, enforces who may do what.

A real nats-server runs that file with the five passwords in its environment; the worker logs in as `governor`.
A refused publish never reaches the governor: the server drops it and tells the client
(`nats: permissions violation for publish to "<subject>"`), so the request gets no reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry

from schemas.config import Config
from schemas.profiles import SwarmProfile
from schemas.replies import StatusReply
from tests.integration.helpers import stop_process
from worker.app import Worker
from worker.bus import ENDPOINTS
from worker.client import GovernorClient
from worker.metrics import Metrics
from worker.natsserver import free_port, nats_server_binary

SHIPPED_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nats-server.conf"
ROLES = ("governor", "coordinator", "operator", "witness", "alerting")
START_TIMEOUT = 20.0
"""Seconds the worker gets to recover and serve (it retries a failed start every 0.5 s, for ever)."""
REFUSAL_WAIT = 1.0
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
NEW_SWARM = SwarmProfile(
    swarm_id="webrtc",
    capabilities=["integration:webrtc"],
    cost_per_hour=3.0,
    reputation_score=0.8,
    current_budget_remaining=10.0,
    model="haiku",
)
#: Requests only an operator may send, each one that would succeed if the server let it through.
OPERATOR_ONLY: dict[str, dict[str, Any]] = {
    "reset": {"swarm_id": "sip", "new_budget": 500.0, "approved_by": "mallory"},
    "trip": {"swarm_id": "ndi", "reason": "manual_override", "requested_by": "mallory"},
    "register": msgspec.to_builtins(NEW_SWARM),
    "deregister": {"swarm_id": "ndi"},
    "reload": {},
}
REQUEST_SUBJECTS = tuple(ENDPOINTS)


def shipped_conf(store_dir: Path, port: int, http_port: int) -> str:
    """The shipped config with only `store_dir`, the client port and the monitoring port replaced."""
    text = SHIPPED_CONF.read_text(encoding="utf-8")
    replacements = {
        "store_dir: /data/jetstream": f"store_dir: {json.dumps(str(store_dir))}",
        "listen: 0.0.0.0:4222": f"listen: 0.0.0.0:{port}",
        "http: 0.0.0.0:8222": f"http: 0.0.0.0:{http_port}",
    }
    for old, new in replacements.items():
        assert text.count(old) == 1, f"{SHIPPED_CONF} no longer contains {old!r} exactly once"
        text = text.replace(old, new)
    return text


@dataclass
class ShippedServer:
    """A nats-server process running the shipped config, and the passwords it was started with."""

    port: int
    passwords: dict[str, str]
    log_file: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def violations(self, user: str) -> list[str]:
        """The permission violations the server logged for `user`, e.g. `Publish Violation - Subject "x"`."""
        if not self.log_file.exists():
            return []
        marker = f'"$G/user:{user}" - '
        found = re.findall(
            rf"{re.escape(marker)}((?:Publish|Subscription) Violation - .*)$",
            self.log_file.read_text(encoding="utf-8", errors="replace"),
            flags=re.MULTILINE,
        )
        return sorted(set(found))


def start_shipped_server(tmp_path: Path) -> ShippedServer:
    """Start nats-server on the shipped config (a copy in `tmp_path`) and wait until it accepts connections."""
    port, http_port = free_port("0.0.0.0"), free_port("0.0.0.0")
    conf = tmp_path / "nats-server.conf"
    conf.write_text(shipped_conf(tmp_path / "jetstream", port, http_port), encoding="utf-8")
    passwords = {role: f"pw-{role}-{secrets.token_hex(12)}" for role in ROLES}
    env = dict(os.environ)
    env.update({f"{role.upper()}_PASSWORD": password for role, password in passwords.items()})
    server = ShippedServer(port=port, passwords=passwords, log_file=tmp_path / "nats-server.log")
    server.process = subprocess.Popen(
        [nats_server_binary(), "-c", str(conf), "-l", str(server.log_file)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            log = server.log_file.read_text(errors="replace") if server.log_file.exists() else ""
            raise RuntimeError(f"nats-server exited with {server.process.returncode} on the shipped config:\n{log}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return server
        time.sleep(0.02)
    stop_process(server.process)
    raise TimeoutError(f"nats-server did not listen on port {port} within 10s")


@pytest.fixture
def shipped(tmp_path: Path) -> Iterator[ShippedServer]:
    """nats-server running exactly the shipped permissions, stopped after the test."""
    server = start_shipped_server(tmp_path)
    try:
        yield server
    finally:
        assert server.process is not None
        stop_process(server.process)


def governor_config(server: ShippedServer) -> Config:
    """The worker's config: durable (the default), logged in as `governor`, two swarms, no metrics endpoint."""
    raw = {
        "nats": {"user": "governor", "password": server.passwords["governor"]},
        "metrics": {"port": 0},
        "swarms": SWARMS,
    }
    return msgspec.convert(raw, Config)


async def start_governor(server: ShippedServer) -> Worker:
    """Start a worker as user `governor`; fail, naming what the server refused it, as soon as it is refused anything.

    Why fail at the first refusal: a refused ledger write makes the worker retry its start for ever, each attempt
    waiting out the ledger's timeout, and the server's log already says exactly which subject it lacks.
    """
    worker = Worker(governor_config(server), servers=[server.url], metrics=Metrics(CollectorRegistry()))
    start = asyncio.ensure_future(worker.__aenter__())
    deadline = time.monotonic() + START_TIMEOUT
    refused: list[str] = []
    while not start.done() and time.monotonic() < deadline and not refused:
        await asyncio.wait([start], timeout=0.1)
        refused = server.violations("governor")
    if not start.done():
        start.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await start
        pytest.fail(
            f"the worker, logged in as `governor`, cannot serve under {SHIPPED_CONF.name}: "
            f"the server refused it {refused or f'nothing, yet it did not serve within {START_TIMEOUT:g}s'}"
        )
    start.result()
    return worker


@pytest.fixture
async def governor(shipped: ShippedServer) -> AsyncIterator[Worker]:
    """The worker serving under the shipped permissions, stopped after the test."""
    worker = await start_governor(shipped)
    try:
        yield worker
    finally:
        await worker.__aexit__(None, None, None)


class ServerErrors:
    """The asynchronous errors a connection got from the server (its `error_cb`), in order."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self._changed = asyncio.Event()

    async def on_error(self, exc: Exception) -> None:
        self.messages.append(str(exc))
        self._changed.set()

    async def wait_for(self, message: str, timeout: float = 5.0) -> None:
        """Wait until the server sent exactly `message`."""
        async with asyncio.timeout(timeout):
            while message not in self.messages:
                self._changed.clear()
                await self._changed.wait()


@dataclass
class Login:
    """A connection as one role of the shipped config, with the asynchronous errors the server sent it."""

    role: str
    nc: Client
    server_errors: ServerErrors

    @property
    def errors(self) -> list[str]:
        return self.server_errors.messages

    async def wait_error(self, message: str, timeout: float = 5.0) -> None:
        await self.server_errors.wait_for(message, timeout)

    def client(self) -> GovernorClient:
        return GovernorClient(self.nc, timeout=5.0)


LoginFactory = Callable[[str], Awaitable[Login]]


@pytest.fixture
async def login(shipped: ShippedServer) -> AsyncIterator[LoginFactory]:
    """`await login(role)`: a connection as that role; all closed after the test."""
    logins: list[Login] = []

    async def connect(role: str) -> Login:
        errors = ServerErrors()
        nc = await nats.connect(
            shipped.url,
            user=role,
            password=shipped.passwords[role],
            error_cb=errors.on_error,
            connect_timeout=5,
            max_reconnect_attempts=0,
        )
        session = Login(role, nc, errors)
        logins.append(session)
        return session

    yield connect
    for session in logins:
        with contextlib.suppress(Exception):
            await session.nc.close()


def blank_trace(status: StatusReply) -> StatusReply:
    return msgspec.structs.replace(status, trace_id="")


def received(worker: Worker, subject: str) -> float:
    """How many requests the governor received on `governor.<subject>`."""
    value = worker.metrics.registry.get_sample_value("if_governor_requests_total", {"subject": subject})
    return 0.0 if value is None else value


def publish_violation(subject: str) -> str:
    """The error nats-py reports for a refused publish (it lower-cases the server's message: keep subjects so)."""
    return f'nats: permissions violation for publish to "{subject.lower()}"'


class Recorder:
    """Every message a subscriber received, by subject."""

    def __init__(self) -> None:
        self.messages: list[Msg] = []
        self._changed = asyncio.Event()

    async def on(self, msg: Msg) -> None:
        self.messages.append(msg)
        self._changed.set()

    def bodies(self, subject: str) -> list[dict[str, Any]]:
        return [msgspec.json.decode(m.data) for m in self.messages if m.subject == subject]

    async def wait_for(self, subject: str, timeout: float = 5.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while not self.bodies(subject):
                self._changed.clear()
                await self._changed.wait()
        return self.bodies(subject)


class TestGovernorUser:
    async def test_worker_runs_a_full_term_without_a_permission_violation(self, shipped: ShippedServer) -> None:
        """As `governor` the worker starts, writes its ledger, snapshots on stop, recovers, and is never refused."""
        worker = await start_governor(shipped)
        try:
            operator = await GovernorClient.connect(
                shipped.url, user="operator", password=shipped.passwords["operator"]
            )
            try:
                cost = await operator.cost("sip", "sip_integration", 5.0)
                assert (cost.remaining, cost.tripped) == (20.0, False)
            finally:
                await operator.close()
        finally:
            await worker.__aexit__(None, None, None)
        restarted = await start_governor(shipped)
        try:
            operator = await GovernorClient.connect(
                shipped.url, user="operator", password=shipped.passwords["operator"]
            )
            try:
                budgets = (await operator.status()).budgets
            finally:
                await operator.close()
            assert budgets == {"sip": 20.0, "ndi": 25.0}
        finally:
            await restarted.__aexit__(None, None, None)
        assert shipped.violations("governor") == []


class TestCoordinator:
    @pytest.mark.parametrize("subject", sorted(OPERATOR_ONLY))
    async def test_operator_only_request_is_refused_by_the_server(
        self, governor: Worker, login: LoginFactory, subject: str
    ) -> None:
        """A coordinator's reset, trip, register, deregister or reload gets no reply and changes nothing."""
        operator = await login("operator")
        await operator.client().trip("sip", "manual_override", requested_by="alice")  # so a reset would apply
        before = blank_trace(await operator.client().status())
        coordinator = await login("coordinator")
        with pytest.raises(nats.errors.TimeoutError):
            await coordinator.nc.request(
                f"governor.{subject}", msgspec.json.encode(OPERATOR_ONLY[subject]), timeout=REFUSAL_WAIT
            )
        await coordinator.wait_error(publish_violation(f"governor.{subject}"))
        assert received(governor, subject) == (1.0 if subject == "trip" else 0.0)  # the operator's trip only
        assert blank_trace(await operator.client().status()) == before

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

    async def test_coordinator_cannot_serve_or_read_request_subjects(
        self, governor: Worker, login: LoginFactory
    ) -> None:
        """A coordinator may not subscribe to `governor.>`, so it can neither impersonate the governor nor snoop."""
        coordinator = await login("coordinator")
        await coordinator.nc.subscribe("governor.reset")
        await coordinator.wait_error('nats: permissions violation for subscription to "governor.reset"')

    async def test_coordinator_cannot_forge_events_or_witness_records(
        self, governor: Worker, login: LoginFactory
    ) -> None:
        """A coordinator's publish to an event or witness subject is dropped before any consumer sees it."""
        witness = await login("witness")
        seen = Recorder()
        await witness.nc.subscribe("governor.events.>", cb=seen.on)
        await witness.nc.subscribe("governor.witness.>", cb=seen.on)
        await witness.nc.flush()
        coordinator = await login("coordinator")
        forged = {"swarm_id": "sip", "new_budget": 1e6, "approved_by": "mallory", "reset_at": 0.0, "trace_id": "x"}
        await coordinator.nc.publish("governor.events.breaker.reset", msgspec.json.encode(forged))
        await coordinator.nc.publish("governor.witness.circuit_breaker_reset", msgspec.json.encode(forged))
        await coordinator.wait_error(publish_violation("governor.events.breaker.reset"))
        await coordinator.wait_error(publish_violation("governor.witness.circuit_breaker_reset"))
        await witness.nc.flush()
        assert seen.messages == []


class TestOperator:
    async def test_operator_trips_resets_registers_and_deregisters(self, governor: Worker, login: LoginFactory) -> None:
        """An operator's trip, reset (naming its approver), register and deregister are applied."""
        operator = (await login("operator")).client()
        tripped = await operator.trip("sip", "manual_override", requested_by="alice")
        assert tripped.swarm_id == "sip"
        assert set((await operator.status()).breakers) == {"sip"}
        reset = await operator.reset("sip", 40.0, approved_by="alice")
        assert (reset.swarm_id, reset.remaining, reset.duplicate) == ("sip", 40.0, False)
        registered = await operator.register(NEW_SWARM)
        assert registered.swarm_id == "webrtc"
        assert (await operator.status()).budgets == {"sip": 40.0, "ndi": 25.0, "webrtc": 10.0}
        deregistered = await operator.deregister("ndi")
        assert deregistered.swarm_id == "ndi"
        status = await operator.status()
        assert (status.budgets, status.breakers) == ({"sip": 40.0, "webrtc": 10.0}, {})


class TestReadOnlyConsumers:
    @pytest.mark.parametrize("role", ["witness", "alerting"])
    async def test_consumer_receives_events_and_audit_records(
        self, governor: Worker, login: LoginFactory, role: str
    ) -> None:
        """A witness or alerting user receives the trip and the reset, whose event and record name the approver."""
        consumer = await login(role)
        seen = Recorder()
        await consumer.nc.subscribe("governor.events.>", cb=seen.on)
        await consumer.nc.subscribe("governor.witness.>", cb=seen.on)
        await consumer.nc.flush()
        operator = (await login("operator")).client()
        await operator.trip("ndi", "manual_override", requested_by="alice")
        await operator.reset("ndi", 30.0, approved_by="bob")
        tripped = await seen.wait_for("governor.events.breaker.tripped")
        assert [(e["swarm_id"], e["reason"]) for e in tripped] == [("ndi", "manual_override")]
        reset = await seen.wait_for("governor.events.breaker.reset")
        assert [(e["swarm_id"], e["new_budget"], e["approved_by"]) for e in reset] == [("ndi", 30.0, "bob")]
        witnessed = [m for m in seen.messages if m.subject.startswith("governor.witness.")]
        assert any(b"bob" in m.data for m in witnessed)
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

    async def test_witness_cannot_make_requests(self, governor: Worker, login: LoginFactory) -> None:
        """A witness cannot even wait for a reply: `request` fails and the server reports both refusals."""
        witness = await login("witness")
        with pytest.raises(nats.errors.TimeoutError):
            await witness.nc.request("governor.status", b"{}", timeout=REFUSAL_WAIT)
        await witness.wait_error(publish_violation("governor.status"))
        # nats-py lower-cases the server's message, inbox name included.
        assert any(e.startswith('nats: permissions violation for subscription to "_inbox.') for e in witness.errors)
