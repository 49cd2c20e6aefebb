"""The NATS side: the `governor` service's endpoints and discovery, decoding, replies and event publishing.

Each endpoint is a plain queue subscription (group `q`) whose callback decodes and validates a request, puts it in
the actor's mailbox with its reply subject, and returns: it never waits for the actor (nats-py runs one callback
at a time per subscription, so waiting would allow one request in flight per subject). The actor answers through
this module's `reply`/`reply_error`; `reply_error` is the one place that turns an error into an error reply (body
and `Nats-Service-Error*` headers), counts it and witnesses it.

The service speaks the NATS micro protocol (`$SRV.PING|INFO|STATS`, like `nats.micro`) but answers discovery
itself: `nats.micro` wraps every request in two more Python calls (about a fifth of the worker's time per request
here), and could count neither the errors the actor answers nor the time to the actor's reply.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from itertools import count
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from schemas.config import SecuritySection
from schemas.endpoints import ENDPOINTS as TABLE
from schemas.events import (
    Identity,
)
from schemas.requests import Request
from schemas.types import TRACE_ID_PATTERN, TraceId
from worker.errors import (
    Forbidden,
    InvalidBudget,
    InvalidCost,
    InvalidRequest,
    Overloaded,
)
from worker.ops.metrics import Metrics
from worker.service.confirmations import Confirmations
from worker.service.discovery import QUEUE_GROUP, VERBS, Discovery
from worker.service.dispatch import DECODERS, READ_ONLY, REQUEST_TYPES
from worker.service.effects import TRACE_HEADER, Effects
from worker.service.mailbox import Command, Mailbox

log = logging.getLogger("if_governor.bus")

MAX_TRACE_ID = 128
YIELD_EVERY = 128
"""The intake lets the event loop run other tasks after this many requests in a row."""

ENDPOINTS = REQUEST_TYPES
REQUEST_INFO_HEADER = "Nats-Request-Info"
"""Stamped by nats-server on a request that crossed a service import with `share: true`: the requester's account
and user, as the server authenticated them."""
REPLY_PREFIXES = ("_INBOX.", "_R_.")
"""Reply subjects always answered: nats clients' inboxes and the response mappings of service imports."""
#: Requests that change breakers, the registry or the config: operators only (from the endpoint table).
OPERATOR_ONLY = frozenset(e.name for e in TABLE if e.operator_only)
#: Operator-only requests a chassis account may send too, with these fields only.
CHASSIS_FIELDS = {e.name: frozenset(e.chassis_fields) for e in TABLE if e.chassis_fields}
#: Requests whose every field is optional: an empty body means `{}`.
EMPTY_BODY_OK = frozenset(e.name for e in TABLE if e.empty_body_ok)

#: A decoding error at one of these fields gets a more precise code than `invalid_request`.
_FIELD_ERRORS: dict[str, type[InvalidRequest]] = {
    "cost": InvalidCost,
    "new_budget": InvalidBudget,
    "current_budget_remaining": InvalidBudget,
}
_AT_FIELD = re.compile(r"- at `\$\.([A-Za-z_]+)`$")


def decode_error(exc: msgspec.MsgspecError | UnicodeDecodeError | RecursionError) -> InvalidRequest:
    """Translate a decoding error into ours, keeping msgspec's message (which names the field's path)."""
    if isinstance(exc, UnicodeDecodeError):  # msgspec raises it for a string that is not UTF-8
        return InvalidRequest(f"body is not valid UTF-8 (byte {exc.start})")
    if isinstance(exc, RecursionError):
        return InvalidRequest("body is nested too deeply")
    message = str(exc)
    if isinstance(exc, msgspec.ValidationError) and ", got `" not in message:  # a range error, not a type error
        match = _AT_FIELD.search(message)
        if match is not None and match.group(1) in _FIELD_ERRORS:
            return _FIELD_ERRORS[match.group(1)](message)
    return InvalidRequest(message)


