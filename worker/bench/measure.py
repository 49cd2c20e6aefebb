"""What the bench measures and how: a process's CPU time and memory (from /proc), percentiles, the load
generator's requester, the cells and rows it fills, and the ledger floor and breaker-event probes."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import StorageType

from worker.bench.workload import ECHO_SUBJECT, PREFIX, Work, probe_swarm_id

REQUEST_TIMEOUT_S = 5.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime and stime: fields 14 and 15


def rss_kib(pid: int | str = "self") -> int:
    """Resident set size (VmRSS) in KiB."""
    return _status_kib(pid, "VmRSS")


def peak_rss_kib(pid: int | str = "self") -> int:
    """The highest resident set size so far (VmHWM) in KiB."""
    return _status_kib(pid, "VmHWM")


def _status_kib(pid: int | str, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0.0
    rank = math.ceil(q * len(sorted_values))
    return sorted_values[min(len(sorted_values), max(rank, 1)) - 1]


class Requester:
    """Requests over one connection with one wildcard reply subscription (as nats-py's `request` does, leaner).

    A request without a reply after `timeout` seconds fails with TimeoutError (one sweeper task checks, in the
    order the requests were sent, so that no request pays for its own timer).
    """

    def __init__(self, nc: Client, timeout: float = REQUEST_TIMEOUT_S) -> None:
        self.nc = nc
        self.timeout = timeout
        self.inbox = nc.new_inbox() + "."
        self._cut = len(self.inbox)
        self._pending: dict[str, asyncio.Future[bytes]] = {}
        self._sent: deque[tuple[float, str]] = deque()
        self._seq = 0
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.nc.subscribe(self.inbox + "*", cb=self._on_reply)
        await self.nc.flush()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def _sweep(self) -> None:
        sent, pending = self._sent, self._pending
        while True:
            await asyncio.sleep(min(0.5, self.timeout / 4))
            now = time.monotonic()
            while sent and sent[0][0] <= now:
                future = pending.pop(sent.popleft()[1], None)
                if future is not None and not future.done():
                    future.set_exception(TimeoutError())

    async def _on_reply(self, msg: Msg) -> None:
        future = self._pending.pop(msg.subject[self._cut :], None)
        if future is not None and not future.done():
            future.set_result(msg.data)

    async def request(self, subject: str, data: bytes) -> bytes:
        """The reply's body (empty for NATS's own "no responders" status reply)."""
        self._seq += 1
        token = str(self._seq)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[token] = future
        self._sent.append((time.monotonic() + self.timeout, token))
        await self.nc.publish(subject, data, reply=self.inbox + token)
        return await future


@dataclass(frozen=True)
class Pids:
    """The processes whose CPU time a cell reads."""

    responder: int
    nats: int
    generator: int

    def cpu(self) -> CpuTimes:
        return CpuTimes(cpu_seconds(self.responder), cpu_seconds(self.nats), cpu_seconds(self.generator))


@dataclass(frozen=True)
class CpuTimes:
    responder: float
    nats: float
    generator: float

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.responder - other.responder, self.nats - other.nats, self.generator - other.generator)


@dataclass
class Cell:
    """One responder at one concurrency."""

    concurrency: int
    seconds: float
    completed: int  # ok replies within `seconds`
    total: int  # every reply, including those in flight at the deadline (the CPU time covers them too)
    errors: int  # error replies (including NATS "no responders") and timeouts
    latencies_ns: list[int]
    cpu_s: CpuTimes

    @property
    def rps(self) -> float:
        return self.completed / self.seconds

    def cpu_us_per_request(self, process: str) -> float:
        return getattr(self.cpu_s, process) / self.total * 1e6 if self.total else 0.0

    def latency_ms(self, q: float) -> float:
        return percentile(self.latencies_ns, q) / 1e6


@dataclass
class Row:
    """A responder measured at every concurrency."""

    name: str
    mode: str
    loop: str
    swarms: int | None
    cells: dict[int, Cell] = field(default_factory=dict)
    baseline: Row | None = None  # the echo row these ratios refer to

    def ratio(self, concurrency: int) -> float | None:
        if self.baseline is None or concurrency not in self.baseline.cells:
            return None
        base = self.baseline.cells[concurrency].rps
        return self.cells[concurrency].rps / base if base else None


@dataclass
class Results:
    """Everything one run measured over NATS, for the report."""

    rows: list[Row] = field(default_factory=list)
    # durable, the default loop: swarms -> RSS when serving (the start's burst over), and the start's peak RSS
    governor_rss_kib: dict[int, int] = field(default_factory=dict)
    governor_peak_rss_kib: dict[int, int] = field(default_factory=dict)
    trip_delays_ns: list[int] = field(default_factory=list)
    trip_failures: int = 0
    floor_ns: list[int] = field(default_factory=list)  # one synced JetStream publish, acknowledged, at c1
    notes: list[str] = field(default_factory=list)  # what the responders logged (warnings, errors)
    startup: list[str] = field(default_factory=list)  # how long each governor took to serve steadily


async def measure(requester: Requester, work: Work, concurrency: int, seconds: float, pids: Pids) -> Cell:
    """Keep `concurrency` requests outstanding for `seconds`; count replies and errors, time each request."""
    stop = False
    completed = 0
    total = 0
    errors = 0
    latencies: list[int] = []
    n = len(work)
    clock = time.perf_counter_ns
    request = requester.request

    async def client(offset: int) -> None:
        nonlocal completed, total, errors
        i = offset
        while not stop:
            subject, data = work[i % n]
            if i >= n and subject.endswith(".assign"):
                # A task id once per run: a repeated task_id would be answered from the governor's assignment
                # window (a duplicate), which is cheaper than the assignment this row measures.
                data = data.replace(b'"task-', b'"task-%d-' % (i // n), 1)
            i += concurrency
            t0 = clock()
            try:
                reply = await request(subject, data)
            except TimeoutError:
                errors += 1
                continue
            elapsed = clock() - t0
            total += 1
            if reply.startswith(b'{"ok":true') or (subject == ECHO_SUBJECT and reply):
                latencies.append(elapsed)
                if not stop:
                    completed += 1
            else:
                errors += 1

    cpu0 = pids.cpu()
    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for k in range(concurrency):
            group.create_task(client(k * (n // concurrency)))
        await asyncio.sleep(seconds)
        stop = True
        elapsed = time.perf_counter() - started
    cpu = pids.cpu() - cpu0
    latencies.sort()
    return Cell(concurrency, elapsed, completed, total, errors, latencies, cpu)


async def settle(
    requester: Requester, work: Work, *, steady_s: float = 4.0, limit_s: float = 90.0
) -> tuple[float, int]:
    """Wait until the responder has answered every request for `steady_s` (longer than the lease's TTL).

    A governor that says it is ready and then drops its lease would otherwise fail the first cells. Returns the
    seconds waited and how many times answering stopped; raises TimeoutError after `limit_s`.
    """
    started = time.monotonic()
    streak_since: float | None = None
    gaps = 0
    i = 0
    while True:
        now = time.monotonic()
        if streak_since is not None and now - streak_since >= steady_s:
            return now - started - steady_s, gaps
        if now - started > limit_s:
            raise TimeoutError(f"the governor did not answer steadily within {limit_s:.0f} s")
        subject, data = work[i % len(work)]
        i += 1
        try:
            ok = (await asyncio.wait_for(requester.request(subject, data), 2.0)).startswith(b'{"ok":true')
        except TimeoutError:
            ok = False
        if ok and streak_since is None:
            streak_since = time.monotonic()
        elif not ok:
            if streak_since is not None:
                gaps += 1
            streak_since = None
            await asyncio.sleep(0.2)
        else:
            await asyncio.sleep(0.05)


async def ledger_floor(nc: Client, work: Work, seconds: float) -> list[int]:
    """The durable path's floor: one JetStream publish at a time into a file stream on this nats-server (synced
    before its ack, as the ledger's), each a ledger-sized message; the time to each acknowledgement, in ns, sorted."""
    js = nc.jetstream(timeout=REQUEST_TIMEOUT_S)
    await js.add_stream(name="BENCH_FLOOR", subjects=["bench.floor"], storage=StorageType.FILE)
    clock = time.perf_counter_ns
    times: list[int] = []
    deadline = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < deadline:
        data = work[i % len(work)][1]
        i += 1
        t0 = clock()
        await js.publish("bench.floor", data, stream="BENCH_FLOOR")
        times.append(clock() - t0)
    await js.delete_stream("BENCH_FLOOR")
    times.sort()
    return times


async def breaker_latency(watcher: Client, requester: Requester, trips: int) -> tuple[list[int], int]:
    """Trip probe swarms one by one; for each, the time from the cost reply to the `breaker.tripped` event
    reaching `watcher` (its own connection), in ns; negative when the event arrived first.

    Returns the delays (sorted) and how many probes failed (no trip in the reply, or no reply or event in time).
    """
    events: dict[str, int] = {}
    arrived = asyncio.Event()
    clock = time.perf_counter_ns

    async def on_event(msg: Msg) -> None:
        events[msgspec.json.decode(msg.data)["swarm_id"]] = clock()
        arrived.set()

    sub = await watcher.subscribe(f"{PREFIX}.events.breaker.tripped", cb=on_event)
    await watcher.flush()
    delays: list[int] = []
    failed = 0
    try:
        for i in range(trips):
            probe = probe_swarm_id(i)
            try:
                reply = await requester.request(
                    f"{PREFIX}.cost", msgspec.json.encode({"swarm_id": probe, "operation": "probe", "cost": 2.0})
                )
                replied = clock()
                if b'"tripped":true' not in reply:
                    failed += 1
                    continue
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    while probe not in events:
                        arrived.clear()
                        await arrived.wait()
            except TimeoutError:
                failed += 1
                continue
            delays.append(events[probe] - replied)  # negative: the event overtook the reply
    finally:
        await sub.unsubscribe()
    delays.sort()
    return delays, failed
