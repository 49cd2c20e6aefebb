"""The serving lease against a real nats-server: a clean stop gives it up even after a renewal it lost track of."""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client

from worker.lease import KEY, Lease
from worker.natsserver import NatsServer


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    try:
        yield client
    finally:
        await client.close()


async def lease(nc: Client, holder: str) -> Lease:
    result = Lease(nc, holder, bucket="TEST_LEASE", ttl=30.0)
    await result.setup()
    return result


class TestRelease:
    async def test_release_lets_a_standby_take_over_at_once(self, nc: Client) -> None:
        a, b = await lease(nc, "a"), await lease(nc, "b")
        assert await a.try_acquire()
        assert not await b.try_acquire()
        await a.release()
        assert await b.try_acquire()

    async def test_release_after_a_renewal_it_did_not_see(self, nc: Client) -> None:
        """A renewal cancelled at stop (or answered too late) landed: the lease is released anyway."""
        a, b = await lease(nc, "a"), await lease(nc, "b")
        assert await a.try_acquire()
        kv = await nc.jetstream().key_value("TEST_LEASE")
        entry = await kv.get(KEY)
        assert entry.revision is not None
        await kv.update(KEY, b"a", last=entry.revision)  # the renewal whose answer `a` never read
        await a.release()
        assert await b.try_acquire()

    async def test_release_leaves_another_holders_lease(self, nc: Client) -> None:
        """A holder whose key expired and was taken by another process does not delete the new holder's lease."""
        a, c = await lease(nc, "a"), await lease(nc, "c")
        assert await a.try_acquire()
        kv = await nc.jetstream().key_value("TEST_LEASE")
        entry = await kv.get(KEY)
        assert entry.revision is not None
        await kv.update(KEY, b"b", last=entry.revision)  # as if it expired and `b` took it
        await a.release()
        assert not await c.try_acquire()
        assert (await kv.get(KEY)).value == b"b"
