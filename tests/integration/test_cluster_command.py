"""`governor cluster` (`make cluster`) as an operator tries failover with it: real subprocesses, three nats-server
nodes and two governors, the failover done by hand with `kill -9`, every wait bounded, and nothing left running."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
from pathlib import Path

from tests.integration.helpers import http_get, run_cli, start_cli
from worker.ops.natsserver import free_port

START_TIMEOUT = 90.0
"""Seconds the command gets to start the nodes and the governors until one serves (a busy machine is slow)."""
TAKEOVER_TIMEOUT = 30.0
"""Seconds the standby gets to serve after the holder was killed (about lease_ttl_s + 0.5 s: 3.5 s)."""
STOP_TIMEOUT = 60.0
"""Seconds the command gets to stop everything after SIGTERM (governors drain, then the nodes stop)."""

NODE = re.compile(r"^  nats n(\d)  pid (\d+)  (nats://\S+)  ")
GOVERNOR = re.compile(r"^  governor (\w)  pid (\d+)  metrics http://127\.0\.0\.1:(\d+)/metrics  ")
STATE = re.compile(r"^\d\d:\d\d:\d\d governor (\w) \(pid (\d+)\): (.+)$")


def two_free_ports() -> int:
    """A port that was free a moment ago on loopback, with the next one free too."""
    while True:
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


def running(pid: int, marker: str) -> bool:
    """True while process `pid` lives and its command line names `marker` (a path of this test's alone)."""
    with contextlib.suppress(OSError):
        return marker in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return False


def pids_naming(marker: str) -> list[int]:
    """Every live process whose command line names `marker`."""
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and running(int(p.name), marker)]


class Output:
    """The command's standard output, read line by line as it comes, every line kept."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.stream = stream
        self.lines: list[str] = []

    async def until(self, pattern: re.Pattern[str], timeout: float, since: int = 0) -> re.Match[str]:
        """The first line from line `since` on that matches `pattern`, reading more as needed for up to `timeout`
        seconds."""
        for line in self.lines[since:]:
            if (match := pattern.match(line)) is not None:
                return match
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.stream.readline()
                assert raw, "governor cluster ended early:\n" + "\n".join(self.lines)
                self.lines.append(raw.decode().rstrip("\n"))
                if (match := pattern.match(self.lines[-1])) is not None:
                    return match

    def matches(self, pattern: re.Pattern[str]) -> list[re.Match[str]]:
        return [m for line in self.lines if (m := pattern.match(line)) is not None]


class TestClusterCommand:
    async def test_the_standby_takes_over_from_a_killed_holder_and_sigterm_leaves_nothing(self, tmp_path: Path) -> None:
        """`governor cluster` prints three nodes and two governors, one serving; after `kill -9` of that one the
        other serves (its /readyz answers 200, `status` over the printed URLs answers, the kill and the takeover are
        printed), and SIGTERM then stops every node and governor it started and exits 0."""
        root = tmp_path / "cluster"
        marker = str(root)
        base = two_free_ports()
        with (tmp_path / "cluster.stderr").open("wb") as stderr:
            process = await start_cli("cluster", "--dir", marker, "--metrics-port-base", str(base), stderr=stderr)
        assert process.stdout is not None
        out = Output(process.stdout)
        pids: list[int] = []
        try:
            await out.until(re.compile(r"^Nothing is restarted"), START_TIMEOUT)
            nodes = out.matches(NODE)
            governors = {m.group(1): (int(m.group(2)), int(m.group(3))) for m in out.matches(GOVERNOR)}
            states = {m.group(1): m.group(3) for m in out.matches(STATE)}
            [urls] = [line.split("NATS URLs: ")[1] for line in out.lines if "NATS URLs: " in line]
            pids = [int(m.group(2)) for m in nodes] + [pid for pid, _ in governors.values()]
            assert [m.group(1) for m in nodes] == ["1", "2", "3"]
            assert urls == ",".join(m.group(3) for m in nodes)
            assert {name: port for name, (_, port) in governors.items()} == {"a": base, "b": base + 1}
            [active] = [name for name, state in states.items() if state == "serving"]
            [standby] = [name for name in governors if name != active]
            assert states[standby] in ("standing by", "not ready", "starting")  # not ready: still catching up
            assert all(running(pid, marker) for pid in pids), out.lines
            active_pid, active_port = governors[active]
            standby_pid, standby_port = governors[standby]
            assert await asyncio.to_thread(http_get, active_port, "/readyz") == (200, "ready\n")

            status = await run_cli("status", "--nats-url", urls, "--json")
            assert status.returncode == 0, status.stderr
            assert [s["swarm_id"] for s in json.loads(status.stdout)["swarms"]] == ["session-4-sip", "session-1-ndi"]

            since = len(out.lines)
            os.kill(active_pid, signal.SIGKILL)
            killed = re.compile(rf"^\S+ governor {active} \(pid {active_pid}\): (.+)$")
            assert (await out.until(killed, TAKEOVER_TIMEOUT, since)).group(1) == "killed by SIGKILL"
            took_over = re.compile(rf"^\S+ governor {standby} \(pid {standby_pid}\): serving$")
            await out.until(took_over, TAKEOVER_TIMEOUT, since)
            assert await asyncio.to_thread(http_get, standby_port, "/readyz") == (200, "ready\n")
            status = await run_cli("status", "--nats-url", urls, "--json")
            assert status.returncode == 0, status.stderr
            assert json.loads(status.stdout)["ok"] is True
            assert all(running(pid, marker) for pid in pids if pid != active_pid), out.lines

            process.terminate()
            async with asyncio.timeout(STOP_TIMEOUT):
                rest = await process.stdout.read()
                returncode = await process.wait()
            out.lines += rest.decode().splitlines()
            assert returncode == 0, out.lines
            assert f"stopping governor {standby} (pid {standby_pid})" in out.lines[since:]
            assert out.lines[-1] == "stopped"
            assert [pid for pid in pids if running(pid, marker)] == []
            assert pids_naming(marker) == []
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
            for pid in pids_naming(marker):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    async def test_a_metrics_port_in_use_is_refused_before_anything_starts(self, tmp_path: Path) -> None:
        """With governor b's metrics port taken, `governor cluster` exits 2 naming the port and starts no process."""
        base = two_free_ports()
        root = tmp_path / "cluster"
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
            taken.bind(("127.0.0.1", base + 1))
            taken.listen()
            result = await run_cli("cluster", "--dir", str(root), "--metrics-port-base", str(base))
        assert (result.returncode, result.stdout) == (2, "")
        assert result.error_line == f"error: port {base + 1} is in use: choose others with --metrics-port-base"
        assert not root.exists()
