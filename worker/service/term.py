"""Durable mode, one term after another.

A term recovers the core (the latest snapshot plus the ledger's tail) and, as a standby, follows the ledger while
it tries to take the lease. Once the lease is held it reads the ledger to its end, brings the config into the
ledger and serves, until the lease is lost, the actor dies or stops turning, or the worker stops. The lease
renewer and the actor (with its snapshot writer) are the term's tasks, in one task group: if one dies, the others
are cancelled, the term stops serving at once and gives the lease up, and a fresh term starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import msgspec

from schemas.events import Event
from schemas.ledger import LedgerEntry
from worker.core.governor import Governor
from worker.errors import GovernorError
from worker.ops.logs import Throttle
from worker.service.bootstrap import configure_body, empty_core, profiles_of, restorer
from worker.service.dispatch import register_request, replay_command
from worker.service.positions import Stamper, unstored
from worker.service.replay import catch_up, recover, snapshot_of
from worker.storage.audit import AuditLog
from worker.storage.entries import LedgerGap, decode_entry
from worker.storage.journal import Ledger, wait_for_jetstream
from worker.storage.lease import Lease

if TYPE_CHECKING:
    from worker.service.app import Worker

log = logging.getLogger("if_governor.worker")


UNSTORED_LIMIT = 100_000
"""Records a standby keeps that the audit trail lacks, at most (then it stops following beyond the trail)."""


class ActorStuck(Exception):
    """The serving actor stopped turning: its term ends."""


class Terms:
    """The durable worker's terms over one ledger and one lease."""

    def __init__(self, worker: Worker, ledger: Ledger, lease: Lease, audit: AuditLog | None = None) -> None:
        self.worker = worker
        self.ledger = ledger
        self.lease = lease
        self.audit = audit
        """The stored audit trail: a standby applies the ledger only as far as the trail goes, so that on taking
        over it regenerates, and publishes, the records of every message after it."""
        self._unstored: list[Event] = []
        """The records of what the standby applied that the trail lacks (yet): published if it takes over."""

    async def run(self) -> None:
        """Term after term until the worker stops; a failed term is logged and followed by a fresh one."""
        worker = self.worker
        quiet = Throttle(10.0)  # an outage fails a term every 0.5 s: one line per 10 s, the traceback once
        traced = False
        while not worker.stopping:
            try:
                served = await self.one()
            except Exception as exc:
                if (more := quiet()) is not None:
                    log.error(
                        "governor cycle failed (%r); starting over as a standby%s", exc, more, exc_info=not traced
                    )
                    traced = True
                served = False
            if not served and not worker.stopping:
                await worker.sleep(0.5)

    async def _stored(self) -> tuple[int, int] | None:
        """How far the stored audit trail goes (None: no audit trail)."""
        return await self.audit.stored_position() if self.audit is not None else None

    async def _recovered(self) -> Governor:
        """The snapshot and the ledger after it, stopping before the last message the audit trail has records of
        (so that its records missing from the trail can still be regenerated)."""
        self._unstored = []
        config = self.worker.config
        stored = await self._stored()
        until = stored[0] - 1 if stored is not None else None
        return await recover(self.ledger, lambda: empty_core(config), restorer(config), until=until)

    async def _follow(self, core: Governor, *, taking_over: bool = False) -> tuple[Governor, list[Event]]:
        """Replay what the ledger gained, to its end, keeping the records the audit trail lacks (a standby prunes
        them as the holder's are stored); taking over, return them all. A standby that holds UNSTORED_LIMIT of them
        (the holder's records are not being stored) follows only as far as the trail goes, so that the rest can
        still be regenerated. A core that fell behind the ledger's trimmed part starts again from the snapshot."""
        stored = await self._stored()
        held_back = not taking_over and stored is not None and len(self._unstored) >= UNSTORED_LIMIT
        until = stored[0] if held_back and stored is not None else None
        try:
            caught = await catch_up(self.ledger, core, until=until, after=stored)
        except LedgerGap as gap:
            log.info("%s: recovering from the snapshot", gap)
            core = await self._recovered()
            caught = await catch_up(self.ledger, core, until=until, after=stored)
        if stored is None:
            return core, []
        self._unstored = unstored([*self._unstored, *caught.events], stored)
        if not taking_over:
            return core, []
        backlog, self._unstored = self._unstored, []
        return core, backlog

    async def one(self) -> bool:
        """Recover, wait for the lease as a standby, serve while it is held. True when it served to the end (a
        lost lease included), False when it did not serve or one of its tasks failed."""
        worker, ledger, lease = self.worker, self.ledger, self.lease
        worker.state, worker.caught_up = "standby", False
        await wait_for_jetstream(ledger, worker.stop_event)
        if worker.stopping:
            return False
        await lease.setup()
        if self.audit is not None:
            await self.audit.setup()
        core = await self._recovered()
        worker.caught_up = True
        poll = min(0.5, lease.ttl / 4)
        while not await lease.try_acquire():
            if await worker.sleep(poll):
                return False
            try:
                core, _ = await self._follow(core)
                worker.caught_up = True
            except Exception:
                worker.caught_up = False
        lost_lease = asyncio.Event()
        lost = failed = False
        try:
            async with asyncio.TaskGroup() as term:
                # Renewed by its own task from now on, also while the ledger is read and the config reconciled.
                renewer = term.create_task(self._hold(lost_lease), name="governor-lease")
                # To the end (nobody else writes now), keeping the records the audit trail lacks.
                core, backlog = await self._follow(core, taking_over=True)
                backlog += await self._reconcile(core)
                if not lost_lease.is_set():
                    lost = await self._serve(core, term, lost_lease, backlog)
                else:
                    lost = True
                renewer.cancel()
        except* Exception as failure:
            failed = True
            worker.state = "standby"
            worker.metrics.term_failures.inc()
            cause = _first_leaf(failure)
            log.error("this term failed (%r): no longer serving; a fresh term starts", cause, exc_info=cause)
        if failed:
            await lease.release()
            return False  # the next term starts after a pause
        if not lost:
            await self._final_snapshot(core)
            await lease.release()
        return True

    async def _serve(
        self, core: Governor, term: asyncio.TaskGroup, lost_lease: asyncio.Event, backlog: list[Event]
    ) -> bool:
        """Serve until the worker stops, the lease is lost (True) or the actor ends or stops turning."""
        worker = self.worker
        actor, task = await worker.serve(core, term, backlog)
        backlog.clear()  # published: the start's records (one per swarm registered) are not held for the term
        try:
            while not worker.stopping and not lost_lease.is_set() and not actor.fenced:
                await worker.sleep(min(self.lease.ttl / 4, worker.stuck_after / 2), lost_lease, task)
                if task.done():
                    break
                if worker.stuck_for() > 2 * worker.stuck_after:
                    # /healthz has failed for `stuck_after` already: this term ends, and gives the lease up, like
                    # a dead one
                    task.cancel()
                    raise ActorStuck(f"the actor has not turned for {2 * worker.stuck_after:g}s")
        finally:
            lost = lost_lease.is_set() or actor.fenced
            if lost:
                worker.metrics.lease_lost.inc()
                log.error("lease lost: no longer serving")
            await worker.unserve(actor, task, lost=lost)
        return lost

    async def _hold(self, lost: asyncio.Event) -> None:
        """Renew the lease every ttl/4 until it cannot be renewed in time; then set `lost`."""
        lease, renewal = self.lease, self.worker.metrics.lease_renewal
        while True:
            await asyncio.sleep(lease.ttl / 4)
            sent = time.perf_counter()
            renewed = await lease.renew()
            renewal.observe(time.perf_counter() - sent)
            if not renewed:
                lost.set()
                return

    async def _reconcile(self, core: Governor) -> list[Event]:
        """Bring the config into the ledger: a changed policy or capability list, and swarms never seen before; the
        records it causes, stamped."""
        worker = self.worker
        now = worker.clock()
        encode = msgspec.json.encode
        entries: list[LedgerEntry] = []
        body = configure_body(worker.config)
        if core.configuration() != body:
            try:
                core.check_configuration(body)
            except GovernorError as exc:  # the ledger's state does not take it (a group that still has swarms)
                log.error("the config's policy, rules and budgets are not applied: %s", exc.message)
            else:
                entries.append(LedgerEntry("configure", now, "config", msgspec.Raw(encode(body))))
        for p in profiles_of(worker.config):
            if not core.known(p.swarm_id):
                entries.append(LedgerEntry("register", now, "config", msgspec.Raw(encode(register_request(p)))))
        if not entries:
            return []
        write = await self.ledger.append(entries)
        stamper, events = Stamper(), []
        for i, (entry, at) in enumerate(zip(entries, write.positions(), strict=True)):
            replay_command(core, decode_entry(entry.kind, entry.body), entry.now, entry.trace_id, entry.identity)
            events += stamper.stamp(core.take_events(), *at)  # published once serving starts
            if i % 500 == 499:
                await asyncio.sleep(0)  # let the lease be renewed during a long first registration
        log.info("config reconciled into the ledger: %d entries", len(entries))
        return events

    async def _final_snapshot(self, core: Governor) -> None:
        ledger = self.ledger
        if ledger.since_snapshot == 0:
            return
        bus = self.worker.bus
        if bus is not None and not await bus.effects.stored(ledger.seq, wait_s=2.0):
            log.warning(
                "final snapshot not stored: audit records are not all acknowledged (the next start "
                "replays the tail and publishes them)"
            )
            return
        try:
            seq = ledger.seq
            await asyncio.wait_for(ledger.save_snapshot(snapshot_of(ledger, core), seq), timeout=10)
        except Exception as exc:
            log.warning("final snapshot not stored (%s): the next start replays the tail", exc)


def _first_leaf(group: BaseExceptionGroup[Exception]) -> Exception:
    """The first exception that is not a group (the actor's own task group wraps what killed it)."""
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
