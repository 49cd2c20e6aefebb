"""The durable ledger: a JetStream stream of accepted commands, snapshots of the core, and recovery.

Write-ahead: the actor appends a batch of commands and waits for JetStream's acknowledgement *before* it applies
them and replies. Every append names the sequence it expects to follow (`Nats-Expected-Last-Sequence`), so only
one writer can ever extend the ledger: a second writer's append is refused (`LedgerFenced`), never interleaved.

    LedgerError
    ├── LedgerUnavailable   the batch was certainly not written (no JetStream, stream missing, refused)
    ├── LedgerAmbiguous     no acknowledgement in time: the batch may or may not be in the stream
    └── LedgerFenced        another writer extended the ledger: this process is no longer its owner

The state is the snapshot (a JetStream object store) plus the stream's tail after it; `catch_up` replays the tail.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Callable

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.object_store import ObjectStore

from schemas.ledger import CoreState, LedgerBatch, LedgerEntry
from worker.core import Governor
from worker.dispatch import replay

log = logging.getLogger("if_governor.ledger")

WRONG_LAST_SEQUENCE = (10071, 10164)  # JSStreamWrongLastSequenceErrF, JSStreamWrongLastSequenceConstantErr
SNAPSHOT_NAME = "latest"


class LedgerError(Exception):
    """The ledger could not take a batch."""


class LedgerUnavailable(LedgerError):
    """The batch was certainly not written."""


class LedgerAmbiguous(LedgerError):
    """No acknowledgement in time: the batch may or may not be in the stream."""


class LedgerFenced(LedgerError):
    """Another writer extended the ledger."""


def stream_name(prefix: str) -> str:
    """The stream's name for a subject prefix (`governor` -> `GOVERNOR_LEDGER`)."""
    return prefix.replace(".", "_").replace("-", "_").upper() + "_LEDGER"


