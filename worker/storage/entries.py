"""What the ledger stores, read back: the error tree of storage, and the decoding of ledger messages and snapshots.

LedgerError
├── LedgerUnavailable   the batch was certainly not written (no JetStream, stream missing, refused)
├── LedgerAmbiguous     no acknowledgement in time: the batch may or may not be in the stream
├── LedgerFenced        another writer extended the ledger: this process is no longer its owner
├── LedgerGap           a reader fell behind the trimmed part: it must start again from the snapshot
└── LedgerForeign       a message or snapshot the governor cannot replay (raised by `decode_message`)
"""

from __future__ import annotations

import zlib
from typing import Any

import msgspec

from schemas.endpoints import ENTRY_TYPES
from schemas.ledger import Configure, CoreState, LedgerBatch, LedgerEntry
from schemas.requests import Request

MAX_REASON = 200  # characters of a quarantine reason: a foreign message chooses what its error messages quote


class LedgerError(Exception):
    """The ledger could not take a batch."""


class LedgerUnavailable(LedgerError):
    """The batch was certainly not written."""


class LedgerAmbiguous(LedgerError):
    """No acknowledgement in time: the batch may or may not be in the stream."""


class LedgerFenced(LedgerError):
    """Another writer extended the ledger."""


class LedgerGap(LedgerError):
    """The entries after what was applied were trimmed (a newer snapshot holds them): recover from the snapshot."""


class LedgerForeign(LedgerError):
    """A ledger message or snapshot that the governor cannot replay: `reason` says why, in a few words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_decode_batch = msgspec.json.Decoder(LedgerBatch).decode
_decode_state = msgspec.msgpack.Decoder(CoreState).decode


_ENTRY_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {k: msgspec.json.Decoder(t) for k, t in ENTRY_TYPES.items()}


def decode_entry(kind: str, body: bytes) -> Request | Configure:
    """The command a ledger entry records: KeyError when `kind` is not one the governor writes, msgspec.DecodeError
    when the body is not that kind's request (the ledger quarantines such an entry's message instead of replaying it).
    """
    command: Request | Configure = _ENTRY_DECODERS[kind].decode(body)
    return command


def decode_message(data: bytes) -> list[tuple[LedgerEntry, Request | Configure]]:
    """A ledger message's entries, each with the command it records; `LedgerForeign` when the message is not a
    `LedgerBatch`, or when any entry's kind is unknown or its body is not that kind's request (nothing of such a
    message is replayed: every entry is decoded before any is applied)."""
    try:
        batch = _decode_batch(data)
    except msgspec.DecodeError as exc:
        raise LedgerForeign(f"not a ledger batch: {exc}") from None
    commands: list[tuple[LedgerEntry, Request | Configure]] = []
    for i, entry in enumerate(batch.entries):
        try:
            commands.append((entry, decode_entry(entry.kind, entry.body)))
        except KeyError:
            raise LedgerForeign(f"entry {i}: unknown kind {entry.kind[:40]!r}") from None
        except msgspec.DecodeError as exc:
            raise LedgerForeign(f"entry {i} ({entry.kind}): {exc}") from None
    return commands


def batch_prev(data: bytes) -> str:
    """The hash a ledger message names as the one before it ("" when it names none); `LedgerForeign` when it is
    not a ledger batch."""
    try:
        return _decode_batch(data).prev
    except msgspec.DecodeError as exc:
        raise LedgerForeign(f"not a ledger batch: {exc}") from None


def decode_snapshot(data: bytes) -> CoreState:
    """A stored snapshot's state; `LedgerForeign` when it is empty or does not decode."""
    if not data:
        raise LedgerForeign("is empty")
    try:
        return _decode_state(zlib.decompress(data))
    except (zlib.error, msgspec.DecodeError) as exc:
        raise LedgerForeign(f"does not decode: {exc}") from None


def short_reason(text: str) -> str:
    """`text` on one printable line of at most `MAX_REASON` characters: a foreign message or object name chooses
    what a reason quotes, and must not start a line of its own or hide what an operator reads."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


class AckError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class PubAck(msgspec.Struct):
    """JetStream's reply to a publish into a stream."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: AckError | None = None
