"""Budget groups as the config declares them: an organisation, a team, a project, each with a limit per period.

A swarm names its group (`budget_group`); a cost counts against the swarm's own budget and against its group and
every ancestor, for the current period. A group with nothing left in its period blocks its swarms (and those of
its descendants) from assignment until the period refills or an operator tops it up (`governor.topup`).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from schemas.types import Budget

GROUP_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@/-]*\Z"
GroupId = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=128,
        pattern=GROUP_ID_PATTERN,
        description="A budget group's id: ASCII letters, digits and `._:@/-`, starting with a letter or digit.",
    ),
]
PeriodText = Annotated[
    str,
    Meta(
        pattern=r"^(day|week|month|[1-9][0-9]{0,8}[smhd])\Z",
        description="`day`, `week`, `month` (calendar, in `timezone`) or a fixed length: `30s`, `90m`, `6h`, `2d`.",
    ),
]
Weekday = Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
AlertFraction = Annotated[float, Meta(gt=0.0, le=1.0)]
Alerts = Annotated[list[AlertFraction], Meta(max_length=16)]

DEFAULT_ALERTS = (0.5, 0.8, 0.95)
"""Fractions of a limit whose crossing publishes `governor.events.budget.threshold`, once per period."""

MAX_GROUPS = 256
"""Groups in all: `status` carries every one on its first page."""
MAX_DEPTH = 8
"""A chain of groups from a swarm's to the root has at most this many."""


class BudgetGroup(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One group of the `budgets:` list."""

    id: GroupId
    parent: GroupId | None = None
    limit: Budget
    """USD per period (no `period`: in all)."""
    period: PeriodText | None = None
    """None: the limit is a lifetime total, refilled only by top-ups."""
    timezone: Annotated[str, Meta(min_length=1, max_length=64)] = "UTC"
    """The IANA time zone of a calendar period's boundaries (local midnights); not used by fixed lengths."""
    week_starts: Weekday = "monday"
    alerts: Alerts = msgspec.field(default_factory=lambda: list(DEFAULT_ALERTS))
    """Fractions of the limit spent whose crossing publishes a threshold event, once per period."""
    forecast_alert: bool = False
    """Publish `governor.events.budget.forecast` (once per period) when the spend rate of the last hour forecasts
    exhaustion before the period ends."""
