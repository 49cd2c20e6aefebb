"""A flood larger than the mailbox: the worker refuses the excess at once (`overloaded`), keeps its memory flat,
counts the refusals, keeps its lease the whole time, and answers normally afterwards.

The worker runs as `python -m worker run` in its own process so that its memory can be read from
`/proc/<pid>/status`; the flood comes from one loopback connection, bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
import yaml
from nats.aio.client import Client
from nats.micro.request import ERROR_CODE_HEADER

from tests.integration.helpers import WorkerProcess, http_get, spawn_worker
from worker.ops.natsserver import NatsServer, free_port

REPO = Path(__file__).resolve().parents[2]
MAILBOX = 8
DEFAULT_MAILBOX = 10_000
"""`governor.mailbox_size`'s default."""
FLOOD = 20_000
"""Requests per flood, all in flight at once: 2,500 times the small mailbox, twice the default one."""
FLOODS = 5
CAPABILITIES = 64
"""Each request names the most capabilities allowed, so that a queued request is big (about 7 KiB decoded)."""
PEAK_GROWTH_LIMIT_KB = 32 * 1024
"""Why 32 MiB: the bounded mailbox holds 8 commands; beyond them the worker only holds what nats-py has read but
not yet handed over and the replies not yet flushed (measured: under 1 MiB of peak growth over three floods).
The same floods against an unbounded mailbox (`mailbox_size: 1000000`) were measured at +135 MiB of peak RSS:
about 20,000 queued commands of 7 KiB each. 32 MiB is far from both. With the default mailbox, its 10,000 commands
(70 MiB) come on top."""
COMMAND_KB = 7
FLOOD_TIMEOUT = 30.0
START_TIMEOUT = 30.0

SWARMS = [
    {
        "swarm_id": "sip",
        "capabilities": ["integration:sip", "architecture:security"],
        "cost_per_hour": 5.0,
        "reputation_score": 0.95,
        "initial_budget": 25.0,
        "model": "sonnet",
    },
    {
        "swarm_id": "ndi",
        "capabilities": ["integration:ndi"],
        "cost_per_hour": 2.0,
        "reputation_score": 0.9,
        "initial_budget": 25.0,
        "model": "haiku",
    },
]


