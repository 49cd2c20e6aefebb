"""Pools: several governors on one NATS cluster, each with its own subjects, streams and standby, sharing nothing.

Two pools (`eu` and `us`) run on a three-node cluster with R3 streams, each as an active `governor run` and a
standby on another node. Discovery lists exactly the two serving ones; a change in one pool is invisible in the
other; killing one pool's active process moves that pool to its standby and leaves the other pool's governor
serving as it was.
"""

from __future__ import annotations

import time
from pathlib import Path

import nats
import pytest
import yaml
from nats.aio.client import Client

from schemas.profiles import SwarmProfile
from tests.factories import swarm_entry
from tests.integration.helpers import WorkerProcess, answering, run_cli, start_worker_process
from worker import errors
from worker.client import GovernorClient
from worker.ops.natsserver import NatsCluster
from worker.pools import PoolRouter, Pools, Route, discover

pytestmark = pytest.mark.timeout(180)

POOLS = {"eu": ["eu-1", "eu-2"], "us": ["us-1"]}
STREAMS = ("{}_LEDGER", "OBJ_{}_LEDGER_SNAPSHOTS", "KV_{}_LEDGER_LEASE", "{}_AUDIT", "{}_REFUSALS")


def pool_config(path: Path, pool: str) -> Path:
    config = {
        "governor": {"pool": pool},
        "swarms": [swarm_entry(s, ["code-analysis:python"], initial_budget=100.0) for s in POOLS[pool]],
        "metrics": {"port": 0},
        "ledger": {"replicas": 3, "lease_ttl_s": 2.0, "timeout_s": 2.0},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def on_nodes(cluster: NatsCluster, first: int) -> str:
    """The cluster's URLs starting at node `first`: the process connects there."""
    return ",".join(cluster.urls_from(first))


async def start_pools(
    tmp_path: Path, cluster: NatsCluster, nc: Client, processes: list[WorkerProcess]
) -> dict[str, WorkerProcess]:
    """Each pool's active on node 1 (the first to start takes the lease), its standby on node 2 or 3; by name
    (`eu-a`, `eu-b`, ...), each also in `processes` (killed after the test)."""
    started: dict[str, WorkerProcess] = {}
    for i, pool in enumerate(POOLS):
        config = pool_config(tmp_path / f"{pool}.yaml", pool)
        active = start_worker_process(on_nodes(cluster, 0), config, tmp_path / f"{pool}-a.log")
        started[f"{pool}-a"] = active
        await answering(nc, f"governor.{pool}", timeout=60, worker=active)
        started[f"{pool}-b"] = start_worker_process(on_nodes(cluster, 1 + i), config, tmp_path / f"{pool}-b.log")
    processes.extend(started.values())
    return started


class TestPools:
    async def test_two_pools_share_nothing_and_fail_over_apart(
        self, tmp_path: Path, cluster: NatsCluster, cluster_nc: Client, processes: list[WorkerProcess]
    ) -> None:
        nc = cluster_nc
        started = await start_pools(tmp_path, cluster, nc, processes)

        # Discovery: one entry per pool (a standby does not answer), with the pool's name and subjects.
        found = await discover(nc, wait=1.0)
        assert [(p.pool, p.prefix) for p in found] == [("eu", "governor.eu"), ("us", "governor.us")]
        serving_before = {p.pool: p.service_id for p in found}

        # Streams of their own, replicated, whose subjects stay inside the pool's prefix.
        js = nc.jetstream()
        for pool in POOLS:
            for name in STREAMS:
                info = await js.stream_info(name.format(f"GOVERNOR_{pool.upper()}"))
                assert info.config.num_replicas == 3
                other = next(p for p in POOLS if p != pool)
                for subject in info.config.subjects or []:
                    assert f"governor.{other}." not in subject and not subject.startswith("governor.ledger")
        with pytest.raises(nats.js.errors.NotFoundError):
            await js.stream_info("GOVERNOR_LEDGER")  # no unpooled governor here

        # The router sends each task to its pool; state changes in one pool are invisible in the other.
        pools = Pools(nc, PoolRouter([Route("us", tenant="acme-us")], default="eu"), timeout=5.0, retry_for=15.0)
        routed, reply = await pools.assign(["code-analysis:python"], tenant="acme-us", task_id="t-us")
        assert (routed, reply.swarm_id) == ("us", "us-1")
        routed, reply = await pools.assign(["code-analysis:python"], tenant="acme", task_id="t-eu")
        assert routed == "eu" and reply.swarm_id in POOLS["eu"]
        await pools.client("eu").cost("eu-1", "review", 30.0, event_id="eu-cost-1")
        with pytest.raises(errors.UnknownSwarm):
            await pools.client("us").cost("eu-1", "review", 1.0, event_id="us-cost-1")
        eu, us = (await pools.client("eu").status()), (await pools.client("us").status())
        assert eu.budgets == {"eu-1": 70.0, "eu-2": 100.0}
        assert us.budgets == {"us-1": 100.0}
        assert [a.task_id for a in (await pools.client("us").history()).assignments] == ["t-us"]

        # `governor pools` lists both; a swarm registered in both pools is an error it names.
        listed = await run_cli("pools", "--nats-url", cluster.url, "--wait", "1")
        assert listed.returncode == 0, listed.stderr
        assert [line.split()[:3] for line in listed.stdout.splitlines()[1:]] == [
            ["eu", "governor.eu", "2"],
            ["us", "governor.us", "1"],
        ]

        # Kill -9 of eu's active: eu's standby serves eu with its state; us's governor is untouched.
        started["eu-a"].kill()
        killed = time.monotonic()
        assert (await pools.client("eu").status()).budgets == {"eu-1": 70.0, "eu-2": 100.0}
        takeover = time.monotonic() - killed
        print(f"eu pool: the standby answered {takeover:.2f} s after kill -9 of the active")
        found = await discover(nc, wait=1.0)
        serving_after = {p.pool: p.service_id for p in found}
        assert serving_after["us"] == serving_before["us"]
        assert serving_after["eu"] != serving_before["eu"]
        async with await GovernorClient.connect(cluster.urls, pool="us") as us_client:
            assert (await us_client.status()).budgets == {"us-1": 100.0}
        with pytest.raises(ValueError, match="expected lower-case letters"):
            await GovernorClient.connect(cluster.urls, pool="US")
        assert started["us-a"].process.poll() is None and started["us-b"].process.poll() is None

        await GovernorClient(nc, prefix="governor.us").register(_profile("eu-2"), event_id="dup-eu-2")
        shared = await run_cli("pools", "--nats-url", cluster.url, "--wait", "1")
        assert shared.returncode == 1
        assert shared.error_line == "error: swarm eu-2 is in pools eu, us: give it to one"


def _profile(swarm_id: str) -> SwarmProfile:
    return SwarmProfile(
        swarm_id=swarm_id,
        capabilities=["code-analysis:python"],
        cost_per_hour=2.0,
        reputation_score=0.9,
        current_budget_remaining=10.0,
        model="haiku",
    )
