"""The governor's log: one line per record on stderr, as text or JSON, each carrying a trace id."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable

from worker.ops.render import escape


class _TraceId(logging.Filter):
    """Every line carries a trace id: the request's (passed as `extra={"trace_id": ...}`), else `-`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "trace_id"):
            record.trace_id = "-"
        return True


class _TextFormatter(logging.Formatter):
    """`time LEVEL logger [trace id] message`, one record per line: the trace id and the message are escaped, and
    the lines of a traceback are indented, so no line a client wrote into a record looks like a record."""

    def format(self, record: logging.LogRecord) -> str:
        trace_id = escape(str(getattr(record, "trace_id", "-")))
        line = f"{self.formatTime(record)} {record.levelname} {record.name} [{trace_id}] {escape(record.getMessage())}"
        details = []
        if record.exc_info:
            details.append(self.formatException(record.exc_info))
        if record.stack_info:
            details.append(self.formatStack(record.stack_info))
        for text in details:
            line += "".join(f"\n  {escape(part)}" for part in text.split("\n"))
        return line


class _JsonFormatter(logging.Formatter):
    """One JSON object per line; `json.dumps` escapes control characters and, with `ensure_ascii`, every non-ASCII
    one (bidi and zero-width characters included), so a client's string never breaks or disguises a line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 6),
            "level": record.levelname,
            "logger": record.name,
            "trace_id": getattr(record, "trace_id", "-"),
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=True)


def setup_logging(level: str, fmt: str) -> None:
    """Route every record to stderr at `level`, formatted as `fmt` (`text` or `json`), replacing other handlers."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter())
    handler.addFilter(_TraceId())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class Throttle:
    """At most one log line per `every` seconds for a condition that repeats (a storage outage would otherwise log
    every batch it refuses); the next line says how many were held back."""

    def __init__(self, every: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self._clock = clock
        self._next = -math.inf
        self._held = 0

    def __call__(self) -> str | None:
        """None: hold this line back. Else what to append to it: "" or " (N more like it since the last)"."""
        now = self._clock()
        if now < self._next:
            self._held += 1
            return None
        held, self._held = self._held, 0
        self._next = now + self.every
        return f" ({held} more like it since the last)" if held else ""
