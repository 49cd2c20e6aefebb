"""Several governors, one fleet: finding the pools on a NATS system and sending each task to its pool.

A pool is a governor started with `governor.pool: <name>`: it serves `<subject_prefix>.<name>.*` with a ledger,
lease and audit trail of its own, and its swarms belong to it alone. Which pool a task goes to is the client's
rule (here: by the category of a required capability, or by tenant):

    router = PoolRouter([Route("eu", tenant="acme-eu"), Route("media", category="media")], default="general")
    pools = Pools(nc, router)
    pool, reply = await pools.assign(["media:transcode"], tenant="acme")   # -> "media"
    await pools.client(pool).cost(reply.swarm_id, "transcode", 1.25)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas.config import check_pool_name, pool_prefix
from schemas.discovery import InfoResponse
from schemas.replies import AssignReply
from worker.client import GovernorClient
from worker.service.discovery import SERVICE


@dataclass(frozen=True)
class Pool:
    """One serving governor as discovery reports it."""

    pool: str
    """Its pool's name; "" for a governor without one (it serves `subject_prefix.*`)."""
    prefix: str
    service_id: str
    version: str


async def discover(nc: Client, *, wait: float = 0.5) -> list[Pool]:
    """Every serving governor that answers the micro protocol's `$SRV.INFO.governor` within `wait` seconds (a
    standby does not answer: one entry per pool), ordered by subject prefix."""
    inbox = nc.new_inbox()
    found: list[Pool] = []
    decode = msgspec.json.Decoder(InfoResponse).decode

    async def take(msg: Msg) -> None:
        with contextlib.suppress(msgspec.ValidationError, msgspec.DecodeError):
            info = decode(msg.data)
            meta = info.metadata or {}
            found.append(Pool(meta.get("pool", ""), meta.get("subject_prefix", ""), info.id, info.version))

    sub = await nc.subscribe(inbox, cb=take)
    try:
        await nc.publish(f"$SRV.INFO.{SERVICE}", b"", reply=inbox)
        await nc.flush()
        await asyncio.sleep(wait)
    finally:
        await sub.unsubscribe()
    return sorted(found, key=lambda p: (p.prefix, p.service_id))


@dataclass(frozen=True)
class Route:
    """Tasks go to `pool` when every condition given holds: a required capability of `category` (the part before
    the `:`), the task's `tenant`."""

    pool: str
    category: str | None = None
    tenant: str | None = None

    def __post_init__(self) -> None:
        check_pool_name(self.pool)
        if self.category is None and self.tenant is None:
            raise ValueError(f"route to {self.pool!r}: give a category, a tenant or both")

    def matches(self, capabilities: Sequence[str], tenant: str | None) -> bool:
        if self.tenant is not None and tenant != self.tenant:
            return False
        return self.category is None or any(c.partition(":")[0] == self.category for c in capabilities)


class PoolRouter:
    """The first route that matches a task names its pool; no route matches: `default` (None: the governor
    without a pool)."""

    def __init__(self, routes: Sequence[Route], default: str | None = None) -> None:
        self.routes = list(routes)
        self.default = None if default is None else check_pool_name(default)

    def pool_for(self, capabilities: Sequence[str], tenant: str | None = None) -> str | None:
        for route in self.routes:
            if route.matches(capabilities, tenant):
                return route.pool
        return self.default


class Pools:
    """A client per pool on one connection, and the router that picks each task's pool."""

    def __init__(
        self,
        nc: Client,
        router: PoolRouter,
        *,
        subject_prefix: str = "governor",
        timeout: float = 5.0,
        retry_for: float = 0.0,
    ) -> None:
        self.nc = nc
        self.router = router
        self.subject_prefix = subject_prefix
        self.timeout = timeout
        self.retry_for = retry_for
        self._clients: dict[str | None, GovernorClient] = {}

    def client(self, pool: str | None) -> GovernorClient:
        """The client of one pool (None: the governor without a pool)."""
        found = self._clients.get(pool)
        if found is None:
            prefix = pool_prefix(self.subject_prefix, None if pool is None else check_pool_name(pool))
            found = GovernorClient(self.nc, prefix=prefix, timeout=self.timeout, retry_for=self.retry_for)
            self._clients[pool] = found
        return found

    async def assign(
        self, required_capabilities: Sequence[str], *, tenant: str | None = None, **options: Any
    ) -> tuple[str | None, AssignReply]:
        """Assign a task in the pool the router picks for it; (that pool, the reply). `options`: those of
        `GovernorClient.assign`."""
        pool = self.router.pool_for(required_capabilities, tenant)
        return pool, await self.client(pool).assign(required_capabilities, **options)
