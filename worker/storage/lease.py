"""Single owner across replicas: a lease in a JetStream key-value bucket decides which process serves.

The bucket's TTL makes the lease expire `ttl` seconds after its holder last renewed it; renewals are
compare-and-set on the key's revision. The holder counts its lease as valid until `ttl - margin` after it *sent*
its last successful renewal, so it stops serving before the key can expire and anyone else can take it. The
ledger's expected-sequence check is the second fence: even a holder that missed its own expiry cannot write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import StorageType
from nats.js.kv import KeyValue

log = logging.getLogger("if_governor.lease")

KEY = "holder"


class Lease:
    """Acquire, renew and give up the serving lease."""

    def __init__(
        self,
        nc: Client,
        holder_id: str,
        *,
        bucket: str = "GOVERNOR_LEASE",
        ttl: float = 3.0,
        margin: float | None = None,
        replicas: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.nc = nc
        self.holder_id = holder_id
        self.bucket = bucket
        self.ttl = ttl
        self.margin = min(1.0, ttl / 3) if margin is None else margin
        self.replicas = replicas
        self.clock = clock
        self._kv: KeyValue | None = None
        self._bucket_ttl = ttl  # the bucket's own TTL and replicas, read at setup
        self._bucket_replicas = replicas
        self._revision: int | None = None
        self._valid_until = 0.0

    @property
    def held(self) -> bool:
        """True while this process may serve."""
        return self._revision is not None and self.clock() < self._valid_until

    async def setup(self) -> None:
        js = self.nc.jetstream(timeout=self.ttl / 2)
        try:
            self._kv = await js.key_value(self.bucket)
        except nats.js.errors.BucketNotFoundError:
            self._kv = await js.create_key_value(
                bucket=self.bucket, ttl=self.ttl, history=1, storage=StorageType.FILE, replicas=self.replicas
            )
        config = (await js.stream_info(f"KV_{self.bucket}")).config
        self._bucket_ttl = config.max_age or self.ttl
        self._bucket_replicas = config.num_replicas or 1

    async def _reconcile_bucket(self) -> None:
        """Give the bucket this process's TTL and replicas, once it holds the lease (only the holder changes them:
        a standby shortening the TTL under a holder that counts on the longer one would let two processes serve)."""
        if self._bucket_ttl == self.ttl and self._bucket_replicas == self.replicas:
            return
        js = self.nc.jetstream(timeout=self.ttl / 2)
        stream = f"KV_{self.bucket}"
        try:
            config = (await js.stream_info(stream)).config
            window = min(config.duplicate_window or self.ttl, self.ttl)  # may not exceed the TTL (as at creation)
            await js.update_stream(config.evolve(max_age=self.ttl, duplicate_window=window, num_replicas=self.replicas))
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
            log.warning(
                "lease bucket keeps TTL %.1fs and %d replicas: %s", self._bucket_ttl, self._bucket_replicas, exc
            )
            return
        log.info(
            "lease bucket TTL %.1fs -> %.1fs, replicas %d -> %d",
            self._bucket_ttl,
            self.ttl,
            self._bucket_replicas,
            self.replicas,
        )
        self._bucket_ttl, self._bucket_replicas = self.ttl, self.replicas

    async def try_acquire(self) -> bool:
        """Take the lease if nobody holds it. True on success."""
        assert self._kv is not None
        sent = self.clock()
        try:
            revision = await self._kv.create(KEY, self.holder_id.encode())
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.APIError):
            return False
        except (nats.errors.Error, TimeoutError) as exc:
            log.debug("lease acquire failed: %s", exc)
            return False
        self._revision = revision
        await self._reconcile_bucket()
        self._held_since(sent)
        log.info("lease acquired by %s", self.holder_id)
        return True

    async def renew(self) -> bool:
        """Extend the lease (compare-and-set). False when it is lost or could not be renewed in time."""
        if self._revision is None or self._kv is None:
            return False
        sent = self.clock()
        try:
            revision = await asyncio.wait_for(
                self._kv.update(KEY, self.holder_id.encode(), last=self._revision), timeout=self.ttl / 3
            )
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.APIError):
            log.warning("lease lost: another holder or the key expired")
            self._revision = None
            return False
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("lease renewal failed: %s", exc)
            return self.held
        self._revision = revision
        self._held_since(sent)
        return True

    def _held_since(self, sent: float) -> None:
        """The lease, written at `sent`, counts as held while its key surely lives: the bucket's TTL may still be
        shorter than ours if it could not be changed."""
        self._valid_until = sent + min(self.ttl, self._bucket_ttl) - self.margin

    async def release(self) -> None:
        """Give the lease up at once (on a clean stop), so that a standby takes over without waiting."""
        if self._revision is None or self._kv is None:
            return
        revision, self._revision = self._revision, None
        try:
            try:
                await self._kv.delete(KEY, last=revision)
            except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.APIError):
                # A renewal this process stopped waiting for (cancelled at stop, or late) landed after all: the key
                # is still ours, under a newer revision. Delete that one, if the holder is still this process.
                entry = await self._kv.get(KEY)
                if entry.value != self.holder_id.encode() or entry.revision is None:
                    return
                await self._kv.delete(KEY, last=entry.revision)
            log.info("lease released by %s", self.holder_id)
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
            log.warning("lease release failed (it expires by itself): %s", exc)
