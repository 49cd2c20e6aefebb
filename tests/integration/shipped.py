"""The shipped deployment run for real, for the tests that attack it (not a test module).

`deploy/nats-server.conf` with only its data directory and ports changed; the worker with the security settings of
the shipped Kubernetes ConfigMap (the worker config that runs against that server config), logged in as
`governor`; and a connection as each of the other five roles, with the credentials a real client of that role has.
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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
import yaml
from nats.aio.client import Client
from prometheus_client import CollectorRegistry

from schemas.config import AuditSection, Config
from schemas.ledger import Configure, LedgerBatch, LedgerEntry, Reload
from tests.factories import make_config
from tests.integration.helpers import REPO, ServerErrors, stop_process
from worker.client import GovernorClient
from worker.ops.metrics import Metrics
from worker.ops.natsserver import _die_with_parent, free_port, nats_server_binary
from worker.service.app import Worker
from worker.service.dispatch import DECODERS
from worker.storage.journal import stream_name

SHIPPED_CONF = REPO / "deploy" / "nats-server.conf"
SHIPPED_CONFIGMAP = REPO / "deploy" / "kubernetes" / "configmap.yaml"
#: Each role's user and the NATS account the shipped config puts it in.
ACCOUNTS = {
    "governor": "GOVERNOR",
    "coordinator": "COORD",
    "operator": "OPS",
    "chassis": "CHASSIS",
    "witness": "WITNESS",
    "alerting": "ALERTS",
}
ROLES = tuple(ACCOUNTS)
START_TIMEOUT = 30.0
"""Seconds the worker gets to recover and serve (a killed holder's lease must expire first: 3 s by default)."""
LEDGER = stream_name("governor")
LEASE_BUCKET = f"{LEDGER}_LEASE"


def shipped_security() -> dict[str, Any]:
    """The `security` section of the worker config shipped beside deploy/nats-server.conf (the ConfigMap's)."""
    configmap = yaml.safe_load(SHIPPED_CONFIGMAP.read_text(encoding="utf-8"))
    security: dict[str, Any] = yaml.safe_load(configmap["data"]["governor.yaml"])["security"]
    return security


def shipped_audit() -> dict[str, Any]:
    """The `audit` section of the shipped ConfigMap's worker config (its readers' durable consumers)."""
    configmap = yaml.safe_load(SHIPPED_CONFIGMAP.read_text(encoding="utf-8"))
    audit: dict[str, Any] = yaml.safe_load(configmap["data"]["governor.yaml"])["audit"]
    return audit


def identity(role: str) -> dict[str, str]:
    """The identity the governor records for a request from `role` (account and user, as the server stamps them)."""
    return {"account": ACCOUNTS[role], "user": role}


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
        """The permission violations the server logged for `user`, e.g. `Publish Violation - Subject "x"`.

        The server names the client as `"<account>/user:<user>"` in each line."""
        if not self.log_file.exists():
            return []
        marker = f'"{ACCOUNTS.get(user, "GOVERNOR")}/user:{user}" - '
        found = re.findall(
            rf"{re.escape(marker)}((?:Publish|Subscription) Violation - .*)$",
            self.log_file.read_text(encoding="utf-8", errors="replace"),
            flags=re.MULTILINE,
        )
        return sorted(set(found))

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


def start_shipped_server(tmp_path: Path, *, storage_login: bool = False) -> ShippedServer:
    """Start nats-server on the shipped config (a copy in `tmp_path`) and wait until it accepts connections.

    `storage_login`: with the governor's user split in two as SECURITY.md shows (`STORAGE_LOGIN_USERS`)."""
    port, http_port = free_port("0.0.0.0"), free_port("0.0.0.0")
    conf = tmp_path / "nats-server.conf"
    text = shipped_conf(tmp_path / "jetstream", port, http_port)
    conf.write_text(with_storage_login(text) if storage_login else text, encoding="utf-8")
    roles = (*ROLES, STORAGE_USER) if storage_login else ROLES
    passwords = {role: f"pw-{role}-{secrets.token_hex(12)}" for role in roles}
    env = dict(os.environ)
    env.update({password_variable(role): password for role, password in passwords.items()})
    server = ShippedServer(port=port, passwords=passwords, log_file=tmp_path / "nats-server.log")
    server.process = subprocess.Popen(
        [nats_server_binary(), "-c", str(conf), "-l", str(server.log_file)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_parent,  # no server outlives a test run that was killed (as worker.ops.natsserver does)
    )
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            log = server.log_file.read_text(errors="replace") if server.log_file.exists() else ""
            raise RuntimeError(f"nats-server exited with {server.process.returncode} on the shipped config:\n{log}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return server
        time.sleep(0.02)
    server.stop()
    raise TimeoutError(f"nats-server did not listen on port {port} within 10s")


def password_variable(user: str) -> str:
    """The environment variable the server config reads `user`'s password from: `GOVERNOR_STORAGE_PASSWORD`..."""
    return f"{user.upper().replace('-', '_')}_PASSWORD"


STORAGE_USER = "governor-storage"
#: The GOVERNOR account's users when the storage connections have a login of their own (`nats.storage`): the
#: serving user has no JetStream permission at all. SECURITY.md shows these lines (a test checks it does, verbatim).
STORAGE_LOGIN_USERS = """\
    users: [
      # Serving: requests and discovery in; replies, events and witness records out. No JetStream.
      {
        user: governor
        password: $GOVERNOR_PASSWORD
        permissions: {
          subscribe: {
            allow: [
              "governor.assign", "governor.cost", "governor.failure", "governor.success", "governor.complete"
              "governor.status", "governor.history"
              "governor.reset", "governor.trip", "governor.topup"
              "governor.register", "governor.deregister", "governor.update", "governor.reload"
              "$SRV.PING", "$SRV.PING.governor", "$SRV.PING.governor.*"
              "$SRV.INFO", "$SRV.INFO.governor", "$SRV.INFO.governor.*"
              "$SRV.STATS", "$SRV.STATS.governor", "$SRV.STATS.governor.*"
            ]
          }
          publish: { allow: ["governor.events.>", "governor.witness.>", "governor.audit.>"] }
          allow_responses: true
        }
      }
      # Storage (the worker's `nats.storage` login): the ledger, the snapshots and the lease. No requests.
      {
        user: governor-storage
        password: $GOVERNOR_STORAGE_PASSWORD
        permissions: {
          subscribe: { allow: ["_INBOX.>"] }
          publish: {
            allow: [
              "governor.ledger", "$JS.API.>", "$KV.GOVERNOR_LEDGER_LEASE.>", "$O.GOVERNOR_LEDGER_SNAPSHOTS.>"
              "$JS.FC.>"
            ]
          }
        }
      }
    ]
"""


def with_storage_login(text: str) -> str:
    """The shipped config with the GOVERNOR account's users replaced by `STORAGE_LOGIN_USERS`."""
    account = text.index("  GOVERNOR {\n")
    start = text.index("    users: [\n", account)
    end = text.index("    exports: [\n", start)
    assert text.count("  GOVERNOR {\n") == 1 and start < end, f"{SHIPPED_CONF}: no GOVERNOR account users to replace"
    return text[:start] + STORAGE_LOGIN_USERS + text[end:]


# -- the worker ---------------------------------------------------------------------------------------------------


def governor_config(server: ShippedServer, swarms: list[dict[str, Any]]) -> Config:
    """The worker's config: durable (the default), logged in as `governor` (and its storage connections as
    `governor-storage` where the server has that user), the shipped security settings, the given swarms, no
    metrics endpoint."""
    nats_section: dict[str, Any] = {"user": "governor", "password": server.passwords["governor"]}
    if STORAGE_USER in server.passwords:
        nats_section["storage"] = {"user": STORAGE_USER, "password": server.passwords[STORAGE_USER]}
    config = make_config(swarms, nats=nats_section, security=shipped_security())
    return msgspec.structs.replace(config, audit=msgspec.convert(shipped_audit(), AuditSection))


async def start_governor(server: ShippedServer, swarms: list[dict[str, Any]], *, wait: bool = True) -> Worker:
    """Start a worker as user `governor`; fail, naming what the server refused it, as soon as it is refused anything.

    Why fail at the first refusal: a refused ledger write makes the worker retry its start for ever, each attempt
    waiting out the ledger's timeout, and the server's log already says exactly which subject it lacks.
    `wait=False`: return at once (a second worker then stays a standby while the first serves).
    """
    worker = Worker(
        governor_config(server, swarms),
        servers=[server.url],
        metrics=Metrics(CollectorRegistry()),
        wait_until_serving=wait,
    )
    start = asyncio.ensure_future(worker.__aenter__())
    deadline = time.monotonic() + START_TIMEOUT
    refused: list[str] = []
    while not start.done() and time.monotonic() < deadline and not refused:
        await asyncio.wait([start], timeout=0.1)
        refused = server.violations("governor") + server.violations(STORAGE_USER)
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


def write_worker_config(server: ShippedServer, path: Path, swarms: list[dict[str, Any]]) -> Path:
    """A config file for `governor run`: the `governor` login in `nats:`, the shipped security settings."""
    raw = {
        "nats": {"user": "governor", "password": server.passwords["governor"]},
        "metrics": {"port": 0},
        "swarms": swarms,
        "security": shipped_security(),
    }
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


# -- clients ------------------------------------------------------------------------------------------------------


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


async def connect(server: ShippedServer, role: str) -> Login:
    """A connection as `role` (a user of the server), with its password."""
    errors = ServerErrors()
    nc = await nats.connect(
        server.url,
        user=role,
        password=server.passwords[role],
        error_cb=errors.on_error,
        connect_timeout=5,
        max_reconnect_attempts=0,
    )
    return Login(role, nc, errors)


def publish_violation(subject: str) -> str:
    """The error nats-py reports for a refused publish (it lower-cases the server's message: keep subjects so)."""
    return f'nats: permissions violation for publish to "{subject.lower()}"'


def subscription_violation(subject: str) -> str:
    """The error nats-py reports for a refused subscription (lower-cased, like `publish_violation`)."""
    return f'nats: permissions violation for subscription to "{subject.lower()}"'


# -- the governor's storage, read with its own login --------------------------------------------------------------

_ENTRY_BODIES: dict[str, msgspec.json.Decoder[Any]] = {
    **DECODERS,
    "configure": msgspec.json.Decoder(Configure),
    "reload": msgspec.json.Decoder(Reload),
}


async def ledger_entries(governor: Client) -> list[LedgerEntry]:
    """Every entry of the ledger stream, oldest first; fails unless every message is one of the governor's own
    batches (`LedgerBatch`) and every entry's body decodes as the command its kind names."""
    js = governor.jetstream()
    state = (await js.stream_info(LEDGER)).state
    entries: list[LedgerEntry] = []
    for seq in range(state.first_seq, state.last_seq + 1):
        data = (await js.get_msg(LEDGER, seq)).data or b""
        batch = msgspec.json.decode(data, type=LedgerBatch)  # raises on anything that is not the governor's batch
        for entry in batch.entries:
            _ENTRY_BODIES[entry.kind].decode(entry.body)
        entries.extend(batch.entries)
    return entries


async def lease_holder(governor: Client) -> bytes:
    """The value of the serving lease's key: the holder id of the process that serves."""
    kv = await governor.jetstream().key_value(LEASE_BUCKET)
    value = (await kv.get("holder")).value
    assert value is not None
    return value
