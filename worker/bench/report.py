"""What the bench prints: progress on stderr; on stdout the network and core tables, the other measurements,
and the targets of issues 4 and 18, met or not."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from worker.bench.measure import REQUEST_TIMEOUT_S, Results, Row, percentile
from worker.bench.plan import DEFAULT_LOOP, Profile
from worker.bench.workload import CAPABILITY_TYPES


def progress(text: str) -> None:
    """One line on stderr of what runs now (stdout holds only the report)."""
    print(f"bench: {text}", file=sys.stderr, flush=True)


def format_swarms(n: int | None) -> str:
    """A registry size as the rows print it: `-` for the echo responder, which has none."""
    return "-" if n is None else f"{n:,}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """Plain text, aligned: the first `left` columns to the left, the others to the right."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def network_table(rows: Sequence[Row]) -> str:
    header = ["responder", "mode", "loop", "swarms", "conc", "req/s", "x echo", "p50 ms", "p99 ms"]
    header += ["cpu us/req", "nats us/req", "gen us/req", "err"]
    lines = []
    errors = 0
    for row in rows:
        for concurrency, cell in row.cells.items():
            ratio = row.ratio(concurrency)
            errors += cell.errors
            lines.append(
                [
                    row.name,
                    row.mode,
                    row.loop,
                    format_swarms(row.swarms),
                    f"c{concurrency}",
                    f"{cell.rps:,.0f}",
                    "-" if ratio is None else f"{ratio:.2f}",
                    f"{cell.latency_ms(0.50):.3f}",
                    f"{cell.latency_ms(0.99):.3f}",
                    f"{cell.cpu_us_per_request('responder'):.0f}",
                    f"{cell.cpu_us_per_request('nats'):.0f}",
                    f"{cell.cpu_us_per_request('generator'):.0f}",
                    str(cell.errors),
                ]
            )
    table = _table(header, lines, left=3)
    if errors:
        table += (
            f"\nWARNING: {errors:,} requests failed (err: error replies, no responders, or no reply within "
            f"{REQUEST_TIMEOUT_S:g} s); req/s and latencies count only ok replies"
        )
    return table


def core_table(results: Sequence[dict[str, float]]) -> str:
    header = [
        "core",
        "swarms",
        "p50 us",
        "p99 us",
        "max us",
        "samples",
        "assigned",
        "memory B/swarm",
        "B/hold",
        "build s",
        "fixed p99/p50",
    ]
    lines = [
        [
            "core",
            f"{int(r['swarms']):,}",
            f"{r['p50_us']:.1f}",
            f"{r['p99_us']:.1f}",
            f"{r['max_us']:,.0f}",
            f"{int(r['samples']):,}",
            f"{r['assigned']:.0%}",
            f"{r['bytes_per_swarm']:,.0f}",
            f"{r.get('bytes_per_hold', 0.0):,.0f}",
            f"{r['build_s']:.2f}",
            _spread(r),
        ]
        for r in results
    ]
    return _table(header, lines) + (
        "\nfixed p99/p50: a loop of fixed work with the assigns' median, timed as often right after them; its p99 "
        "over its p50 is what this machine alone makes of a p99"
    )


def _spread(probe: dict[str, float]) -> str:
    """The fixed loop's p99 over its p50 ("-": not measured)."""
    p50, p99 = probe.get("fixed_p50_us", 0.0), probe.get("fixed_p99_us", 0.0)
    return f"{p99 / p50:.2f}x" if p50 > 0 else "-"


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else "met" if ok else "NOT MET"


def _row(results: Results, name: str, swarms: int | None, mode: str = "durable") -> Row | None:
    """The row of this workload, mode and registry size on the default loop (None: not run)."""
    key = (name, mode, DEFAULT_LOOP, swarms)
    return next((r for r in results.rows if (r.name, r.mode, r.loop, r.swarms) == key), None)


def _core_at(core: Sequence[dict[str, float]], swarms: int) -> dict[str, float] | None:
    """The core probe of this registry size (None: not run)."""
    return next((c for c in core if int(c["swarms"]) == swarms), None)


def _ratio_line(label: str, row: Row | None, floor: float) -> list[str]:
    """A target line: the row's c64 ratio to echo against `floor`."""
    ratio = row.ratio(64) if row is not None and 64 in row.cells else None
    return [label, "not run" if ratio is None else f"{ratio:.2f}x", _verdict(None if ratio is None else ratio >= floor)]


