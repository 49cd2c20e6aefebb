"""The synthetic workload, the same in every process and run (seeded): swarms, tasks, the payloads of each
workload, and the governor's config that registers the swarms."""

from __future__ import annotations

import random
from collections.abc import Iterator

import msgspec

from schemas.config import Config
from schemas.profiles import SwarmProfile

CAPABILITY_TYPES = 200
CAPABILITIES: tuple[str, ...] = tuple(f"bench:cap-{i:03d}" for i in range(CAPABILITY_TYPES))
#: Held only by the breaker-probe swarms, which tasks never ask for: they cannot change any assign row.
PROBE_CAPABILITY = "bench:breaker-probe"
PROBE_SWARMS = 200
SWARM_BUDGET = 1_000_000.0  # far more than any run spends (costs are at most 0.01): no breaker trips
ECHO_SUBJECT = "bench.echo"
PREFIX = "governor"
SEED = 4

#: A workload: the requests to send, as (subject, payload), cycled through.
Work = list[tuple[str, bytes]]


def swarm_id(i: int) -> str:
    return f"swarm-{i:06d}"


def synthetic_swarms(n: int, seed: int = SEED) -> Iterator[SwarmProfile]:
    """`n` swarms with 3-8 of the 200 capabilities each, costs under the default task ceiling, huge budgets."""
    rng = random.Random(seed)
    for i in range(n):
        yield SwarmProfile(
            swarm_id=swarm_id(i),
            capabilities=rng.sample(CAPABILITIES, rng.randint(3, 8)),
            cost_per_hour=round(rng.uniform(0.5, 9.5), 2),
            reputation_score=round(rng.uniform(0.5, 1.0), 3),
            current_budget_remaining=SWARM_BUDGET,
            model="bench",
        )


def probe_swarm_id(i: int) -> str:
    return f"probe-{i:04d}"


def probe_swarms() -> Iterator[SwarmProfile]:
    """Swarms with a budget of 1 USD that a cost of 2 USD trips: for the breaker-event latency."""
    for i in range(PROBE_SWARMS):
        yield SwarmProfile(
            swarm_id=probe_swarm_id(i),
            capabilities=[PROBE_CAPABILITY],
            cost_per_hour=1.0,
            reputation_score=1.0,
            current_budget_remaining=1.0,
            model="bench",
        )


def synthetic_tasks(count: int, seed: int = SEED + 1) -> list[list[str]]:
    """`count` tasks needing 1-5 of the 200 capabilities."""
    rng = random.Random(seed)
    return [rng.sample(CAPABILITIES, rng.randint(1, 5)) for _ in range(count)]


def assign_payloads(count: int) -> list[bytes]:
    encode = msgspec.json.encode
    return [
        encode({"task_id": f"task-{i}", "required_capabilities": caps}) for i, caps in enumerate(synthetic_tasks(count))
    ]


def cost_payloads(count: int, swarms: int, seed: int = SEED + 2) -> list[bytes]:
    """Small costs on random swarms: a whole run spends a tiny fraction of any budget."""
    rng = random.Random(seed)
    encode = msgspec.json.encode
    return [
        encode(
            {"swarm_id": swarm_id(rng.randrange(swarms)), "operation": "bench", "cost": rng.randint(1, 100) / 10_000}
        )
        for _ in range(count)
    ]


GROUP_FANOUT = 4
"""Each budget group of the bench has this many children, down to the leaves that hold the swarms."""
GROUP_PERIODS = ("month", "week", "day", "6h", "1h", "30m", "10m", "1m")
"""The period of each level's groups, root first: calendar periods at the top, fixed lengths below."""


def bench_groups(levels: int) -> list[dict[str, object]]:
    """`levels` levels of budget groups (a root, then GROUP_FANOUT children per group), limits far above what a
    run spends; the leaves are `g<level>-<i>`."""
    groups: list[dict[str, object]] = []
    for level in range(levels):
        for i in range(GROUP_FANOUT**level):
            group: dict[str, object] = {
                "id": f"g{level}-{i}",
                "limit": 100_000_000.0,
                "period": GROUP_PERIODS[level % len(GROUP_PERIODS)],
                "timezone": "Europe/Paris",
            }
            if level:
                group["parent"] = f"g{level - 1}-{i // GROUP_FANOUT}"
            groups.append(group)
    return groups


def bench_config(
    swarms: int,
    *,
    durable: bool,
    pool: str | None = None,
    replicas: int = 1,
    groups: int = 0,
    strategy: str = "best",
) -> Config:
    """The governor's config: the synthetic capabilities and swarms (plus the probes), no metrics endpoint; with
    `groups`, that many levels of budget groups, each swarm in a leaf (round robin).

    Swarms come in through the config, as in production: in-memory mode registers them when the core is built;
    durable mode writes them to the ledger before it serves.
    """
    profiles = [*synthetic_swarms(swarms), *probe_swarms()]
    leaves = GROUP_FANOUT ** (groups - 1) if groups else 0
    raw = {
        "capabilities": [*CAPABILITIES, PROBE_CAPABILITY],
        "swarms": [
            {
                "swarm_id": p.swarm_id,
                "capabilities": p.capabilities,
                "cost_per_hour": p.cost_per_hour,
                "reputation_score": p.reputation_score,
                "initial_budget": p.current_budget_remaining,
                "model": p.model,
                **({"budget_group": f"g{groups - 1}-{i % leaves}"} if leaves else {}),
            }
            for i, p in enumerate(profiles)
        ],
        "budgets": bench_groups(groups),
        "metrics": {"port": 0},
        "nats": {"name": "bench-governor"},
        "ledger": {"enabled": durable, "replicas": replicas},
        "governor": {"pool": pool, "strategy": strategy},
    }
    return msgspec.convert(raw, Config)


def workloads() -> dict[str, Work]:
    """The payloads of every workload, the same in every process and run (seeded)."""
    payloads = assign_payloads(4096)
    rng = random.Random(SEED + 3)
    assign_work: Work = [(f"{PREFIX}.assign", p) for p in payloads]
    cost_work: Work = [(f"{PREFIX}.cost", p) for p in cost_payloads(4096, 1_000)]
    work: dict[str, Work] = {
        "echo": [(ECHO_SUBJECT, p) for p in payloads],
        "assign": assign_work,
        "cost": cost_work,
        "mixed": [assign_work[i] if rng.random() < 0.8 else cost_work[i] for i in range(len(payloads))],
    }
    return work
