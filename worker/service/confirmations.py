"""Which stored records JetStream has acknowledged.

A record with a position is published with a reply subject for JetStream's acknowledgement and a `Nats-Msg-Id`
(`<seq>.<index>`). Until it is acknowledged it is kept here; one not acknowledged within `timeout` is published
again (the stream stores it once). A snapshot at ledger sequence S is stored only once every record up to S is
acknowledged (`stored`): recovery can then regenerate, from the ledger, whatever the audit trail lacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from worker.ops.metrics import Metrics
from worker.storage.entries import PubAck

log = logging.getLogger("if_governor.audit")


class _Unconfirmed(NamedTuple):
    seq: int
    subject: str
    data: bytes
    headers: dict[str, str]
    deadline: float


class Confirmations:
    """The records published and not yet acknowledged, by reply token, oldest first."""

    def __init__(
        self,
        nc: Client,
        publish: Callable[..., Awaitable[None]],
        metrics: Metrics,
        *,
        timeout: float = 5.0,
        limit: int = 100_000,
    ) -> None:
        self.nc = nc
        """Where the acknowledgements come (a storage connection: the serving one may hold no inbox)."""
        self.publish = publish
        """How a record is published again (the serving connection's, which publishes them first)."""
        self.metrics = metrics
        self.timeout = timeout
        self.limit = limit
        """Beyond this many unacknowledged records the oldest are given up (counted, logged): the audit store is
        not taking them, and the next takeover regenerates them from the ledger (snapshots wait for them)."""
        self._pending: dict[str, _Unconfirmed] = {}
        self._tokens = itertools.count(1)
        self._inbox = ""
        self._sub: Subscription | None = None
        self._decode = msgspec.json.Decoder(PubAck).decode
        self._acked = asyncio.Event()
        metrics.audit_pending.set_function(lambda: len(self._pending))

    async def start(self) -> None:
        self._inbox = self.nc.new_inbox() + "."
        self._sub = await self.nc.subscribe(self._inbox + "*", cb=self._on_ack)

    async def stop(self) -> None:
        """Stop listening for acknowledgements (a closed or draining connection has stopped already)."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    def __len__(self) -> int:
        return len(self._pending)

    def track(self, seq: int, subject: str, data: bytes, headers: dict[str, str]) -> str:
        """Keep a record until it is acknowledged; the reply subject to publish it with."""
        token = str(next(self._tokens))
        deadline = asyncio.get_running_loop().time() + self.timeout
        self._pending[token] = _Unconfirmed(seq, subject, data, headers, deadline)
        if len(self._pending) > self.limit:
            oldest, dropped = next(iter(self._pending.items()))
            del self._pending[oldest]
            self.metrics.audit_dropped.inc()
            log.error("audit record %s not acknowledged and given up (over %d waiting)", dropped.headers, self.limit)
        return self._inbox + token

    async def resend(self) -> None:
        """Publish again the records whose acknowledgement is overdue."""
        now = asyncio.get_running_loop().time()
        overdue: list[str] = []
        for token, record in self._pending.items():  # oldest first: deadlines grow along the order
            if record.deadline > now:
                break
            overdue.append(token)
        for token in overdue:
            record = self._pending.pop(token)
            reply = self.track(record.seq, record.subject, record.data, record.headers)
            self.metrics.audit_resent.inc()
            try:
                await self.publish(record.subject, record.data, reply=reply, headers=record.headers)
            except Exception as exc:  # counted by the next resend: it stays pending
                log.warning("audit record %s not published again: %r", record.headers, exc)

    async def stored(self, seq: int, timeout: float) -> bool:
        """Wait until every record of ledger messages up to `seq` is acknowledged (False: not within `timeout`)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout
        while any(record.seq <= seq for record in self._pending.values()):
            self._acked.clear()
            try:
                await asyncio.wait_for(self._acked.wait(), give_up - loop.time())
            except TimeoutError:
                return False
        return True

    async def _on_ack(self, msg: Msg) -> None:
        token = msg.subject[len(self._inbox) :]
        record = self._pending.get(token)
        if record is None:
            return
        headers = msg.headers
        if headers and headers.get("Status") == "503":
            return  # no stream took it: published again when its time is up
        try:
            ack = self._decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        if ack.error is not None:
            log.warning("audit record %s refused: %s", record.headers, ack.error.description)
            return
        del self._pending[token]
        self._acked.set()
