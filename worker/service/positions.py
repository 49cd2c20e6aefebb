"""Each record a ledger message causes gets its position: the message's sequence and hash, and its place among
that message's records. The actor stamps what it applies live and replay what it reads back, the same way, so a
record published again after a crash is the same record.

The audit trail stores a ledger message's records in groups, one stored message per subject (`groups`), in the
order of their first record: one JetStream write per group instead of one per record, and a group published
again (`Nats-Msg-Id: <seq>.<index of its first record>`) is stored once.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from schemas.events import EVENT_SUBJECTS, Event, Position, WitnessRecord


class Stamper:
    """Numbers the records of consecutive ledger messages."""

    __slots__ = ("_index", "_seq")

    def __init__(self) -> None:
        self._seq = 0
        self._index = 0

    def stamp(self, events: list[Event], seq: int, digest: str) -> list[Event]:
        """The records of ledger message `seq` (hash `digest`), numbered on from those of `seq` stamped before."""
        if seq != self._seq:
            self._seq, self._index = seq, 0
        start = self._index
        self._index += len(events)
        return [
            msgspec.structs.replace(event, position=Position(seq=seq, index=start + n, batch=digest))
            for n, event in enumerate(events)
        ]


def subject_of(event: Event) -> str:
    """A record's subject under the prefix: `events.breaker.tripped`, `witness.cost_tracked`, ..."""
    if isinstance(event, WitnessRecord):
        return "witness." + event.operation
    return EVENT_SUBJECTS[type(event)]


class Group(NamedTuple):
    """The records of one ledger message on one subject, stored as one message."""

    subject: str
    first: tuple[int, int]
    """The position (sequence, index) of its first record: its place in the trail, and its `Nats-Msg-Id`."""
    events: list[Event]


def groups(events: list[Event]) -> list[Group]:
    """The stamped records in groups by ledger message and subject, in the order of their first records (the
    others, without a position, are left out)."""
    found: dict[tuple[int, str], Group] = {}
    for event in events:
        at = event.position
        if not isinstance(at, Position):
            continue
        key = (at.seq, subject_of(event))
        group = found.get(key)
        if group is None:
            found[key] = Group(key[1], (at.seq, at.index), [event])
        else:
            group.events.append(event)
    return sorted(found.values(), key=lambda g: g.first)


def unstored(events: list[Event], stored: tuple[int, int]) -> list[Event]:
    """The stamped records whose group comes after the last group stored (`stored`: its first position)."""
    return [event for group in groups(events) if group.first > stored for event in group.events]
