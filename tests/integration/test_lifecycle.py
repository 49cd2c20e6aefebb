"""The task lifecycle over a real nats-server: `governor.complete` (outcome, final cost, history, exactly once),
expiries while idle, `max_concurrent_tasks`, the `spread` strategy on a workload of 1,000 tasks over 10 equally good
swarms, `governor.update` and its event, and completions retried across a kill -9."""

from __future__ import annotations

import asyncio
import random
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
import yaml
from nats.aio.client import Client

from schemas.profiles import SwarmProfile
from tests.factories import make_config, swarm_entry
from tests.integration.helpers import Recorder, WorkerFactory, WorkerProcess
from tests.integration.load import launch, wait_serving
from worker import errors
from worker.client import GovernorClient
from worker.ops.natsserver import NatsServer

pytestmark = pytest.mark.timeout(240)

CAP = "code-analysis:python"


class TestComplete:
    async def test_a_completion_is_recorded_once(
        self, start_worker: WorkerFactory, client: GovernorClient, recorder: Recorder
    ) -> None:
        await start_worker(make_config([swarm_entry("a", [CAP], initial_budget=10.0)]))
        assert (await client.assign([CAP], task_id="t-1", estimated_cost=2.0)).swarm_id == "a"
        await client.cost("a", "step", 1.0, task_id="t-1")
        reply = await client.complete("t-1", "success", cost=0.25, event_id="done-1")
        assert (reply.swarm_id, reply.outcome, reply.total_cost, reply.duplicate) == ("a", "success", 1.25, False)
        again = await client.complete("t-1", "success", cost=0.25, event_id="done-1")
        assert again.duplicate
        status = await client.status()
        assert (status.budgets, status.holds, status.swarms[0].in_flight) == ({"a": 8.75}, [], 0)
        [record] = (await client.history()).assignments
        assert (record.outcome, record.total_cost) == ("success", 1.25)
        [witness] = await recorder.wait_for("governor.witness.task_completed")
        assert (witness["params"]["task_id"], witness["params"]["outcome"]) == ("t-1", "success")
        with pytest.raises(errors.TaskClosed):
            await client.complete("t-1", "failure")
        with pytest.raises(errors.UnknownTask):
            await client.complete("t-nope", "success")

    @pytest.mark.parametrize(
        "body",
        [
            {"task_id": "t", "outcome": "maybe"},
            {"task_id": "t", "outcome": "success", "cost": 1.0, "usage": {"input_tokens": 1, "output_tokens": 1}},
            {"task_id": "t", "outcome": "success", "extra": 1},
            {"outcome": "success"},
        ],
        ids=["outcome", "cost-and-usage", "unknown-field", "no-task"],
    )
    async def test_a_malformed_completion_is_refused(
        self, start_worker: WorkerFactory, nc: Client, body: dict[str, Any]
    ) -> None:
        await start_worker(make_config([swarm_entry("a", [CAP])]))
        reply = msgspec.json.decode((await nc.request("governor.complete", msgspec.json.encode(body), timeout=5)).data)
        assert (reply["ok"], reply["error"]["code"]) == (False, "invalid_request")

    async def test_an_idle_governor_expires_a_task_on_time(
        self, start_worker: WorkerFactory, client: GovernorClient, recorder: Recorder
    ) -> None:
        swarms = [swarm_entry("a", [CAP], max_concurrent_tasks=1)]
        await start_worker(make_config(swarms, task_timeout_s=1.0, expire_as="failure"))
        await client.assign([CAP], task_id="t-1")
        assert (await client.assign([CAP], task_id="t-2")).swarm_id is None  # at capacity
        [expired] = await recorder.wait_for("governor.witness.task_expired", timeout=4.0)
        assert expired["params"]["task_id"] == "t-1"
        status = await client.status()
        assert (status.swarms[0].in_flight, status.swarms[0].failures_in_window) == (0, 1)
        assert (await client.assign([CAP], task_id="t-3")).swarm_id == "a"


