"""The worker: core, actor, bus, ledger, lease and metrics endpoint wired together, as an async context manager.

    async with Worker(config) as worker:
        await worker.wait_stopped()       # until stop() (e.g. from a SIGTERM handler)

Durable mode (the default) is a loop: wait for JetStream; recover the core from the latest snapshot plus the
ledger's tail; as a standby, keep replaying the ledger while trying to take the lease; once the lease is held,
read the ledger to its end, reconcile the config, and serve; when the lease is lost, stop serving and start over.
In-memory mode builds the core from the config and serves.

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
from collections.abc import Callable
from types import TracebackType
from typing import Any

import msgspec
from nats.aio.client import Client

from schemas.config import Config
from schemas.events import WitnessRecord
from schemas.ledger import Configure, LedgerEntry, Reload
from schemas.policy import PRESETS
from schemas.requests import ReloadRequest, Request
from worker.core.governor import Governor
from worker.errors import ConfigError, GovernorError, InvalidRequest, Unavailable
from worker.ops.metrics import HttpEndpoint, Metrics
from worker.service.actor import Actor, Command, Mailbox
from worker.service.bus import Bus
from worker.service.config import connect_options, load_config, policy_of, profiles_of, redact, without_userinfo
from worker.service.dispatch import register_request, replay_command
from worker.service.replay import catch_up, recover, snapshot_of
from worker.storage.journal import Ledger, LedgerGap, decode_entry, wait_for_jetstream
from worker.storage.lease import Lease

log = logging.getLogger("if_governor.worker")

DRAIN_S = 30.0
"""How long a stop may take to drain the term (the ledger's 5 s for acknowledgements, a 10 s snapshot, the lease)."""
STUCK_AFTER_S = 10.0
"""A serving actor whose loop has not turned for this long (it turns at least every second) fails /healthz; for
twice as long, its term ends and the lease is given up."""


class ActorStuck(Exception):
    """The serving actor stopped turning: its term ends."""


def build_core(config: Config, now: float) -> Governor:
    """An in-memory core with the config's policy and capabilities, and its swarms registered."""
    core = empty_core(config)
    core.configure(policy_of(config), config.capabilities, config.policies, config.rules)
    for profile in profiles_of(config):
        core.register_swarm(profile, now=now, trace_id="config")
    return core


def configure_body(config: Config) -> Configure:
    """The `configure` ledger entry that the config describes."""
    probe = Governor(capabilities=config.capabilities)
    return Configure(
        policy=policy_of(config),
        capabilities=probe.vocabulary.extra,
        policies={k: v for k, v in config.policies.items() if PRESETS.get(k) != v},
        rules=list(config.rules),
    )


def empty_core(config: Config) -> Governor:
    """The core a ledger replays into from its first entry (policy and capabilities come from the ledger)."""
    g = config.governor
    return Governor(history_limit=g.history_limit, dedupe_limit=g.dedupe_limit, dedupe_horizon_s=g.dedupe_horizon_s)


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
        self._serving = asyncio.Event()
        self._stop = asyncio.Event()
        self._stack = contextlib.AsyncExitStack()
        self._supervisor: asyncio.Task[None] | None = None
        self._pending_reload: tuple[Request, Config] | None = None  # read from the file, not applied yet
        self._background: set[asyncio.Task[None]] = set()  # witness records of quarantined ledger messages
        self.actor: Actor | None = None
        """The actor of the current (or last) term."""
        self._actor_task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        """True while this process answers requests: it serves, and its actor is alive and turning."""
        return self.state == "serving" and self.healthy

    @property
    def healthy(self) -> bool:
        """False when this process serves but its actor is dead or has not turned for `stuck_after` seconds (a
        standby is healthy: it follows the ledger)."""
        if self.state != "serving" or self.actor is None or self._actor_task is None:
            return True
        if self._actor_task.done():
            return False
        return self._stuck_for() < self.stuck_after

    def _stuck_for(self) -> float:
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
                self.metrics, lambda: self.ready, metrics.host, metrics.port, healthy=lambda: self.healthy
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

    async def _serve(self, core: Governor, term: asyncio.TaskGroup) -> tuple[Actor, asyncio.Task[None]]:
        """Start the actor on `core` in the term's task group and subscribe: from now on requests are answered."""
        assert self.nc is not None
        self.core = core
        self.mailbox = Mailbox(self.config.governor.mailbox_size)
        self.bus = Bus(
            self.nc,
            self.mailbox,
            self.metrics,
            prefix=self.config.governor.subject_prefix,
            clock=self.clock,
            prepare={"reload": self._prepare_reload},
            security=self.config.security,
            max_request_bytes=self.config.governor.max_request_bytes,
            pending_msgs=self.config.governor.pending_msgs_per_subject,
            pending_bytes=self.config.governor.pending_bytes_per_subject,
        )
        actor = Actor(
            core,
            self.mailbox,
            self.bus,
            self.metrics,
            clock=self.clock,
            ledger=self.ledger,
            snapshot_every=self.config.ledger.snapshot_every,
            entitled=self._lease_held if self.durable else None,
            on_reload=self._reloaded,
        )
        # The registry lives for the whole term: keep the cyclic GC from scanning it on every full collection
        # (with 100,000 swarms a full collection otherwise stalls the actor for tens of milliseconds).
        gc.collect()
        gc.freeze()
        task = term.create_task(actor.run(), name="governor-actor")
        self.actor, self._actor_task = actor, task
        await self.bus.start()
        startup_events = core.take_events()  # e.g. the config's swarms registered at start
        if startup_events:
            await self.bus.publish(startup_events)
        self.state = "serving"
        self._serving.set()
        where = ", ".join(redact(u) for u in self.servers)
        log.info("serving %s.* on %s", self.config.governor.subject_prefix, where)
        return actor, task

    def _lease_held(self) -> bool:
        return self.lease is not None and self.lease.held

    async def _unserve(self, actor: Actor, task: asyncio.Task[None], *, lost: bool) -> None:
        """Stop taking requests; answer what is queued (`unavailable` when the lease was lost or the actor died)."""
        self.state = "standby"
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
                await self.bus.reply_error(command, error)

    async def _supervise_memory(self) -> None:
        """Serve until stopped. The state lives only here: if the actor dies, the worker stops (and `governor
        run` exits non-zero) rather than serving on from the config's budgets."""
        async with asyncio.TaskGroup() as term:
            actor, task = await self._serve(self.core, term)
            try:
                await self._sleep(None, task=task)
            finally:
                await self._unserve(actor, task, lost=False)
            if task.cancelled() or task.exception() is not None:
                self.stop()

    async def _supervise_durable(self) -> None:
        assert self.storage_nc is not None and self.lease_nc is not None
        ledger_config = self.config.ledger
        prefix = self.config.governor.subject_prefix
        self.ledger = ledger = Ledger(
            self.storage_nc,
            on_foreign=self._on_foreign,
            prefix=prefix,
            replicas=ledger_config.replicas,
            timeout=ledger_config.timeout_s,
            trim=ledger_config.trim,
        )
        self.lease = lease = Lease(
            self.lease_nc,
            self.holder_id,
            bucket=ledger.stream + "_LEASE",
            ttl=ledger_config.lease_ttl_s,
            replicas=ledger_config.replicas,
        )
        while not self._stop.is_set():
            try:
                served = await self._one_term(ledger, lease)
            except Exception:
                log.exception("governor cycle failed; starting over as a standby")
                served = False
            if not served and not self._stop.is_set():
                await self._sleep(0.5)

    async def _one_term(self, ledger: Ledger, lease: Lease) -> bool:
        """Recover, wait for the lease as a standby, serve while it is held. True when it served to the end (a
        lost lease included), False when it did not serve or one of its tasks failed."""
        self.state = "standby"
        await wait_for_jetstream(ledger, self._stop)
        if self._stop.is_set():
            return False
        await lease.setup()
        g = self.config.governor

        async def recovered() -> Governor:
            return await recover(
                ledger,
                lambda: empty_core(self.config),
                lambda state: Governor.from_state(
                    state,
                    history_limit=g.history_limit,
                    dedupe_limit=g.dedupe_limit,
                    dedupe_horizon_s=g.dedupe_horizon_s,
                ),
            )

        async def follow(core: Governor) -> Governor:
            """Replay what the ledger gained; a standby that fell behind its trimmed part starts from the snapshot."""
            try:
                await catch_up(ledger, core)
                return core
            except LedgerGap as gap:
                log.info("%s: recovering from the snapshot", gap)
                return await recovered()

        core = await recovered()
        poll = min(0.5, lease.ttl / 4)
        while not await lease.try_acquire():
            if await self._sleep(poll):
                return False
            with contextlib.suppress(Exception):
                core = await follow(core)
        # The lease is renewed by its own task from now on, also while the ledger is read and the config reconciled.
        # The renewer and the actor (with its snapshot writer) are this term's tasks: if one dies, the task group
        # cancels the rest, the term stops serving at once and gives the lease up, and a fresh term starts.
        lost_lease = asyncio.Event()
        lost = failed = False
        try:
            async with asyncio.TaskGroup() as term:
                renewer = term.create_task(self._hold(lease, lost_lease), name="governor-lease")
                core = await follow(core)  # to the end: nobody else writes now
                await self._reconcile(core, ledger)
                if not lost_lease.is_set():
                    actor, task = await self._serve(core, term)
                    try:
                        while not self._stop.is_set() and not lost_lease.is_set() and not actor.fenced:
                            await self._sleep(min(lease.ttl / 4, self.stuck_after / 2), lost_lease, task)
                            if task.done():
                                break
                            if self._stuck_for() > 2 * self.stuck_after:
                                # /healthz has failed for `stuck_after` already: this term ends, and gives the
                                # lease up, like a dead one
                                task.cancel()
                                raise ActorStuck(f"the actor has not turned for {2 * self.stuck_after:g}s")
                    finally:
                        lost = lost_lease.is_set() or actor.fenced
                        if lost:
                            self.metrics.lease_lost.inc()
                            log.error("lease lost: no longer serving")
                        await self._unserve(actor, task, lost=lost)
                else:
                    lost = True
                renewer.cancel()
        except* Exception as failure:
            failed = True
            self.state = "standby"
            self.metrics.term_failures.inc()
            cause = _first_leaf(failure)
            log.error("this term failed (%r): no longer serving; a fresh term starts", cause, exc_info=cause)
        if failed:
            await lease.release()
            return False  # the next term starts after a pause
        if not lost:
            await self._final_snapshot(ledger, core)
            await lease.release()
        return True

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
            subject = f"{self.config.governor.subject_prefix}.witness.{record.operation}"
            task = asyncio.get_running_loop().create_task(self.nc.publish(subject, msgspec.json.encode(record)))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _hold(self, lease: Lease, lost: asyncio.Event) -> None:
        """Renew the lease every ttl/4 until it cannot be renewed in time; then set `lost`."""
        while True:
            await asyncio.sleep(lease.ttl / 4)
            sent = time.perf_counter()
            renewed = await lease.renew()
            self.metrics.lease_renewal.observe(time.perf_counter() - sent)
            if not renewed:
                lost.set()
                return

    async def _reconcile(self, core: Governor, ledger: Ledger) -> None:
        """Bring the config into the ledger: a changed policy or capability list, and swarms never seen before."""
        now = self.clock()
        encode = msgspec.json.encode
        entries: list[LedgerEntry] = []
        body = configure_body(self.config)
        if (
            core.policy != body.policy
            or core.vocabulary.extra != body.capabilities
            or core.rules != body.rules
            or {k: v for k, v in core.policies.items() if PRESETS.get(k) != v} != body.policies
        ):
            entries.append(LedgerEntry("configure", now, "config", msgspec.Raw(encode(body))))
        for p in profiles_of(self.config):
            if not core.known(p.swarm_id):
                entries.append(LedgerEntry("register", now, "config", msgspec.Raw(encode(register_request(p)))))
        if not entries:
            return
        await ledger.append(entries)
        for i, entry in enumerate(entries):  # their events stay in the core: published once serving starts
            replay_command(core, decode_entry(entry.kind, entry.body), entry.now, entry.trace_id, entry.identity)
            if i % 500 == 499:
                await asyncio.sleep(0)  # let the lease be renewed during a long first registration
        log.info("config reconciled into the ledger: %d entries", len(entries))

    async def _final_snapshot(self, ledger: Ledger, core: Governor) -> None:
        if ledger.entries_since_snapshot == 0:
            return
        try:
            seq = ledger.seq
            await asyncio.wait_for(ledger.save_snapshot(snapshot_of(ledger, core), seq), timeout=10)
        except Exception as exc:
            log.warning("final snapshot not stored (%s): the next start replays the tail", exc)

    def _prepare_reload(self, request: Request) -> tuple[Request, bytes]:
        """Re-read the config file into a `reload` command (what the ledger records is the config as read)."""
        if self.config_path is None:
            raise InvalidRequest("this governor was started without a config file: nothing to reload")
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            raise InvalidRequest(f"config not reloaded: {exc}") from None
        reload = Reload(
            configure=configure_body(config),
            swarms=[register_request(p) for p in profiles_of(config)],
            trace_id=request.trace_id,
        )
        # Later reconciliations (e.g. after a lease change) use the file as now read, once the reload is applied:
        # a reload the ledger refused changes nothing, the config this process reconciles with included.
        self._pending_reload = (reload, config)
        return reload, msgspec.json.encode(reload)

    def _reloaded(self, command: Command) -> None:
        """A reload was applied (after the ledger took it): its config is the one in force from now on."""
        pending = self._pending_reload
        if pending is not None and pending[0] is command.request:
            self.config = pending[1]
            self._pending_reload = None

    def reload(self) -> bool:
        """Queue a reload of the config file (SIGHUP). False when not serving or the file is bad (logged)."""
        if not self.ready or self.bus is None:
            log.warning("reload ignored: not serving")
            return False
        try:
            request, raw = self._prepare_reload(ReloadRequest())
        except GovernorError as exc:
            log.error("%s", exc.message)
            return False
        command = Command(request, "", self.bus.new_trace_id(), "signal.SIGHUP", time.perf_counter(), "reload", raw)
        if not self.mailbox.put(command):
            log.error("reload not queued: the mailbox is full")
            return False
        log.info("config reload queued from %s", self.config_path)
        return True

    async def _sleep(
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


def _first_leaf(group: BaseExceptionGroup[Exception]) -> Exception:
    """The first exception that is not a group (the actor's own task group wraps what killed it)."""
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
