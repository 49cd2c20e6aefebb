"""The bus's effects: the replies, error replies, events and witness records the actor (and the intake, for what it
refuses) sends. Nothing here raises: a publish the connection refuses is counted and logged, never the actor's end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import msgspec
from nats.aio.client import Client
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER

from schemas.events import (
    BreakerTripped,
    Escalation,
    Event,
    Identity,
    Severity,
    WitnessRecord,
)
from schemas.replies import ErrorBody, ErrorReply
from worker.errors import GovernorError, ReplyTooLarge
from worker.ops.metrics import Metrics
from worker.service.confirmations import Confirmations
from worker.service.discovery import Discovery
from worker.service.mailbox import Command
from worker.service.positions import Group, groups, subject_of
from worker.storage.audit import stored_subject

log = logging.getLogger("if_governor.bus")

TRACE_HEADER = "X-IF-Trace-ID"
MSG_ID_HEADER = "Nats-Msg-Id"


class Effects:
    """Sends what the governor answers and announces, on the serving connection (the actor's `Outbox`)."""

    def __init__(
        self,
        nc: Client,
        metrics: Metrics,
        discovery: Discovery,
        *,
        prefix: str,
        clock: Callable[[], float],
        confirmations: Confirmations | None = None,
    ) -> None:
        self.nc = nc
        self.confirmations = confirmations
        """With a stored audit trail: the records with a position are published for JetStream's acknowledgement."""
        self._publish = nc.publish
        self.metrics = metrics
        self.discovery = discovery
        self.prefix = prefix
        self.clock = clock
        self._encode = msgspec.json.Encoder().encode

    async def reply(self, command: Command, reply: msgspec.Struct) -> None:
        """Send an ok reply (a plain publish, with no reply subject, gets none); one larger than the server's
        max_payload is answered `reply_too_large` instead. Never raises: a failed publish is counted and logged."""
        if not command.reply_to:
            return
        data = self._encode(reply)
        limit = self.nc.max_payload
        if limit and len(data) > limit:
            await self.reply_error(
                command,
                ReplyTooLarge(
                    f"the reply would be {len(data)} bytes, over the server's max_payload of {limit}: "
                    "ask for a smaller page (limit)"
                ),
            )
            return
        try:
            await self._publish(command.reply_to, data)
        except Exception as exc:
            self._failed("reply", command.reply_to, exc, command.trace_id)
            return
        self._replied(command)

    async def send(self, subject: str, data: bytes, headers: dict[str, str] | None, trace_id: str, kind: str) -> bool:
        """Publish; False (counted by kind and logged with the trace id) when the connection refused it."""
        try:
            await self._publish(subject, data, headers=headers)
            return True
        except Exception as exc:  # e.g. MaxPayloadError, a closed or draining connection: never the actor's end
            self._failed(kind, subject, exc, trace_id)
            return False

    def _failed(self, kind: str, subject: str, exc: Exception, trace_id: str) -> None:
        self.metrics.publish_failures.labels(kind).inc()
        log.error("%s to %s not sent: %r", kind, subject, exc, extra={"trace_id": trace_id})

    def _replied(self, command: Command) -> None:
        """Count a reply sent and the time from receipt to it, for $SRV.STATS."""
        self.discovery.replied(command.kind, int((time.perf_counter() - command.received) * 1e9))

    async def reply_error(self, command: Command, error: GovernorError) -> None:
        """The one place that turns an error into an error reply, counts it and witnesses it."""
        if command.reply_to:
            body = ErrorReply(error=ErrorBody(code=error.code, message=error.message), trace_id=command.trace_id)
            headers = {
                ERROR_HEADER: _header_safe(error.message),
                ERROR_CODE_HEADER: str(error.status),
                TRACE_HEADER: command.trace_id,
            }
            if await self.send(command.reply_to, self._encode(body), headers, command.trace_id, "reply"):
                self._replied(command)
        await self.refused(
            command.kind, command.subject, error.code, error.message, command.trace_id, command.identity, "INFO"
        )

    async def refused(
        self,
        kind: str,
        subject: str,
        code: str,
        message: str,
        trace_id: str,
        identity: Identity | None,
        severity: Severity,
    ) -> None:
        """Count a refusal (metrics and $SRV.STATS), log it at DEBUG and witness it (`request_rejected`)."""
        self.metrics.rejected.labels(code).inc()
        self.discovery.refused(kind, code, message)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("refused %s: %s: %s", subject, code, message, extra={"trace_id": trace_id})
        record = WitnessRecord(
            operation="request_rejected",
            params={"subject": subject, "code": code, "message": message},
            timestamp=self.clock(),
            severity=severity,
            trace_id=trace_id,
            identity=identity if identity is not None else msgspec.UNSET,
        )
        await self.send(f"{self.prefix}.witness.request_rejected", self._encode(record), None, trace_id, "event")

    async def publish(self, events: list[Event]) -> None:
        """Publish the events a batch caused, in order (a refused publish is counted and logged, never raised).
        With a stored audit trail, the records with a position are also stored, a group of them per ledger message
        and subject (`worker.service.positions.groups`), each kept until JetStream acknowledges it."""
        encode = self._encode
        prefix = self.prefix
        debug = log.isEnabledFor(logging.DEBUG)
        encoded: dict[int, bytes] = {}
        for event in events:
            data = encoded[id(event)] = encode(event)
            await self.send(f"{prefix}.{subject_of(event)}", data, None, event.trace_id, "event")
            if isinstance(event, WitnessRecord):
                if debug:  # every witness record, one line each, at DEBUG (one per request: too many for INFO)
                    log.debug("%s %s", event.operation, data.decode(), extra={"trace_id": event.trace_id})
            else:
                # Breaker transitions and escalations: one line each at INFO (WARNING for a trip).
                level = logging.WARNING if isinstance(event, (BreakerTripped, Escalation)) else logging.INFO
                log.log(level, "%s %s", type(event).__name__, data.decode(), extra={"trace_id": event.trace_id})
        if self.confirmations is not None:
            for group in groups(events):
                await self._store(group, b"[" + b",".join(encoded[id(e)] for e in group.events) + b"]")

    async def _store(self, group: Group, data: bytes) -> None:
        """Store one group of records (a JSON array) in the audit stream, for JetStream's acknowledgement."""
        assert self.confirmations is not None
        seq, index = group.first
        subject = stored_subject(self.prefix, group.subject)
        headers = {MSG_ID_HEADER: f"{seq}.{index}"}
        try:
            reply = self.confirmations.track(seq, subject, data, headers)
            await self._publish(subject, data, reply=reply, headers=headers)
        except Exception as exc:  # kept for the resend: it is stored when the connection takes it again
            self._failed("event", subject, exc, group.events[0].trace_id)

    async def stored(self, seq: int, wait_s: float | None = None) -> bool:
        """Whether every record of the ledger messages up to `seq` is stored (waiting up to `wait_s`, by default a
        few acknowledgement times)."""
        if self.confirmations is None:
            return True
        return await self.confirmations.stored(seq, 3 * self.confirmations.timeout if wait_s is None else wait_s)

    async def resend(self) -> None:
        """Publish again what the audit trail has not acknowledged in time."""
        if self.confirmations is not None and len(self.confirmations):
            await self.confirmations.resend()


def _header_safe(text: str, limit: int = 512) -> str:
    """A header value: one line, bounded."""
    return " ".join(text.split())[:limit]
