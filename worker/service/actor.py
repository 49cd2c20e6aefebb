"""The actor: the one asyncio task that owns the decision core.

Handlers put commands in the `Mailbox` and return at once. The actor takes every command that waits (up to a
batch) with one reading of the clock, writes the changing ones to the ledger (several batches may be in flight),
and once a batch's write is acknowledged applies it to the core in order, then performs the effects itself: the
replies, the events the core recorded, and the metrics. Nothing else touches the core.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec

from schemas.events import BreakerReset, BreakerTripped, BudgetRefilled, BudgetThreshold, Event, WitnessRecord
from schemas.ledger import LedgerEntry, Tick
from schemas.replies import AssignReply
from worker.core.governor import Governor
from worker.errors import DeadlineExceeded, GovernorError, InvalidRequest, Unavailable
from worker.ops.logs import Throttle
from worker.ops.metrics import Metrics
from worker.service.dispatch import READ_ONLY, apply
from worker.service.mailbox import Command, Mailbox
from worker.service.ports import Journal, Outbox, Reloads
from worker.service.positions import Stamper
from worker.service.replay import catch_up, snapshot_of
from worker.storage.entries import LedgerError, LedgerFenced, LedgerUnavailable
from worker.storage.journal import Write

log = logging.getLogger("if_governor.actor")


HEARTBEAT_S = 1.0
"""An idle actor's loop still turns this often."""

TICK_SPACING_S = 0.1
"""At most one `tick` entry per this long: a tick that could not roll a period over (a bug) never floods the
ledger; a refill is at most this late."""


class _Flight:
    """A batch taken from the mailbox whose changing commands are being written to the ledger."""

    __slots__ = ("batch", "now", "pending", "results", "write")

    def __init__(
        self, batch: list[Command], results: list[Any], now: float, pending: list[int], write: Write | None
    ) -> None:
        self.batch = batch
        self.results = results  # None: still to apply; else the refusal decided before (deadline, fenced, ledger)
        self.now = now  # the one clock reading for the batch: recorded in its ledger entries, used to apply them
        self.pending = pending  # indexes of the commands written to the ledger
        self.write = write


