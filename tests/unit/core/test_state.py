"""State: `export_state` then `Governor.from_state` gives a core that answers exactly as the original,
remembering its budgets, breakers, holds, retry windows and history positions."""

from __future__ import annotations

import msgspec

from schemas.policy import ResourcePolicy
from tests.factories import NOW, SIP, governed, profile
from worker.core.governor import Governor


class TestExportImport:
    def test_state_round_trips(self) -> None:
        """Export then import gives the same status, holds, breakers and dedupe memory."""
        governor = governed(profile("a", budget=10.0), profile("b"), policy=ResourcePolicy(breaker_cooldown_s=60.0))
        governor.assign("t1", [SIP], now=NOW, estimated_cost=3.0)
        for i in range(3):
            governor.record_failure("b", now=NOW + i)
        governor.track_cost("a", "op", 1.0, now=NOW, event_id="e1")
        governor.deregister_swarm("b", now=NOW + 5)
        state = governor.export_state(seq=42)
        copy = Governor.from_state(msgspec.msgpack.decode(msgspec.msgpack.encode(state), type=type(state)))
        assert copy.export_state(seq=42) == state
        assert msgspec.json.encode(copy.status(now=NOW + 6)) == msgspec.json.encode(governor.status(now=NOW + 6))
        assert copy.track_cost("a", "op", 1.0, now=NOW + 7, event_id="e1").duplicate is True

    def test_assignments_survive_a_snapshot(self) -> None:
        """A task assigned before a snapshot is a duplicate on the restored core."""
        core = governed(profile("a", budget=10.0), profile("b", budget=10.0))
        core.assign("t1", [SIP], now=NOW)
        restored = Governor.from_state(core.export_state())
        assert (restored.assign("t1", [SIP], now=NOW).duplicate, restored.get_assignment_history()[-1].task_id) == (
            True,
            "t1",
        )

    def test_positions_survive_a_snapshot(self) -> None:
        """A cursor taken before a snapshot still continues the same walk on the restored core."""
        core = governed(profile("s0000", cost_per_hour=2.0))
        for i in range(6):
            core.assign(f"t{i}", [SIP], now=NOW, max_cost=100.0)
        _, _, cursor = core.history(2, None)
        restored = Governor.from_state(core.export_state())
        page, _, _ = restored.history(2, cursor)
        assert [r.task_id for r in page] == ["t2", "t3"]
