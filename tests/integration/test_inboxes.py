"""Per-user reply inboxes: coordinators who share one NATS account cannot read each other's replies.

A real nats-server lets coordinator alice subscribe only `_INBOX_alice.>` and bob only `_INBOX_bob.>`; the governor
logs in as its own user and answers both. Alice's client, made with `inbox_prefix="_INBOX_alice"`, gets every reply;
bob, subscribed to everything he may, sees none of them, and the server refuses him `_INBOX.>` and
`_INBOX_alice.>`. Isolation is proven the way nats-server's own tests prove it: do the forbidden thing with the
credentials a real client has, then check that nothing arrived.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
import pytest
from nats.aio.client import Client

import schemas.config
from schemas.config import Config
from tests.factories import make_config, swarm_entry
from tests.integration.helpers import Recorder, ServerErrors, serve
from worker.client import GovernorClient
from worker.ops.cli import main as governor_cli
from worker.ops.natsserver import NatsServer
from worker.service.app import Worker

START_TIMEOUT = 20.0
REFUSAL_WAIT = 1.0
"""Seconds a request whose reply the server will never deliver waits for it."""
SWARM = swarm_entry(
    "sip", ["integration:sip"], cost_per_hour=5.0, reputation_score=0.9, initial_budget=25.0, model="sonnet"
)
COORDINATOR_PUBLISH = '["governor.assign", "governor.cost", "governor.status", "governor.history"]'


def server_conf(passwords: dict[str, str]) -> str:
    """Users of one account: the governor unrestricted, each coordinator limited to its own inbox prefix."""
    users = [f'    {{user: governor, password: "{passwords["governor"]}"}}']
    for name in ("alice", "bob"):
        users.append(
            f'    {{user: {name}, password: "{passwords[name]}", permissions: {{\n'
            f"      publish: {{allow: {COORDINATOR_PUBLISH}}}\n"
            f'      subscribe: {{allow: ["_INBOX_{name}.>"]}}\n'
            "    }}"
        )
    return "authorization {\n  users = [\n" + "\n".join(users) + "\n  ]\n}\n"


def governor_config(url: str, password: str) -> Config:
    """The worker's config: logged in as `governor`, one swarm, in memory; answering `_INBOX_*` where it checks.

    The worker answers only reply subjects under `_INBOX.` and `_R_.` plus `security.reply_prefixes`, in the
    versions that have that key; in those, per-user inboxes must be listed there.
    """
    security = getattr(schemas.config, "SecuritySection", None)
    answers_inboxes = security is not None and "reply_prefixes" in security.__struct_fields__
    return make_config(
        [SWARM],
        nats={"servers": [url], "user": "governor", "password": password},
        ledger={"enabled": False},
        security={"reply_prefixes": ["_INBOX_"]} if answers_inboxes else None,
    )


@dataclass
class Deployment:
    """The nats-server with per-user inboxes, the passwords it was started with, and the governor serving on it."""

    server: NatsServer
    passwords: dict[str, str]
    worker: Worker

    @property
    def url(self) -> str:
        return self.server.url

    def login(self, user: str) -> dict[str, Any]:
        """`nats.connect` keywords that log in as `user`."""
        return {"user": user, "password": self.passwords[user]}

    async def refused_subscriptions(self, user: str, count: int = 1, timeout: float = 5.0) -> list[str]:
        """The subjects the server logged refusing `user` to subscribe to, once there are `count` of them."""
        marker = re.compile(rf'"\$G/user:{user}" - Subscription Violation - Subject "([^"]*)"')
        async with asyncio.timeout(timeout):
            while True:
                log = self.server.log_file.read_text(errors="replace") if self.server.log_file.exists() else ""
                found = marker.findall(log)
                if len(found) >= count:
                    return found
                await asyncio.sleep(0.02)


@pytest.fixture
def inbox_server(tmp_path: Path) -> Iterator[tuple[NatsServer, dict[str, str]]]:
    """A nats-server whose coordinators alice and bob may each subscribe only their own inbox prefix."""
    passwords = {user: f"pw-{user}-{secrets.token_hex(12)}" for user in ("governor", "alice", "bob")}
    conf = tmp_path / "nats-server.conf"
    conf.write_text(server_conf(passwords))
    server = NatsServer(store_dir=tmp_path / "nats", config_file=conf, jetstream=False)
    server.start()
    try:
        yield server, passwords
    finally:
        server.stop()


@pytest.fixture
async def deployment(inbox_server: tuple[NatsServer, dict[str, str]]) -> AsyncIterator[Deployment]:
    """The governor serving on the per-user-inbox server; stopped after the test."""
    server, passwords = inbox_server
    worker = await serve(governor_config(server.url, passwords["governor"]), timeout=START_TIMEOUT)
    try:
        yield Deployment(server, passwords, worker)
    finally:
        await worker.__aexit__(None, None, None)


async def connect(deployment: Deployment, user: str, errors: ServerErrors, inbox_prefix: str) -> Client:
    """A plain nats-py connection as `user`, replies under `inbox_prefix`, the server's errors kept in `errors`."""
    return await nats.connect(
        deployment.url,
        inbox_prefix=inbox_prefix,
        error_cb=errors.on_error,
        allow_reconnect=False,
        **deployment.login(user),
    )


