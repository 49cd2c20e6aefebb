"""Budget periods: calendar windows in a time zone (daylight saving, month ends, week starts) and fixed lengths
aligned to the epoch."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.core.periods import Period, parse_period

UTC = dt.UTC


def at(text: str, zone: str = "UTC") -> float:
    """An instant from a local wall-clock time `YYYY-MM-DD HH:MM` in `zone`."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


def hours(window: tuple[float, float]) -> float:
    return (window[1] - window[0]) / 3600


class TestCalendar:
    def test_a_day_is_local_midnight_to_midnight(self) -> None:
        paris = parse_period("day", "Europe/Paris")
        assert paris.window(at("2026-06-10 23:59", "Europe/Paris")) == (
            at("2026-06-10 00:00", "Europe/Paris"),
            at("2026-06-11 00:00", "Europe/Paris"),
        )

    def test_days_that_change_to_and_from_summer_time_last_23_and_25_hours(self) -> None:
        paris = parse_period("day", "Europe/Paris")
        assert hours(paris.window(at("2026-03-29 12:00", "Europe/Paris"))) == 23
        assert hours(paris.window(at("2026-10-25 12:00", "Europe/Paris"))) == 25
        # Both hours that read 02:30 on the day clocks go back are in that one day.
        first = dt.datetime(2026, 10, 25, 2, 30, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
        second = dt.datetime(2026, 10, 25, 2, 30, fold=1, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
        assert second - first == 3600
        assert paris.window(first) == paris.window(second)

    def test_a_skipped_midnight_starts_the_day_where_the_gap_ends(self) -> None:
        """Santiago moved its clocks from 24:00 to 01:00 on 2026-09-06: that day starts at the change."""
        santiago = parse_period("day", "America/Santiago")
        start, end = santiago.window(at("2026-09-06 12:00", "America/Santiago"))
        assert dt.datetime.fromtimestamp(start, ZoneInfo("America/Santiago")).hour == 1
        assert end - start == 23 * 3600
        before = santiago.window(start - 1)
        assert before[1] == start

    def test_a_repeated_midnight_belongs_to_the_new_day(self) -> None:
        """São Paulo turned its clocks back from 00:00 to 23:00 on 2018-02-18: the repeated hour reads as the
        17th but comes after the 18th began."""
        sao_paulo = parse_period("day", "America/Sao_Paulo")
        repeated = dt.datetime(2018, 2, 17, 23, 30, fold=1, tzinfo=ZoneInfo("America/Sao_Paulo")).timestamp()
        start, end = sao_paulo.window(repeated)
        assert start <= repeated < end
        assert end - start == 25 * 3600

    @pytest.mark.parametrize(
        ("starts", "expected"), [("monday", "2026-11-30"), ("sunday", "2026-11-29"), ("wednesday", "2026-12-02")]
    )
    def test_a_week_starts_on_its_day(self, starts: str, expected: str) -> None:
        week = parse_period("week", "UTC", starts)
        start, end = week.window(at("2026-12-02 10:00"))  # a Wednesday
        assert start == at(f"{expected} 00:00") and end - start == 7 * 86400

    def test_months_end_on_their_last_day_leap_years_included(self) -> None:
        month = parse_period("month", "Asia/Tokyo")
        assert month.window(at("2026-01-31 23:59", "Asia/Tokyo")) == (
            at("2026-01-01 00:00", "Asia/Tokyo"),
            at("2026-02-01 00:00", "Asia/Tokyo"),
        )
        start, end = month.window(at("2028-02-29 12:00", "Asia/Tokyo"))
        assert (end - start) / 86400 == 29
        start, end = month.window(at("2026-12-31 23:00", "Asia/Tokyo"))
        assert end == at("2027-01-01 00:00", "Asia/Tokyo")

    def test_a_month_with_a_summer_time_change_is_an_hour_short(self) -> None:
        march = parse_period("month", "America/New_York").window(at("2026-03-15 12:00", "America/New_York"))
        assert hours(march) == 31 * 24 - 1


class TestFixed:
    @pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("90m", 5400), ("6h", 21600), ("2d", 172800)])
    def test_lengths(self, text: str, seconds: int) -> None:
        assert parse_period(text) == Period("fixed", length_s=seconds)

    def test_aligned_to_the_epoch_whatever_the_time_zone(self) -> None:
        two = parse_period("2s", "Europe/Paris")
        assert two.window(1_000_001.5) == (1_000_000.0, 1_000_002.0)
        assert two.window(1_000_002.0) == (1_000_002.0, 1_000_004.0)


class TestParsing:
    @pytest.mark.parametrize(
        ("text", "zone", "starts", "message"),
        [
            ("monthly", "UTC", "monday", "expected day, week, month"),
            ("1mo", "UTC", "monday", "expected day, week, month"),
            ("0s", "UTC", "monday", "expected day, week, month"),
            ("day", "Mars/Olympus", "monday", "not an IANA time zone"),
            ("day", "../etc/passwd", "monday", "not an IANA time zone"),
            ("week", "UTC", "funday", "expected one of monday"),
        ],
    )
    def test_mistakes_are_named(self, text: str, zone: str, starts: str, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            parse_period(text, zone, starts)


class TestRounding:
    @pytest.mark.parametrize("kind", ["day", "week", "month"])
    def test_an_instant_a_hair_before_midnight_is_in_the_day_before(self, kind: str) -> None:
        """datetime rounds 2034-12-31 23:59:59.9999995 UTC up to the next microsecond, midnight: still the 31st's."""
        t = 2051222399.9999995
        start, end = parse_period(kind).window(t)
        assert start <= t < end == 2051222400.0


ZONES = ["UTC", "Europe/Paris", "America/New_York", "America/Santiago", "Australia/Lord_Howe", "Asia/Kathmandu"]


@given(
    t=st.floats(min_value=0, max_value=4_102_444_800),  # 1970 to 2100
    kind=st.sampled_from(["day", "week", "month", "7s", "6h"]),
    zone=st.sampled_from(ZONES),
)
def test_windows_hold_their_instant_and_tile_time(t: float, kind: str, zone: str) -> None:
    """Every instant lies in exactly one window, and each window ends where the next begins."""
    period = parse_period(kind, zone)
    start, end = period.window(t)
    assert start <= t < end
    assert period.window(start) == (start, end)
    assert period.window(end)[0] == end
    assert end - start <= 32 * 86400


@pytest.mark.parametrize(
    ("text", "shown"),
    [("30s", "30s"), ("90s", "90s"), ("120s", "2m"), ("90m", "90m"), ("6h", "6h"), ("48h", "2d"), ("2d", "2d")],
)
def test_a_fixed_length_is_shown_in_its_largest_whole_unit(text: str, shown: str) -> None:
    assert parse_period(text).describe() == shown


def test_calendar_periods_are_shown_with_their_zone() -> None:
    assert parse_period("day", "Europe/Paris").describe() == "day (Europe/Paris)"
    assert parse_period("week", week_starts="sunday").describe() == "week from sunday (UTC)"
