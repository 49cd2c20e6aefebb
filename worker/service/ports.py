"""What the actor needs of the world, as protocols: where its effects go, the journal it writes ahead to, and how
a reload reads the config. The production parts are the bus, `worker.storage.journal.Ledger` and the config file;
unit tests pass fakes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

import msgspec

from schemas.events import Event
from schemas.ledger import CoreState, LedgerEntry
from worker.errors import GovernorError
from worker.service.mailbox import Command
from worker.storage.journal import Message, Write


class Outbox(Protocol):
    """Where the actor sends its effects (the bus in production)."""

    async def reply(self, command: Command, reply: msgspec.Struct) -> None: ...

    async def reply_error(self, command: Command, error: GovernorError) -> None: ...

    async def publish(self, events: list[Event]) -> None: ...

    async def stored(self, seq: int) -> bool:
        """Whether every record of the ledger messages up to `seq` is stored (a snapshot there may be saved)."""
        ...

    async def resend(self) -> None:
        """Publish again what was not acknowledged in time."""
        ...


class Journal(Protocol):
    """The ledger the actor writes ahead to. It keeps its own counters: what is applied (`seq`), and how many
    entries since the last snapshot (`since_snapshot`)."""

    @property
    def seq(self) -> int: ...

    @property
    def since_snapshot(self) -> int: ...

    async def start(self, entries: list[LedgerEntry]) -> Write:
        """Publish entries as the next messages without waiting; the `Write` completes on their acks."""
        ...

    def landed(self, write: Write) -> None:
        """The write was acknowledged: its entries are applied now."""
        ...

    def rewind(self, writes: Sequence[Write]) -> None:
        """These writes were not all acknowledged: forget them; the next write follows `seq`."""
        ...

    def read_tail(self, until: int | None = None) -> AsyncIterator[Message]:
        """Every message after `seq` (to `until`), decoded, for the caller to apply; `seq` moves on with each."""
        ...

    def snapshot_bytes(self, state: CoreState) -> bytes: ...

    async def save_snapshot(self, data: bytes, seq: int) -> None: ...


class Reloads(Protocol):
    """How a `reload` command becomes the config as read (before the ledger records it), and what follows once
    the core applied it."""

    def read(self, command: Command) -> None:
        """Put the config as read into the command (its request, its body, its `note`); InvalidRequest when the
        file cannot be read or is not valid (the command then changes nothing)."""
        ...

    def applied(self, command: Command) -> None:
        """The core applied the reload: its config is the one in force from now on."""
        ...
