"""A term's tasks are supervised: when the actor dies or stops turning, the process stops serving at once (its
probes say so), gives the lease up so that a standby takes over, and answers what was queued `unavailable`.

The fault is injected into one worker's actor (a test hook on a real worker over a real nats-server): the rest
of the system, the lease and the standby, is the real one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.client import Client
from prometheus_client import CollectorRegistry

from schemas.config import Config
from tests.factories import EXAMPLE_SWARMS, make_config
from tests.integration.helpers import http_get
from worker.ops.metrics import Metrics
from worker.ops.natsserver import NatsServer, free_port
from worker.service.actor import Actor
from worker.service.app import Worker
from worker.service.mailbox import Command

ASSIGN = msgspec.json.encode({"task_id": "t", "required_capabilities": ["integration:sip"], "max_cost": 20.0})


def config(metrics_port: int = 0) -> Config:
    """The example swarms, durable with a 2 s lease, the metrics endpoint on loopback at `metrics_port` (0: off)."""
    return make_config(EXAMPLE_SWARMS, metrics={"host": "127.0.0.1", "port": metrics_port}, ledger={"lease_ttl_s": 2.0})


def probe(port: int, path: str) -> int:
    """The HTTP status the probe at `path` answers."""
    status, _ = http_get(port, path, timeout=2)
    return status


async def wait_for_probe(port: int, path: str, status: int, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if await asyncio.to_thread(probe, port, path) == status:
                return
            await asyncio.sleep(0.02)


async def answered(nc: Client, timeout: float = 15.0) -> dict[str, Any]:
    """The first assign reply that comes back ok, retrying like a coordinator does."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                reply = msgspec.json.decode((await nc.request("governor.assign", ASSIGN, timeout=0.5)).data)
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                continue
            if reply["ok"]:
                return dict(reply)
            await asyncio.sleep(0.05)


@pytest.fixture
async def workers(nats_server: NatsServer) -> AsyncIterator[list[Worker]]:
    """A serving worker (metrics on a port) and a standby, both durable on the test's server."""
    started: list[Worker] = []
    port = free_port()
    holder = Worker(config(port), servers=[nats_server.url], metrics=Metrics(CollectorRegistry()), stuck_after=1.0)
    await holder.__aenter__()
    started.append(holder)
    standby = Worker(
        config(), servers=[nats_server.url], metrics=Metrics(CollectorRegistry()), wait_until_serving=False
    )
    await standby.__aenter__()
    started.append(standby)
    yield started
    for worker in reversed(started):
        await worker.__aexit__(None, None, None)


def break_actors(worker: Worker, launch: Any) -> None:
    """Every actor this worker starts from now on (this term's and the next ones') launches batches with `launch`."""
    assert worker.actor is not None
    worker.actor.launch = launch.__get__(worker.actor)  # type: ignore[method-assign]
    serve = worker.serve

    async def serve_broken(core: Any, term: asyncio.TaskGroup, backlog: Any = ()) -> tuple[Actor, asyncio.Task[None]]:
        actor, task = await serve(core, term, backlog)
        actor.launch = launch.__get__(actor)  # type: ignore[method-assign]
        return actor, task

    worker.serve = serve_broken  # type: ignore[method-assign]


async def die(self: Actor, batch: list[Command]) -> None:
    """A batch launch that kills the actor."""
    raise RuntimeError("injected fault")


async def hang(self: Actor, batch: list[Command]) -> None:
    """A batch launch that never returns: the actor stops turning."""
    await asyncio.Event().wait()


def metric(worker: Worker, name: str) -> float:
    return worker.metrics.registry.get_sample_value(name) or 0.0