class Bus:
    """The intake on one NATS connection: subscriptions, decoding and checks, commands into the mailbox; what it
    sends (replies, refusals, events) goes through `effects`."""

    def __init__(
        self,
        nc: Client,
        mailbox: Mailbox,
        metrics: Metrics,
        *,
        prefix: str = "governor",
        pool: str | None = None,
        clock: Callable[[], float] = time.time,
        security: SecuritySection | None = None,
        max_request_bytes: int = 65_536,
        pending_msgs: int = 65_536,
        pending_bytes: int = 64 * 1024 * 1024,
        confirmations: Confirmations | None = None,
    ) -> None:
        self.nc = nc
        self.mailbox = mailbox
        self.metrics = metrics
        self.prefix = prefix
        self.clock = clock
        self.discovery = Discovery(prefix, pool)
        self.effects = Effects(nc, metrics, self.discovery, prefix=prefix, clock=clock, confirmations=confirmations)
        self._subscriptions: list[Subscription] = []
        self._since_yield = 0  # requests handled since the intake last let the event loop run others
        self._encode = msgspec.json.Encoder().encode
        self._trace_prefix = os.urandom(6).hex()
        self._trace_seq = count(1)
        self.security = security or SecuritySection()
        self.max_request_bytes = max_request_bytes
        self.pending_msgs = pending_msgs
        self.pending_bytes = pending_bytes
        """Per endpoint: what nats-py may hold read but not yet handed to the handler; beyond, it drops (the
        client times out and retries) and reports a slow consumer."""
        self.reply_prefixes = (*REPLY_PREFIXES, *self.security.reply_prefixes)
        """A reply goes only to a subject that starts with one of these: an inbox or a server response mapping."""
        self._operator_accounts = frozenset(self.security.operator_accounts)
        self._chassis_accounts = frozenset(self.security.chassis_accounts)

    # -- intake -----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe the endpoints and discovery; from now on requests flow into the mailbox."""
        subscribe = self.nc.subscribe
        if self.effects.confirmations is not None:
            await self.effects.confirmations.start()
        discovery = self.discovery
        for verb, answer in zip(VERBS, (discovery.ping, discovery.info, self._stats), strict=True):
            for subject in discovery.subjects(verb):
                self._subscriptions.append(await subscribe(subject, cb=self._discovery_handler(answer)))
        for name in ENDPOINTS:
            sub = await subscribe(
                f"{self.prefix}.{name}",
                queue=QUEUE_GROUP,
                cb=self._handler(name),
                pending_msgs_limit=self.pending_msgs,
                pending_bytes_limit=self.pending_bytes,
            )
            self._subscriptions.append(sub)
        await self.nc.flush()

    async def stop(self) -> None:
        """Stop taking requests (unsubscribe); what is in the mailbox is still answered."""
        subscriptions, self._subscriptions = self._subscriptions, []
        for sub in subscriptions:
            await sub.unsubscribe()

    # -- discovery (the NATS micro protocol) --------------------------------------------------------------------

    @property
    def service_id(self) -> str:
        return self.discovery.service_id

    def _stats(self) -> msgspec.Struct:
        return self.discovery.stats(self.metrics.received)

    def _discovery_handler(self, answer: Callable[[], msgspec.Struct]) -> Callable[[Msg], Awaitable[None]]:
        async def handle(msg: Msg) -> None:
            await self._answer(msg, answer())

        return handle

    async def _answer(self, msg: Msg, body: msgspec.Struct) -> None:
        reply = msg.reply
        if not reply:
            return
        if not reply.startswith(self.reply_prefixes):
            await self.refuse_reply_subject("", msg.subject, reply)
            return
        await self.effects.send(reply, self._encode(body), None, "", "discovery")

    def new_trace_id(self) -> str:
        return f"{self._trace_prefix}{next(self._trace_seq):08x}"

    def _handler(self, name: str) -> Callable[[Msg], Any]:
        decode = DECODERS[name].decode
        empty_ok = name in EMPTY_BODY_OK
        subject = f"{self.prefix}.{name}"
        mailbox = self.mailbox
        counts = self.metrics.received
        counts[name] = 0
        perf = time.perf_counter
        reply_prefixes = self.reply_prefixes
        operator_only = name in OPERATOR_ONLY
        chassis_fields = CHASSIS_FIELDS.get(name)
        require_approver = operator_only and self.security.require_authenticated_approver
        writes = name not in READ_ONLY
        max_bytes = self.max_request_bytes
        encode = self._encode

        async def handle(msg: Msg) -> None:
            received = perf()
            counts[name] += 1
            self._since_yield += 1
            if self._since_yield >= YIELD_EVERY:
                # nats-py hands a subscription's queued messages to its callback without ever yielding while the
                # queue is not empty: under a flood, that starves the actor, the lease renewer and the reader.
                self._since_yield = 0
                await asyncio.sleep(0)
            headers = msg.headers
            header_trace = headers.get(TRACE_HEADER) if headers else None
            data = msg.data
            reply = msg.reply
            if reply and not reply.startswith(reply_prefixes):
                await self.refuse_reply_subject(name, subject, reply)
                return
            identity: Identity | None = None
            try:
                if headers and REQUEST_INFO_HEADER in headers:
                    identity = self._identity(headers[REQUEST_INFO_HEADER])
                chassis = False
                if operator_only:
                    chassis = self._check_operator(identity, headers, chassis_fields is not None)
                if header_trace is not None and not _safe_trace(header_trace):
                    raise InvalidRequest(
                        f"header {TRACE_HEADER} must be 1 to {MAX_TRACE_ID} of A-Z a-z 0-9 . _ : @ / + = -"
                    )
                if not data:
                    if not empty_ok:
                        raise InvalidRequest("empty body: expected a JSON object")
                    data = b"{}"
                elif len(data) > max_bytes:
                    raise InvalidRequest(
                        f"body is {len(data)} bytes; the limit is {max_bytes} (governor.max_request_bytes)"
                    )
                request = decode(data)
            except (
                msgspec.DecodeError,
                msgspec.ValidationError,
                UnicodeDecodeError,
                RecursionError,
                InvalidRequest,
                Forbidden,
            ) as exc:
                error = exc if isinstance(exc, (InvalidRequest, Forbidden)) else decode_error(exc)
                trace = header_trace if header_trace and _safe_trace(header_trace) else None
                if trace is None and len(data) <= max_bytes:  # an oversized body is not parsed, not even for this
                    trace = _body_trace_id(data)
                trace = trace or self.new_trace_id()
                await self.effects.reply_error(
                    Command(_NO_REQUEST, reply, trace, subject, received, name, identity=identity), error
                )
                return
            trace_id = header_trace or request.trace_id or self.new_trace_id()
            if require_approver or chassis:
                try:
                    if chassis:
                        assert chassis_fields is not None
                        self._check_chassis(request, chassis_fields)
                    if require_approver:
                        self._check_approver(request, identity)
                except Forbidden as error:
                    await self.effects.reply_error(
                        Command(request, reply, trace_id, subject, received, name, identity=identity), error
                    )
                    return
            if writes:  # the ledger records the request in its compact canonical form, never the bytes as sent
                data = encode(request)
            command = Command(request, reply, trace_id, subject, received, name, data, identity)
            if not mailbox.put(command):
                await self.effects.reply_error(command, Overloaded("the governor's mailbox is full; retry later"))

        return handle

    def _identity(self, header: str) -> Identity | None:
        """The sender as the server stamped it, where the deployment says it does; else nobody."""
        if not self.security.trust_request_info:
            return None
        try:
            info = _decode_request_info(header)
        except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):
            raise InvalidRequest(f"header {REQUEST_INFO_HEADER} does not decode") from None
        return Identity(account=info.acc, user=info.user) if info.acc else None

    def _check_operator(self, identity: Identity | None, headers: dict[str, str] | None, chassis_ok: bool) -> bool:
        """Operator-only subjects: the server-stamped account must be an operator account (when trusted), or, on a
        subject a chassis may use (`chassis_ok`), a chassis account (True: then only its fields may be sent); where
        the header is not trusted, a request that carries one claims an identity nobody checked: refused."""
        if self.security.trust_request_info:
            if identity is not None and identity.account in self._operator_accounts:
                return False
            if chassis_ok and identity is not None and identity.account in self._chassis_accounts:
                return True
            who = f"account {identity.account!r}" if identity is not None else "an unauthenticated sender"
            raise Forbidden(f"{who} may not do this: operators only")
        if headers and REQUEST_INFO_HEADER in headers:
            raise Forbidden(f"header {REQUEST_INFO_HEADER} is not trusted here (security.trust_request_info is off)")
        return False

    @staticmethod
    def _check_chassis(request: Request, allowed: frozenset[str]) -> None:
        """A chassis account's request sets none but its allowed fields (and the request's own: trace, deadline,
        who asked, the idempotency key)."""
        own = {"swarm_id", "requested_by", "event_id", "trace_id", "deadline"}
        extra = sorted(
            name
            for name in request.__struct_fields__
            if name not in own | allowed and getattr(request, name) is not None
        )
        if extra:
            raise Forbidden(f"a chassis account may change only {', '.join(sorted(allowed))}, not {', '.join(extra)}")

    def _check_approver(self, request: Request, identity: Identity | None) -> None:
        """With `require_authenticated_approver`: the claimed approver or requester is the authenticated user."""
        claimed = getattr(request, "approved_by", None) or getattr(request, "requested_by", None)
        if claimed is None:
            return
        if identity is None or claimed != identity.user:
            user = identity.user if identity is not None else None
            raise Forbidden(f"{claimed!r} is not the authenticated user ({user!r}): name yourself")

    async def refuse_reply_subject(self, kind: str, subject: str, reply: str) -> None:
        """A request whose reply subject is no inbox: not answered (the reply could land in the governor's own
        storage or event subjects, sent with its credentials), counted and witnessed."""
        message = f"reply subject {reply[:128]!r} is no inbox: not answered"
        await self.effects.refused(kind, subject, "reply_subject_refused", message, self.new_trace_id(), None, "MEDIUM")


class _NoRequest(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Stands for a request that could not be decoded."""


_NO_REQUEST = _NoRequest()


class _RequestInfo(msgspec.Struct):
    """The part of nats-server's `Nats-Request-Info` header (its `ClientInfo`) that names the sender."""

    acc: str = ""
    user: str = ""


_decode_request_info = msgspec.json.Decoder(_RequestInfo).decode


class _TraceOnly(msgspec.Struct):
    trace_id: TraceId | None = None


_safe_trace = re.compile(TRACE_ID_PATTERN).match


_decode_trace = msgspec.json.Decoder(_TraceOnly).decode


def _body_trace_id(data: bytes) -> str | None:
    """The body's `trace_id` of a request that failed validation elsewhere, when it has a usable one."""
    try:
        return _decode_trace(data).trace_id
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):
        return None
