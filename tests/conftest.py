"""Fixtures shared by the integration tests: a real nats-server per test, a worker, a client, an event recorder."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry

from schemas.config import Config
from tests.factories import EXAMPLE_SWARMS, make_config
from worker.client import GovernorClient
from worker.ops.metrics import Metrics
from worker.ops.natsserver import NatsServer
from worker.service.app import Worker


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A real nats-server on a fresh loopback port with its own data directory, stopped after the test."""
    server = NatsServer(store_dir=tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()


WorkerFactory = Callable[..., Any]


@pytest.fixture
async def start_worker(nats_server: NatsServer, nc: Client) -> AsyncIterator[WorkerFactory]:
    """Start a Worker against the test's nats-server: `await start_worker(config)`; stopped after the test.

    It returns once the worker answers on the test's connection `nc` (see `answering` for why).
    """
    from tests.integration.helpers import answering

    started: list[Worker] = []

    async def start(config: Config | None = None, **kwargs: Any) -> Worker:
        worker = Worker(
            config or make_config(EXAMPLE_SWARMS),
            servers=[nats_server.url],
            metrics=Metrics(CollectorRegistry()),
            **kwargs,
        )
        await worker.__aenter__()
        started.append(worker)
        if worker.ready:
            prefix = worker.config.governor.subject_prefix
            await answering(nc, prefix)
        return worker

    yield start
    for worker in reversed(started):
        await worker.__aexit__(None, None, None)


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    """A plain NATS connection for raw requests."""
    conn = await nats.connect(nats_server.url)
    yield conn
    await conn.drain()


@pytest.fixture
async def client(nc: Client) -> GovernorClient:
    """A GovernorClient on the test's connection."""
    return GovernorClient(nc, timeout=5.0)


class Recorder:
    """Collects every message on a subject pattern, in arrival order."""

    def __init__(self) -> None:
        self.messages: list[Msg] = []
        self._changed = asyncio.Event()

    async def _on(self, msg: Msg) -> None:
        self.messages.append(msg)
        self._changed.set()

    def on(self, subject: str) -> list[dict[str, Any]]:
        """The decoded bodies received on exactly `subject`."""
        return [msgspec.json.decode(m.data) for m in self.messages if m.subject == subject]

    def subjects(self) -> list[str]:
        return [m.subject for m in self.messages]

    async def wait_for(self, subject: str, count: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until `count` messages arrived on `subject`; return them."""
        async with asyncio.timeout(timeout):
            while len(self.on(subject)) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.on(subject)


@pytest.fixture
async def recorder(nc: Client) -> Recorder:
    """Records every event and witness record the governor publishes."""
    rec = Recorder()
    await nc.subscribe("governor.events.>", cb=rec._on)
    await nc.subscribe("governor.witness.>", cb=rec._on)
    await nc.flush()
    return rec
