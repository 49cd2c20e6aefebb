"""The driver: each session on a fresh nats-server with its responder child, the core probes, and the two
entry points, `main` (`governor bench`) and `cell` (`governor bench --cell`)."""

from __future__ import annotations

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

from worker.bench import profile as sampling
from worker.bench.children import Child
from worker.bench.core_probe import run_core
from worker.bench.measure import Pids, Requester, Results, Row, breaker_latency, ledger_floor, measure, settle
from worker.bench.plan import CORE_SIZES, DEFAULT_LOOP, FULL, HAS_UVLOOP, QUICK, Profile, Session
from worker.bench.report import format_swarms, network_table, print_report, progress
from worker.bench.workload import Work, workloads
from worker.ops.natsserver import NatsServer

_T = TypeVar("_T")


async def measure_row(
    requester: Requester, row: Row, work: Work, pids: Pids, profile: Profile, sample_to: Path | None = None
) -> Row:
    """A warm-up, then a cell at each of the profile's concurrencies; with `sample_to`, py-spy samples the
    responder during each cell (the raw stacks of the last one end up there) and the summary is printed."""
    await measure(requester, work, 64, profile.warmup_s, pids)
    for concurrency in profile.concurrencies:
        progress(f"{row.name} ({row.mode}, {row.loop}, {format_swarms(row.swarms)} swarms) c{concurrency}")
        seconds = profile.c1_s if concurrency == 1 else profile.cell_s
        sampler = sampling.record(pids.responder, seconds, sample_to) if sample_to is not None else None
        row.cells[concurrency] = await measure(requester, work, concurrency, seconds, pids)
        if sampler is not None:
            _, err = await asyncio.to_thread(sampler.communicate)
            if sampler.returncode != 0:
                raise RuntimeError(f"py-spy failed ({sampler.returncode}): {err.decode(errors='replace').strip()}")
            assert sample_to is not None
            print(f"\nprofile of {row.name} c{concurrency}:\n" + sampling.summary(sample_to) + "\n", flush=True)
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
        if session.groups:
            args += ["--groups", str(session.groups)]
        if session.strategy != "best":
            args += ["--strategy", session.strategy]
    if session.loop == "uvloop":
        args.append("--uvloop")
    return args


async def run_session(session: Session, profile: Profile, work: dict[str, Work], log_dir: Path, out: Results) -> None:
    """A fresh nats-server, the session's responder, its rows; everything stopped before returning."""
    name = f"{session.responder}-{session.mode}-{session.loop}-{session.swarms or 0}".replace("--", "-")
    what = f"{session.responder} ({session.mode}, {session.loop}, {format_swarms(session.swarms)} swarms)"
    if session.groups:
        what = what[:-1] + f", {session.groups} levels of budget groups)"
    if session.strategy != "best":
        what = what[:-1] + f", strategy {session.strategy})"
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
            out.governor_peak_rss_kib[session.swarms or 0] = child.peak_rss_kib
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
            sample_to = Path(session.profile) if session.profile and session.responder == "governor" else None
            out.rows.append(await measure_row(requester, row, work[workload], pids, profile, sample_to))
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
    groups: int = 0,
    strategy: str = "best",
    profile_to: str | None = None,
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
        groups=groups if governor else 0,
        strategy=strategy if governor else "best",
        profile=str(Path(profile_to).resolve()) if profile_to and governor else None,
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


def _with_log_dir(measurement: Callable[[Path], _T]) -> _T | None:
    """Run `measurement` with a fresh directory for the children's logs and data, removed afterwards; None when it
    failed (said on stderr, and the logs are kept). SIGTERM unwinds like Ctrl-C meanwhile, so that the `finally`
    blocks stop nats-server and the children."""
    log_dir = Path(tempfile.mkdtemp(prefix="if-governor-bench-"))
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        result = measurement(log_dir)
    except Exception as exc:
        print(f"error: bench failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(f"(child logs kept in {log_dir})", file=sys.stderr)
        return None
    finally:
        signal.signal(signal.SIGTERM, previous)
    shutil.rmtree(log_dir, ignore_errors=True)
    return result
