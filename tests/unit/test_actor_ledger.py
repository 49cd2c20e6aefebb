"""The actor's write-ahead rule with fake ledgers: nothing is applied unless the ledger acknowledged it, in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry

from schemas.ledger import CoreState, LedgerEntry
from schemas.requests import CostRequest, StatusRequest
from tests.factories import profile
from worker.core.governor import Governor
from worker.errors import GovernorError
from worker.ops.metrics import Metrics
from worker.service.actor import Actor
from worker.service.mailbox import Command, Mailbox
from worker.storage.entries import LedgerAmbiguous, LedgerFenced, LedgerUnavailable, decode_entry
from worker.storage.journal import Message, Write


class StreamLedger:
    """The ledger's counters over a list of messages (what landed, in sequence order), as `Journal` keeps them."""

    def __init__(self) -> None:
        self.seq = 0
        self.tail = 0
        self.since_snapshot = 0
        self.stream: list[list[LedgerEntry]] = []

    def landed(self, write: Write) -> None:
        self.seq = write.last
        self.since_snapshot += write.entries

    def rewind(self, writes: Sequence[Write]) -> None:
        self.tail = self.seq

    def snapshot_bytes(self, state: CoreState) -> bytes:
        raise AssertionError("no snapshot is taken in these tests")

    async def save_snapshot(self, data: bytes, seq: int) -> None:
        raise AssertionError("no snapshot is taken in these tests")

    async def read_tail(self, until: int | None = None) -> AsyncIterator[Message]:
        for message in self.stream[self.seq : until]:
            self.seq += 1
            yield Message(self.seq, "", [(entry, decode_entry(entry.kind, entry.body)) for entry in message])
        self.tail = self.seq


class FakeLedger(StreamLedger):
    """Keeps messages in a list; can fail after writing some of them, like a batch split over two messages."""

    def __init__(self, fail_after: int | None, failure: Exception) -> None:
        super().__init__()
        self.fail_after = fail_after
        self.failure = failure

    async def start(self, entries: list[LedgerEntry]) -> Write:
        loop = asyncio.get_running_loop()
        write = Write(self.tail + 1, len(entries), len(entries), loop.create_future(), loop.time() + 5.0)
        for entry in entries:  # one message per entry, to make a partial write possible
            if self.fail_after is not None and len(self.stream) >= self.fail_after:
                write.fail(self.failure)  # type: ignore[arg-type]
                return write
            self.stream.append([entry])
            self.tail = len(self.stream)
            write.acked += 1
        write.future.set_result(self.tail)
        return write


class Outbox:
    def __init__(self) -> None:
        self.replies: list[Any] = []

    async def reply(self, command: Command, reply: msgspec.Struct) -> None:
        self.replies.append(reply)

    async def reply_error(self, command: Command, error: GovernorError) -> None:
        self.replies.append(error.code)

    async def publish(self, events: list[Any]) -> None:
        return None

    async def stored(self, seq: int) -> bool:
        return True

    async def resend(self) -> None:
        return None

    async def flush(self) -> None:
        return None


def cost(event_id: str, amount: float) -> Command:
    request = CostRequest(swarm_id="a", operation="op", cost=amount, event_id=event_id)
    return Command(request, "inbox", event_id, "governor.cost", 0.0, "cost", msgspec.json.encode(request))


def one_swarm() -> Governor:
    """A core with swarm `a`, 100 USD."""
    core = Governor()
    core.register_swarm(profile("a", cost_per_hour=1.0, reputation_score=1.0, budget=100.0, model="m"), now=0.0)
    return core


def run(fail_after: int | None, failure: Exception) -> tuple[Governor, FakeLedger, Outbox]:
    core = one_swarm()
    ledger = FakeLedger(fail_after, failure)
    outbox = Outbox()
    mailbox = Mailbox(10)
    actor = Actor(core, mailbox, outbox, Metrics(CollectorRegistry()), clock=lambda: 1.0, ledger=ledger)
    for command in (cost("e1", 1.0), cost("e2", 2.0), cost("e3", 3.0)):  # one batch: all wait before the actor runs
        assert mailbox.put(command)
    mailbox.close()
    asyncio.run(actor.run())
    return core, ledger, outbox