class TestUpdate:
    async def test_an_update_is_published_and_keeps_budget_and_order(
        self, start_worker: WorkerFactory, client: GovernorClient, recorder: Recorder
    ) -> None:
        swarms = [swarm_entry("a", [CAP], initial_budget=5.0), swarm_entry("b", [CAP], initial_budget=7.0)]
        await start_worker(make_config(swarms))
        reply = await client.update("b", requested_by="chassis", reputation_score=0.95, max_concurrent_tasks=3)
        assert reply.changed == ["max_concurrent_tasks", "reputation_score"]
        [event] = await recorder.wait_for("governor.events.swarm.updated")
        assert (event["swarm_id"], event["changed"]) == ("b", {"reputation_score": 0.95, "max_concurrent_tasks": 3})
        status = await client.status()
        assert [(s.swarm_id, s.budget_remaining, s.reputation_score) for s in status.swarms] == [
            ("a", 5.0, 0.9),
            ("b", 7.0, 0.95),
        ]
        assert (await client.assign([CAP], task_id="t")).swarm_id == "b"
        empty = {"swarm_id": "a", "requested_by": "ops"}  # nothing to change: refused by decoding
        refused = msgspec.json.decode((await client.nc.request("governor.update", msgspec.json.encode(empty))).data)
        assert (refused["ok"], refused["error"]["code"]) == (False, "invalid_request")


class TestLimits:
    async def test_a_registered_limit_and_the_policys_minimum_budget(
        self, start_worker: WorkerFactory, client: GovernorClient
    ) -> None:
        await start_worker(make_config([swarm_entry("poor", [CAP], initial_budget=0.5)], min_budget_per_task=1.0))
        profile = SwarmProfile(
            swarm_id="rich",
            capabilities=[CAP],
            cost_per_hour=4.0,
            reputation_score=0.5,
            current_budget_remaining=100.0,
            model="haiku",
            max_concurrent_tasks=1,
        )
        await client.register(profile)
        reply = await client.assign([CAP], task_id="t-1", explain=True)
        assert (reply.swarm_id, reply.rejected) == ("rich", {"poor": "budget_below_task_minimum"})
        again = await client.assign([CAP], task_id="t-2", explain=True)
        assert (again.swarm_id, again.rejected) == (
            None,
            {"poor": "budget_below_task_minimum", "rich": "at_capacity"},
        )
        assert [(s.swarm_id, s.in_flight, s.max_concurrent_tasks) for s in (await client.status()).swarms] == [
            ("poor", 0, None),
            ("rich", 1, 1),
        ]


class TestSpreadWorkload:
    @pytest.mark.parametrize("strategy", ["spread", "best"])
    async def test_a_thousand_tasks_over_ten_equal_swarms(
        self, start_worker: WorkerFactory, nats_server: NatsServer, strategy: str
    ) -> None:
        """64 coordinators assign 1,000 tasks and complete each after a short random time, 5 slots per swarm: no
        swarm ever runs more than 5 (sampled from `status` meanwhile); with `spread` the tasks spread evenly, with
        `best` they pile onto the first registered swarms (the figures are printed: the measured effect)."""
        limit, swarms = 5, [swarm_entry(f"s{i}", [CAP], max_concurrent_tasks=5) for i in range(10)]
        await start_worker(make_config(swarms, strategy=strategy))
        per_swarm: Counter[str] = Counter()
        refused = 0
        peak = 0
        todo = list(range(1000))
        done = asyncio.Event()

        async def coordinator(seed: int) -> None:
            nonlocal refused
            rng = random.Random(seed)
            nc = await nats.connect(nats_server.url)
            client = GovernorClient(nc, timeout=10.0)
            try:
                while todo:
                    task = f"task-{todo.pop()}"
                    while (reply := await client.assign([CAP], task_id=task)).swarm_id is None:
                        refused += 1  # every swarm at its limit: try again shortly
                        await asyncio.sleep(0.005)
                    per_swarm[reply.swarm_id] += 1
                    await asyncio.sleep(rng.uniform(0.0, 0.02))
                    await client.complete(task, "success", event_id=f"done-{task}")
            finally:
                await nc.close()

        async def sampler() -> None:
            nonlocal peak
            nc = await nats.connect(nats_server.url)
            client = GovernorClient(nc, timeout=10.0)
            try:
                while not done.is_set():
                    status = await client.status()
                    peak = max(peak, *(s.in_flight for s in status.swarms))
                    await asyncio.sleep(0.01)
            finally:
                await nc.close()

        watching = asyncio.create_task(sampler())
        await asyncio.wait_for(asyncio.gather(*(coordinator(n) for n in range(64))), timeout=180)
        done.set()
        await watching
        counts = [per_swarm[f"s{i}"] for i in range(10)]
        print(
            f"{strategy}: tasks per swarm {counts} (stdev {statistics.pstdev(counts):.1f}); "
            f"refused {refused}; peak {peak}"
        )
        assert sum(counts) == 1000
        assert peak <= limit
        if strategy == "spread":
            assert min(counts) >= 70 and max(counts) <= 130


