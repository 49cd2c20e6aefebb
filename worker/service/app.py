"""The worker: core, actor, bus, ledger, lease and metrics endpoint wired together, as an async context manager.

    async with Worker(config) as worker:
        await worker.wait_stopped()       # until stop() (e.g. from a SIGTERM handler)

Durable mode (the default) is a loop of terms (`worker.service.term`): recover, follow the ledger as a standby
while trying to take the lease, serve while it is held, and start over when it is lost. In-memory mode builds the
core from the config and serves.

On exit it stops taking requests, lets the actor answer everything already in the mailbox, writes a snapshot,
gives the lease up, flushes the connection and closes it. Tasks run in a TaskGroup owned by the worker: if one
dies, the error propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import msgspec
from nats.aio.client import Client

from schemas.config import Config
from schemas.events import Event, WitnessRecord
from schemas.requests import ReloadRequest
from worker.core.governor import Governor
from worker.errors import Unavailable
from worker.ops.memory import release_freed_memory
from worker.ops.metrics import HttpEndpoint, Metrics
from worker.service.actor import Actor
from worker.service.bootstrap import ConfigFile, build_core, empty_core
from worker.service.bus import Bus
from worker.service.config import connect_options, redact, without_userinfo
from worker.service.confirmations import Confirmations
from worker.service.mailbox import Command, Mailbox
from worker.service.term import Terms
from worker.storage.audit import AuditLog
from worker.storage.journal import Ledger
from worker.storage.lease import Lease

log = logging.getLogger("if_governor.worker")

DRAIN_S = 30.0
"""How long a stop may take to drain the term (the ledger's 5 s for acknowledgements, a 10 s snapshot, the lease)."""
STUCK_AFTER_S = 10.0
"""A serving actor whose loop has not turned for this long (it turns at least every second) fails /healthz; for
twice as long, its term ends and the lease is given up."""


class Worker:
    """One governor process: connects, recovers, serves while it holds the lease, drains on stop."""

    def __init__(
        self,
        config: Config,
        *,
        servers: list[str] | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        serve_metrics: bool = True,
        durable: bool | None = None,
        wait_until_serving: bool = True,
        holder_id: str | None = None,
        config_path: str | None = None,
        stuck_after: float = STUCK_AFTER_S,
    ) -> None:
        self.config = config
        self.stuck_after = stuck_after
        """A serving actor that has not turned for this long fails /healthz; for twice as long, it ends its term."""
        self.config_path = config_path
        self.servers = servers or list(config.nats.servers or ["nats://127.0.0.1:4222"])
        self.metrics = metrics if metrics is not None else Metrics()
        self.clock = clock
        self.serve_metrics = serve_metrics and config.metrics.port != 0
        self.durable = config.ledger.enabled if durable is None else durable
        self.wait_until_serving = wait_until_serving
        self.holder_id = holder_id or f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self.core = build_core(config, clock()) if not self.durable else empty_core(config)
        self.mailbox = Mailbox(config.governor.mailbox_size)
        self.nc: Client | None = None
        """The serving connection: requests in, replies and events out."""
        self.storage_nc: Client | None = None
        """The ledger's and the snapshots' connection (durable mode)."""
        self.lease_nc: Client | None = None
        """The lease's connection (durable mode)."""
        self.bus: Bus | None = None
        self.ledger: Ledger | None = None
        self.lease: Lease | None = None
        self.http: HttpEndpoint | None = None
        self.state = "starting"
        """starting, standby, serving or stopped."""
        self.caught_up = False
        """As a standby: its last reading of the ledger reached the end (set by the durable term)."""
        self._serving = asyncio.Event()
        self._stop = asyncio.Event()
        self._stack = contextlib.AsyncExitStack()
        self._supervisor: asyncio.Task[None] | None = None
        self._release: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()  # witness records of quarantined ledger messages
        self.actor: Actor | None = None
        """The actor of the current (or last) term."""
        self._actor_task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        """True while this process answers requests: it serves, and its actor is alive and turning."""
        return self.state == "serving" and self.healthy

    @property
    def standing_by(self) -> bool:
        """True while this process stands by, caught up with the ledger: it can take over within a lease TTL."""
        return self.state == "standby" and self.caught_up

    @property
    def healthy(self) -> bool:
        """False when this process serves but its actor is dead or has not turned for `stuck_after` seconds (a
        standby is healthy: it follows the ledger)."""
        if self.state != "serving" or self.actor is None or self._actor_task is None:
            return True
        if self._actor_task.done():
            return False
        return self.stuck_for() < self.stuck_after

    def stuck_for(self) -> float:
        """Seconds since the serving actor's loop last turned."""
        assert self.actor is not None
        return asyncio.get_running_loop().time() - self.actor.turned

    async def __aenter__(self) -> Worker:
        try:
            await self._start()
        except BaseException:
            self._stop.set()
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()

    def stop(self) -> None:
        """Ask the worker to stop (safe from a signal handler)."""
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def wait_serving(self) -> None:
        await self._serving.wait()

    # -- lifecycle ------------------------------------------------------------------------------------------------

    async def _start(self) -> None:
        stack = self._stack
        if self.serve_metrics:
            metrics = self.config.metrics
            self.http = HttpEndpoint(
                self.metrics,
                lambda: self.ready,
                metrics.host,
                metrics.port,
                healthy=lambda: self.healthy,
                standing_by=lambda: self.standing_by,
            )
            await self.http.start()
            stack.push_async_callback(self.http.close)
        self.nc = await self._connect("")
        stack.push_async_callback(self._close_connection, self.nc)
        if self.durable:
            # Storage traffic has connections of its own: a flood of requests on the serving connection cannot
            # delay a ledger acknowledgement or a lease renewal behind it (both sockets are read in order), and
            # the lease is apart from the ledger so that a large snapshot or replay cannot hold a renewal back.
            self.storage_nc = await self._connect("storage")
            stack.push_async_callback(self._close_connection, self.storage_nc)
            self.lease_nc = await self._connect("lease")
            stack.push_async_callback(self._close_connection, self.lease_nc)
        group = await stack.enter_async_context(asyncio.TaskGroup())
        stack.push_async_callback(self._shutdown)  # unwinds before the TaskGroup waits for its tasks
        supervise = self._supervise_durable if self.durable else self._supervise_memory
        self._supervisor = group.create_task(supervise(), name="governor-supervisor")
        if self.wait_until_serving:
            waiter = asyncio.ensure_future(self._serving.wait())
            await asyncio.wait([waiter, self._supervisor], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if self._supervisor.done():
                self._supervisor.result()  # raises what killed it
                raise RuntimeError("the governor stopped before it served")

    async def _shutdown(self) -> None:
        """Stop: the supervisor drains the term (queued requests answered, writes settled, a snapshot, the lease
        given up). A drain that takes longer than DRAIN_S is logged with where it waits, and cancelled."""
        self._stop.set()
        if self._supervisor is None:
            return
        done, _ = await asyncio.wait([self._supervisor], timeout=DRAIN_S)
        if not done:
            log.error("stopping: still draining after %gs; it waits here:\n%s", DRAIN_S, self._stacks())
            self._supervisor.cancel()
            await asyncio.wait([self._supervisor])

    def _stacks(self) -> str:
        """Where the supervisor and the actor wait now, down the chain of awaits (for a log line)."""
        lines: list[str] = []
        for task in (self._supervisor, self._actor_task):
            if task is None or task.done():
                continue
            lines.append(f"{task.get_name()}:")
            awaited: Any = task.get_coro()
            while awaited is not None and hasattr(awaited, "cr_frame"):
                frame = awaited.cr_frame
                if frame is not None:
                    code = frame.f_code
                    lines.append(f"  {code.co_filename}:{frame.f_lineno} in {code.co_name}")
                awaited = awaited.cr_await
        return "\n".join(lines)

    async def _connect(self, role: str) -> Client:
        """A connection for `role` ("" serves requests; "storage" and "lease" log in as `nats.storage` says)."""
        nats_config = self.config.nats
        servers = self.servers
        storage = bool(role) and nats_config.storage is not None
        if storage:  # user-info in a URL would win over the storage login
            servers = [without_userinfo(u) for u in servers]
        timeout = nats_config.connect_timeout_s
        which = f"nats ({role} connection)" if role else "nats"
        nc = Client()

        async def on_error(exc: Exception) -> None:
            log.warning("%s error: %s", which, exc)

        async def on_disconnected() -> None:
            if not self._stop.is_set():
                log.warning("disconnected from %s; reconnecting", which)

        async def on_reconnected() -> None:
            url = nc.connected_url
            log.info("reconnected to %s at %s", which, url.netloc if url else "?")

        try:
            await asyncio.wait_for(
                nc.connect(
                    servers=servers,
                    name=f"{nats_config.name}-{role}" if role else nats_config.name,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.25,  # type: ignore[arg-type]  # seconds, a float is fine (nats.connect takes it)
                    error_cb=on_error,
                    disconnected_cb=on_disconnected,
                    reconnected_cb=on_reconnected,
                    # Every subject it publishes to is its own (validated in the config) or a reply inbox.
                    skip_subject_validation=True,
                    **connect_options(nats_config, storage=bool(role)),
                ),
                timeout=timeout,
            )
        except TimeoutError:
            where = ", ".join(redact(u) for u in self.servers)
            raise ConnectionError(f"cannot reach NATS at {where} within {timeout:g}s") from None
        return nc

    async def _close_connection(self, nc: Client) -> None:
        if not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.flush(timeout=5)
            try:
                await asyncio.wait_for(nc.close(), timeout=10)
            except TimeoutError:
                log.error("the connection to nats did not close within 10 s; left to the operating system")
        self.state = "stopped"

    async def serve(
        self, core: Governor, term: asyncio.TaskGroup, backlog: Sequence[Event] = ()
    ) -> tuple[Actor, asyncio.Task[None]]:
        """Start the actor on `core` in the term's task group and subscribe: from now on requests are answered."""
        assert self.nc is not None
        if self.bus is not None and self.bus.effects.confirmations is not None:
            await self.bus.effects.confirmations.stop()  # the last term's: what it waited for is regenerated
        self.core = core
        self.mailbox = Mailbox(self.config.governor.mailbox_size)
        self.bus = Bus(
            self.nc,
            self.mailbox,
            self.metrics,
            prefix=self.config.governor.prefix,
            pool=self.config.governor.pool,
            clock=self.clock,
            security=self.config.security,
            max_request_bytes=self.config.governor.max_request_bytes,
            pending_msgs=self.config.governor.pending_msgs_per_subject,
            pending_bytes=self.config.governor.pending_bytes_per_subject,
            confirmations=Confirmations(
                self.storage_nc, self.nc.publish, self.metrics, timeout=self.config.audit.ack_timeout_s
            )
            if self.storage_nc is not None and self.config.audit.enabled
            else None,
        )
        actor = Actor(
            core,
            self.mailbox,
            self.bus.effects,
            self.metrics,
            clock=self.clock,
            ledger=self.ledger,
            snapshot_every=self.config.ledger.snapshot_every,
            entitled=self._lease_held if self.durable else None,
            reloads=ConfigFile(self.config_path, self._reloaded) if self.config_path is not None else None,
        )
        # The registry lives for the whole term: keep the cyclic GC from scanning it on every full collection
        # (with 100,000 swarms a full collection otherwise stalls the actor for tens of milliseconds).
        gc.collect()
        gc.freeze()
        task = term.create_task(actor.run(term), name="governor-actor")
        self.actor, self._actor_task = actor, task
        await self.bus.start()
        self.state = "serving"  # it answers from here on: a SIGHUP meanwhile is a reload, not ignored
        # What the audit trail lacks (a takeover's), then what the core recorded before serving (memory mode: the
        # config's swarms registered at start).
        startup_events = [*backlog, *core.take_events()]
        if startup_events:
            await self.bus.effects.publish(startup_events)
            self._release = term.create_task(self._release_after_start(), name="governor-release-memory")
        self._serving.set()
        where = ", ".join(redact(u) for u in self.servers)
        log.info("serving %s.* on %s", self.config.governor.prefix, where)
        return actor, task

    def _lease_held(self) -> bool:
        return self.lease is not None and self.lease.held

    async def start_settled(self) -> None:
        """Wait until the start's burst is over: its records sent and stored, the memory it took handed back."""
        if self._release is not None:
            await asyncio.wait([self._release])

    async def _release_after_start(self) -> None:
        """Once the start's records are sent and stored (or after 10 s), hand the memory of that burst back to the
        operating system (`worker.ops.memory`)."""
        assert self.nc is not None and self.bus is not None
        with contextlib.suppress(Exception):
            await self.nc.flush(timeout=10)
            await self.bus.effects.stored(self.ledger.seq if self.ledger is not None else 0, wait_s=10.0)
        gc.collect()
        release_freed_memory()

    async def unserve(self, actor: Actor, task: asyncio.Task[None], *, lost: bool) -> None:
        """Stop taking requests; answer what is queued (`unavailable` when the lease was lost or the actor died)."""
        self.state = "standby"
        if self._release is not None:
            self._release.cancel()
            self._release = None
        gc.unfreeze()  # this term's registry may be replaced: let the collector see it again
        if lost:
            actor.fenced = True
        if self.bus is not None:
            with contextlib.suppress(Exception):
                await self.bus.stop()
        self.mailbox.close()
        await asyncio.wait([task])  # its failure, if any, is the term's (raised by the task group)
        if task.cancelled() or task.exception() is not None:
            await self._refuse_queued()

    async def _refuse_queued(self) -> None:
        """The actor is gone: what it never took is answered `unavailable`, so clients retry at once."""
        if self.bus is None:
            return
        error = Unavailable("this governor stopped serving (its actor failed); retry")
        while queued := self.mailbox.take_now(256):
            for command in queued:
                await self.bus.effects.reply_error(command, error)

    async def _supervise_memory(self) -> None:
        """Serve until stopped. The state lives only here: if the actor dies, the worker stops (and `governor
        run` exits non-zero) rather than serving on from the config's budgets."""
        async with asyncio.TaskGroup() as term:
            actor, task = await self.serve(self.core, term)
            try:
                await self.sleep(None, task=task)
            finally:
                await self.unserve(actor, task, lost=False)
            if task.cancelled() or task.exception() is not None:
                self.stop()

    async def _supervise_durable(self) -> None:
        assert self.storage_nc is not None and self.lease_nc is not None
        ledger_config = self.config.ledger
        self.ledger = ledger = Ledger(
            self.storage_nc,
            on_foreign=self._on_foreign,
            prefix=self.config.governor.prefix,
            replicas=ledger_config.replicas,
            timeout=ledger_config.timeout_s,
            trim=ledger_config.trim,
        )
        self.lease = Lease(
            self.lease_nc,
            self.holder_id,
            bucket=ledger.stream + "_LEASE",
            ttl=ledger_config.lease_ttl_s,
            replicas=ledger_config.replicas,
        )
        audit = self.config.audit
        trail = (
            AuditLog(
                self.storage_nc,
                prefix=self.config.governor.prefix,
                replicas=ledger_config.replicas,
                config=audit,
                timeout=ledger_config.timeout_s,
            )
            if audit.enabled
            else None
        )
        await Terms(self, ledger, self.lease, trail).run()

    def _on_foreign(self, seq: int, reason: str) -> None:
        """A ledger message (or a snapshot, `seq` 0) that is not the governor's was passed over: count it and
        witness it (the ledger has logged it)."""
        self.metrics.ledger_foreign.inc()
        record = WitnessRecord(
            operation="ledger_message_quarantined",
            params={"seq": seq, "reason": reason},
            timestamp=self.clock(),
            severity="HIGH",
            trace_id=f"ledger-{seq}",
        )
        if self.nc is not None and not self.nc.is_closed:
            subject = f"{self.config.governor.prefix}.witness.{record.operation}"
            task = asyncio.get_running_loop().create_task(self.nc.publish(subject, msgspec.json.encode(record)))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _reloaded(self, config: Config) -> None:
        """A reload was applied (after the ledger took it): its config is the one in force from now on."""
        self.config = config

    def reload(self) -> bool:
        """Queue a reload of the config file (SIGHUP), as if `governor.reload` was asked. False when not serving
        or the mailbox is full (logged); a bad file is refused by the actor (logged and witnessed)."""
        if not self.ready or self.bus is None:
            log.warning("reload ignored: not serving")
            return False
        request = ReloadRequest()
        raw = msgspec.json.encode(request)
        command = Command(request, "", self.bus.new_trace_id(), "signal.SIGHUP", time.perf_counter(), "reload", raw)
        if not self.mailbox.put(command):
            log.error("reload not queued: the mailbox is full")
            return False
        log.info("config reload queued from %s", self.config_path)
        return True

    @property
    def stopping(self) -> bool:
        """True once `stop()` was asked."""
        return self._stop.is_set()

    @property
    def stop_event(self) -> asyncio.Event:
        return self._stop

    async def sleep(
        self, seconds: float | None, also: asyncio.Event | None = None, task: asyncio.Task[None] | None = None
    ) -> bool:
        """Sleep, or return early when stopping (True), when `also` is set or when `task` ends."""
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._stop.wait())]
        if also is not None:
            waiters.append(asyncio.ensure_future(also.wait()))
        try:
            await asyncio.wait(
                [*waiters, *([task] if task else [])], timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
        return self._stop.is_set()