def targets(results: Results, core: Sequence[dict[str, float]]) -> str:
    """Issue 4's targets against this run's measurements (durable mode, the default loop), met or not."""
    lines: list[list[str]] = []

    def ratio_target(name: str, swarms: int, floor: float) -> None:
        row = _row(results, name, swarms)
        lines.append(_ratio_line(f"{name} c64 >= {floor}x echo, {swarms:,} swarms (durable)", row, floor))

    ratio_target("assign", 1_000, 0.8)
    ratio_target("assign", 100_000, 0.5)
    assign, echo = _row(results, "assign", 1_000), _row(results, "echo", None, "-")
    if assign is not None and echo is not None and 1 in assign.cells and 1 in echo.cells:
        a, e = assign.cells[1].latency_ms(0.99), echo.cells[1].latency_ms(0.99)
        lines.append(
            [
                "assign p99 c1 <= echo p99 + 0.3 ms, 1,000 swarms (durable)",
                f"{a:.3f} vs {e + 0.3:.3f} ms",
                _verdict(a <= e + 0.3),
            ]
        )
    for n, limit_us in ((1_000, 50.0), (100_000, 1000.0)):
        c = _core_at(core, n)
        lines.append(
            [
                f"core assign p99 <= {limit_us:,.0f} us, {n:,} swarms",
                "-" if c is None else f"{c['p99_us']:,.1f} us",
                _verdict(None if c is None else c["p99_us"] <= limit_us),
            ]
        )
    ratio_target("cost", 1_000, 0.8)
    delays, failed = results.trip_delays_ns, results.trip_failures
    p99 = percentile(delays, 0.99) / 1e6 if delays else None
    lines.append(
        [
            f"breaker event p99 <= 2 ms after the cost reply ({len(delays)} trips, {failed} failed)",
            "-" if p99 is None else f"{p99:.3f} ms",
            _verdict(None if p99 is None else p99 <= 2.0 and not failed),
        ]
    )
    largest = max(core, key=lambda c: c["swarms"], default=None)
    if largest is not None:
        per = largest["bytes_per_swarm"]
        lines.append(
            [f"memory <= 2 KiB/swarm (core, {int(largest['swarms']):,} swarms)", f"{per:,.0f} B", _verdict(per <= 2048)]
        )
    rss = results.governor_rss_kib
    if len(rss) >= 2:
        small, big = min(rss), max(rss)
        per = (rss[big] - rss[small]) * 1024 / (big - small)
        lines.append(
            [
                f"memory <= 2 KiB/swarm (governor process RSS, {small:,} -> {big:,} swarms)",
                f"{per:,.0f} B",
                _verdict(per <= 2048),
            ]
        )
    return _table([f"target (issue 4), {DEFAULT_LOOP} rows", "measured", "verdict"], lines)


def speed_targets(results: Results, core: Sequence[dict[str, float]]) -> str:
    """Issue 18's targets against this run (durable, the default loop), met or not."""
    lines = [
        _ratio_line(f"{name} c64 >= {floor}x echo, {swarms:,} swarms", _row(results, name, swarms), floor)
        for swarms, floor in ((1_000, 0.8), (100_000, 0.5))
        for name in ("assign", "cost")
    ]
    assign, floor_ns = _row(results, "assign", 1_000), results.floor_ns
    if assign is not None and 1 in assign.cells and floor_ns:
        a, f = assign.cells[1].latency_ms(0.99), percentile(floor_ns, 0.99) / 1e6
        lines.append(
            [
                "assign c1 p99 <= ledger floor p99 + 0.3 ms, 1,000 swarms",
                f"{a:.3f} vs {f + 0.3:.3f} ms",
                _verdict(a <= f + 0.3),
            ]
        )
    else:
        lines.append(["assign c1 p99 <= ledger floor p99 + 0.3 ms, 1,000 swarms", "not run", _verdict(None)])
    for n, limit_us in ((1_000, 15.0), (100_000, 200.0)):
        c = _core_at(core, n)
        lines.append(
            [
                f"core assign p99 <= {limit_us:,.0f} us, {n:,} swarms (tasks needing 1-5)",
                "not run" if c is None else f"{c['p99_us']:,.1f} us (fixed work: p99 {_spread(c)} p50)",
                _verdict(None if c is None else c["p99_us"] <= limit_us),
            ]
        )
    return _table([f"target (issue 18), durable, {DEFAULT_LOOP} rows", "measured", "verdict"], lines)


def _machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores ({model}), Python {sys.version.split()[0]}"


def print_report(kind: str, profile: Profile, core: Sequence[dict[str, float]], results: Results) -> None:
    """The whole report of a `kind` ("full" or "quick") run, on stdout."""
    print(f"governor bench ({kind}) on {_machine()}")
    print(
        f"workload: {CAPABILITY_TYPES} capability types, swarms with 3-8, tasks needing 1-5; "
        f"c1 {profile.c1_s:g} s, c64/c256 {profile.cell_s:g} s per cell; load generator: this process, "
        "asyncio, one connection"
    )
    print(
        "each responder runs in its own process on a fresh nats-server (JetStream, sync_interval: always); "
        "durable = the default mode (ledger), memory = ledger disabled"
    )
    print()
    print(network_table(results.rows))
    print()
    print(core_table(core))
    print()
    rss = results.governor_rss_kib
    if rss:
        sizes = ", ".join(f"{n:,} swarms {kib / 1024:,.1f} MiB" for n, kib in sorted(rss.items()))
        print(f"governor process RSS when serving (durable): {sizes}")
        peaks = ", ".join(
            f"{n:,} swarms {kib / 1024:,.1f} MiB" for n, kib in sorted(results.governor_peak_rss_kib.items())
        )
        print(f"governor process peak RSS during its start (durable): {peaks}")
    delays = results.trip_delays_ns
    if delays:
        print(
            f"breaker trip: event arrival minus cost reply arrival: p50 {percentile(delays, 0.5) / 1e6:.3f} ms, "
            f"p99 {percentile(delays, 0.99) / 1e6:.3f} ms ({len(delays)} trips, {results.trip_failures} failed)"
        )
    floor = results.floor_ns
    if floor:
        print(
            f"ledger floor: one JetStream publish synced to disk and acknowledged (file stream, sync_interval: always,"
            f" c1, {len(floor):,} publishes): p50 {percentile(floor, 0.5) / 1e6:.3f} ms, "
            f"p99 {percentile(floor, 0.99) / 1e6:.3f} ms; a durable request waits for one such write"
        )
    for line in results.startup:
        print(f"startup: {line}")
    if results.notes:
        print("responders logged:")
        for note in results.notes:
            print(f"  {note}")
    print()
    print(targets(results, core))
    print()
    print(speed_targets(results, core))
