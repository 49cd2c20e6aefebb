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

from tests.factories import EXAMPLE_SWARMS, make_config, swarm_entry
from tests.integration.helpers import WorkerFactory, ledger_messages
from worker.client import GovernorClient

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
        await start_worker(make_config(EXAMPLE_SWARMS))
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
        await start_worker(make_config(EXAMPLE_SWARMS))
        padded = b"  \n " * 15_000 + msgspec.json.encode(cost("padded", 2.0))
        assert (await request(nc, "governor.cost", padded))["remaining"] == 23.0
        sizes = [len(data) for data in await ledger_messages(nc)]
        assert sizes and max(sizes) < 2048, sizes


def many_swarms(count: int, capabilities: list[str] | None = None) -> list[dict[str, Any]]:
    """`count` swarms `s00000`, `s00001`, ... of 100.0 USD each, costing 1.0 to 97.0 an hour."""
    return [
        swarm_entry(
            f"s{i:05d}",
            capabilities or ["integration:sip"],
            cost_per_hour=1.0 + i % 97,
            reputation_score=0.9,
            initial_budget=100.0,
            model="haiku",
        )
        for i in range(count)
    ]


def assign(task_id: str, **extra: Any) -> bytes:
    return msgspec.json.encode(
        {"task_id": task_id, "required_capabilities": ["integration:sip"], "max_cost": 100.0, **extra}
    )


class TestLargeReplies:
    async def test_a_large_registry_is_answered_page_by_page(self, start_worker: WorkerFactory, nc: Client) -> None:
        """With 12,000 swarms and 6,000 assignments, `status`, `assign` with `explain` and `history` are answered
        in pages (every reply under max_payload; a walk sees every swarm once) or `reply_too_large`, and 20
        assigns right after are answered."""
        worker = await start_worker(make_config(many_swarms(12_000), history_limit=20_000))
        limit = nc.max_payload
        first = (await nc.request("governor.status", b"{}", timeout=10)).data
        assert len(first) < limit
        assert [s["swarm_id"] for s in msgspec.json.decode(first)["swarms"]] == [f"s{i:05d}" for i in range(100)]
        seen: list[str] = []
        cursor = None
        while True:
            data = (await nc.request("governor.status", msgspec.json.encode({"limit": 1000, "cursor": cursor}))).data
            assert len(data) < limit
            page = msgspec.json.decode(data)
            seen += [s["swarm_id"] for s in page["swarms"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == [f"s{i:05d}" for i in range(12_000)]
        whole = await GovernorClient(nc, timeout=10).status()  # the client follows the pages
        assert ([s.swarm_id for s in whole.swarms], len(whole.budgets), whole.next_cursor) == (seen, 12_000, None)

        explained = (await nc.request("governor.assign", assign("x", explain=True), timeout=10)).data
        reply = msgspec.json.decode(explained)
        assert (len(explained) < limit, len(reply["explanation"]), reply["explain_next_cursor"]) == (True, 100, "100")

        for start in range(0, 6000, 500):
            await asyncio.gather(*(request(nc, "governor.assign", assign(f"t{i}")) for i in range(start, start + 500)))
        whole = await request(nc, "governor.history", msgspec.json.encode({"limit": 100_000}))
        assert (whole["ok"], whole["error"]["code"]) == (False, "reply_too_large")
        page = await request(nc, "governor.history", b"{}")
        assert (len(page["assignments"]), page["assignments"][-1]["task_id"]) == (100, "t5999")
        history = await GovernorClient(nc, timeout=10).history()
        assert [r.task_id for r in history.assignments] == ["x"] + [f"t{i}" for i in range(6000)]
        recent = await GovernorClient(nc, timeout=10).history(1234)
        assert [r.task_id for r in recent.assignments] == [f"t{i}" for i in range(6000 - 1234, 6000)]

        after = await asyncio.gather(*(request(nc, "governor.assign", assign(f"after{i}")) for i in range(20)))
        assert [(a["ok"], a["swarm_id"]) for a in after] == [(True, "s00000")] * 20
        assert worker.ready
        failures = worker.metrics.registry.get_sample_value("if_governor_publish_failures_total", {"kind": "reply"})
        assert failures is None

    async def test_a_reply_over_max_payload_is_refused_and_serving_goes_on(
        self, start_worker: WorkerFactory, nc: Client
    ) -> None:
        """A page of 200 swarms of 64 long capabilities each (1.6 MB) is answered `reply_too_large` (413), and the
        governor goes on answering."""
        capabilities = [f"integration:{'x' * 100}-{i:03d}" for i in range(64)]
        worker = await start_worker(make_config(many_swarms(200, capabilities), capabilities=capabilities))
        msg = await nc.request("governor.status", msgspec.json.encode({"limit": 1000}), timeout=10)
        reply = msgspec.json.decode(msg.data)
        assert (reply["ok"], reply["error"]["code"], (msg.headers or {})["Nats-Service-Error-Code"]) == (
            False,
            "reply_too_large",
            "413",
        )
        assert reply["error"]["message"].endswith("ask for a smaller page (limit)")
        small = await request(nc, "governor.status", msgspec.json.encode({"limit": 50}))
        assert (small["ok"], len(small["swarms"]), small["next_cursor"]) == (True, 50, "50")
        body = msgspec.json.encode({"task_id": "t", "required_capabilities": capabilities[:1], "max_cost": 100.0})
        after = await asyncio.gather(*(request(nc, "governor.assign", body) for _ in range(20)))
        assert [(a["ok"], a["swarm_id"]) for a in after] == [(True, "s00000")] * 20
        assert worker.ready
