"""The durable ledger: a JetStream stream of accepted commands, snapshots of the core, and recovery.

Write-ahead: the actor appends a batch of commands and waits for JetStream's acknowledgement *before* it applies
them and replies. Every message names the sequence it expects to follow (`Nats-Expected-Last-Sequence`), so only
one writer can ever extend the ledger: a second writer's append is refused (`LedgerFenced`), never interleaved.
Writes are pipelined (`start`): the next batch is published while earlier ones wait for their acks; the core still
applies nothing that is not acknowledged, in ledger order.

    LedgerError
    ├── LedgerUnavailable   the batch was certainly not written (no JetStream, stream missing, refused)
    ├── LedgerAmbiguous     no acknowledgement in time: the batch may or may not be in the stream
    ├── LedgerFenced        another writer extended the ledger: this process is no longer its owner
    ├── LedgerGap           a reader fell behind the trimmed part: it must start again from the snapshot
    └── LedgerForeign       a message or snapshot the governor cannot replay (raised by `decode_message`)

The state is the snapshot (a JetStream object store) plus the stream's tail after it. Storage never sees the core:
`read_tail` yields the decoded commands and `load_snapshot` the stored state; `worker.service.replay` applies them.
Snapshots are stored under their sequence and never overwritten; the two newest are kept, and the ledger entries up
to the older one are purged (`trim`): the stream holds about two snapshot intervals, and a standby that fell
further behind reloads the newest snapshot.

Reading fails safe, not dead: a ledger message that is not a batch the governor wrote (say, a reply some client
aimed at the ledger's subject), or that holds an entry of an unknown kind or a body that is not its kind's request,
is quarantined: logged, counted (`foreign`), reported (`on_foreign`) and passed over whole, every time it is read,
so the state is exactly what the other messages make. A snapshot that does not decode is reported the same way
(sequence 0) and the one before it is read instead, or the ledger from its start.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import zlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.object_store import OBJ_ALL_META_PRE_TEMPLATE, OBJ_META_PRE_TEMPLATE, OBJ_STREAM_TEMPLATE, ObjectStore

from schemas.endpoints import ENTRY_TYPES
from schemas.ledger import Configure, CoreState, LedgerBatch, LedgerEntry
from schemas.requests import Request

log = logging.getLogger("if_governor.ledger")

WRONG_LAST_SEQUENCE = (10071, 10164)  # JSStreamWrongLastSequenceErrF, JSStreamWrongLastSequenceConstantErr
SNAPSHOT_PREFIX = "seq-"
LEGACY_SNAPSHOT_NAME = "latest"  # the one overwritten snapshot of earlier versions, read when no other exists
SNAPSHOT_READ_ATTEMPTS = 3
RECOVER_ATTEMPTS = 3
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


def decode_snapshot(data: bytes) -> CoreState:
    """A stored snapshot's state; `LedgerForeign` when it is empty or does not decode."""
    if not data:
        raise LedgerForeign("is empty")
    try:
        return _decode_state(zlib.decompress(data))
    except (zlib.error, msgspec.DecodeError) as exc:
        raise LedgerForeign(f"does not decode: {exc}") from None


class _ObjectMeta(msgspec.Struct):
    """The description the object store keeps of an object (only the fields read here)."""

    name: str = ""
    deleted: bool = False


_decode_meta = msgspec.json.Decoder(_ObjectMeta).decode


