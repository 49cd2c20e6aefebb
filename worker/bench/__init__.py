"""`governor bench`: the governor against the bare NATS limit, and the decision core on its own.

Processes, so that every responder gets the same treatment:

    this process (load generator) ──┬── nats-server, a fresh one per responder (loopback, JetStream synced)
                                    ├── echo child      python -m worker.bench --echo URL      (bare nats-py)
                                    ├── governor child  python -m worker.bench --serve URL --swarms N
                                    └── core child      python -m worker.bench --core N        (no I/O at all)

The load generator drives each responder with the same payloads (echo: the assign requests, bounced back;
`assign`: tasks needing 1-5 of 200 capabilities; `cost`: small costs on random swarms; mixed: 80% assign, 20%
cost) at concurrency 1, 64 and 256 (that many asyncio tasks, each with one request outstanding, on one
connection) for a fixed short time per cell. Throughput is shown as a ratio to the echo responder measured in
the same run under the same event loop. CPU time per request of the responder, of nats-server and of the load
generator comes from /proc/<pid>/stat: steadier than throughput on a busy 2-core machine. The governor runs in
its default durable mode (ledger on JetStream) and in memory; with `uvloop` importable, echo and the durable
governor are measured under uvloop too (the load generator's loop stays asyncio for every row); the targets are
judged on the rows of `governor run`'s default loop (asyncio), on which the 100,000-swarm governor runs too.

The decision core is measured in a fresh process per registry size (100 to 100,000 swarms): latency per
`core.assign` (time.perf_counter_ns around the call) and resident memory per swarm (VmRSS before and after
registering). A last section compares the run with issue 4's targets, met or not.

Child modes (used by `main`, not meant for people):
    python -m worker.bench --echo URL [--uvloop]
    python -m worker.bench --serve URL --swarms N [--memory] [--uvloop]
    python -m worker.bench --core N [--samples S] [--budget-s SECONDS]
    python -m worker.bench --run [--quick]           (the same as `governor bench`)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import nats
from nats.aio.client import Client

from worker.bench.children import Child, run_child, serve_echo, serve_governor
from worker.bench.core_probe import core_probe, run_core
from worker.bench.measure import (
    Pids,
    Requester,
    Results,
    Row,
    breaker_latency,
    ledger_floor,
    measure,
    settle,
)
from worker.bench.plan import CORE_SIZES, DEFAULT_LOOP, FULL, HAS_UVLOOP, QUICK, Profile, Session
from worker.bench.report import format_swarms, network_table, print_report, progress
from worker.bench.workload import (
    Work,
    workloads,
)
from worker.ops.natsserver import NatsServer

_T = TypeVar("_T")


async def measure_row(requester: Requester, row: Row, work: Work, pids: Pids, profile: Profile) -> Row:
    await measure(requester, work, 64, profile.warmup_s, pids)
    for concurrency in profile.concurrencies:
        progress(f"{row.name} ({row.mode}, {row.loop}, {format_swarms(row.swarms)} swarms) c{concurrency}")
        seconds = profile.c1_s if concurrency == 1 else profile.cell_s
        row.cells[concurrency] = await measure(requester, work, concurrency, seconds, pids)
    return row


def _server_config(directory: Path) -> Path:
    """A nats-server config like `governor run`'s bundled one: JetStream syncing every write before its ack."""
    directory.mkdir(parents=True)
    conf = directory / "nats-server.conf"
    conf.write_text(f"jetstream {{\n  store_dir: {json.dumps(str(directory / 'js'))}\n  sync_interval: always\n}}\n")
    return conf


def _child_args(session: Session, url: str) -> list[str]:
    if session.responder == "echo":
        args = ["--echo", url]
    else:
        args = ["--serve", url, "--swarms", str(session.swarms)]
        if session.mode == "memory":
            args.append("--memory")
    if session.loop == "uvloop":
        args.append("--uvloop")
    return args


async def run_session(session: Session, profile: Profile, work: dict[str, Work], log_dir: Path, out: Results) -> None:
    """A fresh nats-server, the session's responder, its rows; everything stopped before returning."""
    name = f"{session.responder}-{session.mode}-{session.loop}-{session.swarms or 0}".replace("--", "-")
    what = f"{session.responder} ({session.mode}, {session.loop}, {format_swarms(session.swarms)} swarms)"
    server = NatsServer(store_dir=log_dir / name, jetstream=False, config_file=_server_config(log_dir / name))
    server.start()
    child: Child | None = None
    nc: Client | None = None
    requester: Requester | None = None
    try:
        progress(f"starting {what}")
        started = time.monotonic()
        child = Child(name, _child_args(session, server.url), log_dir)
        await child.wait_ready()
        ready = time.monotonic() - started
        if session.responder == "governor" and session.mode == "durable" and session.loop == DEFAULT_LOOP:
            out.governor_rss_kib[session.swarms or 0] = child.ready_rss_kib
        assert server.process is not None
        pids = Pids(child.pid, server.process.pid, os.getpid())
        nc = await nats.connect(server.url, name="bench-load")
        requester = Requester(nc)
        await requester.start()
        if session.responder == "governor":
            steady, gaps = await settle(requester, work["assign"], steady_s=profile.settle_s)
            out.startup.append(
                f"{what}: ready after {ready:.1f} s, answering steadily after {ready + steady:.1f} s"
                + (f" (stopped answering {gaps} time(s) after it said ready)" if gaps else "")
            )
        baseline = next((r for r in out.rows if r.name == "echo" and r.loop == session.loop), None)
        if session.responder == "echo" and session.loop == "asyncio":
            progress("ledger floor: synced JetStream publishes at c1")
            out.floor_ns = await ledger_floor(nc, work["assign"], profile.c1_s)
        for workload in session.workloads:
            row = Row(workload, session.mode, session.loop, session.swarms, baseline=baseline)
            if workload == "echo":
                row.baseline = row
            out.rows.append(await measure_row(requester, row, work[workload], pids, profile))
        if session.probe:
            progress("breaker trip event latency")
            watcher = await nats.connect(server.url, name="bench-watcher")  # a subscriber of its own, as in real life
            try:
                out.trip_delays_ns, out.trip_failures = await breaker_latency(watcher, requester, profile.probe_trips)
            finally:
                await watcher.close()
    finally:
        if requester is not None:
            await requester.close()
        if nc is not None:
            await nc.close()
        if child is not None:
            child.close()
            out.notes += [f"{what}: {line}" for line in child.logged()]
        server.stop()


