"""Registration: what a profile must hold to be registered, and what registering and deregistering change."""

from __future__ import annotations

import math

import pytest

from schemas.events import WitnessRecord
from schemas.replies import BreakerState
from tests.factories import NOW, SIP, governed, profile
from tests.unit.core.helpers import observable_state
from worker.core.governor import Governor
from worker.errors import AlreadyRegistered, InvalidBudget, InvalidRequest, UnknownSwarm


class TestRegistration:
    def test_register_witnessed(self) -> None:
        """Registration records one `swarm_registered` witness record with the profile's values."""
        governor = Governor()
        governor.register_swarm(profile("a", budget=12.5), now=NOW, trace_id="tr")
        assert governor.take_events() == [
            WitnessRecord(
                operation="swarm_registered",
                params={
                    "swarm_id": "a",
                    "capabilities": [SIP],
                    "cost_per_hour": 2.0,
                    "reputation_score": 0.9,
                    "budget": 12.5,
                    "model": "haiku",
                    "tripped": False,
                },
                timestamp=NOW,
                severity="INFO",
                trace_id="tr",
            )
        ]

    def test_deregistered_while_tripped_comes_back_tripped(self) -> None:
        """Deregistering and registering a tripped swarm again does not close its breaker: only a reset does."""
        governor = governed(profile("a"))
        governor.trip_circuit_breaker("a", "manual_override", now=NOW, requested_by="ops")
        governor.deregister_swarm("a", now=NOW + 1)
        governor.register_swarm(profile("a", budget=99.0), now=NOW + 2)
        assert governor.get_circuit_breaker_status() == {"a": BreakerState(reason="manual_override", tripped_at=NOW)}
        assert governor.find_qualified_swarm([SIP], 100.0) is None

    def test_existing_id_refused(self) -> None:
        """Registering an id that exists raises AlreadyRegistered."""
        governor = governed(profile("a"))
        with pytest.raises(AlreadyRegistered, match="'a'"):
            governor.register_swarm(profile("a"), now=NOW)

    def test_registration_never_restores_budget_or_closes_breaker(self) -> None:
        """Re-registering an exhausted, tripped swarm with a fresh budget is refused and changes nothing."""
        governor = governed(profile("a", budget=1.0))
        governor.track_cost("a", "op", 1.5, now=NOW)
        governor.take_events()
        before = observable_state(governor)
        with pytest.raises(AlreadyRegistered):
            governor.register_swarm(profile("a", budget=1000.0), now=NOW + 1)
        assert observable_state(governor) == before
        assert governor.get_budget_report() == {"a": -0.5}
        assert "a" in governor.get_circuit_breaker_status()
        assert governor.take_events() == []

    @pytest.mark.parametrize("budget", [0.0, -1.0, math.nan, math.inf])
    def test_invalid_initial_budget(self, budget: float) -> None:
        """A profile whose budget is ≤ 0 or not finite is refused with InvalidBudget."""
        governor = Governor()
        with pytest.raises(InvalidBudget):
            governor.register_swarm(profile("a", budget=budget), now=NOW)
        assert len(governor) == 0

    @pytest.mark.parametrize("budget", [1e-7, 4e-7, 5e-7])
    def test_budget_below_one_micro_dollar_refused(self, budget: float) -> None:
        """A budget that rounds to 0 micro-dollars is refused: no swarm may start at 0 with its breaker closed."""
        governor = Governor()
        with pytest.raises(InvalidBudget):
            governor.register_swarm(profile("a", budget=budget), now=NOW)
        assert len(governor) == 0

    @pytest.mark.parametrize("cost_per_hour", [0.0, -2.0, math.nan, math.inf])
    def test_invalid_cost_per_hour(self, cost_per_hour: float) -> None:
        """A profile whose cost_per_hour is ≤ 0 or not finite is refused (the score divides by it)."""
        governor = Governor()
        with pytest.raises(InvalidRequest):
            governor.register_swarm(profile("a", cost_per_hour=cost_per_hour), now=NOW)
        assert len(governor) == 0

    @pytest.mark.parametrize("reputation", [-0.01, 1.01, math.nan])
    def test_invalid_reputation(self, reputation: float) -> None:
        """A reputation outside [0, 1] is refused."""
        governor = Governor()
        with pytest.raises(InvalidRequest):
            governor.register_swarm(profile("a", reputation_score=reputation), now=NOW)
        assert len(governor) == 0

    def test_deregister(self) -> None:
        """Deregistering removes the swarm from the registry, the budgets and the candidates."""
        governor = governed(profile("a"), profile("b"))
        governor.deregister_swarm("a", now=NOW)
        assert "a" not in governor.get_budget_report()
        assert governor.get_budget_report() == {"b": 25.0}
        assert governor.find_qualified_swarm([SIP]) == "b"

    def test_deregister_unknown(self) -> None:
        """Deregistering an unknown swarm raises UnknownSwarm."""
        with pytest.raises(UnknownSwarm):
            governed().deregister_swarm("ghost", now=NOW)
