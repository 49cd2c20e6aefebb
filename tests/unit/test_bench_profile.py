"""The bench's profile summary: py-spy's raw stacks attributed to the governor's parts."""

from __future__ import annotations

from pathlib import Path

from worker.bench.profile import area_of, summary

LOOP = "run (asyncio/runners.py:190);BaseEventLoop.run_forever (asyncio/base_events.py:607);"
RUN_ONCE = LOOP + "BaseEventLoop._run_once (asyncio/base_events.py:1922);"


def test_each_sample_counts_for_its_innermost_frame_outside_asyncio() -> None:
    handler = (
        RUN_ONCE + "Handle._run (asyncio/events.py:80);Bus._handler.<locals>.handle (worker/service/bus.py:241)"
    ).split(";")
    write = (
        RUN_ONCE + "Client._flusher (nats/aio/client.py:2364);TcpTransport.writelines (nats/aio/transport.py:162);"
        "_SelectorSocketTransport.write (asyncio/selector_events.py:1040)"
    ).split(";")
    waiting = (RUN_ONCE + "EpollSelector.select (selectors.py:468)").split(";")
    rank = (RUN_ONCE + "Actor.apply (worker/service/actor.py:300);rank (worker/core/matching.py:90)").split(";")
    assert area_of(tuple(handler)) == "bus: decoding, checks, trace ids"
    assert area_of(tuple(write)) == "nats-py: publishing and transport"  # the socket write counts for its writer
    assert area_of(tuple(waiting)) == "asyncio event loop"
    assert area_of(tuple(rank)) == "core: ranking (matching)"
    assert area_of(("<module> (tool.py:1)",)) == "other"


def test_the_summary_gives_shares_by_area_and_function(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text(
        RUN_ONCE
        + "rank (worker/core/matching.py:90) 3\n"
        + RUN_ONCE
        + "rank (worker/core/matching.py:95) 1\n"
        + RUN_ONCE
        + "EpollSelector.select (selectors.py:468) 4\n"
        + "not a stack line\n"
    )
    text = summary(raw)
    assert text.splitlines()[0] == f"8 samples of the governor's process ({raw})"
    assert "50.0%  core: ranking (matching)" in text and "50.0%  asyncio event loop" in text
    assert "50.0%  rank (worker/core/matching.py)" in text  # both lines of rank, as one function
