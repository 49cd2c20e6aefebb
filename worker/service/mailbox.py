"""The actor's mailbox: a bounded FIFO of decoded commands, filled by the bus's handlers without waiting and
emptied by the one actor task, in batches."""

from __future__ import annotations

import asyncio
from collections import deque

from schemas.events import Identity
from schemas.requests import Request


class Command:
    """A decoded request waiting for the actor, with what is needed to answer it and to write it to the ledger."""

    __slots__ = ("identity", "kind", "note", "raw", "received", "reply_to", "request", "subject", "trace_id")

    def __init__(
        self,
        request: Request,
        reply_to: str,
        trace_id: str,
        subject: str,
        received: float,
        kind: str = "",
        raw: bytes = b"{}",
        identity: Identity | None = None,
    ) -> None:
        self.request = request
        self.reply_to = reply_to  # "" for a plain publish: apply, answer nobody
        self.trace_id = trace_id
        self.subject = subject
        self.received = received  # time.perf_counter() when the handler got it
        self.kind = kind  # the endpoint name
        self.raw = raw  # the body as received: what the ledger records
        self.identity = identity  # the authenticated sender, where the deployment stamps one
        self.note: object = None  # what the service attached for the command's effects (a reload: its config)


class Mailbox:
    """A bounded FIFO of commands with a single consumer. `put` never waits: a full mailbox refuses."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[Command] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, command: Command) -> bool:
        """Queue a command; False when the mailbox is full or closed."""
        if self._closed or len(self._items) >= self.capacity:
            return False
        self._items.append(command)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True

    def close(self) -> None:
        """Refuse new commands; the consumer still gets what is queued, then an empty batch."""
        self._closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def ready(self) -> asyncio.Future[None]:
        """A future done once there is a command (or the mailbox is closed); `unready` forgets it."""
        waiter = asyncio.get_running_loop().create_future()
        if self._items or self._closed:
            waiter.set_result(None)
        else:
            self._waiter = waiter
        return waiter

    def unready(self) -> None:
        self._waiter = None

    def take_now(self, limit: int) -> list[Command]:
        """Up to `limit` waiting commands, without waiting."""
        items = self._items
        return [items.popleft() for _ in range(min(limit, len(items)))]

    async def take(self, limit: int, timeout: float | None = None) -> list[Command] | None:
        """Wait for at least one command and return up to `limit`; an empty list once closed and drained; None
        when `timeout` passed with nothing to take."""
        while not self._items:
            if self._closed:
                return []
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                done, _ = await asyncio.wait([self._waiter], timeout=timeout)
            finally:
                self._waiter = None
            if not done:
                return None
        return self.take_now(limit)
