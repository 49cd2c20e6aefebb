"""Budget groups: limits per period shared by the swarms of an organisation, a team, a project.

A cost counts against its swarm's group and every ancestor, in the period holding the command's time. A group
with nothing left (spent ≥ limit + top-ups) is exhausted and blocks the swarms of its subtree: they are passed
over (`group_budget_exhausted`) until the period ends (a refill) or an operator tops the group up. A period rolls
over exactly once per boundary: `advance` runs at the start of every changing command (the actor also writes a
`tick` entry at each boundary, so that an idle governor refills on time), and the commands carry their time in
the ledger, so a replay rolls over at the same places. Thresholds fire once per period, the forecast alert too.

Money is integer micro-dollars, as everywhere in the core.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from schemas.budgets import MAX_DEPTH, MAX_GROUPS, BudgetGroup
from schemas.events import (
    BudgetExhausted,
    BudgetForecast,
    BudgetRefilled,
    BudgetThreshold,
    Escalation,
    EscalationContext,
)
from schemas.ledger import GroupState
from schemas.replies import GroupStatus
from worker.core.context import Context
from worker.core.money import crossed, to_micros, to_usd
from worker.core.periods import Period, parse_period
from worker.errors import InvalidRequest, UnknownGroup

_Refresh = Callable[[Any], None]
"""The registry's `refresh`: keeps a swarm's eligibility in step after its group's changed."""

BURN_WINDOW_S = 3600
"""The spend rate is measured over the last hour (per-minute buckets)."""
_MINUTE = 60


