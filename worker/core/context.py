"""One command's circumstances: when it is applied, its trace id, who sent it, and where its events go.

The actor reads the clock, the bus finds the trace id and the sender; the core gets all three in one `Context` per
command and hands that on, instead of threading `now` and `trace_id` through every helper.
"""

from __future__ import annotations

from typing import Any

import msgspec

from schemas.codes import WitnessOperation
from schemas.events import Event, Identity, Severity, WitnessRecord


class Context:
    """The time, trace id and sender of the command being applied, and the list its events are recorded in."""

    __slots__ = ("events", "identity", "now", "trace_id")

    def __init__(self, now: float, trace_id: str, identity: Identity | msgspec.UnsetType, events: list[Event]) -> None:
        self.now = now
        self.trace_id = trace_id
        self.identity = identity
        self.events = events

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def witness(self, operation: WitnessOperation, params: dict[str, Any], severity: Severity) -> None:
        self.events.append(
            WitnessRecord(
                operation=operation,
                params=params,
                timestamp=self.now,
                severity=severity,
                trace_id=self.trace_id,
                identity=self.identity,
            )
        )
