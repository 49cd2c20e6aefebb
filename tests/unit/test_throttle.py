"""The log's throttle: a repeated condition logs one line per interval, the next line counting those held back."""

from __future__ import annotations

from worker.ops.logs import Throttle


def test_one_line_per_interval_counting_what_was_held_back() -> None:
    now = [100.0]
    throttle = Throttle(5.0, clock=lambda: now[0])
    assert throttle() == ""  # the first line goes out
    assert [throttle() for _ in range(3)] == [None, None, None]
    now[0] = 104.9
    assert throttle() is None
    now[0] = 105.0
    assert throttle() == " (4 more like it since the last)"
    now[0] = 200.0
    assert throttle() == ""  # nothing held back since