ALICE_GETS: tuple[dict[str, float], list[float], list[Any]] = ({"sip": 25.0}, [22.5, 21.0], [])
"""What `alice_session` returns on a fresh governor."""


async def alice_session(deployment: Deployment) -> tuple[dict[str, float], list[float], list[Any]]:
    """Alice, on her own prefix, asks for status, reports two costs and reads history: four replies."""
    async with await GovernorClient.connect(
        deployment.url, inbox_prefix="_INBOX_alice", **deployment.login("alice")
    ) as alice:
        status = await alice.status()
        first = await alice.cost("sip", "sip_integration", 2.5)
        second = await alice.cost("sip", "sip_integration", 1.5)
        history = await alice.history()
    return status.budgets, [first.remaining, second.remaining], history.assignments


async def own_reply(bob: Client) -> str:
    """Bob asks for status on his own connection and prefix; returns the subject the reply came on.

    It is the last thing the governor sends in a test, so any reply to alice that could reach bob would have
    reached him before it (one governor connection, delivered in order)."""
    reply = await bob.request("governor.status", b"{}", timeout=5.0)
    assert msgspec.json.decode(reply.data)["ok"] is True
    return reply.subject


class TestPerUserInboxes:
    async def test_alice_gets_her_replies_on_her_prefix(self, deployment: Deployment) -> None:
        """With `inbox_prefix="_INBOX_alice"` every request of alice's is answered, on `_INBOX_alice.` subjects."""
        watcher, errors = Recorder(), ServerErrors()
        alice_raw = await connect(deployment, "alice", errors, "_INBOX_alice")
        try:
            await alice_raw.subscribe("_INBOX_alice.>", cb=watcher.receive)
            await alice_raw.flush()
            assert await alice_session(deployment) == ALICE_GETS
            await own_reply(alice_raw)
        finally:
            await alice_raw.drain()
        subjects = watcher.subjects()
        assert (len(subjects), [s for s in subjects if not s.startswith("_INBOX_alice.")]) == (5, [])
        assert errors.messages == []

    async def test_bob_sees_none_of_alices_replies(self, deployment: Deployment) -> None:
        """Bob, subscribed to all he may (`_INBOX_bob.>`), receives only his own reply while alice is answered."""
        spy, errors = Recorder(), ServerErrors()
        bob = await connect(deployment, "bob", errors, "_INBOX_bob")
        try:
            await bob.subscribe("_INBOX_bob.>", cb=spy.receive)
            await bob.flush()
            assert await alice_session(deployment) == ALICE_GETS
            mine = await own_reply(bob)
        finally:
            await bob.drain()
        assert mine.startswith("_INBOX_bob.")
        assert (spy.subjects(), errors.messages) == ([mine], [])

    @pytest.mark.parametrize("subject", ["_INBOX.>", "_INBOX_alice.>", ">"])
    async def test_bob_is_refused_other_inboxes(self, deployment: Deployment, subject: str) -> None:
        """The server refuses bob a subscription to the shared or alice's inboxes, and none of her replies arrive."""
        spy, errors = Recorder(), ServerErrors()
        bob = await connect(deployment, "bob", errors, "_INBOX_bob")
        try:
            await bob.subscribe(subject, cb=spy.receive)
            await bob.flush()
            # nats-py lower-cases the server's error; the server's log keeps the subject as sent
            assert await errors.first() == [f'nats: permissions violation for subscription to "{subject.lower()}"']
            assert await deployment.refused_subscriptions("bob") == [subject]
            assert await alice_session(deployment) == ALICE_GETS
            await own_reply(bob)
        finally:
            await bob.drain()
        assert spy.messages == []

    async def test_alice_without_her_prefix_gets_no_reply(self, deployment: Deployment) -> None:
        """On nats-py's default `_INBOX.` alice's inbox subscription is refused, so her request is never answered."""
        errors = ServerErrors()
        alice = await connect(deployment, "alice", errors, "_INBOX")
        try:
            with pytest.raises(nats.errors.TimeoutError):
                await alice.request("governor.status", b"{}", timeout=REFUSAL_WAIT)
            refused = await deployment.refused_subscriptions("alice")
        finally:
            await alice.close()
        assert (len(refused), re.fullmatch(r"_INBOX\.[A-Za-z0-9]{22}\.\*", refused[0]) is not None) == (1, True)
        assert errors.messages == [f'nats: permissions violation for subscription to "{refused[0].lower()}"']


