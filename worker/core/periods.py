"""Budget periods: the window `[start, end)` that holds an instant, for calendar periods (a day, a week, a month)
in an IANA time zone and for fixed lengths aligned to the Unix epoch.

The only module of the core that does calendar arithmetic; it never reads a clock (every instant is passed in, as
Unix seconds). Calendar boundaries are local midnights: a day in a zone that changes to or from daylight saving
time lasts 23 or 25 hours, and where midnight itself is skipped the day starts at the first instant after the
gap. A month starts on its first day, a week on `week_starts`.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

CALENDAR = ("day", "week", "month")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_FIXED = re.compile(r"^([1-9][0-9]{0,8})(s|m|h|d)\Z")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DAY = _dt.timedelta(days=1)


@dataclass(frozen=True)
class Period:
    """How a budget refills: `kind` is a calendar period or `fixed` (then `length_s` seconds from the epoch)."""

    kind: str
    length_s: int = 0
    zone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    week_start: int = 0
    """0 = Monday, as `datetime.weekday()` counts."""

    def window(self, t: float) -> tuple[float, float]:
        """The period holding instant `t`: (its start, its end), Unix seconds, `start <= t < end`."""
        if self.kind == "fixed":
            first_s = int(t // self.length_s) * self.length_s
            return float(first_s), float(first_s + self.length_s)
        first = self._first_day(_dt.datetime.fromtimestamp(t, self.zone).date())
        start, end = self._midnight(first), self._midnight(self._next(first))
        # Where a midnight repeats (clocks turned back across it), the repeated wall-clock hour reads as the day
        # before; it belongs to the day that began at the first midnight.
        while t >= end:
            first = self._next(first)
            start, end = end, self._midnight(self._next(first))
        # datetime rounds an instant to the microsecond: one just before midnight can read as the next day.
        while t < start:
            first = self._previous(first)
            start, end = self._midnight(first), start
        return start, end

    def _first_day(self, day: _dt.date) -> _dt.date:
        if self.kind == "week":
            return day - (day.weekday() - self.week_start) % 7 * _DAY
        if self.kind == "month":
            return day.replace(day=1)
        return day

    def _next(self, first: _dt.date) -> _dt.date:
        if self.kind == "week":
            return first + 7 * _DAY
        if self.kind == "month":
            return (first + 32 * _DAY).replace(day=1)
        return first + _DAY

    def _previous(self, first: _dt.date) -> _dt.date:
        if self.kind == "week":
            return first - 7 * _DAY
        if self.kind == "month":
            return (first - _DAY).replace(day=1)
        return first - _DAY

    def _midnight(self, day: _dt.date) -> float:
        """The first instant of `day` in the zone. A skipped midnight (fold=0 reads it with the offset before the
        change) is the instant the gap begins, the first of the new day; a repeated one, its first occurrence."""
        return _dt.datetime(day.year, day.month, day.day, tzinfo=self.zone).timestamp()

    def describe(self) -> str:
        if self.kind == "fixed":
            for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60)):
                if self.length_s % seconds == 0:
                    return f"{self.length_s // seconds}{unit}"
            return f"{self.length_s}s"
        where = self.zone.key
        if self.kind == "week":
            return f"week from {WEEKDAYS[self.week_start]} ({where})"
        return f"{self.kind} ({where})"


def parse_period(text: str, timezone: str = "UTC", week_starts: str = "monday") -> Period:
    """A period from the config: `day`, `week`, `month` (in `timezone`), or a fixed length such as `30s`, `90m`,
    `6h`, `2d` (aligned to the epoch; the time zone does not apply). ValueError says what is wrong."""
    fixed = _FIXED.match(text)
    if fixed is not None:
        return Period("fixed", length_s=int(fixed.group(1)) * _UNIT_S[fixed.group(2)])
    if text not in CALENDAR:
        raise ValueError(f"period {text!r}: expected day, week, month or a length such as 30s, 90m, 6h, 2d")
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"timezone {timezone!r}: not an IANA time zone name (such as Europe/Paris)") from None
    if week_starts not in WEEKDAYS:
        raise ValueError(f"week_starts {week_starts!r}: expected one of {', '.join(WEEKDAYS)}")
    return Period(text, zone=zone, week_start=WEEKDAYS.index(week_starts))