class Actor:
    """Applies mailbox commands to the core, in order, in batches, and performs their effects.

    With a ledger, each batch's changing commands are written first and applied only once acknowledged (group
    commit). Writes are pipelined: while up to `max_inflight` batches wait for their acks, the actor takes and
    writes the next ones, and applies each batch as soon as its ack arrives, always in ledger order. A write the
    ledger did not take is answered `unavailable` with every batch behind it, and changes nothing.
    """

    def __init__(
        self,
        core: Governor,
        mailbox: Mailbox,
        outbox: Outbox,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
        max_batch: int = 256,
        max_inflight: int = 4,
        ledger: Journal | None = None,
        snapshot_every: int = 10_000,
        entitled: Callable[[], bool] | None = None,
        reloads: Reloads | None = None,
    ) -> None:
        self.core = core
        self.mailbox = mailbox
        self.outbox = outbox
        self.metrics = metrics
        self.clock = clock
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self.ledger = ledger
        self.snapshot_every = snapshot_every
        self.fenced = False
        """Set when this process is no longer the ledger's owner: everything is answered `unavailable`."""
        self.reloads = reloads
        """Reads the config for each reload command before it is written, and hears when the core applied it."""
        self.entitled = entitled
        """Whether this process may still serve (its lease is valid by its own clock), asked once per batch: a
        process that was frozen past its lease answers nothing, not even a read, from its stale state."""
        self._flights: deque[_Flight] = deque()
        self._tick_pending = False  # a tick entry is in flight: the core's periods lag it, write no second one
        self._ticked_at = -TICK_SPACING_S
        self._storage_trouble = Throttle(5.0)  # one line per 5 s for refused or unacknowledged writes
        self._snapshot_task: asyncio.Task[None] | None = None
        self._snapshot_waiting = False  # the snapshot task waits for its audit records' acknowledgements
        self._writers: asyncio.TaskGroup | None = None
        self.turned = 0.0
        """The event loop's time when the actor's loop last turned (at least every HEARTBEAT_S while it runs)."""
        metrics.per_swarm_from(lambda: self.core.gauges())
        metrics.evictions_from(lambda: dict(self.core.evicted))
        metrics.per_group_from(lambda: self.core.groups(self.clock()))
        metrics.in_flight_from(lambda: self.core.in_flight())

    async def run(self, term: asyncio.TaskGroup | None = None) -> None:
        """Serve until the mailbox is closed and drained and every write is settled. An exception here is the
        actor's death: the worker's supervisor stops serving and starts a fresh term.

        The snapshot writer runs in `term`, the task group of the serving term (beside the actor and the lease
        renewer: the failure of one ends them all); without one, in a group of the actor's own."""
        if term is not None:
            self._writers = term
            await self._loop()
            self._drop_snapshot()
            return
        async with asyncio.TaskGroup() as self._writers:
            await self._loop()
            self._drop_snapshot()
        self._writers = None

    def _drop_snapshot(self) -> None:
        """Serving is over: a background snapshot still waiting for its audit records' acknowledgements (up to three
        acknowledgement times, and nothing resends them now) is given up rather than holding the stop back; the
        term's final snapshot, or recovery's replay of the tail, covers it."""
        task = self._snapshot_task
        if task is not None and not task.done() and self._snapshot_waiting:  # never one being written
            task.cancel()

    async def _loop(self) -> None:
        mailbox = self.mailbox
        flights = self._flights
        loop = asyncio.get_running_loop()
        while True:
            self.turned = loop.time()
            await self.outbox.resend()
            if not flights:
                batch = await mailbox.take(self.max_batch, timeout=self._idle_timeout())
                self.turned = loop.time()
                if batch is None:
                    if self._tick_due(self.clock()):
                        await self.launch([])  # a period ended or a task expired while idle: written now
                    continue  # idle: the loop still turns, so /healthz can tell a stuck actor from an idle one
                if not batch:
                    break
                await self.launch(batch)
                continue
            head = flights[0]
            write = head.write
            if write is None or write.future.done():
                await self.land(flights.popleft())
            elif len(mailbox) and len(flights) < self.max_inflight:
                await self.launch(mailbox.take_now(self.max_batch))
            else:
                timeout = write.deadline - loop.time()
                if timeout <= 0:
                    await self.land(flights.popleft())  # no ack in time: in doubt
                    continue
                waiters: list[asyncio.Future[Any]] = [write.future]
                if len(flights) < self.max_inflight and not mailbox.closed:  # closed: only the acks matter now
                    waiters.append(mailbox.ready())
                await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                mailbox.unready()

    def _idle_timeout(self) -> float:
        """How long an idle actor waits for a command: a heartbeat, or less when a budget period ends sooner."""
        if self._tick_pending or self.fenced:
            return HEARTBEAT_S
        now = self.clock()
        until = max(self.core.next_due(), self._ticked_at + TICK_SPACING_S) - now
        return max(0.001, min(HEARTBEAT_S, until + 0.001))

    def _tick_due(self, now: float) -> bool:
        """A budget period ended or a task's time is up (and no tick is in flight, nor was one written within
        TICK_SPACING_S)."""
        return (
            not self._tick_pending
            and not self.fenced
            and now >= self._ticked_at + TICK_SPACING_S
            and self.core.due(now)
        )

    def _tick(self, now: float) -> Command:
        """The `tick` command that rolls the budget periods ended by `now` over and expires the tasks whose time is
        up, as a ledger entry of its own."""
        self._tick_pending = True
        self._ticked_at = now
        trace_id = f"tick-{int(now * 1000)}"
        return Command(Tick(), "", trace_id, "tick", time.perf_counter(), "tick", b"{}")

    async def launch(self, batch: list[Command]) -> None:
        """Take a batch: refuse what cannot be served, start writing its changing commands (or apply it now). A
        budget period that ended, or a task's time that is up, puts a `tick` first."""
        now = self.clock()
        if not self.fenced and self.entitled is not None and not self.entitled():
            log.error("the lease ran out before this batch: no longer serving")
            self.fenced = True
        if self._tick_due(now):
            batch.insert(0, self._tick(now))
        if not batch:
            return
        results: list[msgspec.Struct | GovernorError | None] = [None] * len(batch)
        for i, command in enumerate(batch):
            deadline = command.request.deadline
            if deadline is not None and now > deadline:
                results[i] = DeadlineExceeded(f"deadline {deadline:.3f} passed before the request was applied")
                self.metrics.expired.inc()
            elif self.fenced:
                results[i] = Unavailable("this governor is not serving (it lost its lease); retry")
            elif command.kind == "reload":
                results[i] = self._read_config(command)
        ledger = self.ledger
        pending: list[int] = []
        write: Write | None = None
        if ledger is not None and not self.fenced:
            pending = [i for i, c in enumerate(batch) if results[i] is None and c.kind not in READ_ONLY]
            if pending:
                entries = [
                    LedgerEntry(batch[i].kind, now, batch[i].trace_id, msgspec.Raw(batch[i].raw), batch[i].identity)
                    for i in pending
                ]
                write = await ledger.start(entries)
        flight = _Flight(batch, results, now, pending, write)
        if write is None and not self._flights:
            await self.apply(flight)  # nothing to wait for, nothing before it
        else:
            self._flights.append(flight)

    def _read_config(self, command: Command) -> GovernorError | None:
        """Turn a reload request into the config as read now (what the ledger records); the refusal, if any."""
        if self.reloads is None:
            return InvalidRequest("this governor was started without a config file: nothing to reload")
        try:
            self.reloads.read(command)
        except GovernorError as error:
            return error
        return None

    async def land(self, flight: _Flight) -> None:
        """The oldest flight's write completed (or ran out of time): apply and answer it, or fail it and all behind."""
        write = flight.write
        if write is not None:
            assert self.ledger is not None
            error = write.error()
            if error is not None:
                await self._failed(flight, error)  # forgets every write in flight, this one too
                return
            self.ledger.landed(write)
        await self.apply(flight)

    async def apply(self, flight: _Flight, answered: frozenset[int] = frozenset()) -> None:
        """Apply a batch's commands to the core in order and perform their effects (`answered`: the positions
        whose refusal was sent already)."""
        batch, results, now = flight.batch, flight.results, flight.now
        core = self.core
        # The ledger message that holds each written command: its records are stamped with their position there.
        written = dict(zip(flight.pending, flight.write.positions(), strict=True)) if flight.write else {}
        stamper = Stamper()
        events: list[Event] = []
        for i, command in enumerate(batch):
            if command.kind == "tick":
                self._tick_pending = False  # applied or refused: the core's periods say whether another is due
            if results[i] is not None:
                continue
            request = command.request
            try:
                results[i] = apply(core, request, now, command.trace_id, command.identity)
                if command.kind == "reload" and self.reloads is not None:
                    self.reloads.applied(command)
            except GovernorError as error:
                results[i] = error
            except Exception as error:  # a bug: answer, log with context, keep serving the others
                log.exception("internal error applying %s (trace %s)", type(request).__name__, command.trace_id)
                results[i] = Unavailable(f"internal error: {type(error).__name__}")
            caused = core.take_events()
            if caused:
                at = written.get(i)
                events += stamper.stamp(caused, *at) if at is not None else caused
        self._observe(batch, results, events)
        outbox = self.outbox
        for i, (command, result) in enumerate(zip(batch, results, strict=True)):
            if i not in answered:
                await self._answer(command, result)
        if events:
            try:
                await outbox.publish(events)
            except Exception:
                log.exception("publishing %d events failed", len(events))
        self.metrics.mailbox_depth.set(len(self.mailbox))
        # A snapshot costs time in proportion to the registry: take one at most every 2 entries per swarm.
        if self.ledger is not None and self.ledger.since_snapshot >= max(self.snapshot_every, 2 * len(self.core)):
            self._snapshot()

    async def _answer(self, command: Command, result: msgspec.Struct | GovernorError | None) -> None:
        try:
            if isinstance(result, GovernorError):
                await self.outbox.reply_error(command, result)
            elif command.reply_to and result is not None:
                await self.outbox.reply(command, result)
        except Exception:  # the outbox counts what it cannot send; anything else is a bug, never our end
            log.exception("answering %s failed (trace %s)", command.kind, command.trace_id)

    async def _failed(self, head: _Flight, failure: LedgerError) -> None:
        """A write was not acknowledged: it and every flight behind it change nothing here and are refused.

        Waits until every write in flight is settled (acknowledged, refused or out of time), so that nothing lands
        later unseen, and answers the refused changes; then, when any of them may have landed, re-reads the ledger
        so that the state follows it, before the batches' reads are answered.
        """
        assert self.ledger is not None
        ledger = self.ledger
        failed = [head, *self._flights]
        self._flights.clear()
        loop = asyncio.get_running_loop()
        for flight in failed[1:]:
            write = flight.write
            if write is not None and not write.future.done():
                await asyncio.wait([write.future], timeout=max(0.0, write.deadline - loop.time()))
        landed = any(f.write is not None and f.write.may_have_landed for f in failed)
        ledger.rewind([f.write for f in failed if f.write is not None])
        if isinstance(failure, LedgerFenced):
            log.error("ledger fenced: %s; no longer serving", failure)
            self.fenced = True
            error: GovernorError = Unavailable("this governor is not serving (another process owns the ledger); retry")
        elif isinstance(failure, LedgerUnavailable):
            if (more := self._storage_trouble()) is not None:
                log.error("ledger write refused: %s%s", failure, more)
            error = Unavailable(f"the ledger is unavailable: {failure}")
        else:  # LedgerAmbiguous, or anything unexpected: as unsure as a timeout
            if (more := self._storage_trouble()) is not None:
                log.error(
                    "ledger write not acknowledged (%r); re-reading the ledger before serving on%s", failure, more
                )
            error = Unavailable(f"the ledger did not acknowledge in time ({failure}); retry with the same event_id")
        behind = Unavailable("an earlier ledger write was not acknowledged; retry with the same event_id")
        for flight in failed:
            for i in flight.pending:
                flight.results[i] = error if flight is head else behind
            # Answered at once: a refused change applied nothing here, whatever the ledger turns out to hold, and
            # re-reading the ledger may take as long as the storage is away (a cluster without quorum).
            for i in flight.pending:
                await self._answer(flight.batch[i], flight.results[i])
        synced = not landed or (not self.fenced and await self._resync())
        self.metrics.ledger_failures.labels(type(failure).__name__).inc()
        stale = Unavailable("this governor is not serving (it lost its lease); retry")
        for flight in failed:
            if not synced:  # fenced before the ledger could be re-read: the state may lag what it holds
                flight.results[:] = [stale if r is None else r for r in flight.results]
            await self.apply(flight, answered=frozenset(flight.pending))  # reads see the state the ledger has

    async def _resync(self) -> bool:
        """After an unacknowledged write: replay whatever the ledger holds beyond what we applied, retrying until it
        can be read (True) or this actor is fenced (False: its lease ran out meanwhile)."""
        assert self.ledger is not None
        delay = 0.1
        while not self.fenced:
            self.turned = asyncio.get_running_loop().time()  # waiting for storage, not stuck
            try:
                landed = await catch_up(self.ledger, self.core, after=(0, -1))
                if landed.events:  # what a write that landed after all caused was never published
                    await self.outbox.publish(landed.events)
                return True
            except Exception as exc:
                log.warning("ledger not readable yet (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        return False

    def _snapshot(self) -> None:
        """Take a snapshot now (synchronously: the state is consistent) and store it in the background."""
        assert self.ledger is not None
        if self._snapshot_task is not None and not self._snapshot_task.done():
            return
        seq = self.ledger.seq
        data = snapshot_of(self.ledger, self.core)
        assert self._writers is not None, "snapshots are taken while run() serves"
        self._snapshot_waiting = True  # it begins by waiting for the audit trail (`_save_snapshot`)
        self._snapshot_task = self._writers.create_task(self._save_snapshot(data, seq), name="governor-snapshot")

    async def _save_snapshot(self, data: bytes, seq: int) -> None:
        assert self.ledger is not None
        try:
            stored = await self.outbox.stored(seq)
        finally:
            self._snapshot_waiting = False
        if not stored:
            # Saved, it would let the ledger before it go while a record it caused may be missing from the audit
            # trail: the next snapshot tries again, and recovery regenerates the records from the ledger.
            log.warning("snapshot at %d not stored: its audit records are not all acknowledged yet", seq)
            return
        try:
            await self.ledger.save_snapshot(data, seq)
        except Exception as exc:
            log.warning("snapshot not stored (%s): recovery replays a longer tail", exc)

    def _observe(
        self,
        batch: list[Command],
        results: list[Any],
        events: list[Event],
    ) -> None:
        metrics = self.metrics
        metrics.batch_size.observe(len(batch))
        done = time.perf_counter()
        for command, result in zip(batch, results, strict=True):
            if isinstance(result, AssignReply):
                if result.swarm_id is None:
                    metrics.assign_failed += 1
                else:
                    metrics.assigned += 1
                metrics.assignment_latency.observe((done - command.received) * 1000.0)
        for event in events:
            if isinstance(event, WitnessRecord):  # most events: checked first
                if event.operation == "budget_topped_up":
                    metrics.topups.labels("group" if "group" in event.params else "swarm").inc()
                elif event.operation == "task_over_budget":
                    metrics.tasks_over_budget.inc()
                elif event.operation == "task_completed":
                    metrics.completions.labels(event.params["outcome"]).inc()
                    metrics.task_duration.observe(event.params["duration_s"])
                elif event.operation == "task_expired":
                    metrics.expiries.inc()
            elif isinstance(event, BreakerTripped):
                metrics.trips.labels(event.reason).inc()
            elif isinstance(event, BreakerReset):
                metrics.resets.inc()
            elif isinstance(event, BudgetRefilled):
                metrics.refills.labels(event.group).inc()
            elif isinstance(event, BudgetThreshold):
                metrics.thresholds.labels("swarm" if event.group is msgspec.UNSET else "group").inc()