class TestCommandLine:
    async def test_flag_sets_the_inbox_prefix(
        self, deployment: Deployment, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`governor status --inbox-prefix _INBOX_alice`, logged in as alice, prints the status and exits 0."""
        monkeypatch.setenv("IF_GOVERNOR_NATS_USER", "alice")
        monkeypatch.setenv("IF_GOVERNOR_NATS_PASSWORD", deployment.passwords["alice"])
        monkeypatch.delenv("IF_GOVERNOR_INBOX_PREFIX", raising=False)
        argv = ["status", "--json", "--nats-url", deployment.url, "--inbox-prefix", "_INBOX_alice"]
        code = await asyncio.to_thread(governor_cli, argv)
        out, err = capsys.readouterr()
        assert (code, json.loads(out)["budgets"], err) == (0, {"sip": 25.0}, "")

    async def test_environment_sets_the_inbox_prefix(
        self, deployment: Deployment, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`IF_GOVERNOR_INBOX_PREFIX=_INBOX_bob` makes bob's `governor cost` succeed; unset, bob gets no reply."""
        monkeypatch.setenv("IF_GOVERNOR_NATS_USER", "bob")
        monkeypatch.setenv("IF_GOVERNOR_NATS_PASSWORD", deployment.passwords["bob"])
        connection = ["--nats-url", deployment.url, "--timeout", str(REFUSAL_WAIT)]
        monkeypatch.delenv("IF_GOVERNOR_INBOX_PREFIX", raising=False)
        without = await asyncio.to_thread(governor_cli, ["status", *connection])  # read-only: nothing changes
        monkeypatch.setenv("IF_GOVERNOR_INBOX_PREFIX", "_INBOX_bob")
        with_prefix = await asyncio.to_thread(governor_cli, ["cost", "sip", "sip_integration", "2.5", *connection])
        out, err = capsys.readouterr()
        assert (without, with_prefix) == (1, 0)
        assert out == "sip: remaining 22.50 USD, breaker ok\n"
        assert err.startswith(f"error: no reply from the governor on {deployment.url} within {REFUSAL_WAIT}s")


class TestInboxPrefixOption:
    @pytest.mark.parametrize("prefix", ["", "_INBOX.>", "_INBOX.*", "_INBOX alice", "_INBOX_alice.", ".x", "a\nb"])
    async def test_malformed_prefix_is_refused_before_connecting(self, prefix: str) -> None:
        """A prefix with a wildcard, a space, an empty token or a newline raises ValueError; nothing connects."""
        with pytest.raises(ValueError) as raised:
            await GovernorClient.connect("nats://127.0.0.1:1", inbox_prefix=prefix)
        assert str(raised.value) == (
            f"inbox prefix {prefix!r}: expected subject tokens of letters, digits, `_` or `-`, separated by dots "
            "(e.g. _INBOX_alice)"
        )

    def test_cli_refuses_a_malformed_prefix_with_a_usage_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`governor status --inbox-prefix '_INBOX.>'` prints one error line and exits 2."""
        code = governor_cli(["status", "--nats-url", "nats://127.0.0.1:1", "--inbox-prefix", "_INBOX.>"])
        _, err = capsys.readouterr()
        assert (code, err) == (
            2,
            "error: inbox prefix '_INBOX.>': expected subject tokens of letters, digits, `_` or `-`, separated by "
            "dots (e.g. _INBOX_alice)\n",
        )
