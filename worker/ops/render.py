"""What the `governor` command shows its reader: text a client sent, escaped; the status and explain tables; JSON."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from schemas.types import INVISIBLE

_UNSAFE = re.compile(f"[{INVISIBLE}]")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape(text: str) -> str:
    """`text` with each control, format or separator character (`schemas.types.INVISIBLE`) written as an escape
    (`\\n`, `\\x1b`, `\\u202e`): what a client sent can neither start a log line of its own nor hide or reorder
    what the reader sees."""
    return _UNSAFE.sub(_escape_one, text)


def print_json(value: Any) -> None:
    """`value` as JSON, indented, on stdout."""
    print(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


def explain_table(explanation: Any, chosen: set[str]) -> str:
    """Every swarm with its coverage, score and the first filter that rejected it (or that it was chosen)."""
    rows = [("SWARM", "MATCH", "SCORE", "RESULT")]
    for e in explanation:
        result = "chosen" if e.swarm_id in chosen else (e.rejected_by or "qualified, not chosen")
        rows.append((e.swarm_id, f"{e.capability_match:.2f}", f"{e.score:.4f}", result))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(
        "  " + "  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3] for r in rows
    )


def _breaker_text(breaker: Any) -> str:
    if breaker is None:
        return "closed"
    if breaker.state == "half_open":
        return f"HALF-OPEN ({breaker.reason}, {breaker.probes_left} probes)"
    return f"TRIPPED ({breaker.reason})"


def status_table(status: Any) -> str:
    """Every swarm with its price, reputation, budget, breaker and capabilities, then the policy in force."""
    rows = [("SWARM", "MODEL", "$/HOUR", "REPUTATION", "BUDGET", "BREAKER", "TASKS", "CAPABILITIES")]
    for s in status.swarms:
        breaker = _breaker_text(s.breaker)
        limit = s.max_concurrent_tasks
        rows.append(
            (
                s.swarm_id,
                s.model,
                f"{s.cost_per_hour:.2f}",
                f"{s.reputation_score:.2f}",
                f"{s.budget_remaining:.2f}",
                breaker,
                f"{s.in_flight}" if limit is None else f"{s.in_flight}/{limit}",
                ", ".join(s.capabilities),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in rows]
    p = status.policy
    lines.append(
        f"\npolicy: min_capability_match={p.min_capability_match} max_cost_per_task={p.max_cost_per_task} "
        f"max_swarms_per_task={p.max_swarms_per_task} failure_threshold={p.circuit_breaker_failure_threshold} "
        f"failure_window_s={p.failure_window_s:g}"
    )
    return "\n".join(lines)


def _when(t: float | None, now: float) -> str:
    """A future instant as `in 2h05m` (or `-` for none)."""
    if t is None:
        return "-"
    left = max(0, int(t - now))
    days, rest = divmod(left, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"in {days}d{hours:02d}h"
    if hours:
        return f"in {hours}h{minutes:02d}m"
    return f"in {minutes}m{seconds:02d}s"


def budgets_table(groups: Any, now: float) -> str:
    """The budget groups as a tree (children under their parent, in config order): period, limit (with top-ups),
    spent, remaining, when the period ends, the last hour's rate and the forecast exhaustion."""
    children: dict[str | None, list[Any]] = {}
    for g in groups:
        children.setdefault(g.parent, []).append(g)
    rows = [("GROUP", "PERIOD", "LIMIT", "SPENT", "REMAINING", "REFILLS", "RATE/H", "RUNS OUT", "STATE")]

    def walk(parent: str | None, depth: int) -> None:
        for g in children.get(parent, []):
            state = "EXHAUSTED" if g.exhausted else "blocked (ancestor)" if g.blocked else "ok"
            limit = f"{g.limit + g.topped_up:.2f}" + (f" (+{g.topped_up:.2f})" if g.topped_up else "")
            rows.append(
                (
                    "  " * depth + g.id,
                    g.period or "lifetime",
                    limit,
                    f"{g.spent:.2f}",
                    f"{g.remaining:.2f}",
                    _when(g.period_end, now),
                    f"{g.rate_usd_per_hour:.2f}",
                    _when(g.forecast_exhausted_at, now),
                    state,
                )
            )
            walk(g.id, depth + 1)

    walk(None, 0)
    if len(rows) == 1:
        return "no budget groups (add a `budgets:` list to the config)"
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in rows)
