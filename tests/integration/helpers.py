"""The integration tests' harness (not a test module): waiting for a governor, recording what it publishes, the
worker and the `governor` command as child processes, and reading what it stored.

tests/conftest.py builds its fixtures from these; tests/integration/shipped.py adds the shipped deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from prometheus_client import CollectorRegistry

from schemas.config import Config
from worker.core.governor import Governor
from worker.ops.metrics import Metrics
from worker.service.app import Worker
from worker.storage.journal import stream_name

REPO = Path(__file__).resolve().parents[2]

#: The governor's own subjects a hostile request may name as its reply subject, to have the governor's answer sent,
#: with its credentials, into its ledger, lease key, snapshot store, the JetStream API, its events, its witness
#: records or its request subjects (the attack tests on both server configs start from these).
GOVERNOR_REPLY_TARGETS = (
    "governor.ledger",
    "$KV.GOVERNOR_LEDGER_LEASE.holder",
    "$O.GOVERNOR_LEDGER_SNAPSHOTS.C.x",
    "$JS.API.STREAM.DELETE.GOVERNOR_LEDGER",
    "$JS.API.STREAM.PURGE.GOVERNOR_LEDGER",
    "governor.events.breaker.reset",
    "governor.events.escalation",
    "governor.witness.circuit_breaker_reset",
    "governor.cost",
)

# -- a governor in this process ------------------------------------------------------------------------------------

WorkerFactory = Callable[..., Any]
"""The `start_worker` fixture: `await start_worker(config, **worker_options)` returns the serving Worker."""


async def serve(config: Config, *, timeout: float, **options: Any) -> Worker:
    """A Worker on `config` (its servers are the config's unless `options` names others) with a metrics registry of
    its own, started within `timeout` seconds; the caller stops it."""
    worker = Worker(config, metrics=Metrics(CollectorRegistry()), **options)
    async with asyncio.timeout(timeout):
        await worker.__aenter__()
    return worker


async def answering(
    nc: Client, prefix: str = "governor", *, timeout: float = 5.0, worker: WorkerProcess | None = None
) -> None:
    """Wait until the governor answers `<prefix>.status` on `nc` with an ok reply (no responders, a timeout or an
    error reply: not serving yet), within `timeout` seconds; fail with the log of `worker` if its process exits
    first.

    Why a test that is not about start-up waits here: a connection opened *before* a durable worker set up
    JetStream (the conftest's `nc` is one) was seen to get `no responders` on its first request for about a
    millisecond after `Worker.__aenter__` returned, in about 4% of starts (never on a connection opened after).
    """
    last: object = "no reply"
    try:
        async with asyncio.timeout(timeout):
            while True:
                if worker is not None and worker.process.poll() is not None:
                    pytest.fail(f"the worker exited with {worker.process.returncode}:\n{worker.log()}")
                try:
                    msg = await nc.request(f"{prefix}.status", b"{}", timeout=min(timeout, 1.0))
                    last = msgspec.json.decode(msg.data)
                    if isinstance(last, dict) and last.get("ok") is True:
                        return
                except (NoRespondersError, nats.errors.TimeoutError) as exc:
                    last = exc
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"no ok answer on {prefix}.status within {timeout:g}s; the last: {last!r}")


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait until `condition()` holds, checked every 50 ms, failing with `what` after `timeout` seconds (for state
    that no message announces, such as how far a standby has replayed)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:g}s: {what}")
        await asyncio.sleep(0.05)


# -- what a client receives ----------------------------------------------------------------------------------------


@dataclass
class Recorder:
    """Every message a subscriber received (its `receive` is the subscription's callback), in arrival order."""

    messages: list[Msg] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def receive(self, msg: Msg) -> None:
        self.messages.append(msg)
        self._changed.set()

    def subjects(self) -> list[str]:
        return [m.subject for m in self.messages]

    def bodies(self, subject: str) -> list[dict[str, Any]]:
        """The decoded bodies received on exactly `subject`."""
        return [msgspec.json.decode(m.data) for m in self.messages if m.subject == subject]

    async def wait_for(self, subject: str, count: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until `count` messages arrived on `subject`; return them."""
        await self.wait_until(lambda: len(self.bodies(subject)) >= count, timeout)
        return self.bodies(subject)

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until `condition()` holds, checked after each message."""
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


async def record(nc: Client, *subjects: str) -> Recorder:
    """Subscribe `nc` to `subjects`; the subscriptions are in place when this returns."""
    seen = Recorder()
    for subject in subjects:
        await nc.subscribe(subject, cb=seen.receive)
    await nc.flush()
    return seen


class ServerErrors:
    """The asynchronous errors a connection got from the server (pass `on_error` as its `error_cb`), in order."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self._changed = asyncio.Event()

    async def on_error(self, exc: Exception) -> None:
        self.messages.append(str(exc))
        self._changed.set()

    async def wait_for(self, message: str, timeout: float = 5.0) -> None:
        """Wait until the server sent exactly `message`."""
        async with asyncio.timeout(timeout):
            while message not in self.messages:
                self._changed.clear()
                await self._changed.wait()

    async def first(self, timeout: float = 5.0) -> list[str]:
        """Wait until the server sent any error; every error it sent so far."""
        async with asyncio.timeout(timeout):
            while not self.messages:
                self._changed.clear()
                await self._changed.wait()
        return self.messages


def project(actual: Any, expected: Any) -> Any:
    """`actual` reduced to the keys that `expected` names, recursively, for comparison with `expected`.

    Replies and events only grow (each new field with a default), so a test of the wire contract checks every
    field it names, with its exact value, and ignores fields added later. A missing key shows as `"<missing>"`;
    lists are compared element by element when their lengths match.
    """
    if isinstance(expected, dict) and isinstance(actual, dict):
        return {key: project(actual[key], value) if key in actual else "<missing>" for key, value in expected.items()}
    if isinstance(expected, list) and isinstance(actual, list) and len(actual) == len(expected):
        return [project(a, e) for a, e in zip(actual, expected, strict=True)]
    return actual


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    """GET http://127.0.0.1:<port><path> (blocking: call it through `asyncio.to_thread` from a test's loop);
    (status, body), also for an error status."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


# -- what the governor stored --------------------------------------------------------------------------------------


async def ledger_messages(nc: Client) -> list[bytes]:
    """Every message the ledger stream holds, oldest first."""
    js = nc.jetstream()
    name = stream_name("governor")
    state = (await js.stream_info(name)).state
    return [(await js.get_msg(name, seq)).data or b"" for seq in range(state.first_seq, state.last_seq + 1)]


def empty_snapshot(seq: int) -> bytes:
    """What the governor stores as its snapshot at ledger sequence `seq`, of a core that holds nothing."""
    return zlib.compress(msgspec.msgpack.encode(Governor().export_state(seq)))


# -- the worker in a child process ---------------------------------------------------------------------------------


def spawn_worker(
    nats_url: str, config: Path, log_file: Path, *, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`python -m worker run` on `config` against `nats_url` in a child process of its own session (so signals to
    it reach no one else), its output appended to `log_file`, killed if the test process dies."""
    from worker.ops.natsserver import _die_with_parent

    with log_file.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--nats-url", nats_url, "--config", str(config)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM (a worker drains), then SIGKILL after `timeout` seconds; always reaped."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@dataclass
class WorkerProcess:
    """`python -m worker run` in a child process (see `spawn_worker`), its output in `log_file`."""

    process: subprocess.Popen[bytes]
    log_file: Path

    def log(self) -> str:
        return self.log_file.read_text(encoding="utf-8", errors="replace")

    def kill(self) -> None:
        """SIGKILL: no drain, no snapshot, no lease release."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM (the worker drains, snapshots and gives its lease up), SIGKILL after `timeout` seconds; its exit
        status."""
        stop_process(self.process, timeout)
        assert self.process.returncode is not None
        return self.process.returncode


def start_worker_process(
    nats_url: str, config: Path, log_file: Path, *, env: dict[str, str] | None = None
) -> WorkerProcess:
    """Start `governor run` on `config` against `nats_url` (see `spawn_worker`)."""
    return WorkerProcess(spawn_worker(nats_url, config, log_file, env=env), log_file)


# -- the `governor` command ----------------------------------------------------------------------------------------

COMMAND_TIMEOUT = 30.0
"""Seconds a `governor` command may take."""


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a `governor` subprocess: no inherited `IF_GOVERNOR_*`, no metrics port to clash on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IF_GOVERNOR_")}
    env["IF_GOVERNOR_METRICS_PORT"] = "0"
    env.update(extra)
    return env


@dataclass
class CliResult:
    """What a `governor` command printed, and how it exited."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def error_line(self) -> str:
        """The one line an error must print (on stderr), checked to be the only one."""
        lines = self.stderr.strip().splitlines()
        assert len(lines) == 1, self.stderr
        return lines[0]


async def start_cli(
    *args: str, env: Mapping[str, str] | None = None, stderr: int | IO[bytes] = asyncio.subprocess.PIPE
) -> asyncio.subprocess.Process:
    """`python -m worker ARGS...` started from the repository root with stdin not a terminal and stdout piped, in a
    session of its own (a signal meant for the test run does not reach it, and `end_cli` can end its whole group);
    the environment is `cli_env()` unless `env` is given."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        *args,
        cwd=REPO,
        env=cli_env() if env is None else dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
        start_new_session=True,
    )


async def end_cli(process: asyncio.subprocess.Process, grace: float = 10.0) -> None:
    """SIGTERM (a command then stops what it started), SIGKILL to its whole group after `grace` seconds; reaped."""
    if process.returncode is not None:
        return
    process.terminate()
    try:
        await asyncio.wait_for(process.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


async def run_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = COMMAND_TIMEOUT, merge_stderr: bool = False
) -> CliResult:
    """Run `python -m worker ARGS...` (see `start_cli`) to its end and return what it printed (`merge_stderr`: its
    standard error goes into `stdout`, in the order written). A command still running after `timeout` seconds is
    ended (`end_cli`) and the test fails, showing what it printed."""
    process = await start_cli(
        *args, env=env, stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE
    )

    async def read_all(stream: asyncio.StreamReader | None) -> bytes:
        return b"" if stream is None else await stream.read()

    reading = asyncio.ensure_future(asyncio.gather(read_all(process.stdout), read_all(process.stderr)))
    try:
        await asyncio.wait([reading], timeout=timeout)
        if not reading.done():
            await end_cli(process)
            await asyncio.wait([reading], timeout=5.0)
            out, err = reading.result() if reading.done() else (b"", b"")
            pytest.fail(
                f"`governor {' '.join(args)}` did not finish within {timeout:g}s:\n"
                f"{out.decode(errors='replace')}\n{err.decode(errors='replace')}"
            )
        out, err = reading.result()
        returncode = await process.wait()
    finally:
        reading.cancel()
        await end_cli(process)
    return CliResult(returncode, out.decode(), err.decode())