class _AckError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    """JetStream's reply to a publish into a stream."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _AckError | None = None


class Write:
    """One batch's ledger messages in flight: `future` gives the last sequence once every message is acknowledged,
    or raises the `LedgerError` of the first that was not. The actor gives up on it at `deadline` (loop time)."""

    __slots__ = ("acked", "count", "deadline", "entries", "first", "future", "published", "tokens")

    def __init__(self, first: int, count: int, entries: int, future: asyncio.Future[int], deadline: float) -> None:
        self.first = first  # the sequence its first message must get
        self.count = count  # messages
        self.entries = entries
        self.future = future
        self.deadline = deadline
        self.published = 0
        self.acked = 0
        self.tokens: list[str] = []

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
        self._decode_ack = msgspec.json.Decoder(_PubAck).decode
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

    async def start(self, entries: list[LedgerEntry]) -> Write:
        """Publish entries as the next ledger messages, without waiting: the returned `Write` completes on their acks.

        Writes are pipelined: each message names the sequence it must follow (`tail`), and `tail` moves on at once,
        so the next batch can be published before this one is acknowledged. Messages leave in the order of `start`
        calls on the one connection, so JetStream sees them in that order.
        """
        loop = asyncio.get_running_loop()
        messages = self.messages(entries)
        write = Write(self.tail + 1, len(messages), len(entries), loop.create_future(), loop.time() + self.timeout)
        publish = self.nc.publish
        for data, _ in messages:
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
        return write

    def forget(self, write: Write) -> None:
        """Stop waiting for this write's acks (it completed, failed or ran out of time)."""
        for token in write.tokens:
            self._waiting.pop(token, None)

    def landed(self, write: Write) -> None:
        """A write was acknowledged and its entries are applied now: `seq` follows it."""
        self.forget(write)
        self.seq = write.last
        self.since_snapshot += write.entries

    def rewind(self, writes: Iterable[Write]) -> None:
        """Writes that were not all acknowledged: stop waiting for them; the next write follows `seq` again (what
        landed of them is read back with `read_tail`)."""
        for write in writes:
            self.forget(write)
        self.tail = self.seq

    def begin_at(self, seq: int) -> None:
        """Serve a core that holds the ledger up to `seq` (a snapshot's sequence, or 0 for an empty core)."""
        self.seq = self.tail = seq
        self.since_snapshot = 0

    async def append(self, entries: list[LedgerEntry]) -> None:
        """Write entries and wait for their acknowledgement; `seq` and `tail` follow what was acknowledged.

        Only when nothing else is in flight (before serving): the actor pipelines with `start` instead.
        """
        write = await self.start(entries)
        try:
            self.seq = await asyncio.wait_for(asyncio.shield(write.future), self.timeout)
            self.since_snapshot += write.entries
        except TimeoutError:
            raise LedgerAmbiguous(f"no acknowledgement within {self.timeout}s") from None
        finally:
            self.forget(write)
            self.tail = self.seq

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

    async def read_tail(self) -> AsyncIterator[list[tuple[LedgerEntry, Request | Configure]]]:
        """Every ledger message after `self.seq`, to the stream's end, decoded: one list of
        (entry, command) per message, in ledger order, for the caller to apply (`worker.service.replay`). Each message
        counts as applied once it is yielded (`seq` moves on); a foreign one is quarantined and yielded empty.
        `LedgerGap` when the stream no longer holds the next message (trimmed).
        """
        target = await self.last_sequence()
        if target <= self.seq:
            self.tail = self.seq
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
                self.since_snapshot += 1
                yield commands
        finally:
            self.tail = self.seq
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

    # -- snapshots ------------------------------------------------------------------------------------------------

    def snapshot_bytes(self, state: CoreState) -> bytes:
        """A state (exported by the core's owner at `self.seq`, synchronously), compressed for `save_snapshot`."""
        self.since_snapshot = 0
        return zlib.compress(msgspec.msgpack.encode(state), 1)

    async def save_snapshot(self, data: bytes, seq: int) -> None:
        """Store the snapshot taken at ledger sequence `seq` under a name of its own; keep the two newest snapshots
        and (with `trim`) purge the ledger entries up to the older of them.

        Snapshots are never overwritten: a process that lost its lease while storing one (its publishes buffered
        across a partition, say) can only add an older snapshot, which recovery passes over and the next save
        deletes. The trim point comes from what the store holds, so the newest snapshot is always followed by every
        entry after it.
        """
        assert self._snapshots is not None
        await self._snapshots.put(snapshot_name(seq), data)
        try:
            seqs = await self._stored_snapshots()
            for old in seqs[:-2]:
                await self._delete_snapshot(snapshot_name(old))
            if not self._legacy_removed:
                await self._delete_snapshot(LEGACY_SNAPSHOT_NAME)
                self._legacy_removed = True
            if self.trim and len(seqs) >= 2:
                await self.js.purge_stream(self.stream, seq=seqs[-2] + 1)  # purges the entries up to seqs[-2]
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
            log.warning("old snapshots or ledger entries not removed (%s): they are after the next snapshot", exc)

    async def _stored_snapshots(self) -> list[int]:
        """The sequences of the snapshots in the store, oldest first."""
        live, _ = await self.snapshot_objects()
        return sorted(seq for seq in map(snapshot_seq, live) if seq is not None)

    async def snapshot_objects(self) -> tuple[list[str], list[tuple[str, str]]]:
        """The names of the objects in the snapshot store, and (name, reason) of those whose description does not
        decode (the object store's own listing would stop at such a description and wait forever)."""
        stream = OBJ_STREAM_TEMPLATE.format(bucket=self.snapshot_bucket)
        metas = OBJ_ALL_META_PRE_TEMPLATE.format(bucket=self.snapshot_bucket)
        try:
            await self.js.get_last_msg(stream, metas)
        except nats.js.errors.NotFoundError:
            return [], []
        sub = await self.js.subscribe(
            metas,
            stream=stream,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT),
        )
        live: list[str] = []
        unreadable: list[tuple[str, str]] = []
        try:
            while True:
                msg = await sub.next_msg(timeout=self.snapshot_timeout)
                name = _object_name(msg.subject)
                try:
                    if not _decode_meta(msg.data).deleted:
                        live.append(name)
                except msgspec.DecodeError as exc:
                    unreadable.append((name, f"its description does not decode: {exc}"))
                if msg.metadata.num_pending == 0:
                    return live, unreadable
        finally:
            await sub.unsubscribe()

    async def _delete_snapshot(self, name: str) -> None:
        """Delete a snapshot and its deletion marker, so that the store holds only the live snapshots."""
        assert self._snapshots is not None
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self._snapshots.delete(name)
        bucket = self.snapshot_bucket
        meta = OBJ_META_PRE_TEMPLATE.format(bucket=bucket, obj=base64.urlsafe_b64encode(name.encode()).decode())
        await self.js.purge_stream(OBJ_STREAM_TEMPLATE.format(bucket=bucket), subject=meta)

    async def load_snapshot(self) -> CoreState | None:
        """The newest snapshot that can be read, or None (then the ledger is replayed from its start).

        A snapshot that does not decode (its description, its data, or data that do not match their digest) is
        reported (`on_foreign`, sequence 0) and passed over for the one before it. A snapshot deleted while it is read
        loses its chunks under the reader (the object store's `get` would then wait forever): each attempt is
        bounded, and the next one lists again; one still listed that times out a second time is broken, not deleted,
        and is passed over as well.
        """
        passed_over: set[str] = set()
        timed_out: set[str] = set()
        attempt = 0
        while True:
            names = await self._readable_snapshots(passed_over)
            if not names:
                return None
            name = names[0]
            try:
                return await self.read_snapshot(name)
            except LedgerForeign as foreign:
                passed_over.add(name)
                self._quarantine(0, f"snapshot {name} {foreign.reason}")
                continue
            except nats.js.errors.ObjectNotFoundError:
                log.info("snapshot %s deleted before it was read (attempt %d); listing again", name, attempt + 1)
            except TimeoutError:
                if name in timed_out:
                    passed_over.add(name)
                    self._quarantine(0, f"snapshot {name} could not be read in {self.snapshot_timeout:g}s, twice")
                    continue
                timed_out.add(name)
                log.warning(
                    "snapshot %s not read within %.1fs (attempt %d of %d): deleted while being read?",
                    name,
                    self.snapshot_timeout,
                    attempt + 1,
                    SNAPSHOT_READ_ATTEMPTS,
                )
            attempt += 1
            if attempt == SNAPSHOT_READ_ATTEMPTS:
                raise LedgerUnavailable(f"no snapshot could be read in {SNAPSHOT_READ_ATTEMPTS} attempts")

    async def _readable_snapshots(self, passed_over: set[str]) -> list[str]:
        """The snapshots to try, newest first (the `latest` of earlier versions last), except those passed over; a
        description that does not decode is reported and passed over here."""
        live, unreadable = await self.snapshot_objects()
        for name, reason in unreadable:
            if name not in passed_over:
                passed_over.add(name)
                self._quarantine(0, f"snapshot {name}: {reason}")
        seqs = sorted(seq for seq in map(snapshot_seq, live) if seq is not None)
        names = [snapshot_name(seq) for seq in reversed(seqs)]
        if LEGACY_SNAPSHOT_NAME in live:
            names.append(LEGACY_SNAPSHOT_NAME)
        return [name for name in names if name not in passed_over]

    async def read_snapshot(self, name: str) -> CoreState:
        """One stored snapshot's state, read within `snapshot_timeout`: `LedgerForeign` when it does not decode,
        `ObjectNotFoundError` when it is gone, TimeoutError when it was deleted while being read."""
        assert self._snapshots is not None
        try:
            result = await asyncio.wait_for(self._snapshots.get(name), self.snapshot_timeout)
        except nats.js.errors.BadObjectMetaError:
            raise LedgerForeign("has a description that does not decode") from None
        except nats.js.errors.DigestMismatchError:
            raise LedgerForeign("does not match its digest") from None
        except (ValueError, TypeError, AttributeError) as exc:  # what nats-py raises on a description it did not write
            raise LedgerForeign(f"has a description the object store did not write ({type(exc).__name__})") from None
        return decode_snapshot(result.data or b"")