async def run_network(profile: Profile, log_dir: Path) -> Results:
    """Every session, one after the other, with the same payloads."""
    work = workloads()
    out = Results()
    for session in profile.sessions:
        if session.loop == "uvloop" and not HAS_UVLOOP:
            continue
        await run_session(session, profile, work, log_dir, out)
    return out


def main(quick: bool = False) -> int:
    """Run the benchmark and print the tables; 0 when every measurement ran (whatever the numbers say)."""
    profile = QUICK if quick else FULL
    started = time.monotonic()

    def measure_all(log_dir: Path) -> tuple[list[dict[str, float]], Results]:
        core = run_core(CORE_SIZES, profile.core_samples, profile.core_budget_s)
        return core, asyncio.run(run_network(profile, log_dir))

    outcome = _with_log_dir(measure_all)
    if outcome is None:
        return 1
    core, results = outcome
    print_report("quick" if quick else "full", profile, core, results)
    print(f"\nfinished in {time.monotonic() - started:.0f} s")
    return 0


def cell(
    workload: str,
    *,
    mode: str = "durable",
    loop: str = "asyncio",
    swarms: int = 1_000,
    concurrency: int = 64,
    seconds: float = 5.0,
    repeat: int = 1,
) -> int:
    """One responder at one concurrency, `repeat` times on a fresh server each: for A/B comparisons of two
    checkouts (run it in each, alternately). Prints the rows; ratios only for echo, which is its own baseline."""
    governor = workload != "echo"
    session = Session(
        "governor" if governor else "echo",
        mode if governor else "-",
        loop,
        swarms if governor else None,
        (workload,),
    )
    profile = Profile(
        c1_s=seconds,
        cell_s=seconds,
        warmup_s=0.5,
        core_samples=0,
        core_budget_s=0.0,
        probe_trips=0,
        settle_s=1.0,
        sessions=(session,),
        concurrencies=(concurrency,),
    )

    def measure_cell(log_dir: Path) -> Results:
        out = Results()
        work = workloads()
        for i in range(repeat):
            (log_dir / f"run-{i + 1}").mkdir()
            asyncio.run(run_session(session, profile, work, log_dir / f"run-{i + 1}", out))
        return out

    out = _with_log_dir(measure_cell)
    if out is None:
        return 1
    print(network_table(out.rows))
    return 0


def _with_log_dir(measure: Callable[[Path], _T]) -> _T | None:
    """Run `measure` with a fresh directory for the children's logs and data, removed afterwards; None when it
    failed (said on stderr, and the logs are kept). SIGTERM unwinds like Ctrl-C meanwhile, so that the `finally`
    blocks stop nats-server and the children."""
    log_dir = Path(tempfile.mkdtemp(prefix="if-governor-bench-"))
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        result = measure(log_dir)
    except Exception as exc:
        print(f"error: bench failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(f"(child logs kept in {log_dir})", file=sys.stderr)
        return None
    finally:
        signal.signal(signal.SIGTERM, previous)
    shutil.rmtree(log_dir, ignore_errors=True)
    return result


def _child_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.bench", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--echo", metavar="URL", help="serve a bare echo responder")
    mode.add_argument("--serve", metavar="URL", help="serve the governor (durable unless --memory)")
    mode.add_argument("--core", metavar="N", type=int, help="measure the decision core with N swarms; print JSON")
    mode.add_argument("--run", action="store_true", help="the whole benchmark (as `governor bench`)")
    parser.add_argument("--swarms", type=int, default=1_000)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--budget-s", type=float, default=5.0)
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--memory", action="store_true", help="the governor without its ledger")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.echo:
        run_child(lambda: serve_echo(args.echo), args.uvloop)
    elif args.serve:
        run_child(lambda: serve_governor(args.serve, args.swarms, durable=not args.memory), args.uvloop)
    elif args.core is not None:
        print(json.dumps(core_probe(args.core, args.samples, args.budget_s)))
    else:
        return main(quick=args.quick)
    return 0
