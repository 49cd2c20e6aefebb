"""The stored audit trail: every event and witness record in JetStream, for readers that were not listening.

Two streams, created and reconciled by the governor like the ledger (replicas as the ledger's):

- `<PREFIX>_AUDIT`: every event and every witness record of a decision, each with its position in the ledger
  (`position`: the ledger message and its hash, and its place among that message's records). They are stored in
  groups, one message per ledger message and subject (a JSON array, on `<prefix>.audit.<the records' subject>`),
  published with `Nats-Msg-Id: <seq>.<index of the first>`: a group published again after a crash is stored
  once. Groups are stored in ledger order, so the last one says how far the trail goes (`stored_position`).
- `<PREFIX>_REFUSALS`: the witness records of refused requests and quarantined ledger messages (no ledger entry
  caused them), kept apart with a smaller size limit: a flood of bad requests cannot push the decisions out.

Retention is by age and size (`audit:` in the config); the oldest records go first.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import AsyncGenerator

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, DiscardPolicy, StorageType, StreamConfig

from schemas.codes import UNPOSITIONED_OPERATIONS
from schemas.config import AuditSection
from schemas.events import Position

log = logging.getLogger("if_governor.audit")

#: Nothing stored yet: every record comes after this position.
NOTHING = (0, -1)
DUPLICATE_WINDOW_S = 120.0


def stream_names(prefix: str) -> tuple[str, str]:
    """The audit and refusal streams' names for a subject prefix (`governor` -> `GOVERNOR_AUDIT`, ...)."""
    base = prefix.replace(".", "_").replace("-", "_").upper()
    return base + "_AUDIT", base + "_REFUSALS"


def stored_subject(prefix: str, subject: str) -> str:
    """Where the groups of records on `<prefix>.<subject>` are stored: `<prefix>.audit.<subject>`
    (`governor.audit.witness.cost_tracked`, `governor.audit.events.breaker.tripped`; `>`: all of them)."""
    return f"{prefix}.audit.{subject}"


def audit_subjects(prefix: str) -> list[str]:
    """The subjects of the stored groups of records."""
    return [stored_subject(prefix, ">")]


class StoredRecord(msgspec.Struct, frozen=True):
    """One stored record as read back: its subject, when the stream stored it, and its body (JSON)."""

    subject: str
    stored_at: float
    body: msgspec.Raw


class _Positioned(msgspec.Struct):
    position: Position | None = None


_decode_group = msgspec.json.Decoder(list[_Positioned]).decode
_split_group = msgspec.json.Decoder(list[msgspec.Raw]).decode


