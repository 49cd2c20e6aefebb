"""`governor cluster` (`make cluster`): a three-node NATS cluster and two governors on this machine, for trying
failover by hand.

It starts the nodes (`NatsCluster`: loopback, JetStream syncing every write), waits until JetStream is current on
each, then starts two `governor run` processes on all three nodes with R3 streams, each with its metrics port. Once
one serves it prints where everything is and how to break it, then watches: every 0.5 s it asks each governor's
`/readyz?standbyok=true` and prints what changed (a governor that serves, stands by or died, a node that died). It
restarts nothing, so a killed governor stays dead and the standby's takeover shows. Ctrl-C or SIGTERM stops the
governors first (SIGTERM: they drain and give the lease up), then the nodes; the data stays in `--dir`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from schemas.config import Config
from worker import errors
from worker.ops.natsserver import NatsCluster, _die_with_parent
from worker.service.config import load_config

EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "governor.yaml"
"""The checkout's example config, which the governors' configs are derived from when `--config` is absent."""
DEFAULT_DIR = ".cluster"
GOVERNORS = ("a", "b")
POLL_S = 0.5
"""How often each governor's readiness is asked, and the processes looked at."""
NODES_TIMEOUT_S = 30.0
"""Seconds the nodes get to elect a JetStream meta leader and catch up."""
SERVING_TIMEOUT_S = 60.0
"""Seconds the governors get until one of them serves."""
STOP_TIMEOUT_S = 30.0
"""Seconds a governor gets to drain after SIGTERM before it is killed (the Deployment's grace period)."""
HELP = "a local three-node NATS cluster with two governors (one serves, one stands by), to try failover by hand"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `governor cluster`."""
    p.add_argument("--dir", default=DEFAULT_DIR, help=f"the nodes' data and every log (default: {DEFAULT_DIR})")
    p.add_argument(
        "--config",
        help="the governors' config, given R3 streams and their own metrics ports (default: deploy/governor.yaml)",
    )
    p.add_argument(
        "--metrics-port-base",
        type=int,
        default=9090,
        help="governor a's metrics port; governor b's is the next one (default: 9090)",
    )


@dataclass
class Governor:
    """One `governor run` child: its name, metrics port, NATS URLs, config and log, and what it last answered."""

    name: str
    port: int
    urls: list[str]
    config: Path
    connection: str
    """The name its serving connection gives NATS; its storage and lease connections add `-storage`, `-lease`."""
    log: Path
    process: asyncio.subprocess.Process | None = None
    state: str = "starting"
    """starting (no HTTP yet), not ready (503), standing by, serving or exited."""

    @property
    def pid(self) -> int:
        """The process id (once started)."""
        assert self.process is not None
        return self.process.pid

    @property
    def label(self) -> str:
        """How the output names it: `governor a (pid 1234)`."""
        return f"governor {self.name} (pid {self.pid})"

    def exited(self) -> bool:
        """True once its process has ended (and was reaped)."""
        return self.process is not None and self.process.returncode is not None


def main(args: argparse.Namespace) -> int:
    """`governor cluster`: run until SIGINT or SIGTERM; the exit code (2 for a bad config or a port in use)."""
    if not 1 <= args.metrics_port_base <= 65534:
        print("error: --metrics-port-base: a port from 1 to 65534", file=sys.stderr)
        return 2
    root = Path(args.dir).absolute()
    source = Path(args.config) if args.config else EXAMPLE_CONFIG
    if not source.is_file():
        print(f"error: no config at {source}: give one with --config", file=sys.stderr)
        return 2
    ports = [args.metrics_port_base + i for i in range(len(GOVERNORS))]
    for port in ports:
        if not _port_free(port):
            print(f"error: port {port} is in use: choose others with --metrics-port-base", file=sys.stderr)
            return 2
    root.mkdir(parents=True, exist_ok=True)
    configs = {
        name: _write_config(source, root / f"governor-{name}.yaml", name, port)
        for name, port in zip(GOVERNORS, ports, strict=True)
    }
    return asyncio.run(_run(root, configs, ports))


def _port_free(port: int) -> bool:
    """True when a governor could listen on 127.0.0.1:`port` (as asyncio does, with SO_REUSEADDR: a port whose last
    connections wait out TIME_WAIT is free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _write_config(source: Path, target: Path, name: str, port: int) -> tuple[Path, Config]:
    """`source` with R3 streams, metrics on loopback at `port` and a connection name of its own (`…-a`, which the
    nodes' /connz shows), written to `target`; and that file as the worker's loader reads it (ConfigError if it
    refuses it)."""
    raw = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise errors.ConfigError(f"{source}: the top level must be a mapping")
    nats = {k: v for k, v in dict(raw.get("nats") or {}).items() if k != "servers"}  # --nats-url names the nodes
    nats["name"] = f"{nats.get('name', 'if-governor')}-{name}"
    raw = {
        **raw,
        "nats": nats,
        "ledger": {**dict(raw.get("ledger") or {}), "replicas": 3},
        "metrics": {**dict(raw.get("metrics") or {}), "host": "127.0.0.1", "port": port},
    }
    header = f"# Written by `governor cluster` from {source}: R3 streams, metrics on port {port}.\n"
    target.write_text(header + yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    config = load_config(target, env={})  # the governors get no IF_GOVERNOR_* variables (_child_env)
    if not config.ledger.enabled:
        raise errors.ConfigError(f"{source}: ledger.enabled is false: in-memory governors do not share a lease")
    return target, config


def _child_env() -> dict[str, str]:
    """The governors' environment: this one without IF_GOVERNOR_* (a metrics port, a login or a URL from there would
    override what their config files say)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("IF_GOVERNOR_")}


async def _run(root: Path, configs: dict[str, tuple[Path, Config]], ports: list[int]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    cluster = NatsCluster(root)
    monitors = cluster.monitors
    # Each governor lists the nodes from another one on. nats-py shuffles the list before connecting (its
    # `dont_randomize` is off), so where each connection lands is chosen at random: the summary says where they are.
    governors = [
        Governor(name, port, cluster.urls_from(i), path, config.nats.name, root / f"governor-{name}.log")
        for i, (name, port, (path, config)) in enumerate(zip(GOVERNORS, ports, configs.values(), strict=True))
    ]
    lease_ttl_s = configs[GOVERNORS[0]][1].ledger.lease_ttl_s
    try:
        try:
            # On this thread, not in a worker thread: each node dies with the thread that started it (PDEATHSIG).
            for i in range(len(cluster.nodes)):
                cluster.start(i)  # each listening; whether JetStream is current, `_until_current` asks (Ctrl-C ends it)
        except (RuntimeError, TimeoutError) as exc:
            print(f"error: cannot start the NATS nodes: {exc}", file=sys.stderr)
            return 1
        if not await _until_current(monitors, stop):
            return 0 if stop.is_set() else 1
        for governor in governors:
            await _spawn(governor)
        if not await _until_serving(governors, stop):
            return 0 if stop.is_set() else 1
        await _summary(root, cluster, monitors, governors, lease_ttl_s)
        await _watch(governors, cluster, stop)
        return 0
    finally:
        await _stop_governors(governors)
        cluster.cleanup()  # SIGTERM, then SIGKILL after 10 s; the data directories stay
        print("stopped", flush=True)


async def _until_current(monitors: list[int], stop: asyncio.Event) -> bool:
    """Wait until every node's /healthz answers 200 (JetStream has a meta leader and this node caught up)."""
    deadline = time.monotonic() + NODES_TIMEOUT_S
    while not stop.is_set():
        answers = await asyncio.gather(*(_get(port, "/healthz") for port in monitors))
        if all(status == 200 for status, _ in answers):
            return True
        if time.monotonic() > deadline:
            print(f"error: JetStream was not current on every node within {NODES_TIMEOUT_S:g} s", file=sys.stderr)
            return False
        await _sleep(stop, POLL_S)
    return False


async def _spawn(governor: Governor) -> None:
    """Start `governor run` in a session of its own (a Ctrl-C on the terminal reaches only this process, which stops
    the governors in order), dying with this process, its output appended to its log."""
    with governor.log.open("ab") as log:
        governor.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "worker",
            "run",
            "--nats-url",
            ",".join(governor.urls),
            "--config",
            str(governor.config),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_child_env(),
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )


async def _until_serving(governors: list[Governor], stop: asyncio.Event) -> bool:
    """Wait until one governor serves; False (after saying why) if one exits first or none serves in time."""
    deadline = time.monotonic() + SERVING_TIMEOUT_S
    while not stop.is_set():
        await _probe_all(governors)
        for governor in governors:
            if governor.exited():
                assert governor.process is not None
                ended = _status(governor.process.returncode)
                print(f"error: {governor.label} {ended} before serving; its log, {governor.log}:", file=sys.stderr)
                print(_tail(governor.log), file=sys.stderr)
                return False
        if any(g.state == "serving" for g in governors):
            return True
        if time.monotonic() > deadline:
            print(
                f"error: no governor served within {SERVING_TIMEOUT_S:g} s; logs in {governors[0].log.parent}",
                file=sys.stderr,
            )
            return False
        await _sleep(stop, POLL_S)
    return False


async def _summary(
    root: Path, cluster: NatsCluster, monitors: list[int], governors: list[Governor], lease_ttl_s: float
) -> None:
    """Print the nodes, the governors (where their connections are) and how to try failover by hand."""
    places = await _placements(monitors)
    url = cluster.url
    say(f"governor cluster: {len(cluster.nodes)} NATS nodes and {len(governors)} governors, data and logs in {root}")
    for i, (node, monitor) in enumerate(zip(cluster.nodes, monitors, strict=True)):
        pid = node.process.pid if node.process is not None else "-"
        say(f"  nats n{i + 1}  pid {pid}  {node.url}  monitoring http://127.0.0.1:{monitor}")
    say(f"  NATS URLs: {url}")
    for g in governors:
        where = ", ".join(
            f"{role} on {places.get(g.connection + suffix, '?')}"
            for role, suffix in (("requests", ""), ("ledger", "-storage"), ("lease", "-lease"))
        )
        say(f"  governor {g.name}  pid {g.pid}  metrics http://127.0.0.1:{g.port}/metrics  ({where})  log {g.log}")
    for g in governors:
        report(g)
    active = next(g for g in governors if g.state == "serving")
    standby = next(g for g in governors if g is not active)
    node_pid = cluster.nodes[1].process.pid if cluster.nodes[1].process is not None else "PID"
    command = _governor_command()
    say("Try failover by hand, in another terminal:")
    say(f"  {command} status --nats-url {url}")
    say("      answered by the governor serving")
    say(f"  kill -9 {active.pid}")
    say(
        f"      kills governor {active.name} (serving): governor {standby.name} serves about "
        f"{lease_ttl_s + 0.5:g} s later, once the lease expired (plain `kill` drains it and hands over at once)"
    )
    say(f"  kill {node_pid}   (or kill -9)")
    say("      stops NATS node n2: the streams are R3, so the other two go on and the governors reconnect to them")
    say(f"  curl -i http://127.0.0.1:{standby.port}/readyz   (and ?standbyok=true)")
    say("      200 only on the governor serving; with standbyok=true also on a standby that caught up")
    say("Nothing is restarted: this prints what changes. Ctrl-C stops the governors, then the nodes.")


async def _watch(governors: list[Governor], cluster: NatsCluster, stop: asyncio.Event) -> None:
    """Until `stop`: every POLL_S, report each governor whose state changed and each node that died."""
    nodes_down: set[int] = set()
    while not stop.is_set():
        await _sleep(stop, POLL_S)
        before = [g.state for g in governors]
        await _probe_all(governors)
        for governor, previous in zip(governors, before, strict=True):
            if governor.state != previous:
                report(governor)
        for i, node in enumerate(cluster.nodes):
            if i not in nodes_down and node.process is not None and node.process.poll() is not None:
                nodes_down.add(i)
                say(f"{_now()} nats n{i + 1} (pid {node.process.pid}): {_status(node.process.returncode)}")


def report(governor: Governor) -> None:
    """One line: the time, the governor, and what it is now (for an exited one, how it ended)."""
    assert governor.process is not None
    state = _status(governor.process.returncode) if governor.exited() else governor.state
    say(f"{_now()} {governor.label}: {state}")


def _now() -> str:
    return time.strftime("%H:%M:%S")


def say(line: str) -> None:
    """Print one line of the command's output at once (it is read as it comes, often through a pipe)."""
    print(line, flush=True)


async def _probe_all(governors: list[Governor]) -> None:
    """Ask every live governor's /readyz?standbyok=true (at once) and record its state."""
    alive = [g for g in governors if not g.exited()]
    answers = await asyncio.gather(*(_get(g.port, "/readyz?standbyok=true") for g in alive))
    for governor, (status, body) in zip(alive, answers, strict=True):
        if governor.exited():  # it died while we asked
            continue
        if status == 200:
            governor.state = "serving" if body.strip() == "ready" else "standing by"
        else:
            governor.state = "starting" if status == 0 else "not ready"
    for governor in governors:
        if governor.exited():
            governor.state = "exited"


async def _get(port: int, path: str, timeout: float = 1.0) -> tuple[int, str]:
    """GET http://127.0.0.1:`port``path`: (status, body), or (0, "") when nothing answers in `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())  # 1.0: no chunks
                data = await reader.read()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return 0, ""
    head, _, body = data.decode("latin-1").partition("\r\n\r\n")
    words = head.split(" ", 2)
    return (int(words[1]) if len(words) > 1 and words[1].isdigit() else 0), body


async def _placements(monitors: list[int]) -> dict[str, str]:
    """Connection name -> the node it is connected to (`n1`...), from each node's /connz."""
    places: dict[str, str] = {}
    for i, monitor in enumerate(monitors):
        status, body = await _get(monitor, "/connz?limit=1024")
        if status != 200:
            continue
        with contextlib.suppress(ValueError):
            connz: dict[str, Any] = json.loads(body)
            for conn in connz.get("connections") or []:
                if conn.get("name"):
                    places[conn["name"]] = f"n{i + 1}"
    return places


async def _stop_governors(governors: list[Governor]) -> None:
    """SIGTERM every live governor (each drains, snapshots and gives the lease up), SIGKILL after STOP_TIMEOUT_S."""
    alive = [(g, g.process) for g in governors if g.process is not None and g.process.returncode is None]
    for governor, process in alive:
        say(f"stopping {governor.label}")
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
    for governor, process in alive:
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            say(f"{governor.label} did not stop within {STOP_TIMEOUT_S:g} s: killed")
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less if `stop` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _status(returncode: int | None) -> str:
    """How a child ended, in words: `exited with 1`, `killed by SIGKILL`."""
    if returncode is None:
        return "running"
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exited with {returncode}"


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    return "(no log)"


def _governor_command() -> str:
    """How to run `governor` as this process was run: the script's path, else this interpreter with `-m worker`."""
    if Path(sys.argv[0]).name == "governor":
        return sys.argv[0]
    return f"{sys.executable} -m worker"
