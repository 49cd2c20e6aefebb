"""What the decision core's tests observe: everything a call could change, and the events it recorded."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from schemas.events import BreakerTripped, WitnessRecord
from tests.factories import NOW
from worker.core.governor import Governor


def observable_state(governor: Governor) -> bytes:
    """Everything observable about the state, as bytes: status, history and the metrics gauges."""
    gauges = list(governor.gauges())
    return msgspec.json.encode([governor.status(now=NOW + 100), governor.get_assignment_history(), gauges])


def recorded(governor: Governor) -> list[str]:
    """The events recorded since they were last taken (and takes them): witness records by operation, any other
    event by its type's name."""
    return [e.operation if isinstance(e, WitnessRecord) else type(e).__name__ for e in governor.take_events()]


def tripped_events(events: Sequence[object]) -> list[BreakerTripped]:
    """The BreakerTripped events among `events`, in order."""
    return [e for e in events if isinstance(e, BreakerTripped)]
