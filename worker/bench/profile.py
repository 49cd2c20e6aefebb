"""`governor bench --cell ... --profile FILE`: a sampling profile of the serving governor during the measured cell.

py-spy (the `dev` extra) samples the governor's process from outside, without slowing its Python code (it reads
the process's memory, `--nonblocking`). The raw stacks go to FILE (flamegraph's collapsed format: one line per
distinct stack, `frame;frame;... count`), and the summary table attributes each sample to where its innermost
frame runs: nats-py's parser, its publishing and transport, its messages and subscriptions, the decision core
(its ranking, its index, capability names), the bus, the actor, the effects, storage, metrics, asyncio.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

#: (a path fragment of the innermost frame's file, what it counts as), first match wins.
AREAS: tuple[tuple[str, str], ...] = (
    ("nats/protocol/parser.py", "nats-py: protocol parser"),
    ("nats/aio/transport.py", "nats-py: publishing and transport"),
    ("nats/aio/msg.py", "nats-py: messages and subscriptions"),
    ("nats/aio/subscription.py", "nats-py: messages and subscriptions"),
    ("nats/aio/client.py", "nats-py: publishing and transport"),
    ("nats/js/", "nats-py: JetStream client"),
    ("nats/", "nats-py: other"),
    ("worker/core/matching.py", "core: ranking (matching)"),
    ("worker/core/index.py", "core: capability index"),
    ("worker/core/capabilities.py", "core: capability names (Vocabulary.check)"),
    ("worker/core/", "core: the rest of the commands"),
    ("worker/service/bus.py", "bus: decoding, checks, trace ids"),
    ("worker/service/effects.py", "effects: replies, events, witness records"),
    ("worker/service/confirmations.py", "effects: audit acknowledgements"),
    ("worker/service/positions.py", "effects: audit positions"),
    ("worker/service/actor.py", "actor: batches, ledger writes"),
    ("worker/service/mailbox.py", "actor: mailbox"),
    ("worker/service/", "service: other"),
    ("worker/storage/", "storage: ledger, lease, snapshots"),
    ("worker/ops/metrics.py", "metrics"),
    ("prometheus_client/", "metrics"),
    ("msgspec/", "msgspec"),
)


def py_spy() -> str:
    """The py-spy executable (beside this interpreter, or on PATH); SystemExit saying how to get it."""
    here = Path(sys.executable).with_name("py-spy")
    found = str(here) if here.is_file() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("error: --profile needs py-spy: pip install py-spy (it is in the `dev` extra)")
    return found


def record(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """Start sampling process `pid` for `seconds` (100 samples a second), the raw stacks to `out`."""
    return subprocess.Popen(
        [
            py_spy(),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, math.ceil(seconds))),
            "--rate",
            "100",
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            str(out),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def area_of(stack: tuple[str, ...]) -> str:
    """What a sample counts as: its innermost frame outside asyncio's own code (a socket write counts for whoever
    wrote, a callback for whoever it calls back); a stack of asyncio's alone is the event loop (mostly waiting in
    the selector for sockets to be ready)."""
    for frame in reversed(stack):
        where = frame.rsplit("(", 1)[-1]
        if frame.split(" (", 1)[0].endswith(("_run_once", "run_forever")):  # the loop: what it ran is inner
            return "asyncio event loop"
        if "asyncio/" in where or "selectors.py" in where or "uvloop/" in where:
            continue
        for fragment, area in AREAS:
            if fragment in where:
                return area
        return "other"
    return "asyncio event loop"


def stacks(path: Path) -> Counter[tuple[str, ...]]:
    """The collapsed stacks of a raw py-spy file: stack (outermost first) -> samples."""
    found: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            found[tuple(stack.split(";"))] += int(count)
    return found


def summary(path: Path, top: int = 15) -> str:
    """Shares of the samples by area (of the innermost frame), and the `top` functions by their own samples."""
    found = stacks(path)
    total = sum(found.values())
    if not total:
        return f"no samples in {path} (did the process run?)"
    areas: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    for stack, count in found.items():
        leaf = stack[-1]
        areas[area_of(stack)] += count
        name, _, where = leaf.rpartition(" (")
        functions[f"{name} ({where.rsplit(':', 1)[0]})"] += count
    lines = [f"{total:,} samples of the governor's process ({path})", "", "share  area"]
    lines += [f"{100 * n / total:4.1f}%  {area}" for area, n in areas.most_common()]
    lines += ["", "share  function (its own samples)"]
    lines += [f"{100 * n / total:4.1f}%  {name}" for name, n in functions.most_common(top)]
    return "\n".join(lines)
