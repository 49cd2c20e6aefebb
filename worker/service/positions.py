"""Each record a ledger message causes gets its position: the message's sequence and hash, and its place among
that message's records. The actor stamps what it applies live and replay what it reads back, the same way, so a
record published again after a crash is the same record (and `<seq>.<index>` stores it once)."""

from __future__ import annotations

import msgspec

from schemas.events import Event, Position


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


def is_after(event: Event, position: tuple[int, int]) -> bool:
    """Whether a stamped record comes after `position` (seq, index)."""
    at = event.position
    return isinstance(at, Position) and (at.seq, at.index) > position
