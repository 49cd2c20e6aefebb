"""The decision core measured on its own, one fresh process per registry size: `core_probe` in the child
(`python -m worker.bench --core N` prints its JSON), `run_core` in the parent."""

from __future__ import annotations

import gc
import json
import subprocess
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import msgspec

from schemas.policy import ResourcePolicy
from worker.bench.children import COMMAND
from worker.bench.measure import percentile, rss_kib
from worker.bench.report import progress
from worker.bench.workload import CAPABILITIES, synthetic_swarms, synthetic_tasks

HOLDS = 10_000
#: Tasks kept open while the probe assigns: each assigned task beyond these completes the oldest (untimed), so the
#: core runs in a steady state (and under the policy's `max_open_tasks`) however many samples are taken.
OPEN_TASKS = 1_000
#: After the assigns, a loop of fixed work with their median is timed as many times (at most FIXED_SAMPLES): its
#: p99 is what this machine alone makes of that median (interrupts, a busy neighbour, frequency changes).
FIXED_SAMPLES = 50_000


def fixed_work(n: int) -> int:
    """The same `n` additions every time: its spread of timings is the machine's, none of it the code's."""
    total = 0
    for i in range(n):
        total += i
    return total


def fixed_timings(n: int, samples: int) -> list[int]:
    """`samples` timings of `fixed_work(n)`, sorted."""
    clock = time.perf_counter_ns
    timings = []
    for _ in range(samples):
        t0 = clock()
        fixed_work(n)
        timings.append(clock() - t0)
    timings.sort()
    return timings


def calibrated(median_ns: float) -> int:
    """How many additions of `fixed_work` take `median_ns` at the median, here and now."""
    return max(1, round(100 * median_ns / max(1, fixed_timings(100, 501)[250])))


def core_probe(swarms: int, samples: int, budget_s: float) -> dict[str, float]:
    """The decision core alone: resident memory per swarm and latency per `assign`, in this fresh process.

    Times up to `samples` assigns (cycling through 5,000 tasks), stopping early (after at least 200) once
    `budget_s` seconds are spent. The garbage collector stays on, and the registry built is frozen out of its scans
    (`gc.freeze`), as the service does before it serves. Then `fixed_work` of the same median is timed as often
    (`fixed_p50_us`, `fixed_p99_us`: the p99 this machine gives work that never varies).
    """
    from worker.core.governor import Governor

    tasks = synthetic_tasks(5_000)
    gc.collect()
    before = rss_kib()
    core = Governor(ResourcePolicy(), capabilities=CAPABILITIES)
    started = time.perf_counter()
    for i, profile in enumerate(synthetic_swarms(swarms)):
        core.register_swarm(profile, now=0.0)
        if i % 1024 == 0:
            core.take_events()
    build_s = time.perf_counter() - started
    core.take_events()
    gc.collect()
    after = rss_kib()
    gc.freeze()
    timings: list[int] = []
    assigned = 0
    clock = time.perf_counter_ns
    assign = core.assign
    complete = core.complete_task
    take_events = core.take_events
    open_tasks: deque[str] = deque()
    deadline = time.perf_counter() + budget_s
    for i in range(samples):
        if i >= 200 and i % 64 == 0 and time.perf_counter() > deadline:
            break
        task_id, caps = f"task-{i}", tasks[i % len(tasks)]
        t0 = clock()
        reply = assign(task_id, caps, now=1.0)
        timings.append(clock() - t0)
        take_events()
        if reply.swarm_id is not None:
            assigned += 1
            open_tasks.append(task_id)
            if len(open_tasks) > OPEN_TASKS:  # steady state: the oldest task completes, untimed
                complete(open_tasks.popleft(), "success", now=1.0)
                take_events()
    timings.sort()
    p50 = percentile(timings, 0.50)
    fixed = fixed_timings(calibrated(p50), min(len(timings), FIXED_SAMPLES))
    gc.unfreeze()
    hold_bytes = holds_probe(core, tasks)
    return {
        "swarms": swarms,
        "bytes_per_swarm": (after - before) * 1024 / swarms,
        "p50_us": p50 / 1000,
        "p99_us": percentile(timings, 0.99) / 1000,
        "max_us": timings[-1] / 1000,
        "fixed_p50_us": percentile(fixed, 0.50) / 1000,
        "fixed_p99_us": percentile(fixed, 0.99) / 1000,
        "samples": len(timings),
        "assigned": assigned / len(timings),
        "build_s": build_s,
        "bytes_per_hold": hold_bytes,
    }


def holds_probe(core: Any, tasks: list[list[str]]) -> float:
    """Resident memory per open reservation: RSS before and after assigns that open 10,000 holds of a tiny
    estimate (each with the assignment the core remembers for `assign_window_s`), in bytes per hold."""
    core.configure(
        msgspec.structs.replace(core.policy, max_holds_per_swarm=HOLDS, max_holds=HOLDS, max_cost_per_task=1e6),
        list(core.vocabulary.extra),
    )
    gc.collect()
    before = rss_kib()
    held = 0
    for i in range(20 * HOLDS):  # many synthetic tasks find no swarm: go on until 10,000 holds are open
        if held >= HOLDS:
            break
        reply = core.assign(f"hold-{i}", tasks[i % len(tasks)], now=2.0, estimated_cost=0.0001)
        held += len(reply.assignments)
        if i % 1024 == 0:
            core.take_events()
    core.take_events()
    gc.collect()
    return (rss_kib() - before) * 1024 / max(1, held)


def run_core(sizes: Sequence[int], samples: int, budget_s: float) -> list[dict[str, float]]:
    """Each size in a fresh process, so that memory freed by a smaller run cannot hide a larger one's."""
    results = []
    for n in sizes:
        progress(f"decision core with {n:,} swarms")
        done = subprocess.run(
            [
                *COMMAND,
                "--core",
                str(n),
                "--samples",
                str(samples),
                "--budget-s",
                str(budget_s),
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"core probe with {n} swarms failed:\n{done.stderr.decode(errors='replace')[-2000:]}")
        results.append(json.loads(done.stdout))
    return results
