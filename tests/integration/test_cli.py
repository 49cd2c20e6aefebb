"""The `governor` command as an operator uses it: real subprocesses, a real bundled nats-server, bounded waits.

`governor run` without a URL starts its own nats-server on a free port; the operator commands talk to it; the
process stops cleanly on SIGTERM and SIGINT and takes its nats-server with it. Every wait has a timeout, and
whatever a test started is killed (by pid) in a `finally`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import re
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml

from tests.integration.helpers import COMMAND_TIMEOUT, REPO, cli_env, run_cli, start_cli
from worker.ops.natsserver import NatsServer, free_port

EXAMPLE_CONFIG = REPO / "deploy" / "governor.yaml"


def listening(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:`port`."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def pids_using(marker: str) -> list[int]:
    """Pids of live processes whose command line contains `marker` (a path unique to one test)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if marker in cmdline and int(entry.name) != os.getpid():
                found.append(int(entry.name))
    return found


class RunningGovernor:
    """`governor run --nats-port P --data-dir D --config deploy/governor.yaml` as a subprocess."""

    def __init__(self, tmp_path: Path, *extra: str, config: Path = EXAMPLE_CONFIG) -> None:
        self.port = free_port()
        self.data_dir = tmp_path / "governor-nats"
        self.url = f"nats://127.0.0.1:{self.port}"
        self.args = ["run", "--nats-port", str(self.port), "--data-dir", str(self.data_dir), "--config", str(config)]
        self.args += extra
        self.stderr_path = tmp_path / "governor-run.stderr"
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.stderr_path.open("wb") as stderr:
            self.proc = await start_cli(*self.args, stderr=stderr)

    async def line(self, prefix: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """Read stdout until a line starting with `prefix`; return it."""
        assert self.proc is not None and self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise AssertionError(
                        f"governor run ended before printing {prefix!r}: stdout={self.lines} "
                        f"stderr={self.stderr_path.read_text()!r}"
                    )
                text = raw.decode().rstrip("\n")
                self.lines.append(text)
                if text.startswith(prefix):
                    return text

    async def serving(self) -> None:
        await self.line("governor serving ")

    async def stop(self, sig: signal.Signals, timeout: float = COMMAND_TIMEOUT) -> int:
        """Send `sig`, wait for the exit (bounded) and return the exit status; the rest of stdout is kept."""
        assert self.proc is not None and self.proc.stdout is not None
        self.proc.send_signal(sig)
        async with asyncio.timeout(timeout):
            rest = await self.proc.stdout.read()
            returncode = await self.proc.wait()
        self.lines += rest.decode().splitlines()
        return returncode

    async def cleanup(self) -> None:
        """Kill the governor if it still runs, and any nats-server left on this test's data directory."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 10)
        for pid in pids_using(str(self.data_dir)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def leftovers(self) -> list[int]:
        """Processes still running on this test's data directory (the bundled nats-server, if not stopped)."""
        return pids_using(str(self.data_dir))


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[RunningGovernor]:
    """`governor run` on deploy/governor.yaml with its bundled nats-server, serving; killed after the test."""
    gov = RunningGovernor(tmp_path)
    try:
        await gov.start()
        await gov.serving()
        yield gov
    finally:
        await gov.cleanup()


async def request(url: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """One request to the governor over its own short-lived connection."""
    nc = await nats.connect(url)
    try:
        msg = await nc.request(f"governor.{name}", json.dumps(body).encode(), timeout=5.0)
        reply: dict[str, Any] = json.loads(msg.data)
        return reply
    finally:
        await nc.close()


def table_row(status_output: str, swarm_id: str) -> list[str]:
    """The cells of a swarm's row in `governor status` (columns are separated by two or more spaces)."""
    for line in status_output.splitlines():
        if line.startswith(swarm_id + " "):
            return re.split(r"\s{2,}", line.strip())
    raise AssertionError(f"no row for {swarm_id} in:\n{status_output}")


# -- governor run ----------------------------------------------------------------------------------------------


class TestRun:
    async def test_starts_bundled_server_and_says_where(self, running: RunningGovernor) -> None:
        """Without a URL, `run` starts the bundled nats-server on loopback and prints its URL and data directory."""
        assert running.lines[0] == f"bundled nats-server listening on {running.url} (data in {running.data_dir})"
        assert running.lines[1].startswith(f"governor serving governor.* on {running.url} with 2 swarms")
        assert listening(running.port)

    @pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
    async def test_signal_stops_worker_and_bundled_server(self, running: RunningGovernor, sig: signal.Signals) -> None:
        """SIGTERM and SIGINT make `run` exit 0 after stopping the bundled nats-server (its port stops listening)."""
        assert await running.stop(sig) == 0
        assert running.lines[-2:] == ["governor stopping: finishing in-flight requests", "governor stopped"]
        assert not listening(running.port)
        assert running.leftovers() == []

    async def test_sigterm_while_starting_stops_bundled_server(self, tmp_path: Path) -> None:
        """A SIGTERM right after the bundled nats-server started (worker still starting) leaves nothing running."""
        gov = RunningGovernor(tmp_path)
        try:
            await gov.start()
            await gov.line("bundled nats-server listening on ")
            returncode = await gov.stop(signal.SIGTERM)
            assert (returncode, gov.leftovers(), listening(gov.port)) == (0, [], False)
        finally:
            await gov.cleanup()

    async def test_runs_on_asyncio_by_default(self, running: RunningGovernor) -> None:
        """`governor.event_loop` defaults to asyncio's own loop, and the log says which loop runs."""
        assert "event loop: asyncio (governor.event_loop: asyncio)" in running.stderr_path.read_text()

    async def test_event_loop_auto_takes_uvloop_when_installed(self, tmp_path: Path) -> None:
        """`governor.event_loop: auto` runs on uvloop when it is importable (else on asyncio)."""
        expected = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
        config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
        config["governor"]["event_loop"] = "auto"
        path = tmp_path / "auto.yaml"
        path.write_text(yaml.safe_dump(config))
        gov = RunningGovernor(tmp_path, config=path)
        try:
            await gov.start()
            await gov.serving()
            assert f"event loop: {expected} (governor.event_loop: auto)" in gov.stderr_path.read_text()
        finally:
            await gov.cleanup()

    async def test_bad_config_exits_before_starting_anything(self, tmp_path: Path) -> None:
        """`run` with a bad config exits 2 naming the file and field, and starts no nats-server."""
        bad = tmp_path / "bad.yaml"
        bad.write_text("governor:\n  min_capability_match: 7\n")
        port = free_port()
        result = await run_cli("run", "--config", str(bad), "--nats-port", str(port), "--data-dir", str(tmp_path / "d"))
        assert result.returncode == 2
        assert str(bad) in result.error_line and "governor.min_capability_match" in result.error_line
        assert not listening(port)
        assert pids_using(str(tmp_path / "d")) == []


# -- operator commands -----------------------------------------------------------------------------------------


class TestOperatorSession:
    async def test_assign_cost_status_reset(self, running: RunningGovernor) -> None:
        """Assign, spend the budget until the breaker trips, see it in status, reset it: each command exits 0."""
        url = ["--nats-url", running.url]
        assign = await run_cli("assign", "integration:sip", "--max-cost", "20", "--task-id", "t-1", *url)
        assert (assign.returncode, assign.stdout) == (0, "task t-1 -> session-4-sip  (match 1.00, score 0.0633)\n")

        cost = await run_cli("cost", "session-4-sip", "op", "25", *url)
        assert (cost.returncode, cost.stdout) == (0, "session-4-sip: remaining 0.00 USD, breaker TRIPPED\n")

        status = await run_cli("status", *url)
        assert status.returncode == 0
        assert table_row(status.stdout, "session-4-sip")[:6] == [
            "session-4-sip",
            "sonnet",
            "15.00",
            "0.95",
            "0.00",
            "TRIPPED (budget_exhausted)",
        ]
        assert table_row(status.stdout, "session-1-ndi")[4:6] == ["25.00", "closed"]

        reset = await run_cli("reset", "session-4-sip", "--budget", "25", "--approved-by", "alice", "--yes", *url)
        assert (reset.returncode, reset.stdout) == (
            0,
            "session-4-sip: breaker closed, budget 25.00 USD (approved by alice)\n",
        )
        after = await run_cli("status", *url)
        assert table_row(after.stdout, "session-4-sip")[4:6] == ["25.00", "closed"]

    async def test_watch_prints_an_event(self, running: RunningGovernor) -> None:
        """`watch --count 1` prints the first event it receives, as subject and JSON, and exits 0."""
        watch = await start_cli("watch", "--count", "1", "--nats-url", running.url)
        try:
            assert watch.stdout is not None
            first = await asyncio.wait_for(watch.stdout.readline(), COMMAND_TIMEOUT)
            assert first.decode().startswith("watching governor.events.>")
            # `watch` prints its banner before it subscribes: trip and reset until an event reaches it.
            async with asyncio.timeout(COMMAND_TIMEOUT):
                while watch.returncode is None:
                    trip = {"swarm_id": "session-1-ndi", "reason": "manual_override", "requested_by": "test"}
                    assert (await request(running.url, "trip", trip))["ok"] is True
                    reset = {"swarm_id": "session-1-ndi", "new_budget": 25.0, "approved_by": "test"}
                    assert (await request(running.url, "reset", reset))["ok"] is True
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(watch.wait(), 0.2)
            rest = (await watch.stdout.read()).decode().splitlines()
        finally:
            if watch.returncode is None:
                watch.kill()
                await watch.wait()
        assert watch.returncode == 0
        [event_line] = rest
        _clock, subject, body = event_line.split(" ", 2)
        # The subscription may start between a trip and its reset: the first event is any of the three.
        assert subject in {
            "governor.events.breaker.tripped",
            "governor.events.escalation",
            "governor.events.breaker.reset",
        }
        assert json.loads(body)["swarm_id"] == "session-1-ndi"

    async def test_unknown_capability(self, running: RunningGovernor) -> None:
        """An unknown capability prints one error line with a suggestion and exits 1."""
        result = await run_cli("assign", "integration:sipp", "--nats-url", running.url)
        assert result.returncode == 1
        assert result.error_line.startswith("error: unknown_capability: unknown capability 'integration:sipp'")
        assert "did you mean" in result.error_line and "'integration:sip'" in result.error_line
        assert result.stdout == ""

    async def test_unknown_swarm(self, running: RunningGovernor) -> None:
        """A cost for an unknown swarm prints one error line and exits 1."""
        result = await run_cli("cost", "ghost", "op", "1", "--nats-url", running.url)
        assert result.returncode == 1
        assert result.error_line == "error: unknown_swarm: no swarm 'ghost' is registered"

    async def test_reset_needs_confirmation_off_a_terminal(self, running: RunningGovernor) -> None:
        """`reset` without `--yes` and without a terminal refuses with one line, exit 2, and the breaker stays open."""
        tripped = await request(running.url, "cost", {"swarm_id": "session-4-sip", "operation": "op", "cost": 25.0})
        assert tripped["tripped"] is True
        result = await run_cli(
            "reset", "session-4-sip", "--budget", "25", "--approved-by", "alice", "--nats-url", running.url
        )
        assert result.returncode == 2
        assert result.error_line == "error: reset needs confirmation: pass --yes when not on a terminal"
        status = await request(running.url, "status", {})
        assert status["breakers"]["session-4-sip"]["reason"] == "budget_exhausted"

    async def test_nothing_listening(self) -> None:
        """A command against a URL where nothing listens prints one line naming the URL and exits 1."""
        url = f"nats://127.0.0.1:{free_port()}"
        result = await run_cli("status", "--nats-url", url, timeout=20)
        assert result.returncode == 1
        assert result.error_line.startswith(f"error: cannot connect to {url}")

    async def test_no_governor_serving(self, nats_server: NatsServer) -> None:
        """A command against a nats-server where no governor serves prints one line and exits 1."""
        result = await run_cli("status", "--nats-url", nats_server.url)
        assert result.returncode == 1
        assert result.error_line == f"error: no governor is serving governor.* on {nats_server.url}"


# -- check-config ----------------------------------------------------------------------------------------------


def example_config() -> dict[str, Any]:
    """The example config (deploy/governor.yaml) as plain data, to break one field at a time."""
    loaded: dict[str, Any] = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    return loaded


def broken_unknown_key(config: dict[str, Any]) -> None:
    config["governor"]["max_budget"] = 5.0


def broken_cost_per_hour(config: dict[str, Any]) -> None:
    config["swarms"][1]["cost_per_hour"] = -2.0


def broken_capability(config: dict[str, Any]) -> None:
    config["swarms"][0]["capabilities"][1] = "integration:h324"


class TestCheckConfig:
    async def test_example_config_is_valid(self) -> None:
        """`check-config deploy/governor.yaml` exits 0 and summarises the two swarms."""
        result = await run_cli("check-config", str(EXAMPLE_CONFIG))
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[0].startswith(f"{EXAMPLE_CONFIG}: ok: 2 swarms")

    @pytest.mark.parametrize(
        ("breaks", "names"),
        [
            (broken_unknown_key, ["governor", "max_budget"]),
            (broken_cost_per_hour, ["swarms[1].cost_per_hour"]),
            (broken_capability, ["swarms[0].capabilities[1]", "integration:h324", "did you mean", "integration:h323"]),
        ],
        ids=["unknown-key", "negative-cost-per-hour", "unknown-capability"],
    )
    async def test_bad_field(self, tmp_path: Path, breaks: Any, names: list[str]) -> None:
        """A config with one bad field exits 2 with one line naming the file and the field."""
        config = example_config()
        breaks(config)
        path = tmp_path / "governor.yaml"
        path.write_text(yaml.safe_dump(config))
        result = await run_cli("check-config", str(path))
        assert result.returncode == 2
        line = result.error_line
        assert line.startswith(f"error: config: {path}: ")
        for name in names:
            assert name in line, line

    async def test_invalid_yaml(self, tmp_path: Path) -> None:
        """A file that is not YAML exits 2 naming the file and the line."""
        path = tmp_path / "governor.yaml"
        path.write_text("governor:\n  default_budget: 25.0\n swarms: [\n")
        result = await run_cli("check-config", str(path))
        assert result.returncode == 2
        assert result.error_line.startswith(f"error: config: {path}: not valid YAML (line 3")

    async def test_bad_environment_variable(self) -> None:
        """`IF_GOVERNOR_MIN_CAPABILITY_MATCH=abc` exits 2 naming the variable."""
        env = cli_env(IF_GOVERNOR_MIN_CAPABILITY_MATCH="abc")
        result = await run_cli("check-config", str(EXAMPLE_CONFIG), env=env)
        assert result.returncode == 2
        assert result.error_line.startswith("error: config: IF_GOVERNOR_MIN_CAPABILITY_MATCH (environment): ")

    async def test_missing_file(self, tmp_path: Path) -> None:
        """A config path that does not exist exits 2 naming it."""
        path = tmp_path / "nope.yaml"
        result = await run_cli("check-config", str(path))
        assert result.returncode == 2
        assert result.error_line.startswith(f"error: config: {path}: cannot read")