class Group:
    """One group's configuration and its current period; private to the core."""

    __slots__ = (
        "alert_at",
        "alerted",
        "ancestors",
        "blocked",
        "burn",
        "children",
        "config",
        "end",
        "exhausted",
        "forecasted",
        "id",
        "limit",
        "members",
        "parent",
        "period",
        "since",
        "spent",
        "start",
        "topped_up",
    )

    def __init__(self, config: BudgetGroup) -> None:
        self.id = config.id
        self.config = config
        self.limit = to_micros(config.limit)
        self.period: Period | None = None
        self.parent: Group | None = None
        self.children: list[Group] = []
        self.members: dict[str, object] = {}
        """The swarms (by id) that name this group; a swarm is `worker.core.registry.Swarm`."""
        self.start: float | None = None
        """The current period's start; None until the first command windows it (a new or re-periodised group)."""
        self.end = -math.inf
        self.spent = 0
        self.topped_up = 0
        self.alerted = 0.0
        """The highest alert fraction fired in this period."""
        self.alert_at = 0
        """Micro-dollars spent at which the next alert fires (`rearm`): one comparison per cost."""
        self.ancestors: tuple[Group, ...] = (self,)
        """This group, then each ancestor up to the root (`chain`, computed once per configuration)."""
        self.forecasted = False
        self.exhausted = False
        self.blocked = False
        """This group or an ancestor is exhausted: its swarms get no work."""
        self.burn: deque[list[int]] = deque()
        """[minute, micro-dollars] spent per minute of the last hour."""
        self.since: float | None = None
        """When this group's first cost was recorded (the spend rate's window is never longer than its history)."""

    @property
    def available(self) -> int:
        """The period's limit with its top-ups, micro-dollars."""
        return self.limit + self.topped_up

    @property
    def remaining(self) -> int:
        return self.limit + self.topped_up - self.spent

    def chain(self) -> Iterator[Group]:
        """This group, then each ancestor up to the root."""
        group: Group | None = self
        while group is not None:
            yield group
            group = group.parent

    def rearm(self) -> None:
        """Where the next alert fires, after the fired fraction, the limit or a top-up changed."""
        available = self.limit + self.topped_up
        nxt = [f for f in self.config.alerts if f > self.alerted]
        self.alert_at = math.ceil(min(nxt) * available) if nxt else 1 << 62

    def subtree(self) -> Iterator[Group]:
        stack = [self]
        while stack:
            group = stack.pop()
            yield group
            stack.extend(group.children)

    def window(self, now: float) -> tuple[float | None, float | None]:
        """The period holding `now` as (start, end); (None, None) for a lifetime limit."""
        if self.period is None:
            return None, None
        if self.start is not None and self.start <= now < self.end:
            return self.start, self.end
        return self.period.window(now)

    def rate(self, now: float) -> int:
        """Micro-dollars per hour spent over the last hour (over the group's history, when shorter; at least a
        minute)."""
        if self.since is None:
            return 0
        horizon = int(now // _MINUTE) - BURN_WINDOW_S // _MINUTE
        spent = sum(micros for minute, micros in self.burn if minute > horizon)
        elapsed = min(BURN_WINDOW_S, max(_MINUTE, now - self.since))
        return round(spent * 3600 / elapsed)

    def forecast(self, now: float) -> float | None:
        """When the group runs out at the last hour's rate, if that falls before its period ends."""
        rate = self.rate(now)
        remaining = self.remaining
        if rate <= 0 or remaining <= 0:
            return None
        at = now + remaining * 3600 / rate
        _, end = self.window(now)
        return at if end is None or at < end else None


def check(configs: list[BudgetGroup]) -> dict[str, Period | None]:
    """The periods of a valid `budgets:` list; InvalidRequest names the first problem (an id twice, an unknown
    parent, a cycle, a chain too deep, a period or time zone that does not parse)."""
    if len(configs) > MAX_GROUPS:
        raise InvalidRequest(f"budgets: at most {MAX_GROUPS} groups, got {len(configs)}")
    by_id: dict[str, BudgetGroup] = {}
    for config in configs:
        if config.id in by_id:
            raise InvalidRequest(f"budgets: group {config.id!r} is listed twice")
        by_id[config.id] = config
    periods: dict[str, Period | None] = {}
    for config in configs:
        if config.parent is not None and config.parent not in by_id:
            raise InvalidRequest(f"budgets: group {config.id!r} names parent {config.parent!r}, which is not listed")
        depth, seen, parent = 1, {config.id}, config.parent
        while parent is not None:
            if parent in seen:
                raise InvalidRequest(f"budgets: group {config.id!r} is its own ancestor (a cycle through {parent!r})")
            seen.add(parent)
            depth += 1
            if depth > MAX_DEPTH:
                raise InvalidRequest(f"budgets: group {config.id!r} is more than {MAX_DEPTH} levels deep")
            parent = by_id[parent].parent
        try:
            periods[config.id] = (
                None if config.period is None else parse_period(config.period, config.timezone, config.week_starts)
            )
        except ValueError as exc:
            raise InvalidRequest(f"budgets: group {config.id!r}: {exc}") from None
    return periods


class Budgets:
    """The configured groups, their periods and what was spent in them."""

    def __init__(self) -> None:
        self.groups: dict[str, Group] = {}
        self.next_end = math.inf
        """The earliest end of a current period (or -inf: a group still to window): `advance` has work from then."""
        self._changed: list[Group] = []
        """Groups whose exhaustion a configuration changed: their events are published at the next command."""

    def __len__(self) -> int:
        return len(self.groups)

    def configs(self) -> list[BudgetGroup]:
        return [g.config for g in self.groups.values()]

    def check(self, configs: list[BudgetGroup]) -> dict[str, Period | None]:
        """The periods of `configs` if this core may take them (see `check`, and no group to remove still has
        swarms); else InvalidRequest."""
        periods = check(configs)
        wanted = {c.id for c in configs}
        for group in self.groups.values():
            if group.id not in wanted and group.members:
                raise InvalidRequest(
                    f"budgets: group {group.id!r} still has swarms ({', '.join(sorted(group.members)[:5])}): "
                    "deregister them or keep the group"
                )
        return periods

    def configure(self, configs: list[BudgetGroup], refresh: _Refresh) -> None:
        """Take a new `budgets:` list, keeping what each group that stays has spent in its period. A group whose
        period changes keeps what it spent and is windowed again at the next command (not refilled). Refused,
        changing nothing, when a group to remove still has swarms."""
        periods = self.check(configs)
        old = self.groups
        groups: dict[str, Group] = {}
        for config in configs:
            kept = old.get(config.id)
            group = Group(config) if kept is None else kept
            if kept is not None and group.config != config:
                if (config.period, config.timezone, config.week_starts) != (
                    group.config.period,
                    group.config.timezone,
                    group.config.week_starts,
                ):
                    group.start, group.end = None, -math.inf
                group.config, group.limit = config, to_micros(config.limit)
            group.period = periods[config.id]
            group.children = []
            groups[config.id] = group
        for group in groups.values():
            group.parent = groups[group.config.parent] if group.config.parent is not None else None
            if group.parent is not None:
                group.parent.children.append(group)
        for group in groups.values():
            group.ancestors = tuple(group.chain())
            group.rearm()
        self.groups = groups
        for group in groups.values():
            exhausted = group.remaining <= 0
            if exhausted != group.exhausted:
                group.exhausted = exhausted
                self._changed.append(group)
        self._reblock(groups.values(), refresh)
        self._next_end()

    def get(self, group_id: str) -> Group:
        try:
            return self.groups[group_id]
        except KeyError:
            raise UnknownGroup(f"no budget group {group_id!r} is configured") from None

    # -- time -----------------------------------------------------------------------------------------------

    def due(self, now: float) -> bool:
        """A period has ended (or a group waits to be windowed) by `now`."""
        return now >= self.next_end or bool(self._changed)

    def advance(self, ctx: Context, refresh: _Refresh) -> list[str]:
        """Roll every group whose period ended by `ctx.now` over to the period holding it: once per boundary, one
        `budget.refilled` event however many periods passed. The ids refilled."""
        now = ctx.now
        changed = self._changed
        self._changed = []
        for group in changed:
            if group.exhausted:
                self._exhausted(ctx, group)
        refilled: list[str] = []
        if now < self.next_end:
            if changed:
                self._reblock(changed, refresh)
            return refilled
        for group in self.groups.values():
            if group.period is None or now < group.end:
                continue
            start, end = group.period.window(now)
            if group.start is None:  # first windowed (or its period changed): nothing to refill
                group.start, group.end = start, end
                continue
            periods = 1 + (0 if group.end == start else self._between(group.period, group.end, start))
            previous, was_exhausted = group.spent, group.exhausted
            group.start, group.end = start, end
            group.spent = group.topped_up = 0
            group.alerted, group.forecasted = 0.0, False
            group.rearm()
            group.exhausted = group.remaining <= 0
            changed.append(group)
            refilled.append(group.id)
            ctx.emit(
                BudgetRefilled(
                    group=group.id,
                    period_start=start,
                    period_end=end,
                    limit=to_usd(group.available),
                    previous_spent=to_usd(previous),
                    was_exhausted=was_exhausted,
                    periods=periods,
                    trace_id=ctx.trace_id,
                )
            )
            ctx.witness(
                "budget_refilled",
                {
                    "group": group.id,
                    "period_start": start,
                    "period_end": end,
                    "limit": to_usd(group.available),
                    "previous_spent": to_usd(previous),
                    "periods": periods,
                },
                "INFO",
            )
        self._reblock(changed, refresh)
        self._next_end()
        return refilled

    @staticmethod
    def _between(period: Period, end: float, start: float) -> int:
        """How many whole periods lie between the end of one and the start of a later one (bounded walk)."""
        if period.kind == "fixed":
            return round((start - end) / period.length_s)
        count, t = 0, end
        while t < start and count < 10_000:
            t = period.window(t)[1]
            count += 1
        return count

    def _next_end(self) -> None:
        ends = [g.end for g in self.groups.values() if g.period is not None]
        self.next_end = min(ends) if ends else math.inf

    # -- spending -------------------------------------------------------------------------------------------

    def spend(self, ctx: Context, group: Group, micros: int, refresh: _Refresh) -> None:
        """Count a cost against a group and its ancestors (their periods already hold `ctx.now`)."""
        if micros <= 0:
            return
        now = ctx.now
        minute = int(now // _MINUTE)
        flipped: list[Group] = []
        for g in group.ancestors:
            g.spent += micros
            if g.since is None:
                g.since = now
            burn = g.burn
            if burn and burn[-1][0] == minute:
                burn[-1][1] += micros
            else:
                burn.append([minute, micros])
                while burn and burn[0][0] <= minute - BURN_WINDOW_S // _MINUTE:
                    burn.popleft()
            if g.spent >= g.alert_at:
                self._thresholds(ctx, g)
            if not g.exhausted and g.remaining <= 0:
                g.exhausted = True
                flipped.append(g)
                self._exhausted(ctx, g)
            elif g.config.forecast_alert and not g.forecasted:
                self._forecast(ctx, g)
        if flipped:
            self._reblock(flipped, refresh)

    def _thresholds(self, ctx: Context, group: Group) -> None:
        available = group.available
        fractions = crossed(sorted(group.config.alerts), group.alerted, group.spent, available)
        if not fractions:
            return
        group.alerted = fractions[-1]
        group.rearm()
        for fraction in fractions:
            ctx.emit(
                BudgetThreshold(
                    group=group.id,
                    fraction=fraction,
                    spent=to_usd(group.spent),
                    limit=to_usd(available),
                    period_start=group.start,
                    trace_id=ctx.trace_id,
                )
            )
            ctx.witness(
                "budget_threshold",
                {"group": group.id, "fraction": fraction, "spent": to_usd(group.spent), "limit": to_usd(available)},
                "MEDIUM",
            )
        if group.remaining > 0:  # exhausted by this cost: the exhaustion's escalation says it
            ctx.emit(
                Escalation(
                    swarm_id="",
                    group=group.id,
                    reason=f"Budget group {group.id} has spent {fractions[-1]:.0%} of its limit",
                    context=EscalationContext(type="budget_threshold", reason="group_threshold", timestamp=ctx.now),
                    trace_id=ctx.trace_id,
                    severity="MEDIUM",
                )
            )

    def _exhausted(self, ctx: Context, group: Group) -> None:
        ctx.emit(
            BudgetExhausted(
                group=group.id,
                period_start=group.start,
                period_end=group.end if group.period is not None else None,
                limit=to_usd(group.available),
                spent=to_usd(group.spent),
                trace_id=ctx.trace_id,
            )
        )
        ctx.emit(
            Escalation(
                swarm_id="",
                group=group.id,
                reason=f"Budget group {group.id} exhausted - its swarms get no work until it refills or is topped up",
                context=EscalationContext(type="group_budget", reason="group_budget_exhausted", timestamp=ctx.now),
                trace_id=ctx.trace_id,
            )
        )
        ctx.witness(
            "budget_exhausted",
            {"group": group.id, "limit": to_usd(group.available), "spent": to_usd(group.spent)},
            "HIGH",
        )

    def _forecast(self, ctx: Context, group: Group) -> None:
        at = group.forecast(ctx.now)
        if at is None:
            return
        group.forecasted = True
        rate = to_usd(group.rate(ctx.now))
        ctx.emit(
            BudgetForecast(
                group=group.id,
                exhausted_at=at,
                period_start=group.start,
                period_end=group.end if group.period is not None else None,
                rate_usd_per_hour=rate,
                remaining=to_usd(group.remaining),
                trace_id=ctx.trace_id,
            )
        )
        ctx.witness("budget_forecast", {"group": group.id, "exhausted_at": at, "rate_usd_per_hour": rate}, "MEDIUM")

    def top_up(self, ctx: Context, group: Group, micros: int, refresh: _Refresh) -> bool:
        """Add to a group's current period (which holds `ctx.now`: `advance` ran first); True when that unblocked
        it."""
        group.topped_up += micros
        group.rearm()
        if group.exhausted and group.remaining > 0:
            group.exhausted = False
            self._reblock([group], refresh)
            return True
        return False

    def _reblock(self, groups: Iterable[Group], refresh: _Refresh) -> None:
        """Recompute `blocked` below each group and refresh the swarms whose eligibility may have changed."""
        for top in groups:
            for group in top.subtree():
                parent = group.parent
                blocked = group.exhausted or (parent is not None and parent.blocked)
                if blocked != group.blocked:
                    group.blocked = blocked
                for swarm in group.members.values():
                    refresh(swarm)

    # -- reports --------------------------------------------------------------------------------------------

    def status(self, now: float) -> list[GroupStatus]:
        """Each group as of `now` (a period that ended but was not rolled over yet reads as the next one's)."""
        out: list[GroupStatus] = []
        for group in self.groups.values():
            start, end = group.window(now)
            fresh = group.period is not None and group.start is not None and now >= group.end
            spent = 0 if fresh else group.spent
            topped = 0 if fresh else group.topped_up
            available = group.limit + topped
            forecast = None if fresh else group.forecast(now)
            out.append(
                GroupStatus(
                    id=group.id,
                    parent=group.config.parent,
                    period=group.period.describe() if group.period is not None else None,
                    period_start=start,
                    period_end=end,
                    limit=to_usd(group.limit),
                    topped_up=to_usd(topped),
                    spent=to_usd(spent),
                    remaining=to_usd(available - spent),
                    exhausted=available - spent <= 0,
                    blocked=group.blocked and not fresh,
                    rate_usd_per_hour=to_usd(group.rate(now)),
                    forecast_exhausted_at=forecast,
                    swarms=len(group.members),
                )
            )
        return out

    # -- state ----------------------------------------------------------------------------------------------

    def export(self) -> list[GroupState]:
        return [
            GroupState(
                g.id,
                g.start,
                g.end if g.start is not None else None,
                g.spent,
                g.topped_up,
                g.alerted,
                g.forecasted,
                g.exhausted,
                g.since,
                [(m, v) for m, v in g.burn],
            )
            for g in self.groups.values()
        ]

    def restore(self, states: list[GroupState], refresh: _Refresh) -> None:
        for st in states:
            group = self.groups.get(st.id)
            if group is None:
                continue
            group.start = st.start
            group.end = st.end if st.start is not None and st.end is not None else -math.inf
            group.spent, group.topped_up = st.spent_micros, st.topped_up_micros
            group.alerted, group.forecasted, group.exhausted = st.alerted, st.forecasted, st.exhausted
            group.since = st.since
            group.burn = deque([m, v] for m, v in st.burn)
            group.rearm()
        self._changed = []
        roots = [g for g in self.groups.values() if g.parent is None]
        self._reblock(roots, refresh)
        self._next_end()