class TestWriteAhead:
    def test_acknowledged_batch_is_applied(self) -> None:
        """When every message is acknowledged, every cost is applied and answered ok."""
        core, ledger, outbox = run(None, LedgerUnavailable("x"))
        assert core.get_budget_report() == {"a": 94.0}
        assert [r.remaining for r in outbox.replies] == [99.0, 97.0, 94.0]
        assert ledger.seq == 3

    def test_refused_batch_changes_nothing(self) -> None:
        """A write refused before anything landed: every command is unavailable, the state unchanged."""
        core, _, outbox = run(0, LedgerUnavailable("down"))
        assert core.get_budget_report() == {"a": 100.0}
        assert outbox.replies == ["unavailable"] * 3

    def test_partly_written_batch_follows_the_ledger(self) -> None:
        """A batch refused after part of it landed: the replies say unavailable, and the state follows the ledger."""
        core, ledger, outbox = run(1, LedgerUnavailable("down"))
        assert outbox.replies == ["unavailable"] * 3
        assert core.get_budget_report() == {"a": 99.0}  # e1 is in the ledger, so it is in the state
        assert ledger.seq == 1

    def test_unacknowledged_write_is_reread(self) -> None:
        """After a write in doubt, what landed is applied (a retry with the same event_id is then a duplicate)."""
        core, _, outbox = run(2, LedgerAmbiguous("timeout"))
        assert outbox.replies == ["unavailable"] * 3
        assert core.get_budget_report() == {"a": 97.0}
        assert core.track_cost("a", "op", 1.0, now=2.0, event_id="e2").duplicate is True


class ManualLedger(StreamLedger):
    """A ledger whose acknowledgements the test gives, one write at a time, in any order."""

    def __init__(self, deadline_s: float = 5.0) -> None:
        super().__init__()
        self.deadline_s = deadline_s
        self.writes: list[tuple[Write, list[LedgerEntry]]] = []
        self.started = asyncio.Event()

    async def start(self, entries: list[LedgerEntry]) -> Write:
        loop = asyncio.get_running_loop()
        write = Write(self.tail + 1, 1, len(entries), loop.create_future(), loop.time() + self.deadline_s)
        write.published = 1
        self.tail += 1
        self.writes.append((write, entries))
        self.started.set()
        return write

    def ack(self, i: int, *, land: bool = True) -> None:
        """Write i lands (at its sequence) and, unless `land` is False, is acknowledged."""
        write, entries = self.writes[i]
        assert len(self.stream) == write.first - 1, "writes land in sequence order"
        self.stream.append(entries)
        if land:
            write.acked = 1
            write.future.set_result(write.first)

    def fail(self, i: int, error: Exception) -> None:
        self.writes[i][0].fail(error)  # type: ignore[arg-type]


def status() -> Command:
    request = StatusRequest()
    return Command(request, "inbox", "s", "governor.status", 0.0, "status", b"{}")


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not reached")


class Pipeline:
    """An actor serving a mailbox with a manual ledger: commands go in one batch at a time."""

    def __init__(self, ledger: ManualLedger) -> None:
        self.core = one_swarm()
        self.ledger = ledger
        self.outbox = Outbox()
        self.mailbox = Mailbox(100)
        self.actor = Actor(
            self.core, self.mailbox, self.outbox, Metrics(CollectorRegistry()), clock=lambda: 1.0,
            ledger=ledger, max_inflight=4,
        )  # fmt: skip
        self.task = asyncio.get_running_loop().create_task(self.actor.run())

    async def send(self, *commands: Command) -> None:
        """Queue commands and wait until the actor has taken them (as one more batch)."""
        writes = len(self.ledger.writes)
        for command in commands:
            assert self.mailbox.put(command)
        if any(c.kind != "status" for c in commands):
            await until(lambda: len(self.ledger.writes) > writes)
        else:
            await until(lambda: len(self.mailbox) == 0)

    async def close(self) -> None:
        self.mailbox.close()
        await asyncio.wait_for(self.task, 5)