def write_config(path: Path) -> Path:
    body = {
        "swarms": [swarm_entry(f"s{i}", [CAP], initial_budget=1_000_000.0) for i in range(4)],
        "governor": {"strategy": "spread", "circuit_breaker_threshold": 1_000_000},
        "metrics": {"port": 0},
        "ledger": {"lease_ttl_s": 2.0, "timeout_s": 1.0, "snapshot_every": 100},
    }
    path.write_text(yaml.safe_dump(body))
    return path


class TestAcrossAKill:
    async def test_completions_retried_across_a_kill_apply_once(
        self, tmp_path: Path, nats_server: NatsServer, processes: list[WorkerProcess]
    ) -> None:
        """300 tasks assigned, then completed (a third as failures, each with a cost of 0.01) by clients that retry
        with the same event_id, while the governor is killed (-9) and restarted: every task is completed exactly
        once, every cost counted once, every failure counted once, and no slot is left taken."""
        url = nats_server.url
        path = write_config(tmp_path / "governor.yaml")
        processes.append(launch(url, path, tmp_path / "a.log"))
        await wait_serving(url)
        nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
        client = GovernorClient(nc, timeout=2.0)
        assigned: dict[str, str] = {}
        for i in range(300):
            reply = await client.assign([CAP], task_id=f"t-{i}")
            assert reply.swarm_id is not None
            assigned[f"t-{i}"] = reply.swarm_id
        outcomes = {task: "failure" if i % 3 == 0 else "success" for i, task in enumerate(assigned)}

        retried: list[str] = []
        landed: list[str] = []

        async def finish(task: str) -> None:
            while True:
                try:
                    reply = await client.complete(task, outcomes[task], cost=0.01, event_id=f"done-{task}")
                    if reply.duplicate:
                        landed.append(task)  # applied before the kill, its answer lost: not applied again
                    return
                except errors.TaskClosed:
                    return  # applied before the kill, its reply lost: closed is the proof
                except (errors.GovernorError, nats.errors.Error, TimeoutError):
                    retried.append(task)
                    await asyncio.sleep(0.1)

        tasks = list(assigned)
        await asyncio.gather(*(finish(t) for t in tasks[:100]))  # acknowledged before the kill
        work = asyncio.gather(*(finish(t) for t in tasks[100:]))  # in flight when it comes
        await asyncio.sleep(0.01)  # some are applied, some answered, some not yet read when the kill comes
        processes[0].kill()
        processes.append(launch(url, path, tmp_path / "b.log"))
        await asyncio.wait_for(work, timeout=120)
        print(
            f"{len(set(retried))} of the 200 completions in flight at the kill were retried, {len(landed)} of them "
            "had been applied before it"
        )
        assert retried, "the kill met no completion in flight"
        await wait_serving(url)
        again = [await client.complete(t, outcomes[t], cost=0.01, event_id=f"done-{t}") for t in tasks[:150]]
        assert all(r.duplicate for r in again)  # retried after the restart: applied once, answered duplicate
        status = await client.status()
        history = await client.history()
        await nc.close()
        spent = {s.swarm_id: round(1_000_000.0 - s.budget_remaining, 6) for s in status.swarms}
        failures = {s.swarm_id: s.failures_in_window for s in status.swarms}
        per_swarm = Counter(assigned.values())
        failed = Counter(assigned[t] for t, o in outcomes.items() if o == "failure")
        assert spent == {s: round(0.01 * n, 6) for s, n in per_swarm.items()}
        assert failures == {s: failed[s] for s in per_swarm}
        assert all(s.in_flight == 0 for s in status.swarms)
        assert Counter(r.outcome for r in history.assignments) == Counter(outcomes.values())
