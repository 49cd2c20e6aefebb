"""Snapshots of the core in a JetStream object store, each under its ledger sequence, never overwritten.

The two newest are kept, and (with `trim`) the ledger entries up to the older one are purged: the stream holds
about two snapshot intervals. A snapshot that cannot be read is reported (`on_foreign`, sequence 0) and passed
over for the one before it. `SnapshotStore` is the snapshot half of `worker.storage.journal.Ledger`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import zlib

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.object_store import OBJ_ALL_META_PRE_TEMPLATE, OBJ_META_PRE_TEMPLATE, OBJ_STREAM_TEMPLATE, ObjectStore

from schemas.ledger import CoreState
from worker.storage.entries import LedgerForeign, LedgerUnavailable, decode_snapshot

log = logging.getLogger("if_governor.ledger")

SNAPSHOT_PREFIX = "seq-"
LEGACY_SNAPSHOT_NAME = "latest"  # the one overwritten snapshot of earlier versions, read when no other exists
SNAPSHOT_READ_ATTEMPTS = 3


class _ObjectMeta(msgspec.Struct):
    """The description the object store keeps of an object (only the fields read here)."""

    name: str = ""
    deleted: bool = False


_decode_meta = msgspec.json.Decoder(_ObjectMeta).decode


class SnapshotStore:
    """Saving, listing and loading snapshots; the ledger provides the connection, the store and the settings."""

    js: JetStreamContext
    stream: str
    snapshot_bucket: str
    snapshot_timeout: float
    trim: bool
    since_snapshot: int
    applied_hash: str
    _snapshots: ObjectStore | None
    _legacy_removed: bool

    def _quarantine(self, seq: int, reason: str) -> None:
        raise NotImplementedError

    def snapshot_bytes(self, state: CoreState) -> bytes:
        """A state (exported by the core's owner at `self.seq`, synchronously) with the hash of the ledger message
        there, compressed for `save_snapshot`."""
        self.since_snapshot = 0
        return zlib.compress(msgspec.msgpack.encode(msgspec.structs.replace(state, ledger_hash=self.applied_hash)), 1)

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