class Ledger:
    """Appends, snapshots and replays the governor's ledger on one NATS connection."""

    def __init__(
        self,
        nc: Client,
        *,
        prefix: str = "governor",
        replicas: int = 1,
        timeout: float = 5.0,
        max_message: int = 256 * 1024,
    ) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=timeout)
        self.subject = f"{prefix}.ledger"
        self.stream = stream_name(prefix)
        self.replicas = replicas
        self.timeout = timeout
        self.max_message = max_message
        self.seq = 0
        """The last ledger sequence applied to the core this ledger serves."""
        self.entries_since_snapshot = 0
        self._encode = msgspec.json.Encoder().encode
        self._decode_batch = msgspec.json.Decoder(LedgerBatch).decode
        self._snapshots: ObjectStore | None = None

    async def setup(self) -> None:
        """Create the stream and the snapshot store when they do not exist yet."""
        try:
            await self.js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await self.js.add_stream(
                StreamConfig(
                    name=self.stream,
                    subjects=[self.subject],
                    storage=StorageType.FILE,
                    num_replicas=self.replicas,
                    duplicate_window=120.0,
                    max_msg_size=self.max_message + 4096,
                )
            )
        bucket = self.stream + "_SNAPSHOTS"
        try:
            self._snapshots = await self.js.object_store(bucket)
        except nats.js.errors.NotFoundError:
            self._snapshots = await self.js.create_object_store(
                bucket, storage=StorageType.FILE, replicas=self.replicas
            )

    # -- writing --------------------------------------------------------------------------------------------------

    def messages(self, entries: list[LedgerEntry]) -> list[tuple[bytes, int]]:
        """The ledger messages for these entries, each up to `max_message` bytes: (data, number of entries)."""
        out: list[tuple[bytes, int]] = []
        chunk: list[LedgerEntry] = []
        size = 0
        for entry in entries:
            entry_size = len(entry.body) + len(entry.trace_id) + len(entry.kind) + 32
            if chunk and size + entry_size > self.max_message:
                out.append((self._encode(LedgerBatch(chunk)), len(chunk)))
                chunk, size = [], 0
            chunk.append(entry)
            size += entry_size
        if chunk:
            out.append((self._encode(LedgerBatch(chunk)), len(chunk)))
        return out

    async def append(self, entries: list[LedgerEntry]) -> None:
        """Write entries and wait for each acknowledgement; `seq` follows what was acknowledged."""
        for data, count in self.messages(entries):
            self.seq = await self.write(data, self.seq)
            self.entries_since_snapshot += count

    async def write(self, data: bytes, expected: int) -> int:
        """Append one message that must follow sequence `expected`; return its sequence once acknowledged."""
        headers = {"Nats-Expected-Last-Sequence": str(expected)}
        try:
            ack = await self.js.publish(self.subject, data, timeout=self.timeout, stream=self.stream, headers=headers)
        except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError) as exc:
            raise LedgerUnavailable("no JetStream stream answered for the ledger") from exc
        except nats.js.errors.APIError as exc:
            if exc.err_code in WRONG_LAST_SEQUENCE:
                raise LedgerFenced(f"the ledger is not at sequence {expected}: another writer") from exc
            raise LedgerUnavailable(f"JetStream refused the write: {exc.description}") from exc
        except (nats.errors.TimeoutError, TimeoutError) as exc:
            raise LedgerAmbiguous(f"no acknowledgement within {self.timeout}s") from exc
        except (nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError) as exc:
            raise LedgerUnavailable(f"not connected: {type(exc).__name__}") from exc
        if ack.duplicate or ack.seq != expected + 1:
            # Cannot happen with the expected-sequence header; refuse to guess if it ever does.
            raise LedgerAmbiguous(f"unexpected acknowledgement {ack.seq} (duplicate={ack.duplicate}) after {expected}")
        return int(ack.seq)

    # -- reading --------------------------------------------------------------------------------------------------

    async def last_sequence(self) -> int:
        info = await self.js.stream_info(self.stream)
        return int(info.state.last_seq)

    async def catch_up(self, core: Governor, *, until: int | None = None, keep_events: bool = False) -> int:
        """Replay every ledger message after `self.seq` (up to `until`, default: the stream's end) into `core`.

        Returns how many messages were replayed. Their events are dropped (history published them), unless
        `keep_events`: after a write that was not acknowledged but landed, they were never published.
        """
        target = await self.last_sequence() if until is None else until
        if target <= self.seq:
            return 0
        sub = await self.js.subscribe(
            self.subject,
            stream=self.stream,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self.seq + 1),
        )
        replayed = 0
        try:
            while self.seq < target:
                msg = await sub.next_msg(timeout=self.timeout)
                seq = msg.metadata.sequence.stream
                if seq <= self.seq:
                    continue
                for entry in self._decode_batch(msg.data).entries:
                    replay(core, entry.kind, entry.body, entry.now, entry.trace_id)
                if not keep_events:
                    core.take_events()  # history already published them
                self.seq = seq
                self.entries_since_snapshot += 1
                replayed += 1
        finally:
            await sub.unsubscribe()
        return replayed

    async def recover(
        self, empty_core: Callable[[], Governor], from_state: Callable[[CoreState], Governor] = Governor.from_state
    ) -> Governor:
        """The state as of the ledger's end: the latest snapshot plus the tail after it."""
        core: Governor | None = None
        state = await self.load_snapshot()
        if state is not None:
            core = from_state(state)
            self.seq = state.seq
            log.info("snapshot at sequence %d: %d swarms", state.seq, len(state.swarms))
        else:
            core = empty_core()
            self.seq = 0
        replayed = await self.catch_up(core)
        log.info("recovered to ledger sequence %d (%d messages replayed)", self.seq, replayed)
        self.entries_since_snapshot = replayed
        return core

    # -- snapshots ------------------------------------------------------------------------------------------------

    def snapshot_bytes(self, core: Governor) -> bytes:
        """The core's state at the current sequence, compressed (computed by the core's owner, synchronously)."""
        self.entries_since_snapshot = 0
        return zlib.compress(msgspec.msgpack.encode(core.export_state(self.seq)), 1)

    async def save_snapshot(self, data: bytes) -> None:
        assert self._snapshots is not None
        await self._snapshots.put(SNAPSHOT_NAME, data)

    async def load_snapshot(self) -> CoreState | None:
        assert self._snapshots is not None
        try:
            result = await self._snapshots.get(SNAPSHOT_NAME)
        except nats.js.errors.ObjectNotFoundError:
            return None
        if not result.data:
            return None
        return msgspec.msgpack.decode(zlib.decompress(result.data), type=CoreState)


async def wait_for_jetstream(ledger: Ledger, stop: asyncio.Event, *, interval: float = 0.5) -> None:
    """Retry `ledger.setup()` until JetStream answers (or `stop` is set)."""
    while not stop.is_set():
        try:
            await ledger.setup()
            return
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
            log.warning("JetStream not ready (%s); retrying", exc)
            await asyncio.sleep(interval)