@dataclass
class MeteredWorker(WorkerProcess):
    """`python -m worker run` in a child process, with its metrics endpoint and its mailbox size."""

    metrics_port: int = 0
    mailbox: int = MAILBOX

    def memory_kb(self, field: str = "VmRSS") -> int:
        """A memory figure of the worker process from /proc, in KiB (`VmRSS` now, `VmHWM` the peak so far)."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(rf"^{field}:\s+(\d+) kB$", status, flags=re.MULTILINE)
        assert match is not None, status
        return int(match.group(1))

    def get(self, path: str) -> tuple[int, str]:
        """An HTTP GET on the metrics endpoint: (status, body)."""
        return http_get(self.metrics_port, path, timeout=2)

    def scrape(self, series: str) -> float:
        """One series as scraped from `/metrics` (name and labels as exposed), 0 when it does not exist yet."""
        status, body = self.get("/metrics")
        assert status == 200
        match = re.search(rf"^{re.escape(series)} (\S+)$", body, flags=re.MULTILINE)
        return float(match.group(1)) if match else 0.0


def start_with_mailbox(tmp_path: Path, nats_url: str, mailbox: int | None = MAILBOX) -> MeteredWorker:
    """The worker with this mailbox size (None: the default config's)."""
    metrics_port = free_port()
    config = tmp_path / "governor.yaml"
    governor: dict[str, Any] = {"max_cost_per_task": 10.0}
    if mailbox is not None:
        governor["mailbox_size"] = mailbox
    config.write_text(
        yaml.safe_dump(
            {
                "governor": governor,
                "metrics": {"host": "127.0.0.1", "port": metrics_port},
                "swarms": SWARMS,
            }
        )
    )
    log_file = tmp_path / "worker.log"
    return MeteredWorker(spawn_worker(nats_url, config, log_file), log_file, metrics_port)


@pytest.fixture(params=[MAILBOX, None], ids=["mailbox-8", "default-config"])
def worker_process(request: pytest.FixtureRequest, tmp_path: Path, nats_server: NatsServer) -> Iterator[MeteredWorker]:
    """The worker in a child process (a small mailbox, or the default config), against the test's nats-server;
    stopped after the test."""
    running = start_with_mailbox(tmp_path, nats_server.url, request.param)
    running.mailbox = request.param or DEFAULT_MAILBOX
    try:
        yield running
    finally:
        running.stop()


async def wait_ready(worker: MeteredWorker) -> None:
    """Wait until `/readyz` answers 200 (the worker serves), failing with its log if it exits first."""
    async with asyncio.timeout(START_TIMEOUT):
        while True:
            if worker.process.poll() is not None:
                pytest.fail(f"the worker exited with {worker.process.returncode}:\n{worker.log()}")
            try:
                status, _ = await asyncio.to_thread(worker.get, "/readyz")
            except OSError:
                status = 0
            if status == 200:
                return
            await asyncio.sleep(0.05)


@dataclass
class FloodResult:
    ok: int = 0
    overloaded: int = 0
    other: list[str] = field(default_factory=list)


def assign_body(task_id: str, capability: str) -> bytes:
    return msgspec.json.encode({"task_id": task_id, "required_capabilities": [capability] * CAPABILITIES})


async def flood(nc: Client, count: int) -> FloodResult:
    """Send `count` assign requests at once and sort the replies: ok, overloaded (with its 503 header), other."""
    body = assign_body("f" * 200, "integration:sip")
    result = FloodResult()

    async def one() -> None:
        reply = await nc.request("governor.assign", body, timeout=FLOOD_TIMEOUT)
        data = msgspec.json.decode(reply.data)
        if data["ok"] is True and data["swarm_id"] == "sip":
            result.ok += 1
        elif (
            data["ok"] is False
            and data["error"]["code"] == "overloaded"
            and (reply.headers or {}).get(ERROR_CODE_HEADER) == "503"
        ):
            result.overloaded += 1
        else:
            result.other.append(f"{reply.headers} {reply.data[:200]!r}")

    async with asyncio.timeout(FLOOD_TIMEOUT):
        await asyncio.gather(*(one() for _ in range(count)))
    return result


async def request(nc: Client, subject: str, body: bytes) -> dict[str, Any]:
    return dict(msgspec.json.decode((await nc.request(subject, body, timeout=5)).data))


class TestOverload:
    async def test_flood_is_refused_at_once_with_flat_memory_and_counted(
        self, worker_process: MeteredWorker, nats_server: NatsServer
    ) -> None:
        """Five floods of 20,000 requests, against a mailbox of 8 and against the default config, get ok or
        `overloaded` (503), peak memory stays flat, the refusals are counted in metrics, the lease is never lost,
        and requests afterwards are answered normally."""
        await wait_ready(worker_process)
        nc = await nats.connect(nats_server.url, max_reconnect_attempts=0)
        try:
            warm_up = [
                await request(nc, "governor.assign", assign_body(f"w-{i}", "integration:sip")) for i in range(50)
            ]
            baseline = worker_process.memory_kb()
            results = [await flood(nc, FLOOD) for _ in range(FLOODS)]
            peak = worker_process.memory_kb("VmHWM")
            status = await request(nc, "governor.status", b"")
            after = await request(nc, "governor.assign", assign_body("after", "integration:ndi"))
        finally:
            await nc.close()
        assert [(r["ok"], r["swarm_id"]) for r in warm_up] == [(True, "sip")] * 50
        for result in results:
            assert result.other == []
            assert result.ok + result.overloaded == FLOOD
            assert result.ok >= worker_process.mailbox
            if worker_process.mailbox == MAILBOX:  # the default mailbox may take a whole flood in
                assert result.overloaded > 0
        queued_kb = COMMAND_KB * worker_process.mailbox if worker_process.mailbox > MAILBOX else 0
        assert peak - baseline < PEAK_GROWTH_LIMIT_KB + queued_kb, (baseline, peak)
        assert (status["ok"], status["budgets"]) == (True, {"sip": 25.0, "ndi": 25.0})
        assert (after["ok"], after["swarm_id"]) == (True, "ndi")
        scraped = await asyncio.to_thread(
            worker_process.scrape, 'if_governor_requests_rejected_total{code="overloaded"}'
        )
        assert scraped == float(sum(r.overloaded for r in results))
        assert await asyncio.to_thread(worker_process.scrape, "if_governor_lease_lost_total") == 0.0
        log_text = worker_process.log()
        assert [line for line in log_text.splitlines() if " WARNING " in line or " ERROR " in line] == [], log_text
        assert worker_process.process.poll() is None
