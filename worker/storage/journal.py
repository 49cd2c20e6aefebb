"""The durable ledger: a JetStream stream of accepted commands, and the snapshots of the core beside it.

Write-ahead: the actor appends a batch of commands and waits for JetStream's acknowledgement *before* it applies
them and replies. Every message names the sequence it expects to follow (`Nats-Expected-Last-Sequence`), so only
one writer can ever extend the ledger: a second writer's append is refused (`LedgerFenced`), never interleaved.
Writes are pipelined (`start`): the next batch is published while earlier ones wait for their acks; the core still
applies nothing that is not acknowledged, in ledger order. The ledger keeps its own counters: what is applied
(`seq`, moved by `landed` and `read_tail`), what is written or in flight (`tail`, put back by `rewind`), and the
entries since the last snapshot (`since_snapshot`).

The state is the newest snapshot (`worker.storage.snapshots`) plus the stream's tail after it. Storage never sees
the core: `read_tail` yields the decoded commands and `load_snapshot` the stored state; `worker.service.replay`
applies them.

Reading fails safe, not dead: a ledger message that is not a batch the governor wrote (say, a reply some client
aimed at the ledger's subject), or that holds an entry of an unknown kind or a body that is not its kind's request,
is quarantined: logged, counted (`foreign`), reported (`on_foreign`) and passed over whole, every time it is read,
so the state is exactly what the other messages make (`worker.storage.entries` decodes and names the errors).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import NamedTuple

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.object_store import ObjectStore

from schemas.ledger import Configure, LedgerBatch, LedgerEntry
from schemas.requests import Request
from worker.storage.entries import (
    LedgerAmbiguous,
    LedgerError,
    LedgerFenced,
    LedgerForeign,
    LedgerGap,
    LedgerUnavailable,
    PubAck,
    decode_message,
    short_reason,
)
from worker.storage.snapshots import SnapshotStore

log = logging.getLogger("if_governor.ledger")

WRONG_LAST_SEQUENCE = (10071, 10164)  # JSStreamWrongLastSequenceErrF, JSStreamWrongLastSequenceConstantErr
RECOVER_ATTEMPTS = 3


class Message(NamedTuple):
    """One ledger message as read back: its sequence, its hash, and the commands of its entries."""

    seq: int
    digest: str
    commands: list[tuple[LedgerEntry, Request | Configure]]


class Write:
    """One batch's ledger messages in flight: `future` gives the last sequence once every message is acknowledged,
    or raises the `LedgerError` of the first that was not. The actor gives up on it at `deadline` (loop time)."""

    __slots__ = (
        "acked",
        "count",
        "deadline",
        "entries",
        "first",
        "future",
        "hashes",
        "layout",
        "published",
        "tokens",
    )

    def __init__(
        self,
        first: int,
        count: int,
        entries: int,
        future: asyncio.Future[int],
        deadline: float,
        layout: list[int] | None = None,
        hashes: list[str] | None = None,
    ) -> None:
        self.first = first  # the sequence its first message must get
        self.count = count  # messages
        self.entries = entries
        self.future = future
        self.deadline = deadline
        self.published = 0
        self.acked = 0
        self.tokens: list[str] = []
        self.layout = layout if layout is not None else [entries]
        """How many entries each of its messages holds, in order."""
        self.hashes = hashes if hashes is not None else [""] * count
        """The SHA-256 of each of its messages (the chain's links, and the `batch` of their records)."""

    def positions(self) -> list[tuple[int, str]]:
        """(sequence, hash) of the message that holds each entry, in entry order."""
        return [(self.first + j, self.hashes[j]) for j, n in enumerate(self.layout) for _ in range(n)]

    @property
    def last(self) -> int:
        return self.first + self.count - 1

    def fail(self, error: LedgerError) -> None:
        if not self.future.done():
            self.future.set_exception(error)
            self.future.exception()  # retrieved: the actor reads it from here, asyncio need not log it

    def error(self) -> LedgerError | None:
        """Why it failed; `LedgerAmbiguous` when it is still not acknowledged (the caller ran out of time)."""
        if not self.future.done():
            return LedgerAmbiguous("no acknowledgement in time")
        exc = self.future.exception()
        return exc if isinstance(exc, LedgerError) or exc is None else LedgerAmbiguous(repr(exc))

    @property
    def may_have_landed(self) -> bool:
        """Whether any of its messages may be in the stream."""
        return self.acked > 0 or isinstance(self.error(), LedgerAmbiguous)


def message_hash(data: bytes) -> str:
    """A ledger message's link in the chain: the SHA-256 of its bytes as stored, in hex."""
    return hashlib.sha256(data).hexdigest()


def stream_name(prefix: str) -> str:
    """The stream's name for a subject prefix (`governor` -> `GOVERNOR_LEDGER`)."""
    return prefix.replace(".", "_").replace("-", "_").upper() + "_LEDGER"


class Ledger(SnapshotStore):
    """Appends, snapshots and replays the governor's ledger on one NATS connection."""

    def __init__(
        self,
        nc: Client,
        *,
        prefix: str = "governor",
        replicas: int = 1,
        timeout: float = 5.0,
        max_message: int = 256 * 1024,
        trim: bool = True,
        on_foreign: Callable[[int, str], None] | None = None,
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
        self.since_snapshot = 0
        """Entries applied since the last snapshot was taken: the owner takes one when this grows large."""
        self.applied_hash = ""
        """The SHA-256 of the message at `seq` ("" before the first)."""
        self.tail_hash = ""
        """The SHA-256 of the message at `tail`: the next message's `prev`."""
        self.tail = 0
        """The last ledger sequence written or in flight: the next message must follow it."""
        self.snapshot_timeout = max(timeout, 10.0)
        """How long one attempt to read the snapshot may take."""
        self.trim = trim
        self.on_foreign = on_foreign
        """Called with (stream sequence, reason) for each message quarantined, and with (0, reason) for each snapshot
        passed over: each time one is read (a standby following, every restart)."""
        self.foreign = 0
        """How many messages and snapshots were quarantined since this ledger was made (each time read)."""
        self.snapshot_bucket = self.stream + "_SNAPSHOTS"
        self._legacy_removed = False
        self._encode = msgspec.json.Encoder().encode
        self._decode_ack = msgspec.json.Decoder(PubAck).decode
        self._waiting: dict[str, tuple[Write, int]] = {}  # reply token -> (its write, the sequence it must get)
        self._tokens = itertools.count(1)
        self._inbox = ""
        self._cut = 0
        self._ack_sub: Subscription | None = None
        self._snapshots: ObjectStore | None = None

    async def setup(self) -> None:
        """Create the stream and the snapshot store when they do not exist yet; listen for write acks."""
        if self._ack_sub is None:
            self._inbox = self.nc.new_inbox() + "."
            self._cut = len(self._inbox)
            self._ack_sub = await self.nc.subscribe(self._inbox + "*", cb=self._on_ack)
        try:
            await self._reconcile_replicas(self.stream)  # reads the stream's settings: NotFoundError when missing
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
        bucket = self.snapshot_bucket
        try:
            self._snapshots = await self.js.object_store(bucket)
            await self._reconcile_replicas("OBJ_" + bucket)
        except nats.js.errors.NotFoundError:
            self._snapshots = await self.js.create_object_store(
                bucket, storage=StorageType.FILE, replicas=self.replicas
            )

    async def attach(self) -> None:
        """Bind to the existing stream and snapshot store, creating nothing (read-only use, as `verify`):
        `nats.js.errors.NotFoundError` when either is missing."""
        await self.js.stream_info(self.stream)
        self._snapshots = await self.js.object_store(self.snapshot_bucket)

    async def _reconcile_replicas(self, stream: str) -> None:
        """Give an existing stream the configured number of replicas (a single server refuses more than one)."""
        config = (await self.js.stream_info(stream)).config
        if (config.num_replicas or 1) == self.replicas:
            return
        try:
            await self.js.update_stream(config.evolve(num_replicas=self.replicas))
            log.info("stream %s now has %d replicas (had %s)", stream, self.replicas, config.num_replicas or 1)
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
            log.warning("stream %s keeps %s replicas, not %d: %s", stream, config.num_replicas or 1, self.replicas, exc)

    # -- writing --------------------------------------------------------------------------------------------------

    def messages(self, entries: list[LedgerEntry], prev: str) -> list[tuple[bytes, int, str]]:
        """The ledger messages for these entries, each up to `max_message` bytes and chained to the one before
        (`prev`: the hash of the message they follow): (data, number of entries, hash)."""
        chunks: list[list[LedgerEntry]] = [[]]
        size = 0
        for entry in entries:
            entry_size = len(entry.body) + len(entry.trace_id) + len(entry.kind) + 32
            if chunks[-1] and size + entry_size > self.max_message:
                chunks.append([])
                size = 0
            chunks[-1].append(entry)
            size += entry_size
        out: list[tuple[bytes, int, str]] = []
        for chunk in chunks:
            data = self._encode(LedgerBatch(chunk, prev))
            prev = message_hash(data)
            out.append((data, len(chunk), prev))
        return out

    async def start(self, entries: list[LedgerEntry]) -> Write:
        """Publish entries as the next ledger messages, without waiting: the returned `Write` completes on their acks.

        Writes are pipelined: each message names the sequence it must follow (`tail`), and `tail` moves on at once,
        so the next batch can be published before this one is acknowledged. Messages leave in the order of `start`
        calls on the one connection, so JetStream sees them in that order.
        """
        loop = asyncio.get_running_loop()
        messages = self.messages(entries, self.tail_hash)
        write = Write(
            self.tail + 1,
            len(messages),
            len(entries),
            loop.create_future(),
            loop.time() + self.timeout,
            [n for _, n, _ in messages],
            [h for _, _, h in messages],
        )
        publish = self.nc.publish
        for data, _, digest in messages:
            expected = self.tail
            token = str(next(self._tokens))
            self._waiting[token] = (write, expected + 1)
            write.tokens.append(token)
            headers = {"Nats-Expected-Last-Sequence": str(expected), "Nats-Expected-Stream": self.stream}
            try:
                await publish(self.subject, data, reply=self._inbox + token, headers=headers)
            except (nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError) as exc:
                # What was buffered before may still go out: then the write is in doubt, not refused.
                error = LedgerAmbiguous if write.published else LedgerUnavailable
                write.fail(error(f"not connected: {type(exc).__name__}"))
                break
            write.published += 1
            self.tail = expected + 1
            self.tail_hash = digest
        return write

    def forget(self, write: Write) -> None:
        """Stop waiting for this write's acks (it completed, failed or ran out of time)."""
        for token in write.tokens:
            self._waiting.pop(token, None)

    def landed(self, write: Write) -> None:
        """A write was acknowledged and its entries are applied now: `seq` follows it."""
        self.forget(write)
        self.seq = write.last
        self.applied_hash = write.hashes[-1]
        self.since_snapshot += write.entries

    def rewind(self, writes: Iterable[Write]) -> None:
        """Writes that were not all acknowledged: stop waiting for them; the next write follows `seq` again (what
        landed of them is read back with `read_tail`)."""
        for write in writes:
            self.forget(write)
        self.tail = self.seq
        self.tail_hash = self.applied_hash

    def begin_at(self, seq: int, digest: str = "") -> None:
        """Serve a core that holds the ledger up to `seq` (a snapshot's sequence and the hash of the message there,
        or 0 for an empty core)."""
        self.seq = self.tail = seq
        self.applied_hash = self.tail_hash = digest
        self.since_snapshot = 0

    async def append(self, entries: list[LedgerEntry]) -> Write:
        """Write entries and wait for their acknowledgement; `seq` and `tail` follow what was acknowledged.

        Only when nothing else is in flight (before serving): the actor pipelines with `start` instead.
        """
        write = await self.start(entries)
        try:
            await asyncio.wait_for(asyncio.shield(write.future), self.timeout)
            self.landed(write)
        except TimeoutError:
            raise LedgerAmbiguous(f"no acknowledgement within {self.timeout}s") from None
        finally:
            self.rewind([write])
        return write

    async def _on_ack(self, msg: Msg) -> None:
        """JetStream's answer to one ledger message."""
        waiting = self._waiting.pop(msg.subject[self._cut :], None)
        if waiting is None:
            return
        write, seq = waiting
        if write.future.done():
            return
        headers = msg.headers
        if headers and headers.get("Status") == "503":
            write.fail(LedgerUnavailable("no JetStream stream answered for the ledger"))
            return
        try:
            ack = self._decode_ack(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            write.fail(LedgerAmbiguous(f"unreadable acknowledgement: {exc}"))
            return
        if ack.error is not None:
            if ack.error.err_code in WRONG_LAST_SEQUENCE:
                write.fail(LedgerFenced(f"the ledger is not at sequence {seq - 1}: another writer"))
            else:
                write.fail(LedgerUnavailable(f"JetStream refused the write: {ack.error.description}"))
        elif ack.duplicate or ack.seq != seq:
            # Cannot happen with the expected-sequence header; refuse to guess if it ever does.
            write.fail(LedgerAmbiguous(f"unexpected acknowledgement {ack.seq} (duplicate={ack.duplicate}) for {seq}"))
        else:
            write.acked += 1
            if write.acked == write.count:
                write.future.set_result(seq)

    # -- reading --------------------------------------------------------------------------------------------------

    async def last_sequence(self) -> int:
        info = await self.js.stream_info(self.stream)
        return int(info.state.last_seq)

    async def read_tail(self, until: int | None = None) -> AsyncIterator[Message]:
        """Every ledger message after `self.seq`, to the stream's end (or to `until`), decoded, in ledger order, for
        the caller to apply (`worker.service.replay`). Each message counts as applied once it is yielded (`seq`
        moves on); a foreign one is quarantined and yielded without commands. `LedgerGap` when the stream no longer
        holds the next message (trimmed).
        """
        target = await self.last_sequence()
        if until is not None:
            target = min(target, until)
        if target <= self.seq:
            self.tail, self.tail_hash = self.seq, self.applied_hash
            return
        sub = await self.js.subscribe(
            self.subject,
            stream=self.stream,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self.seq + 1),
        )
        try:
            while self.seq < target:
                msg = await sub.next_msg(timeout=self.timeout)
                seq = msg.metadata.sequence.stream
                if seq <= self.seq:
                    continue
                if seq != self.seq + 1:
                    raise LedgerGap(f"the ledger no longer holds entries {self.seq + 1} to {seq - 1}: trimmed")
                try:
                    commands = decode_message(msg.data)
                except LedgerForeign as foreign:
                    self._quarantine(seq, foreign.reason)
                    commands = []
                self.seq = seq
                self.applied_hash = message_hash(msg.data)
                self.since_snapshot += 1
                yield Message(seq, self.applied_hash, commands)
        finally:
            self.tail, self.tail_hash = self.seq, self.applied_hash
            await sub.unsubscribe()

    def _quarantine(self, seq: int, reason: str) -> None:
        """Log, count and report a message (or, with `seq` 0, a snapshot) that is passed over as foreign."""
        reason = short_reason(reason)
        self.foreign += 1
        if seq:
            log.warning("ledger message %d quarantined (not replayed): %s", seq, reason)
        else:
            log.warning("%s: passed over", reason)
        if self.on_foreign is not None:
            self.on_foreign(seq, reason)


async def wait_for_jetstream(ledger: Ledger, stop: asyncio.Event, *, interval: float = 0.5) -> None:
    """Retry `ledger.setup()` until JetStream answers (or `stop` is set)."""
    while not stop.is_set():
        try:
            await ledger.setup()
            return
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
            log.warning("JetStream not ready (%s); retrying", exc)
            await asyncio.sleep(interval)
