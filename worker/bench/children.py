"""The responders' processes: in the child, the bare echo responder and the governor (each prints `ready PID
RSS_KIB ...` once it serves, and stops on SIGINT, SIGTERM or its parent's death); in the parent, `Child`, which
starts one, waits for that line and stops it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import IO, Any

import nats
from nats.aio.msg import Msg

from worker.bench.measure import peak_rss_kib, rss_kib
from worker.bench.workload import ECHO_SUBJECT, bench_config

#: How the bench starts a process of its own (see `__main__.py` for the modes).
COMMAND = (sys.executable, "-m", "worker.bench")
READY_TIMEOUT_S = 120.0


def run_child(main: Callable[[], Coroutine[Any, Any, None]], use_uvloop: bool) -> None:
    """Run a child's `main` to its end on asyncio, or on uvloop."""
    if use_uvloop:
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT, SIGTERM, or the death of the parent (a killed bench leaves no child behind)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    parent = os.getppid()

    async def watch_parent() -> None:
        while True:  # no event tells of a parent's death: poll
            await asyncio.sleep(0.5)
            if os.getppid() != parent:
                stop.set()
                return

    _background.add(loop.create_task(watch_parent()))
    return stop


_background: set[asyncio.Task[None]] = set()  # keeps the watcher task referenced


def _ready(extra: str = "") -> None:
    print(f"ready {os.getpid()} {rss_kib()} {extra}".rstrip(), flush=True)


async def serve_echo(url: str) -> None:
    """A bare nats-py responder: a queue subscription that answers with the request's own bytes."""
    stop = _stop_on_signals()
    nc = await nats.connect(url, name="bench-echo")
    publish = nc.publish

    async def handle(msg: Msg) -> None:
        await publish(msg.reply, msg.data)

    await nc.subscribe(ECHO_SUBJECT, queue="q", cb=handle)
    await nc.flush()
    _ready()
    await stop.wait()
    await nc.drain()


async def serve_governor(
    url: str,
    swarms: int,
    *,
    durable: bool,
    pool: str | None = None,
    replicas: int = 1,
    groups: int = 0,
    strategy: str = "best",
) -> None:
    """The real worker (bus, actor, ledger when durable, metrics) with `swarms` synthetic swarms (in `pool`, with
    `replicas` of each stream: the pools mode; under `groups` levels of budget groups)."""
    from worker.service.app import Worker

    stop = _stop_on_signals()
    config = bench_config(swarms, durable=durable, pool=pool, replicas=replicas, groups=groups, strategy=strategy)
    async with Worker(config, servers=url.split(",")) as worker:
        await worker.start_settled()  # RSS when serving, not at the start's peak (printed apart)
        _ready(f"{len(worker.core)} {peak_rss_kib()}")
        await stop.wait()


class Child:
    """A child process that prints `ready PID RSS_KIB ...` once it serves; terminated (then killed) on close."""

    def __init__(self, name: str, args: list[str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name.replace(' ', '-')}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [*COMMAND, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        self.ready_rss_kib = 0
        self.peak_rss_kib = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    async def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        assert self.process.stdout is not None
        stdout = self.process.stdout
        try:
            line = await asyncio.wait_for(asyncio.to_thread(stdout.readline), timeout)
        except TimeoutError:
            raise RuntimeError(f"{self.name} was not ready within {timeout:.0f}s; see {self.log_path}") from None
        if not line.startswith(b"ready "):
            self.process.wait(timeout=5)
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited with {self.process.returncode} before serving:\n{tail}")
        fields = line.split()
        self.ready_rss_kib = int(fields[2])
        self.peak_rss_kib = int(fields[4]) if len(fields) > 4 else self.ready_rss_kib

    def logged(self, limit: int = 5) -> list[str]:
        """The first distinct lines the child wrote to stderr (its warnings and errors)."""
        lines = dict.fromkeys(line.strip() for line in self.log_path.read_text(errors="replace").splitlines())
        return [line for line in lines if line][:limit]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()
