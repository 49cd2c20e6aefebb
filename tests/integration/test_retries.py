"""Retries are safe over the wire: an assign is keyed by its `task_id`, everything else that changes state by its
`event_id`; the windows that remember them survive a restart and cannot be flushed by one client."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from nats.aio.client import Client

from tests.factories import EXAMPLE_SWARMS, make_config
from tests.integration.helpers import WorkerFactory
from worker.client import GovernorClient
from worker.service.app import Worker

SIP = "session-4-sip"
NDI = "session-1-ndi"


async def request(nc: Client, subject: str, body: dict[str, Any]) -> Any:
    return msgspec.json.decode((await nc.request(subject, msgspec.json.encode(body), timeout=5)).data)


ASSIGN = {"task_id": "task-1", "required_capabilities": ["integration:ndi"], "estimated_cost": 6.0}


class TestAssignRetries:
    async def test_a_retried_assign_is_the_same_assignment_also_after_a_restart(
        self, start_worker: WorkerFactory, nc: Client
    ) -> None:
        """The same assign three times (once after a restart): one assignment, one hold, one history entry; the
        retries are answered with it, marked `duplicate`."""
        first_worker = await start_worker(make_config(EXAMPLE_SWARMS))
        first = await request(nc, "governor.assign", ASSIGN)
        again = await request(nc, "governor.assign", ASSIGN)
        await first_worker.__aexit__(None, None, None)
        await start_worker(make_config(EXAMPLE_SWARMS))
        after_restart = await request(nc, "governor.assign", ASSIGN)
        assert (first["swarm_id"], "duplicate" in first) == (NDI, False)
        for retry in (again, after_restart):
            assert (retry["swarm_id"], retry["assignments"], retry["duplicate"]) == (NDI, first["assignments"], True)
        status = await request(nc, "governor.status", {})
        assert [(h["task_id"], h["swarm_id"], h["amount"]) for h in status["holds"]] == [("task-1", NDI, 6.0)]
        history = await request(nc, "governor.history", {})
        assert [r["task_id"] for r in history["assignments"]] == ["task-1"]

    async def test_reassign_moves_the_task_with_its_hold(self, start_worker: WorkerFactory, nc: Client) -> None:
        """`reassign: true` releases the task's hold and assigns it afresh: a budget of 25 with a hold of 6 takes
        the same task at 20, and one hold remains."""
        await start_worker(make_config(EXAMPLE_SWARMS))
        await request(nc, "governor.assign", ASSIGN)
        moved = await request(nc, "governor.assign", {**ASSIGN, "estimated_cost": 20.0, "reassign": True})
        assert (moved["ok"], moved["swarm_id"], "duplicate" in moved) == (True, NDI, False)
        status = await request(nc, "governor.status", {})
        assert [(h["task_id"], h["amount"]) for h in status["holds"]] == [("task-1", 20.0)]


class TestDedupeFlush:
    async def test_a_flood_of_fresh_cost_ids_leaves_a_reset_id_remembered(
        self, start_worker: WorkerFactory, nc: Client
    ) -> None:
        """A client sends 300 zero-cost costs with fresh ids into a window of 100: the reset's id is still known
        (its retry is `duplicate`, the budget unchanged), and the cost ids pushed out are counted."""
        worker: Worker = await start_worker(make_config(EXAMPLE_SWARMS, dedupe_limit=100))
        await request(nc, "governor.cost", {"swarm_id": NDI, "operation": "op", "cost": 30.0, "event_id": "c0"})
        reset = {"swarm_id": NDI, "new_budget": 10.0, "approved_by": "alice", "event_id": "r1"}
        assert (await request(nc, "governor.reset", reset))["remaining"] == 10.0
        await request(nc, "governor.cost", {"swarm_id": NDI, "operation": "op", "cost": 4.0, "event_id": "c1"})
        for i in range(300):
            body = {"swarm_id": NDI, "operation": "flood", "cost": 0.0, "event_id": f"flood-{i}"}
            await request(nc, "governor.cost", body)
        retry = await request(nc, "governor.reset", reset)
        assert (retry["duplicate"], retry["remaining"]) == (True, 6.0)
        evicted = worker.metrics.registry.get_sample_value("if_governor_dedupe_evicted_total", {"kind": "cost"})
        assert evicted == 202.0  # 302 cost ids (c0, c1 and the flood) into a window of 100


class TestClientRetries:
    async def test_the_client_retries_with_the_same_event_id_until_a_governor_answers(
        self, start_worker: WorkerFactory, nc: Client
    ) -> None:
        """With `retry_for`, a cost sent while no governor serves is retried (same event id) until one does,
        and applied once."""
        client = GovernorClient(nc, timeout=0.3, retry_for=10.0)
        sent = asyncio.ensure_future(client.cost(NDI, "op", 2.0, event_id="retried"))
        await asyncio.sleep(1.0)
        assert not sent.done()
        await start_worker(make_config(EXAMPLE_SWARMS))
        reply = await sent
        assert (reply.remaining, reply.duplicate) == (23.0, False)
        again = await client.cost(NDI, "op", 2.0, event_id="retried")
        assert (again.remaining, again.duplicate) == (23.0, True)
