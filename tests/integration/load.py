"""Load under faults (not a test module): the governor as a child process on a config of eight swarms, clients
that retry cost events with the same `event_id` until they are acknowledged, and the check that every
acknowledged event was counted exactly once.

tests/integration/test_durability.py uses it against one nats-server, test_cluster.py against a cluster.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import nats
import yaml
from nats.aio.client import Client
from nats.aio.msg import Msg

from tests.factories import swarm_entry
from tests.integration.helpers import WorkerProcess, answering, start_worker_process
from worker.client import GovernorClient

INITIAL = 1_000_000.0
SWARMS = [f"swarm-{i}" for i in range(8)]
EVENTS = 10_000
CLIENTS = 8

Servers = str | list[str]
"""What `nats.connect` takes: one URL or a list of them (not a comma-separated string)."""


def write_config(path: Path, **ledger: Any) -> Path:
    """The governor's config at `path`: eight swarms of INITIAL budget, a 2 s lease, `ledger` over the defaults."""
    config = {
        "swarms": [
            swarm_entry(
                s,
                ["code-analysis:python"],
                cost_per_hour=2.0,
                reputation_score=0.9,
                initial_budget=INITIAL,
                model="haiku",
            )
            for s in SWARMS
        ],
        "metrics": {"port": 0},
        "ledger": {"lease_ttl_s": 2.0, "timeout_s": 1.0, "snapshot_every": 300, **ledger},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def launch(url: str, config: Path, log: Path) -> WorkerProcess:
    """`governor run` on `config` against `url` (comma-separated for several; no metrics endpoint), its output in
    `log`."""
    return start_worker_process(url, config, log, env={"IF_GOVERNOR_METRICS_PORT": "0"})


async def wait_serving(servers: Servers, timeout: float = 30.0) -> None:
    """Wait until some governor answers `status` ok, on a connection of its own."""
    nc = await nats.connect(servers, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    try:
        await answering(nc, timeout=timeout)
    finally:
        await nc.close()


class Load:
    """Several clients sending cost events, each retried with the same event_id until acknowledged `ok`.

    Every attempt gets its own reply inbox, and one wildcard subscription counts the replies per inbox: a
    request answered by two governors would show up as an inbox with two replies. Each acknowledgement is kept
    with the (monotonic) times its attempt was sent and answered; each reply that was not ok, by its code.
    """

    def __init__(
        self, servers: Servers, events: int = EVENTS, clients: int = CLIENTS, seed: int = 7, *, first: int = 0
    ) -> None:
        rng = random.Random(seed)
        self.servers = servers
        self.events = [(f"ev-{i}", rng.choice(SWARMS), rng.randint(1, 500) / 100) for i in range(first, first + events)]
        """(event_id, swarm, cost): ids `ev-<first>` onwards, so that loads with disjoint ranges add up."""
        self.clients = clients
        self.acked: dict[str, tuple[str, float]] = {}
        self.acked_at: list[tuple[float, float]] = []
        """(sent, answered) of each acknowledged attempt, in the order answered."""
        self.refused: Counter[str] = Counter()
        """Replies that were not ok, by error code (`no_responders` for the server's status reply)."""
        self.duplicates = 0
        self.retries = 0
        self.replies: Counter[str] = Counter()
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._progress = asyncio.Event()

    async def run(self) -> None:
        nc: Client = await nats.connect(self.servers, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
        try:
            await nc.subscribe("_INBOX.load.>", cb=self._on_reply)
            queue: asyncio.Queue[tuple[str, str, float]] = asyncio.Queue()
            for event in self.events:
                queue.put_nowait(event)
            await asyncio.gather(*(self._client(nc, queue, i) for i in range(self.clients)))
        finally:
            await nc.close()

    async def _on_reply(self, msg: Msg) -> None:
        self.replies[msg.subject] += 1
        future = self._waiting.pop(msg.subject, None)
        if future is not None and not future.done():
            future.set_result(msg)

    async def _client(self, nc: Client, queue: asyncio.Queue[tuple[str, str, float]], n: int) -> None:
        attempt = 0
        while not queue.empty():
            event_id, swarm_id, amount = queue.get_nowait()
            body = msgspec.json.encode(
                {"swarm_id": swarm_id, "operation": "load", "cost": amount, "event_id": event_id}
            )
            while True:
                attempt += 1
                inbox = f"_INBOX.load.{n}.{attempt}"
                future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
                self._waiting[inbox] = future
                sent = time.monotonic()
                try:
                    await nc.publish("governor.cost", body, reply=inbox)
                    msg = await asyncio.wait_for(future, timeout=1.0)
                except (TimeoutError, nats.errors.Error):
                    self._waiting.pop(inbox, None)
                    self.retries += 1
                    await asyncio.sleep(0.05)
                    continue
                reply = msgspec.json.decode(msg.data) if msg.data else {}  # empty: "no responders" status
                if reply.get("ok"):
                    self.acked[event_id] = (swarm_id, amount)
                    self.acked_at.append((sent, time.monotonic()))
                    self._progress.set()
                    self.duplicates += bool(reply.get("duplicate"))
                    break
                self.refused[reply.get("error", {}).get("code", "no_responders")] += 1
                self.retries += 1  # unavailable / overloaded: retry the same event
                await asyncio.sleep(0.05)

    async def wait_acked(self, count: int, task: asyncio.Task[None], timeout: float = 120.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.acked) < count and not task.done():
                self._progress.clear()
                await asyncio.wait([asyncio.ensure_future(self._progress.wait()), task], return_when="FIRST_COMPLETED")

    def first_ack_after(self, moment: float) -> float:
        """Seconds from `moment` (monotonic) to the first acknowledgement of an attempt sent after it."""
        return min(answered for sent, answered in self.acked_at if sent > moment) - moment


def expected_budgets(*loads: Load) -> dict[str, float]:
    """Each swarm's budget after the events these loads saw acknowledged: INITIAL minus their costs, to the cent."""
    spent: dict[str, int] = dict.fromkeys(SWARMS, 0)
    for load in loads:
        for swarm_id, amount in load.acked.values():
            spent[swarm_id] += round(amount * 100)
    return {s: round(INITIAL - cents / 100, 2) for s, cents in spent.items()}


async def budgets(servers: Servers) -> dict[str, float]:
    async with await GovernorClient.connect(servers) as client:
        status = await client.status()
    return {s: round(v, 6) for s, v in status.budgets.items()}


async def assert_each_event_once(servers: Servers, *loads: Load) -> None:
    """Every event of the loads acknowledged, every budget exact to the cent, no request answered twice."""
    for load in loads:
        assert len(load.acked) == len(load.events)
        assert max(load.replies.values()) == 1
    assert await budgets(servers) == expected_budgets(*loads)
