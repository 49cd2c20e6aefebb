"""Replaying the ledger into a core: the one place where what storage reads meets the decision core.

Storage (`worker.storage.journal`) never imports the core: it yields decoded commands and stored states. This
module applies them, in ledger order, through `worker.service.dispatch` (the same translation the actor uses live),
so a replayed command does exactly what the live one did.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

from schemas.events import Event
from worker.core.governor import Governor
from worker.service.dispatch import replay_command
from worker.service.ports import Journal
from worker.service.positions import Stamper, unstored
from worker.storage.entries import LedgerGap
from worker.storage.journal import RECOVER_ATTEMPTS, Ledger

log = logging.getLogger("if_governor.ledger")


class CaughtUp(NamedTuple):
    read: int
    """Messages read (quarantined ones too: they are passed over)."""
    events: list[Event]
    """The stamped records kept (those after `after`), in ledger order."""


async def catch_up(
    ledger: Journal, core: Governor, *, until: int | None = None, after: tuple[int, int] | None = None
) -> CaughtUp:
    """Apply every ledger message after `ledger.seq`, to the stream's end (or to `until`), to `core`.

    The records they cause are stamped with their positions and dropped (they were published live), except those
    whose group comes after `after` (the first position of the last group stored): a takeover publishes what the
    stored audit trail lacks, and a write that was not acknowledged but landed publishes what it caused.
    """
    read = 0
    kept: list[Event] = []
    stamper = Stamper()
    async for message in ledger.read_tail(until):
        for entry, command in message.commands:
            replay_command(core, command, entry.now, entry.trace_id, entry.identity)
            events = core.take_events()
            if after is not None and events and message.seq >= after[0]:
                kept += stamper.stamp(events, message.seq, message.digest)
        read += 1
    return CaughtUp(read, unstored(kept, after) if after is not None else [])


async def recover(
    ledger: Ledger,
    empty_core: Callable[[], Governor],
    from_state: Callable[..., Governor] = Governor.from_state,
    *,
    until: int | None = None,
) -> Governor:
    """The state as of the ledger's end: the latest snapshot plus the tail after it.

    A snapshot stored (and the ledger trimmed) between reading the snapshot and its tail leaves a gap: read the
    newer snapshot then.
    """
    for attempt in range(1, RECOVER_ATTEMPTS + 1):
        state = await ledger.load_snapshot()
        if state is not None:
            core = from_state(state)
            ledger.begin_at(state.seq, state.ledger_hash)
            log.info("snapshot at sequence %d: %d swarms", state.seq, len(state.swarms))
        else:
            core = empty_core()
            ledger.begin_at(0)
        try:
            replayed = (await catch_up(ledger, core, until=until)).read
        except LedgerGap as gap:
            if attempt == RECOVER_ATTEMPTS:
                raise
            log.info("%s while recovering; reading the newer snapshot", gap)
            continue
        log.info("recovered to ledger sequence %d (%d messages replayed)", ledger.seq, replayed)
        return core
    raise AssertionError("unreachable")


def snapshot_of(ledger: Journal, core: Governor) -> bytes:
    """The core's state at the ledger's current sequence, ready for `ledger.save_snapshot` (taken synchronously,
    by the core's owner, so that it is consistent)."""
    return ledger.snapshot_bytes(core.export_state(ledger.seq))