def snapshot_name(seq: int) -> str:
    """A snapshot's object name: its ledger sequence, zero-padded so that names sort as sequences do."""
    return f"{SNAPSHOT_PREFIX}{seq:020d}"


def short_reason(text: str) -> str:
    """`text` on one printable line of at most `MAX_REASON` characters: a foreign message or object name chooses
    what a reason quotes, and must not start a line of its own or hide what an operator reads."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def snapshot_seq(name: str) -> int | None:
    """The ledger sequence a snapshot's object name gives, or None when it is no such name."""
    digits = name[len(SNAPSHOT_PREFIX) :]
    return int(digits) if name.startswith(SNAPSHOT_PREFIX) and digits.isdigit() and digits.isascii() else None


def _object_name(meta_subject: str) -> str:
    """The object name an object store's description subject (`$O.<bucket>.M.<base64 name>`) encodes."""
    token = meta_subject.rsplit(".", 1)[-1]
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return token


async def wait_for_jetstream(ledger: Ledger, stop: asyncio.Event, *, interval: float = 0.5) -> None:
    """Retry `ledger.setup()` until JetStream answers (or `stop` is set)."""
    while not stop.is_set():
        try:
            await ledger.setup()
            return
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
            log.warning("JetStream not ready (%s); retrying", exc)
            await asyncio.sleep(interval)
