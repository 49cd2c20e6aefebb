"""An async client for coordinators and operators: typed results, typed exceptions per error code.

async with await GovernorClient.connect("nats://127.0.0.1:4222") as gov:
    reply = await gov.assign(["integration:sip"], task_id="t-1")
    await gov.cost(reply.swarm_id, "sip_integration", 2.5)

Coordinators that share a NATS account can read each other's replies on `_INBOX.>`. Give each its own inbox
prefix (`connect(..., inbox_prefix="_INBOX_alice")`) and let the server allow each user only its own
(`subscribe: "_INBOX_alice.>"`); the governor must then answer that prefix (`security.reply_prefixes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas.codes import WITNESS_OPERATIONS
from schemas.config import check_pool_name, pool_prefix
from schemas.endpoints import BY_NAME, BY_REQUEST
from schemas.events import EVENT_SUBJECTS, Event, WitnessRecord
from schemas.pricing import TokenUsage
from schemas.profiles import SwarmProfile
from schemas.replies import (
    AssignReply,
    CompleteReply,
    CostReply,
    FailureReply,
    GroupStatus,
    HistoryReply,
    ReloadReply,
    Reply,
    ResetReply,
    StatusReply,
    SuccessReply,
    SwarmReply,
    TopupReply,
    TripReply,
    UpdateReply,
)
from schemas.requests import (
    AssignRequest,
    CompleteRequest,
    CostRequest,
    DeregisterRequest,
    FailureRequest,
    HistoryRequest,
    RegisterRequest,
    ReloadRequest,
    Request,
    ResetRequest,
    StatusRequest,
    SuccessRequest,
    TopupRequest,
    TripRequest,
    UpdateRequest,
)
from worker import errors

R = TypeVar("R", bound=Reply)


def _error_classes() -> dict[str, type[errors.GovernorError]]:
    found: dict[str, type[errors.GovernorError]] = {}
    pending: list[type[errors.GovernorError]] = [errors.GovernorError]
    while pending:
        cls = pending.pop()
        found.setdefault(cls.code, cls)
        pending.extend(cls.__subclasses__())
    return found


ERRORS_BY_CODE = _error_classes()

_INBOX_PREFIX = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\Z")
"""Subject tokens without wildcards: nats-py appends `.<id>.<token>` to make each reply subject."""


class GovernorClient:
    """Request-reply calls to a running governor, and its event stream."""

    def __init__(
        self,
        nc: Client,
        *,
        prefix: str = "governor",
        timeout: float = 5.0,
        owns_connection: bool = False,
        retry_for: float = 0.0,
    ):
        self.nc = nc
        self.prefix = prefix
        self.timeout = timeout
        self.retry_for = retry_for
        """Seconds to keep retrying a request that got no answer (timeout, no responders) or `unavailable` /
        `overloaded`, with the same body: every changing request carries its `event_id` (or `task_id`), so a
        retry applies at most once. The README says how long a failover takes."""
        self._owns = owns_connection

    @classmethod
    async def connect(
        cls,
        servers: str | list[str],
        *,
        prefix: str = "governor",
        pool: str | None = None,
        timeout: float = 5.0,
        inbox_prefix: str | None = None,
        retry_for: float = 0.0,
        **options: Any,
    ) -> GovernorClient:
        """Connect to NATS (a URL, comma-separated URLs, or a list); raise at once when nothing answers.

        `inbox_prefix`: replies come to `<inbox_prefix>.…` instead of nats-py's `_INBOX.…`, so the server can keep
        them to this user; a prefix that is not dot-separated subject tokens raises ValueError before connecting.
        `pool`: talk to that pool's governor (`<prefix>.<pool>.*`; `worker.pools` routes tasks among several).
        `options` go to `nats.connect` (e.g. `user_credentials`, `nkeys_seed`, `token`, `tls`): see
        `worker.service.config.connect_options`. `retry_for`: see the constructor.
        """
        if pool is not None:
            check_pool_name(pool)
        if inbox_prefix is not None:
            if not _INBOX_PREFIX.search(inbox_prefix):
                raise ValueError(
                    f"inbox prefix {inbox_prefix!r}: expected subject tokens of letters, digits, `_` or `-`, "
                    "separated by dots (e.g. _INBOX_alice)"
                )
            options["inbox_prefix"] = inbox_prefix
        urls = [u.strip() for u in servers.split(",")] if isinstance(servers, str) else servers

        async def quiet(exc: Exception) -> None:  # the caller gets the exception; no log noise from nats-py
            return None

        nc = await nats.connect(
            servers=urls,
            connect_timeout=min(timeout, 2.0),
            max_reconnect_attempts=2,
            reconnect_time_wait=0.25,
            allow_reconnect=True,
            error_cb=quiet,
            **options,
        )
        prefix = pool_prefix(prefix, pool)
        return cls(nc, prefix=prefix, timeout=timeout, owns_connection=True, retry_for=retry_for)

    async def close(self) -> None:
        if self._owns and not self.nc.is_closed:
            await self.nc.drain()

    async def __aenter__(self) -> GovernorClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def call(
        self, name: str, body: dict[str, Any], reply_type: type[R] | None = None, *, trace_id: str | None = None
    ) -> R:
        """Send one request body (None values left out) to `<prefix>.<name>`; return its reply, typed as the endpoint
        table says (or as `reply_type`), or raise the GovernorError subclass its code names."""
        payload = msgspec.json.encode({k: v for k, v in body.items() if v is not None})
        return await self._request(name, payload, reply_type or BY_NAME[name].reply, trace_id)  # type: ignore[arg-type]

    async def send(self, request: Request, reply_type: type[R], *, trace_id: str | None = None) -> R:
        """Send a request Struct to its endpoint (the endpoint table names it by the request's type)."""
        endpoint = BY_REQUEST[type(request)]
        assert endpoint.reply is reply_type, f"{endpoint.name} replies {endpoint.reply.__name__}"
        return await self._request(endpoint.name, msgspec.json.encode(request), reply_type, trace_id)

    async def _request(self, name: str, payload: bytes, reply_type: type[R], trace_id: str | None) -> R:
        headers = {"X-IF-Trace-ID": trace_id} if trace_id else None
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.retry_for
        delay = 0.05
        while True:
            try:
                msg = await self.nc.request(f"{self.prefix}.{name}", payload, timeout=self.timeout, headers=headers)
                data = msgspec.json.decode(msg.data)
                if not isinstance(data, dict) or data.get("ok") is not True:
                    error = data.get("error", {}) if isinstance(data, dict) else {}
                    cls = ERRORS_BY_CODE.get(str(error.get("code")), errors.GovernorError)
                    raise cls(str(error.get("message", msg.data[:200])))
                return msgspec.convert(data, reply_type)
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError, errors.Unavailable, errors.Overloaded):
                if loop.time() + delay >= give_up:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def assign(
        self,
        required_capabilities: Sequence[str],
        *,
        task_id: str | None = None,
        max_cost: float | None = None,
        max_swarms: int | None = None,
        explain: bool = False,
        estimated_cost: float | None = None,
        trace_id: str | None = None,
        reassign: bool = False,
    ) -> AssignReply:
        """Assign a task (a retry of the same `task_id` gets the same assignment; `reassign` moves it)."""
        request = AssignRequest(
            task_id=task_id or f"task-{uuid.uuid4().hex[:12]}",
            required_capabilities=list(required_capabilities),
            max_cost=max_cost,
            explain=explain,
            estimated_cost=estimated_cost,
            reassign=reassign,
            **_given(max_swarms=max_swarms),
        )
        return await self.send(request, AssignReply, trace_id=trace_id)

    async def cost(
        self,
        swarm_id: str,
        operation: str,
        cost: float | None = None,
        *,
        usage: TokenUsage | None = None,
        model: str | None = None,
        event_id: str | None = None,
        task_id: str | None = None,
        trace_id: str | None = None,
    ) -> CostReply:
        """Report a cost in USD, or the tokens it used (`usage`, priced by the governor); the reply's `cost` is
        what was deducted."""
        request = CostRequest(
            swarm_id=swarm_id,
            operation=operation,
            cost=cost,
            usage=usage,
            model=model,
            event_id=event_id or _event_id(),
            task_id=task_id,
        )
        return await self.send(request, CostReply, trace_id=trace_id)

    async def reset(
        self, swarm_id: str, new_budget: float, *, approved_by: str, event_id: str | None = None
    ) -> ResetReply:
        request = ResetRequest(
            swarm_id=swarm_id, new_budget=new_budget, approved_by=approved_by, event_id=event_id or _event_id()
        )
        return await self.send(request, ResetReply)

    async def trip(self, swarm_id: str, reason: str, *, requested_by: str, event_id: str | None = None) -> TripReply:
        request = TripRequest(
            swarm_id=swarm_id,
            reason=reason,  # type: ignore[arg-type]  # the governor refuses a reason it does not know
            requested_by=requested_by,
            event_id=event_id or _event_id(),
        )
        return await self.send(request, TripReply)

    async def failure(
        self,
        swarm_id: str,
        *,
        task_id: str | None = None,
        error: str | None = None,
        event_id: str | None = None,
    ) -> FailureReply:
        request = FailureRequest(swarm_id=swarm_id, task_id=task_id, error=error, event_id=event_id or _event_id())
        return await self.send(request, FailureReply)

    async def success(self, swarm_id: str, *, task_id: str | None = None, event_id: str | None = None) -> SuccessReply:
        """Report a task that succeeded (closes a half-open breaker)."""
        request = SuccessRequest(swarm_id=swarm_id, task_id=task_id, event_id=event_id or _event_id())
        return await self.send(request, SuccessReply)

    async def topup(
        self,
        amount: float,
        *,
        approved_by: str,
        swarm_id: str | None = None,
        group: str | None = None,
        event_id: str | None = None,
    ) -> TopupReply:
        """Add `amount` USD to a swarm's remaining budget or to a budget group's current period (operators only);
        a tripped breaker stays tripped (`reply.tripped`, `reply.note`): a reset closes it."""
        request = TopupRequest(
            swarm_id=swarm_id, group=group, amount=amount, approved_by=approved_by, event_id=event_id or _event_id()
        )
        return await self.send(request, TopupReply)

    async def complete(
        self,
        task_id: str,
        outcome: str,
        *,
        swarm_id: str | None = None,
        cost: float | None = None,
        usage: TokenUsage | None = None,
        model: str | None = None,
        error: str | None = None,
        event_id: str | None = None,
    ) -> CompleteReply:
        """Close an assignment with its outcome (`success` or `failure`) and an optional final cost."""
        request = CompleteRequest(
            task_id=task_id,
            outcome=outcome,  # type: ignore[arg-type]  # the governor refuses an outcome it does not know
            swarm_id=swarm_id,
            cost=cost,
            usage=usage,
            model=model,
            error=error,
            event_id=event_id or _event_id(),
        )
        return await self.send(request, CompleteReply)

    async def update(
        self, swarm_id: str, *, requested_by: str, event_id: str | None = None, **fields: Any
    ) -> UpdateReply:
        """Change a swarm's profile (`reputation_score`, `cost_per_hour`, `capabilities`, `model`,
        `max_concurrent_tasks`, `budget_group`) without touching its budget, breaker or order."""
        request = UpdateRequest(
            swarm_id=swarm_id, requested_by=requested_by, event_id=event_id or _event_id(), **fields
        )
        return await self.send(request, UpdateReply)

    async def budgets(self) -> list[GroupStatus]:
        """Every budget group in its current period (the first page of `status` carries them)."""
        return list((await self.status_page(1)).groups)

    async def reload(self) -> ReloadReply:
        """Ask the governor to re-read its config file (operators only)."""
        return await self.send(ReloadRequest(), ReloadReply)

    async def register(self, profile: SwarmProfile, *, event_id: str | None = None) -> SwarmReply:
        request = RegisterRequest(**msgspec.structs.asdict(profile), event_id=event_id or _event_id())
        return await self.send(request, SwarmReply)

    async def deregister(self, swarm_id: str, *, event_id: str | None = None) -> SwarmReply:
        return await self.send(DeregisterRequest(swarm_id=swarm_id, event_id=event_id or _event_id()), SwarmReply)

    async def status_page(self, limit: int | None = None, cursor: str | None = None) -> StatusReply:
        """One page of `status` (the governor's default size when `limit` is None)."""
        return await self.send(StatusRequest(limit=limit, cursor=cursor), StatusReply)

    async def status(self, page_size: int = 1000) -> StatusReply:
        """The whole status: every page, followed and merged into one reply (`next_cursor` None)."""
        reply = await self.status_page(page_size)
        groups = list(reply.groups)  # on the first page only
        swarms, budgets, breakers, holds = (
            list(reply.swarms),
            dict(reply.budgets),
            dict(reply.breakers),
            list(reply.holds),
        )
        while reply.next_cursor is not None:
            reply = await self.status_page(page_size, reply.next_cursor)
            swarms += reply.swarms
            budgets.update(reply.budgets)
            breakers.update(reply.breakers)
            holds += reply.holds
        return msgspec.structs.replace(
            reply, swarms=swarms, budgets=budgets, breakers=breakers, holds=holds, groups=groups
        )

    async def history_page(self, limit: int | None = None, cursor: str | None = None) -> HistoryReply:
        """One page of `history`: up to `limit` of each kind older than `cursor` (None: the newest)."""
        return await self.send(HistoryRequest(limit=limit, cursor=cursor), HistoryReply)

    async def history(self, limit: int | None = None, page_size: int = 500) -> HistoryReply:
        """The `limit` most recent assignments and resets (None: all the governor keeps), newest last, following
        the pages."""
        size = min(page_size, limit) if limit is not None else page_size
        reply = await self.history_page(size)
        assignments, resets = list(reply.assignments), list(reply.resets)
        while reply.next_cursor is not None and (limit is None or min(len(assignments), len(resets)) < limit):
            reply = await self.history_page(size, reply.next_cursor)
            assignments[:0] = reply.assignments
            resets[:0] = reply.resets
        if limit is not None:
            assignments, resets = assignments[-limit:], resets[-limit:]
        return msgspec.structs.replace(reply, assignments=assignments, resets=resets, next_cursor=None)

    async def audit(
        self, *, operation: str | None = None, since: float | None = None, follow: bool = False
    ) -> AsyncGenerator[tuple[str, float, Event], None]:
        """The stored audit trail: (subject, when stored, record) of every event and witness record kept, oldest
        first, from the time `since` (Unix seconds; None: the oldest kept), of one `operation` (a witness operation
        or an event such as `breaker.tripped`; None: all decisions and events); with `follow`, then the new ones.
        Reads the governor's JetStream streams: the connection's account must reach them (see the README)."""
        from worker.storage.audit import AuditLog  # only readers of the trail need JetStream

        types: dict[str, type[Any]] = {f"{self.prefix}.{subject}": t for t, subject in EVENT_SUBJECTS.items()}
        log = AuditLog(self.nc, prefix=self.prefix)
        async with contextlib.aclosing(
            log.read(audit_subject(self.prefix, operation), since=since, follow=follow)
        ) as read:
            async for record in read:
                event_type = types.get(record.subject, WitnessRecord)
                yield record.subject, record.stored_at, msgspec.json.decode(record.body, type=event_type)

    async def events(self, *, witness: bool = False) -> AsyncIterator[tuple[str, Event]]:
        """Breaker, reset and escalation events (and witness records with `witness`) as they arrive."""
        types: dict[str, type[Any]] = {f"{self.prefix}.{subject}": t for t, subject in EVENT_SUBJECTS.items()}
        queue: asyncio.Queue[Msg] = asyncio.Queue()

        async def enqueue(msg: Msg) -> None:
            queue.put_nowait(msg)

        subs = [await self.nc.subscribe(f"{self.prefix}.events.>", cb=enqueue)]
        if witness:
            subs.append(await self.nc.subscribe(f"{self.prefix}.witness.>", cb=enqueue))
        await self.nc.flush()
        try:
            while True:
                msg = await queue.get()
                event_type = types.get(msg.subject, WitnessRecord)
                yield msg.subject, msgspec.json.decode(msg.data, type=event_type)
        finally:
            for sub in subs:
                await sub.unsubscribe()


def audit_subject(prefix: str, operation: str | None) -> str | None:
    """The stored records' subject for an operation: a witness operation (`cost_tracked`) or an event
    (`breaker.tripped`, `escalation`); None for every decision and event. ValueError names the known ones."""
    if operation is None:
        return None
    if operation in WITNESS_OPERATIONS:
        return f"{prefix}.witness.{operation}"
    events = {subject.removeprefix("events."): subject for subject in EVENT_SUBJECTS.values()}
    if operation in events:
        return f"{prefix}.{events[operation]}"
    raise ValueError(f"unknown operation {operation!r}; known: {', '.join([*WITNESS_OPERATIONS, *events])}")


def _given(**fields: Any) -> dict[str, Any]:
    """The fields given (not None): the others keep the request's defaults."""
    return {k: v for k, v in fields.items() if v is not None}


def _event_id() -> str:
    """A fresh idempotency key: every changing request the client sends carries one, so its retries apply once."""
    return uuid.uuid4().hex
