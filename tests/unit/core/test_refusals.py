"""A refused call changes nothing: it raises its error, records no event and leaves every observable value as it was."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from tests.factories import NOW, SIP, governed, profile
from tests.unit.core.helpers import observable_state
from worker.core.governor import Governor
from worker.errors import (
    AlreadyRegistered,
    AlreadyTripped,
    GovernorError,
    InvalidBudget,
    InvalidCost,
    InvalidRequest,
    NotTripped,
    UnknownCapability,
    UnknownSwarm,
)


def _rejected_calls() -> list[tuple[str, Callable[[Governor], object], type[GovernorError]]]:
    return [
        ("register existing", lambda g: g.register_swarm(profile("ok", budget=99.0), now=NOW), AlreadyRegistered),
        ("register bad budget", lambda g: g.register_swarm(profile("new", budget=0.0), now=NOW), InvalidBudget),
        (
            "register unknown capability",
            lambda g: g.register_swarm(profile("new", capabilities=["integration:sipp"]), now=NOW),
            UnknownCapability,
        ),
        ("deregister unknown", lambda g: g.deregister_swarm("ghost", now=NOW), UnknownSwarm),
        ("assign unknown capability", lambda g: g.assign("t", ["nope:nope"], now=NOW), UnknownCapability),
        ("cost unknown swarm", lambda g: g.track_cost("ghost", "op", 1.0, now=NOW), UnknownSwarm),
        ("cost negative", lambda g: g.track_cost("ok", "op", -1.0, now=NOW, event_id="x"), InvalidCost),
        ("cost nan", lambda g: g.track_cost("ok", "op", math.nan, now=NOW), InvalidCost),
        ("cost inf", lambda g: g.track_cost("ok", "op", math.inf, now=NOW), InvalidCost),
        ("failure unknown swarm", lambda g: g.record_failure("ghost", now=NOW), UnknownSwarm),
        (
            "trip unknown swarm",
            lambda g: g.trip_circuit_breaker("ghost", "manual_override", now=NOW, requested_by="o"),
            UnknownSwarm,
        ),
        (
            "trip bad reason",
            lambda g: g.trip_circuit_breaker("ok", "budget_exhausted", now=NOW, requested_by="o"),
            InvalidRequest,
        ),
        (
            "trip already tripped",
            lambda g: g.trip_circuit_breaker("off", "manual_override", now=NOW, requested_by="o"),
            AlreadyTripped,
        ),
        (
            "reset unknown swarm",
            lambda g: g.reset_circuit_breaker("ghost", 5.0, approved_by="a", now=NOW),
            UnknownSwarm,
        ),
        ("reset not tripped", lambda g: g.reset_circuit_breaker("ok", 5.0, approved_by="a", now=NOW), NotTripped),
        ("reset zero budget", lambda g: g.reset_circuit_breaker("off", 0.0, approved_by="a", now=NOW), InvalidBudget),
        (
            "reset nan budget",
            lambda g: g.reset_circuit_breaker("off", math.nan, approved_by="a", now=NOW),
            InvalidBudget,
        ),
        (
            "reset inf budget",
            lambda g: g.reset_circuit_breaker("off", math.inf, approved_by="a", now=NOW),
            InvalidBudget,
        ),
        (
            "reset no approver",
            lambda g: g.reset_circuit_breaker("off", 5.0, approved_by="", now=NOW, event_id="r"),
            InvalidRequest,
        ),
    ]


class TestRejectedCallsChangeNothing:
    @pytest.fixture
    def governor(self) -> Governor:
        """A governor with history, costs, failures and one tripped swarm."""
        governor = governed(profile("ok", budget=20.0), profile("off", budget=5.0))
        governor.assign("task-1", [SIP], now=NOW)
        governor.track_cost("ok", "op", 1.25, now=NOW, event_id="e0")
        governor.record_failure("ok", now=NOW)
        governor.track_cost("off", "op", 6.0, now=NOW)
        governor.take_events()
        return governor

    @pytest.mark.parametrize(
        ("call", "error"),
        [(call, error) for _, call, error in _rejected_calls()],
        ids=[name for name, _, _ in _rejected_calls()],
    )
    def test_rejected_call(
        self, governor: Governor, call: Callable[[Governor], object], error: type[GovernorError]
    ) -> None:
        """A refused call raises its error, leaves the status byte-for-byte equal and records no event."""
        before = observable_state(governor)
        with pytest.raises(error):
            call(governor)
        assert observable_state(governor) == before
        assert governor.take_events() == []

    def test_fixture_state(self, governor: Governor) -> None:
        """The fixture's state is what the rejected calls are compared against."""
        assert governor.get_budget_report() == {"ok": 18.75, "off": -1.0}
        assert list(governor.get_circuit_breaker_status()) == ["off"]
