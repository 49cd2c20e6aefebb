"""The actor's write-ahead rule with a fake ledger: nothing is applied unless the ledger acknowledged it."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry

from schemas.ledger import LedgerEntry
from schemas.profiles import SwarmProfile
from schemas.requests import CostRequest
from worker.actor import Actor, Command, Mailbox
from worker.core import Governor
from worker.dispatch import replay
from worker.errors import GovernorError
from worker.ledger import LedgerAmbiguous, LedgerUnavailable
from worker.metrics import Metrics


class FakeLedger:
    """Keeps messages in a list; can fail after writing some of them, like a batch split over two messages."""

    def __init__(self, fail_after: int | None, failure: Exception) -> None:
        self.seq = 0
        self.entries_since_snapshot = 0
        self.stream: list[list[LedgerEntry]] = []
        self.fail_after = fail_after
        self.failure = failure

    async def append(self, entries: list[LedgerEntry]) -> None:
        for entry in entries:  # one message per entry, to make a partial write possible
            if self.fail_after is not None and len(self.stream) >= self.fail_after:
                raise self.failure
            self.stream.append([entry])
            self.seq = len(self.stream)

    async def catch_up(self, core: Governor, *, keep_events: bool = False) -> int:
        replayed = 0
        for message in self.stream[self.seq :]:
            for entry in message:
                replay(core, entry.kind, entry.body, entry.now, entry.trace_id)
            replayed += 1
        self.seq = len(self.stream)
        if not keep_events:
            core.take_events()
        return replayed


class Outbox:
    def __init__(self) -> None:
        self.replies: list[Any] = []

    async def reply(self, command: Command, reply: msgspec.Struct) -> None:
        self.replies.append(reply)

    async def reply_error(self, command: Command, error: GovernorError) -> None:
        self.replies.append(error.code)

    async def publish(self, events: list[Any]) -> None:
        return None

    async def flush(self) -> None:
        return None


def cost(event_id: str, amount: float) -> Command:
    request = CostRequest(swarm_id="a", operation="op", cost=amount, event_id=event_id)
    return Command(request, "inbox", event_id, "governor.cost", 0.0, "cost", msgspec.json.encode(request))


def run(fail_after: int | None, failure: Exception) -> tuple[Governor, FakeLedger, Outbox]:
    core = Governor()
    core.register_swarm(
        SwarmProfile(
            swarm_id="a", capabilities=["integration:sip"], cost_per_hour=1.0, reputation_score=1.0,
            current_budget_remaining=100.0, model="m",
        ),
        now=0.0,
    )  # fmt: skip
    ledger = FakeLedger(fail_after, failure)
    outbox = Outbox()
    actor = Actor(core, Mailbox(10), outbox, Metrics(CollectorRegistry()), clock=lambda: 1.0, ledger=ledger)  # type: ignore[arg-type]
    asyncio.run(actor.process([cost("e1", 1.0), cost("e2", 2.0), cost("e3", 3.0)]))
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