class TestSupervision:
    async def test_a_dead_actor_stops_serving_and_the_standby_takes_over(
        self, workers: list[Worker], nats_server: NatsServer
    ) -> None:
        """When the serving actor dies, /readyz and /healthz turn 503, the term ends with the cause counted, the
        lease is given up, and the standby answers the coordinator's retries."""
        holder, standby = workers
        assert holder.http is not None
        port = holder.http.port
        assert await asyncio.to_thread(probe, port, "/readyz") == 200

        break_actors(holder, die)
        nc = await nats.connect(nats_server.url)
        try:
            with pytest.raises(nats.errors.TimeoutError):  # taken by the dying actor: lost to it
                await nc.request("governor.assign", ASSIGN, timeout=1.0)
            await wait_for_probe(port, "/readyz", 503)
            reply = await answered(nc)
        finally:
            await nc.close()
        assert (reply["ok"], reply["swarm_id"]) == (True, "session-4-sip")
        assert standby.ready
        assert not holder.ready
        assert metric(holder, "if_governor_term_failures_total") >= 1.0
        assert await asyncio.to_thread(probe, port, "/healthz") == 200  # a standby again: alive, not serving

    async def test_a_stuck_actor_fails_healthz_and_its_term_ends(
        self, workers: list[Worker], nats_server: NatsServer
    ) -> None:
        """An actor that stops turning fails /healthz and /readyz within its bound; the term ends, the queued
        request is answered `unavailable`, and the standby serves."""
        holder, standby = workers
        assert holder.http is not None
        port = holder.http.port

        break_actors(holder, hang)
        nc = await nats.connect(nats_server.url)
        try:
            hung = asyncio.ensure_future(nc.request("governor.assign", ASSIGN, timeout=10))
            await wait_for_probe(port, "/healthz", 503, timeout=5)
            assert await asyncio.to_thread(probe, port, "/readyz") == 503
            queued = asyncio.ensure_future(nc.request("governor.assign", ASSIGN, timeout=10))  # waits in the mailbox
            refused = msgspec.json.decode((await queued).data)
            reply = await answered(nc)
            hung.cancel()
        finally:
            await nc.close()
        assert (refused["ok"], refused["error"]["code"]) == (False, "unavailable")
        assert (reply["ok"], reply["swarm_id"]) == (True, "session-4-sip")
        assert standby.ready
        assert metric(holder, "if_governor_term_failures_total") >= 1.0

    async def test_an_in_memory_worker_whose_actor_dies_stops(self, nats_server: NatsServer) -> None:
        """Without a ledger the state lives only in the actor: when it dies, the worker stops and the task that
        owns it fails with what killed it (`governor run` exits non-zero), instead of serving on from the
        config's budgets."""
        in_memory = make_config(EXAMPLE_SWARMS, ledger={"enabled": False})
        started: asyncio.Future[Worker] = asyncio.get_running_loop().create_future()

        async def run() -> None:  # like `governor run`: the worker is owned by a task of its own
            async with Worker(in_memory, servers=[nats_server.url], metrics=Metrics(CollectorRegistry())) as worker:
                started.set_result(worker)
                await worker.wait_stopped()

        owner = asyncio.ensure_future(run())
        worker = await started

        break_actors(worker, die)
        nc = await nats.connect(nats_server.url)
        try:
            with pytest.raises(nats.errors.TimeoutError):
                await nc.request("governor.assign", ASSIGN, timeout=1.0)
        finally:
            await nc.close()
        with pytest.raises(BaseExceptionGroup) as raised:
            async with asyncio.timeout(5):
                await owner
        assert "injected fault" in repr(raised.value)
        assert not worker.ready

    async def test_a_stop_that_cannot_drain_is_bounded_and_says_where_it_waits(
        self, nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A stop whose drain does not finish within DRAIN_S (here an actor hung on a batch) logs where it waits,
        cancels the drain, and the worker stops anyway."""
        monkeypatch.setattr("worker.service.app.DRAIN_S", 1.0)
        worker = Worker(config(), servers=[nats_server.url], metrics=Metrics(CollectorRegistry()))
        await worker.__aenter__()

        break_actors(worker, hang)
        nc = await nats.connect(nats_server.url)
        try:
            hung = asyncio.ensure_future(nc.request("governor.assign", ASSIGN, timeout=10))
            await asyncio.sleep(0.2)  # taken by the actor, which hangs on it
            async with asyncio.timeout(15):
                await worker.__aexit__(None, None, None)
            hung.cancel()
        finally:
            await nc.close()
        assert worker.state == "stopped"
        draining = [r.getMessage() for r in caplog.records if "still draining" in r.getMessage()]
        assert len(draining) == 1 and "in hang" in draining[0], draining