class TestPipelinedWrites:
    def test_later_batches_are_written_before_earlier_acks_and_applied_in_order(self) -> None:
        async def scenario() -> None:
            p = Pipeline(ManualLedger())
            await p.send(cost("e1", 1.0))
            await p.send(cost("e2", 2.0))
            await p.send(cost("e3", 3.0))
            assert [w.first for w, _ in p.ledger.writes] == [1, 2, 3]  # three writes in flight at once
            assert p.outbox.replies == [] and p.core.get_budget_report() == {"a": 100.0}
            p.ledger.ack(0)
            p.ledger.ack(1)
            await until(lambda: len(p.outbox.replies) == 2)
            assert p.core.get_budget_report() == {"a": 97.0}  # nothing unacknowledged is applied
            p.ledger.ack(2)
            await p.close()
            assert [r.remaining for r in p.outbox.replies] == [99.0, 97.0, 94.0]
            assert p.ledger.seq == 3

        asyncio.run(scenario())

    def test_a_read_waits_for_the_writes_before_it(self) -> None:
        async def scenario() -> None:
            p = Pipeline(ManualLedger())
            await p.send(cost("e1", 1.0))
            await p.send(status())
            await asyncio.sleep(0.01)
            assert p.outbox.replies == []  # the status would otherwise show a state the ledger may not keep
            p.ledger.ack(0)
            await p.close()
            assert p.outbox.replies[1].budgets == {"a": 99.0}

        asyncio.run(scenario())

    def test_a_refused_write_refuses_every_batch_behind_it_and_changes_nothing(self) -> None:
        async def scenario() -> None:
            p = Pipeline(ManualLedger())
            await p.send(cost("e1", 1.0))
            await p.send(cost("e2", 2.0))
            await p.send(cost("e3", 3.0), status())
            p.ledger.ack(0)
            p.ledger.fail(1, LedgerUnavailable("stream gone"))
            p.ledger.fail(2, LedgerFenced("wrong last sequence"))  # a consequence of write 1, not another writer
            await p.close()
            replies = p.outbox.replies
            assert replies[0].remaining == 99.0
            assert replies[1:3] == ["unavailable", "unavailable"]
            assert replies[3].budgets == {"a": 99.0}  # the read in a refused batch sees what the ledger holds
            assert p.core.get_budget_report() == {"a": 99.0}
            assert not p.actor.fenced
            assert p.ledger.seq == p.ledger.tail == 1  # the next write follows what was acknowledged

        asyncio.run(scenario())

    def test_a_write_in_doubt_is_reread_with_what_landed_behind_it(self) -> None:
        async def scenario() -> None:
            p = Pipeline(ManualLedger(deadline_s=0.05))
            await p.send(cost("e1", 1.0))
            await p.send(cost("e2", 2.0))
            p.ledger.ack(0, land=False)  # landed, its ack lost
            p.ledger.ack(1)
            await p.close()
            assert p.outbox.replies == ["unavailable", "unavailable"]
            assert p.core.get_budget_report() == {"a": 97.0}  # both landed: the state follows the ledger
            assert p.ledger.seq == p.ledger.tail == 2
            assert p.core.track_cost("a", "op", 1.0, now=2.0, event_id="e1").duplicate is True

        asyncio.run(scenario())

    def test_a_fenced_head_stops_serving(self) -> None:
        async def scenario() -> None:
            p = Pipeline(ManualLedger())
            await p.send(cost("e1", 1.0))
            p.ledger.fail(0, LedgerFenced("another writer"))
            await until(lambda: p.actor.fenced)
            assert p.mailbox.put(cost("e2", 2.0))
            await p.close()
            assert p.outbox.replies == ["unavailable", "unavailable"]
            assert p.core.get_budget_report() == {"a": 100.0}

        asyncio.run(scenario())


class UnacknowledgedAudit(Outbox):
    """An audit trail whose records are never acknowledged: `stored` waits as long as the real one would."""

    async def stored(self, seq: int) -> bool:
        await asyncio.sleep(15.0)
        return False


class SnapshotLedger(FakeLedger):
    def __init__(self) -> None:
        super().__init__(None, RuntimeError())
        self.saved: list[int] = []

    def snapshot_bytes(self, state: CoreState) -> bytes:
        return b"snapshot"

    async def save_snapshot(self, data: bytes, seq: int) -> None:
        self.saved.append(seq)


class TestStopping:
    def test_a_snapshot_waiting_for_the_audit_trail_does_not_hold_the_stop(self) -> None:
        """The stop is not held for the three acknowledgement times a background snapshot may wait for its audit
        records (nothing resends them once serving ends): that snapshot is given up, none is stored unchecked."""
        ledger = SnapshotLedger()
        mailbox = Mailbox(10)
        actor = Actor(
            one_swarm(),
            mailbox,
            UnacknowledgedAudit(),
            Metrics(CollectorRegistry()),
            clock=lambda: 1.0,
            ledger=ledger,
            snapshot_every=1,
        )
        for command in (cost("e1", 1.0), cost("e2", 1.0), cost("e3", 1.0)):  # a snapshot: 2 entries per swarm
            assert mailbox.put(command)
        mailbox.close()

        async def scenario() -> float:
            loop = asyncio.get_running_loop()
            started = loop.time()
            await asyncio.wait_for(actor.run(), timeout=5.0)
            return loop.time() - started

        assert asyncio.run(scenario()) < 1.0
        assert ledger.saved == [] and actor._snapshot_task is not None and actor._snapshot_task.cancelled()
