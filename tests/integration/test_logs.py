"""Logs: one line per breaker event with its trace id; JSON lines on request."""

from __future__ import annotations

import io
import json
import logging

import pytest

from tests.integration.helpers import Recorder, WorkerFactory
from worker.client import GovernorClient
from worker.ops.logs import setup_logging


class TestLogs:
    async def test_trip_logged_with_its_trace_id(
        self, start_worker: WorkerFactory, client: GovernorClient, recorder: Recorder, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The trip and its escalation are logged, one line each, carrying the request's trace id."""
        await start_worker()
        with caplog.at_level(logging.INFO, logger="if_governor"):
            await client.cost("session-1-ndi", "op", 30.0, trace_id="trace-log-1")
            await recorder.wait_for("governor.events.escalation")
        lines = [(r.levelname, r.getMessage().split()[0], getattr(r, "trace_id", None)) for r in caplog.records]
        assert ("WARNING", "BreakerTripped", "trace-log-1") in lines
        assert ("WARNING", "Escalation", "trace-log-1") in lines

    def test_json_lines_carry_trace_id(self) -> None:
        """With --log-format json every line is a JSON object with a trace id (`-` when there is none)."""
        stream = io.StringIO()
        root = logging.getLogger()
        saved = (root.handlers[:], root.level)
        try:
            setup_logging("INFO", "json")
            root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
            logging.getLogger("if_governor.test").info("hello", extra={"trace_id": "t-9"})
            logging.getLogger("if_governor.test").info("no trace")
        finally:
            root.handlers[:], level = saved
            root.setLevel(level)
        entries = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [(e["msg"], e["trace_id"], e["level"]) for e in entries] == [
            ("hello", "t-9", "INFO"),
            ("no trace", "-", "INFO"),
        ]