class AuditLog:
    """The two audit streams on one (storage) connection."""

    def __init__(
        self,
        nc: Client,
        *,
        prefix: str = "governor",
        replicas: int = 1,
        config: AuditSection | None = None,
        timeout: float = 10.0,
    ) -> None:
        """`timeout`: seconds a JetStream request waits (the governor gives its ledger's, so that a request lost
        while a cluster elects leaders delays it no longer than a ledger read)."""
        self.js: JetStreamContext = nc.jetstream(timeout=timeout)
        self.prefix = prefix
        self.replicas = replicas
        self.config = config or AuditSection()
        self.stream, self.refusals = stream_names(prefix)

    async def setup(self) -> None:
        """Create the streams, or bring an existing one's subjects, limits and replicas to the config; and the
        readers' durable consumers that do not exist yet."""
        day = 86400.0
        wanted = [
            StreamConfig(
                name=self.stream,
                subjects=audit_subjects(self.prefix),
                storage=StorageType.FILE,
                num_replicas=self.replicas,
                max_age=self.config.max_age_days * day,
                max_bytes=self.config.max_bytes,
                discard=DiscardPolicy.OLD,
                duplicate_window=DUPLICATE_WINDOW_S,
            ),
            StreamConfig(
                name=self.refusals,
                subjects=[f"{self.prefix}.witness.{op}" for op in UNPOSITIONED_OPERATIONS],
                storage=StorageType.FILE,
                num_replicas=self.replicas,
                max_age=self.config.max_age_days * day,
                max_bytes=self.config.refusals_max_bytes,
                discard=DiscardPolicy.OLD,
            ),
        ]
        for config in wanted:
            await self._reconcile(config)
        for reader in self.config.readers:
            try:
                await self.js.consumer_info(self.stream, reader)
            except nats.js.errors.NotFoundError:
                await self.js.add_consumer(
                    self.stream,
                    ConsumerConfig(
                        durable_name=reader,
                        deliver_policy=DeliverPolicy.ALL,
                        ack_policy=AckPolicy.EXPLICIT,
                        filter_subject=f"{self.prefix}.audit.>",
                    ),
                )

    async def _reconcile(self, config: StreamConfig) -> None:
        """Create a stream, or bring an existing one's subjects, limits and replicas to `config`."""
        try:
            current = (await self.js.stream_info(config.name or "")).config
        except nats.js.errors.NotFoundError:
            await self.js.add_stream(config)
            return
        if (
            current.subjects != config.subjects
            or current.max_age != config.max_age
            or current.max_bytes != config.max_bytes
            or (current.num_replicas or 1) != config.num_replicas
        ):
            try:
                await self.js.update_stream(config)
                log.info("stream %s reconciled with the config", config.name)
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
                log.warning("stream %s keeps its settings: %s", config.name, exc)

    async def stored_position(self) -> tuple[int, int]:
        """The position (ledger sequence, index) of the first record of the last group stored; NOTHING when none
        is. Groups are stored in that order: every group up to it is stored."""
        last = (await self.js.stream_info(self.stream)).state.last_seq
        if not last:
            return NOTHING
        try:
            message = await self.js.get_msg(self.stream, last)
        except nats.js.errors.NotFoundError:  # removed by retention meanwhile: the stream is empty
            return NOTHING
        group = _decode_group(message.data or b"[]")
        position = group[0].position if group else None
        return (position.seq, position.index) if position is not None else NOTHING

    async def read(
        self, subject: str | None = None, *, since: float | None = None, follow: bool = False, wait_s: float = 5.0
    ) -> AsyncGenerator[StoredRecord, None]:
        """The stored records on `subject` (a record's subject, wildcards allowed: `<prefix>.witness.cost_tracked`;
        default: every decision and event), oldest first, from the time `since` (Unix seconds; None: the oldest
        kept), to the last one stored; with `follow`, then the new ones as they are stored."""
        subject = subject or f"{self.prefix}.>"
        refused = subject.rsplit(".", 1)[-1] in UNPOSITIONED_OPERATIONS
        stream = self.refusals if refused else self.stream
        if not refused:
            subject = stored_subject(self.prefix, subject.removeprefix(self.prefix + "."))
        if not follow and not (await self.js.stream_info(stream)).state.messages:
            return
        config = (
            ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_TIME,
                opt_start_time=datetime.datetime.fromtimestamp(since, datetime.UTC),
            )
            if since is not None
            else ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        )
        cut = len(stored_subject(self.prefix, ""))  # what `<prefix>.audit.<subject>` has before `<subject>`
        sub = await self.js.subscribe(subject, stream=stream, ordered_consumer=True, config=config)
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=wait_s if not follow else 3600.0)
                except (nats.errors.TimeoutError, TimeoutError):
                    if follow:
                        continue
                    return  # nothing on this subject after `since`
                meta = msg.metadata
                at = meta.timestamp.timestamp()
                if refused:
                    yield StoredRecord(msg.subject, at, msgspec.Raw(msg.data))
                else:
                    record_subject = f"{self.prefix}.{msg.subject[cut:]}"
                    for body in _split_group(msg.data):
                        yield StoredRecord(record_subject, at, body)
                if not follow and meta.num_pending == 0:
                    return
        finally:
            await sub.unsubscribe()
