"""`governor bench --pools 1,2,4`: aggregate decisions per second of 1, 2 and 4 pools on a local three-node
cluster, as ratios to one pool measured in the same run.

Each pool is a durable governor child (its own subjects, ledger, lease and audit streams, all R3, so every
decision is a synced write on a quorum of the three nodes) with the same 1,000 synthetic swarms; the children
connect to the nodes in turn. The load generator (this process) keeps 64 assign requests outstanding per pool
on one connection, spread over the pools' subjects, for a fixed time per step. On this machine every process
shares two cores, so the ratios show what the pools cost each other here; docs/scaling.md reads them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import nats

from schemas.config import pool_prefix
from worker.bench.children import Child
from worker.bench.measure import Pids, Requester, cpu_seconds, measure, settle
from worker.bench.report import _table, progress
from worker.bench.workload import PREFIX, Work, workloads
from worker.ops.natsserver import NatsCluster

CONCURRENCY_PER_POOL = 64
SWARMS_PER_POOL = 1_000


@dataclass
class Step:
    pools: int
    rps: float
    errors: int
    p50_ms: float
    p99_ms: float
    governor_cpu_us: float  # CPU of every governor per decision
    nats_cpu_us: float  # CPU of the three nodes per decision


def pool_work(assign: Work, pools: int) -> Work:
    """The assign payloads, each sent to one pool in turn."""
    return [(f"{pool_prefix(PREFIX, f'p{(i % pools) + 1}')}.assign", data) for i, (_, data) in enumerate(assign)]


async def measure_step(cluster: NatsCluster, pools: int, seconds: float, log_dir: Path) -> Step:
    """Start `pools` governors, let them settle, measure, stop them."""
    children: list[Child] = []
    nc = await nats.connect(cluster.urls, name="bench-pools-load")
    requester = Requester(nc)
    try:
        for i in range(pools):
            urls = cluster.urls_from(i)
            name = f"pools-{pools}-p{i + 1}"
            args = ["--serve", ",".join(urls), "--swarms", str(SWARMS_PER_POOL), "--pool", f"p{i + 1}"]
            children.append(Child(name, [*args, "--replicas", "3"], log_dir))
        for child in children:
            await child.wait_ready()
        await requester.start()
        work = pool_work(workloads()["assign"], pools)
        await settle(requester, work, steady_s=1.0)
        nodes = [node.process.pid for node in cluster.nodes if node.process is not None]
        pids = Pids(children[0].pid, nodes[0], children[0].pid)
        await measure(requester, work, 64, 0.5, pids)  # warm-up
        gov0 = sum(cpu_seconds(c.pid) for c in children)
        nats0 = sum(cpu_seconds(pid) for pid in nodes)
        cell = await measure(requester, work, CONCURRENCY_PER_POOL * pools, seconds, pids)
        gov = sum(cpu_seconds(c.pid) for c in children) - gov0
        nats_cpu = sum(cpu_seconds(pid) for pid in nodes) - nats0
        per = 1e6 / max(1, cell.total)
        return Step(
            pools, cell.rps, cell.errors, cell.latency_ms(0.5), cell.latency_ms(0.99), gov * per, nats_cpu * per
        )
    finally:
        await requester.close()
        await nc.close()
        for child in children:
            child.close()


async def run_pools(counts: list[int], seconds: float, log_dir: Path) -> list[Step]:
    steps = []
    for pools in counts:
        # A fresh cluster per step: no step reads streams another one wrote.
        with NatsCluster(log_dir / f"cluster-{pools}") as cluster:
            await asyncio.sleep(1.0)  # the nodes elect a meta leader
            progress(f"{pools} pool(s), c{CONCURRENCY_PER_POOL * pools}, {seconds:g} s")
            steps.append(await measure_step(cluster, pools, seconds, log_dir))
    return steps


def pools_table(steps: list[Step]) -> str:
    base = steps[0].rps if steps and steps[0].pools == 1 else None
    header = ("pools", "decisions/s", "x 1 pool", "p50 ms", "p99 ms", "governors us/dec", "nats us/dec", "errors")
    rows = [
        (
            str(s.pools),
            f"{s.rps:,.0f}",
            f"{s.rps / base:.2f}" if base else "-",
            f"{s.p50_ms:.2f}",
            f"{s.p99_ms:.2f}",
            f"{s.governor_cpu_us:.0f}",
            f"{s.nats_cpu_us:.0f}",
            str(s.errors),
        )
        for s in steps
    ]
    return _table(header, rows, left=0)


def main(counts: list[int], seconds: float = 5.0) -> int:
    from worker.bench.run import _with_log_dir

    started = time.monotonic()
    steps = _with_log_dir(lambda log_dir: asyncio.run(run_pools(counts, seconds, log_dir)))
    if steps is None:
        return 1
    print("Pools on a local three-node cluster (R3, synced), durable assign, 64 requests in flight per pool:")
    print(pools_table(steps))
    print(f"\nfinished in {time.monotonic() - started:.0f} s")
    return 0
