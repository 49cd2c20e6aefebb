"""Nothing a client sends can make the governor write, hold or answer something unbounded.

A request body over `governor.max_request_bytes` is refused before it is decoded or queued, and the ledger records
every request in its compact canonical form, so one padded request can neither fail the ledger write of the
requests batched with it nor bloat the stream.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from nats.aio.client import Client

from tests.conftest import SEED_SWARMS, WorkerFactory, make_config
from tests.integration.test_trust import ledger_messages

NDI = "session-1-ndi"


async def request(nc: Client, subject: str, data: bytes) -> Any:
    return msgspec.json.decode((await nc.request(subject, data, timeout=5)).data)


def cost(event_id: str, amount: float = 0.5) -> dict[str, Any]:
    return {"swarm_id": NDI, "operation": "op", "cost": amount, "event_id": event_id}


class TestRequestSize:
    async def test_a_padded_request_is_refused_and_the_requests_beside_it_are_answered(
        self, start_worker: WorkerFactory, nc: Client
    ) -> None:
        """A valid cost padded with whitespace to 600 KB is refused `invalid_request` (naming the limit) and
        changes nothing, while 20 ordinary costs sent at the same moment are all applied."""
        await start_worker(make_config(SEED_SWARMS))
        padded = msgspec.json.encode(cost("padded", 5.0))[:-1] + b" " * 600_000 + b"}"
        replies = await asyncio.gather(
            request(nc, "governor.cost", padded),
            *(request(nc, "governor.cost", msgspec.json.encode(cost(f"c{i}"))) for i in range(20)),
        )
        refused, ordinary = replies[0], replies[1:]
        assert (refused["ok"], refused["error"]["code"]) == (False, "invalid_request")
        assert refused["error"]["message"] == (
            f"body is {len(padded)} bytes; the limit is 65536 (governor.max_request_bytes)"
        )
        assert [r["ok"] for r in ordinary] == [True] * 20
        status = await request(nc, "governor.status", b"{}")
        assert status["budgets"][NDI] == 15.0

    async def test_the_ledger_records_the_canonical_request_not_the_padding(
        self, start_worker: WorkerFactory, nc: Client
    ) -> None:
        """A cost padded to 60 KB (under the limit) is applied, and its ledger entry holds the compact request:
        every ledger message stays under 2 KB."""
        await start_worker(make_config(SEED_SWARMS))
        padded = b"  \n " * 15_000 + msgspec.json.encode(cost("padded", 2.0))
        assert (await request(nc, "governor.cost", padded))["remaining"] == 23.0
        sizes = [len(data) for data in await ledger_messages(nc)]
        assert sizes and max(sizes) < 2048, sizes
