"""Helpers shared by the integration tests of the wire contract (not a test module)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.errors import NoRespondersError


async def answering(nc: Client, prefix: str = "governor", timeout: float = 5.0) -> None:
    """Wait until the governor answers `<prefix>.status` on `nc`.

    Why: a connection opened *before* a durable worker set up JetStream (the conftest's `nc` is one) was seen to
    get `no responders` on its first request for about a millisecond after `Worker.__aenter__` returned, in about
    4% of starts (never on a connection opened after). Tests that are not about start-up wait this out here.
    """
    async with asyncio.timeout(timeout):
        while True:
            try:
                await nc.request(f"{prefix}.status", b"{}", timeout=timeout)
                return
            except NoRespondersError:
                continue


REPO = Path(__file__).resolve().parents[2]

#: The governor's own subjects a hostile request may name as its reply subject, to have the governor's answer sent,
#: with its credentials, into its ledger, lease key, snapshot store, the JetStream API, its events, its witness
#: records or its request subjects (the attack tests on both server configs start from these).
GOVERNOR_REPLY_TARGETS = (
    "governor.ledger",
    "$KV.GOVERNOR_LEDGER_LEASE.holder",
    "$O.GOVERNOR_LEDGER_SNAPSHOTS.C.x",
    "$JS.API.STREAM.DELETE.GOVERNOR_LEDGER",
    "$JS.API.STREAM.PURGE.GOVERNOR_LEDGER",
    "governor.events.breaker.reset",
    "governor.events.escalation",
    "governor.witness.circuit_breaker_reset",
    "governor.cost",
)


def spawn_worker(
    nats_url: str, config: Path, log_file: Path, *, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`python -m worker run` on `config` against `nats_url` in a child process of its own session (so signals to
    it reach no one else), its output appended to `log_file`, killed if the test process dies."""
    from worker.ops.natsserver import _die_with_parent

    with log_file.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--nats-url", nats_url, "--config", str(config)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a worker drains), then SIGKILL after 10 s; always reaped."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def project(actual: Any, expected: Any) -> Any:
    """`actual` reduced to the keys that `expected` names, recursively, for comparison with `expected`.

    Replies and events only grow (each new field with a default), so a test of the issue-2 contract checks every
    field the contract names, with its exact value, and ignores fields added later. A missing key shows as
    `"<missing>"`; lists are compared element by element when their lengths match.
    """
    if isinstance(expected, dict) and isinstance(actual, dict):
        return {key: project(actual[key], value) if key in actual else "<missing>" for key, value in expected.items()}
    if isinstance(expected, list) and isinstance(actual, list) and len(actual) == len(expected):
        return [project(a, e) for a, e in zip(actual, expected, strict=True)]
    return actual
