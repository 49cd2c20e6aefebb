"""The serving lease and the JetStream settings against a real nats-server: release, changed TTL and replicas."""

from __future__ import annotations

import pytest
from nats.aio.client import Client

from worker.storage.journal import Ledger, stream_name
from worker.storage.lease import KEY, Lease


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


class TestSettingsChanged:
    """`ledger.lease_ttl_s` and `ledger.replicas` changed after the bucket and streams were created."""

    async def test_the_next_holder_gives_the_bucket_its_ttl(self, nc: Client) -> None:
        """A standby with another TTL leaves the bucket alone; once it holds the lease, the bucket takes its TTL."""
        a = await lease(nc, "a")  # creates the bucket with a 30 s TTL
        b = Lease(nc, "b", bucket="TEST_LEASE", ttl=10.0)
        await b.setup()
        js = nc.jetstream()
        assert await a.try_acquire()
        assert not await b.try_acquire()
        assert (await js.stream_info("KV_TEST_LEASE")).config.max_age == 30.0
        await a.release()
        assert await b.try_acquire()
        assert (await js.stream_info("KV_TEST_LEASE")).config.max_age == 10.0

    async def test_more_replicas_than_the_servers_is_a_warning(
        self, nc: Client, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A single server refuses R2 for the existing ledger stream: the governor says so and goes on with R1."""
        await Ledger(nc, replicas=1).setup()
        await Ledger(nc, replicas=2).setup()
        assert (await nc.jetstream().stream_info(stream_name("governor"))).config.num_replicas == 1
        assert "keeps 1 replicas, not 2" in caplog.text
