"""The worker: core, actor, bus and metrics endpoint wired together, as an async context manager.

    async with Worker(config) as worker:
        await worker.wait_stopped()       # until stop() (e.g. from a SIGTERM handler)

On exit it stops taking requests, lets the actor answer everything already in the mailbox, flushes the
connection and closes it. The actor runs in a TaskGroup owned by the worker: if it dies, the error propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from types import TracebackType

import nats
from nats.aio.client import Client

from schemas.config import Config
from worker.actor import Actor, Mailbox
from worker.bus import Bus
from worker.config import policy_of, profiles_of
from worker.core import Governor
from worker.metrics import HttpEndpoint, Metrics

log = logging.getLogger("if_governor.worker")


def build_core(config: Config, now: float) -> Governor:
    """A core with the config's policy and capabilities, and its swarms registered."""
    core = Governor(policy_of(config), capabilities=config.capabilities, history_limit=config.governor.history_limit)
    for profile in profiles_of(config):
        core.register_swarm(profile, now=now, trace_id="config")
    return core


class Worker:
    """One governor process: connects, serves, drains on stop."""

    def __init__(
        self,
        config: Config,
        *,
        servers: list[str] | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        serve_metrics: bool = True,
    ) -> None:
        self.config = config
        self.servers = servers or list(config.nats.servers)
        self.metrics = metrics if metrics is not None else Metrics()
        self.clock = clock
        self.serve_metrics = serve_metrics and config.metrics.port != 0
        self.core = build_core(config, clock())
        self.mailbox = Mailbox(config.governor.mailbox_size)
        self.nc: Client | None = None
        self.bus: Bus | None = None
        self.http: HttpEndpoint | None = None
        self.ready = False
        self._stop = asyncio.Event()
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Worker:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def _start(self) -> None:
        stack = self._stack
        if self.serve_metrics:
            self.http = HttpEndpoint(
                self.metrics, lambda: self.ready, self.config.metrics.host, self.config.metrics.port
            )
            await self.http.start()
            stack.push_async_callback(self.http.close)
        self.nc = await nats.connect(
            servers=self.servers,
            name=self.config.nats.name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        stack.push_async_callback(self._close_connection)
        group = await stack.enter_async_context(asyncio.TaskGroup())
        self.bus = Bus(
            self.nc, self.mailbox, self.metrics, prefix=self.config.governor.subject_prefix, clock=self.clock
        )
        actor = Actor(self.core, self.mailbox, self.bus, self.metrics, clock=self.clock)
        group.create_task(actor.run(), name="governor-actor")
        # Unwinds before the TaskGroup waits for the actor: stop intake, then let the actor drain.
        stack.push_async_callback(self._drain)
        await self.bus.start()
        self.ready = True
        log.info("serving %s.* on %s", self.config.governor.subject_prefix, ", ".join(self.servers))

    async def _drain(self) -> None:
        self.ready = False
        if self.bus is not None:
            await self.bus.stop()
        self.mailbox.close()

    async def _close_connection(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.flush(timeout=5)
            await self.nc.close()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()

    def stop(self) -> None:
        """Ask the worker to stop (safe from a signal handler)."""
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def _on_error(self, exc: Exception) -> None:
        log.warning("nats error: %s", exc)

    async def _on_disconnected(self) -> None:
        log.warning("disconnected from nats")

    async def _on_reconnected(self) -> None:
        assert self.nc is not None
        log.info("reconnected to nats at %s", self.nc.connected_url.netloc if self.nc.connected_url else "?")
