"""Fixtures shared by the integration tests: a real nats-server per test, a worker (in this process or child
processes), a client, an event recorder."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from prometheus_client import CollectorRegistry

from schemas.config import Config
from tests.factories import EXAMPLE_SWARMS, make_config
from tests.integration.helpers import Recorder, WorkerFactory, WorkerProcess, answering, record
from worker.client import GovernorClient
from worker.ops.metrics import Metrics
from worker.ops.natsserver import NatsCluster, NatsServer
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


@pytest.fixture
def processes() -> Iterator[list[WorkerProcess]]:
    """`governor run` processes a test started (it appends them); killed at the end whatever happens."""
    started: list[WorkerProcess] = []
    yield started
    for p in started:
        p.kill()


@pytest.fixture
async def start_worker(nats_server: NatsServer, nc: Client) -> AsyncIterator[WorkerFactory]:
    """Start a Worker against the test's nats-server: `await start_worker(config)`; stopped after the test.

    It returns once the worker answers on the test's connection `nc` (see `answering` for why).
    """
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
            prefix = worker.config.governor.prefix
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


@pytest.fixture
async def recorder(nc: Client) -> Recorder:
    """Records every event and witness record the governor publishes."""
    return await record(nc, "governor.events.>", "governor.witness.>")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """Three nats-server nodes n1..n3 in one JetStream cluster, each with its own ports and store; JetStream answers
    on every node when the test starts; all stopped after it."""
    nodes = NatsCluster(tmp_path / "cluster")
    nodes.start()
    try:
        yield nodes
    finally:
        nodes.cleanup()


@pytest.fixture
async def cluster_nc(cluster: NatsCluster) -> AsyncIterator[Client]:
    """A connection to the cluster (to whichever node is up): requests, discovery and JetStream's API."""
    conn = await nats.connect(cluster.urls, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    yield conn
    await conn.close()
