"""What a run measures: the sessions (a responder, its mode, loop, size and workloads), the core's registry
sizes, and the two profiles that say how long and how big, the full run and `--quick`."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from schemas.config import GovernorSection
from worker.bench.workload import PROBE_SWARMS

CORE_SIZES = (100, 1_000, 10_000, 100_000)
HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None
#: The loop `governor run` uses by default (`governor.event_loop`): the targets are judged on its rows.
_CONFIGURED_LOOP = GovernorSection().event_loop
DEFAULT_LOOP = ("uvloop" if HAS_UVLOOP else "asyncio") if _CONFIGURED_LOOP == "auto" else _CONFIGURED_LOOP


@dataclass(frozen=True)
class Session:
    """One responder process (on a fresh nats-server) and the workloads driven through it."""

    responder: str  # "echo" or "governor"
    mode: str  # "-" for echo; "durable" (the default: ledger on JetStream) or "memory" for the governor
    loop: str  # the responder's event loop: "asyncio" or "uvloop"
    swarms: int | None
    workloads: tuple[str, ...]
    probe: bool = False  # also measure the breaker-trip event latency
    groups: int = 0  # levels of budget groups every swarm's costs count against (0: none)
    strategy: str = "best"  # the policy's assignment strategy: best or spread
    profile: str | None = None  # sample the governor with py-spy during each cell, raw stacks to this file


@dataclass(frozen=True)
class Profile:
    """How long and how big: the full run or `--quick`."""

    c1_s: float
    cell_s: float
    warmup_s: float
    core_samples: int
    core_budget_s: float  # per registry size; the 100,000-swarm core is slow enough to need a bound
    probe_trips: int
    settle_s: float  # a governor must answer every request this long before it is measured
    sessions: tuple[Session, ...]
    concurrencies: tuple[int, ...] = (1, 64, 256)


ALL = ("assign", "cost", "mixed")
BASE_SESSIONS = (
    Session("echo", "-", "asyncio", None, ("echo",)),
    Session("governor", "durable", "asyncio", 1_000, ALL, probe=True),
    Session("governor", "memory", "asyncio", 1_000, ALL),
)
UVLOOP_SESSIONS = (
    Session("echo", "-", "uvloop", None, ("echo",)),
    Session("governor", "durable", "uvloop", 1_000, ALL),
)
# After the echo row of its loop, which is its baseline.
LARGE_SESSIONS = (Session("governor", "durable", DEFAULT_LOOP, 100_000, ("assign", "cost")),)
# Under a minute: no 100,000-swarm governor over NATS (its start alone takes many seconds), fewer in-memory rows.
QUICK_SESSIONS = (
    Session("echo", "-", "asyncio", None, ("echo",)),
    Session("governor", "durable", "asyncio", 1_000, ALL, probe=True),
    Session("governor", "memory", "asyncio", 1_000, ("cost",)),
    Session("echo", "-", "uvloop", None, ("echo",)),
    Session("governor", "durable", "uvloop", 1_000, ("assign", "cost")),
)
FULL = Profile(
    c1_s=3.0,
    cell_s=4.0,
    warmup_s=0.5,
    core_samples=200_000,
    core_budget_s=5.0,
    probe_trips=PROBE_SWARMS,
    settle_s=4.0,  # longer than the lease's TTL (3 s): a lease lost right after the start shows
    sessions=BASE_SESSIONS + UVLOOP_SESSIONS + LARGE_SESSIONS,
)
QUICK = Profile(
    c1_s=0.6,
    cell_s=0.8,
    warmup_s=0.2,
    core_samples=50_000,
    core_budget_s=1.0,
    probe_trips=100,
    settle_s=1.0,
    sessions=QUICK_SESSIONS,
)
