"""Policies: the three presets, a named policy per task chosen by capability rules (with model restrictions),
and reload."""

from __future__ import annotations

import msgspec
import pytest

from schemas.ledger import Configure
from schemas.policy import PRESETS, PolicyRule, ResourcePolicy
from tests.factories import NOW, SIP, governed, profile
from worker.core.governor import Governor
from worker.core.rules import rule_conflicts
from worker.errors import InvalidRequest

SEC = "architecture:security"
PAT = "architecture:patterns"


def ruled(rules: list[PolicyRule], policies: dict[str, ResourcePolicy] | None = None) -> Governor:
    """A governor under these rules (and named policies) with two security swarms: `cheap` (haiku, 2.0 an hour, also
    sip) and `careful` (opus, 8.0 an hour, also patterns)."""
    governor = governed(
        profile("cheap", [SEC, SIP], cost_per_hour=2.0, model="haiku"),
        profile("careful", [SEC, PAT], cost_per_hour=8.0, model="opus"),
    )
    governor.configure(ResourcePolicy(), [], policies, rules)
    return governor


class TestPresets:
    def test_strict(self) -> None:
        """The strict preset is `IF.governor.md`'s: 1 swarm, 5.0, 0.9, threshold 2."""
        assert PRESETS["strict"] == ResourcePolicy(
            max_swarms_per_task=1, max_cost_per_task=5.0, min_capability_match=0.9, circuit_breaker_failure_threshold=2
        )

    def test_permissive(self) -> None:
        """The permissive preset is `IF.governor.md`'s: 5 swarms, 50.0, 0.6, threshold 5."""
        assert PRESETS["permissive"] == ResourcePolicy(
            max_swarms_per_task=5,
            max_cost_per_task=50.0,
            min_capability_match=0.6,
            circuit_breaker_failure_threshold=5,
        )

    def test_production(self) -> None:
        """The production preset is `IF.governor.md`'s (3 swarms, 10.0, 0.7, threshold 3) and the default policy."""
        assert PRESETS["production"] == ResourcePolicy(
            max_swarms_per_task=3,
            max_cost_per_task=10.0,
            min_capability_match=0.7,
            circuit_breaker_failure_threshold=3,
        )
        assert PRESETS["production"] == ResourcePolicy()
        assert Governor().policy == PRESETS["production"]

    def test_exact_field_values(self) -> None:
        """Each preset's fields that `IF.governor.md` names are exactly its numbers, with the default 3600 s window."""
        documented_fields = (
            "max_swarms_per_task",
            "max_cost_per_task",
            "min_capability_match",
            "circuit_breaker_failure_threshold",
            "failure_window_s",
        )
        presets = {name: msgspec.to_builtins(p) for name, p in PRESETS.items()}
        assert {name: {f: p[f] for f in documented_fields} for name, p in presets.items()} == {
            "strict": {
                "max_swarms_per_task": 1,
                "max_cost_per_task": 5.0,
                "min_capability_match": 0.9,
                "circuit_breaker_failure_threshold": 2,
                "failure_window_s": 3600.0,
            },
            "permissive": {
                "max_swarms_per_task": 5,
                "max_cost_per_task": 50.0,
                "min_capability_match": 0.6,
                "circuit_breaker_failure_threshold": 5,
                "failure_window_s": 3600.0,
            },
            "production": {
                "max_swarms_per_task": 3,
                "max_cost_per_task": 10.0,
                "min_capability_match": 0.7,
                "circuit_breaker_failure_threshold": 3,
                "failure_window_s": 3600.0,
            },
        }


class TestRules:
    def test_first_matching_rule_chooses_the_policy(self) -> None:
        """`architecture:*` under `strict` needs 90% coverage: a task half covered by every swarm finds none."""
        governor = ruled([PolicyRule(match="architecture:*", policy="strict")])
        assert governor.assign("t", [SEC, "cli:design"], now=NOW).swarm_id is None
        assert governor.assign("t", [SIP], now=NOW).swarm_id == "cheap"  # no rule: the default policy

    def test_model_restriction(self) -> None:
        """A rule's models restrict the candidates; explain says `model_not_allowed`."""
        governor = ruled([PolicyRule(match="architecture:security", models=["opus"])])
        reply = governor.assign("t", [SEC], now=NOW, explain=True)
        assert reply.swarm_id == "careful"
        assert reply.rejected == {"cheap": "model_not_allowed"}

    def test_history_and_status_name_the_rule(self) -> None:
        """The rule that governed an assignment is in the history, the witness record and status."""
        governor = ruled([PolicyRule(match="architecture:*", policy="permissive")])
        governor.assign("t", [SEC], now=NOW)
        assert [r.rule for r in governor.get_assignment_history()] == ["architecture:* -> permissive"]
        status = governor.status(now=NOW)
        assert [r.rule for r in status.recent_assignments] == ["architecture:* -> permissive"]
        assert status.rules == [PolicyRule(match="architecture:*", policy="permissive")]

    def test_custom_policy(self) -> None:
        """A custom named policy's max cost per task applies to matching tasks."""
        rules = [PolicyRule(match="architecture:*", policy="frugal")]
        governor = ruled(rules, {"frugal": ResourcePolicy(max_cost_per_task=5.0)})
        assert governor.assign("t", [SEC, PAT], now=NOW).swarm_id is None  # careful costs 8 > 5
        assert governor.find_qualified_swarm([SEC]) == "cheap"

    def test_unknown_policy_refused(self) -> None:
        """A rule naming no known policy is refused and nothing changes."""
        governor = ruled([])
        with pytest.raises(InvalidRequest, match="unknown policy 'nope'"):
            governor.configure(ResourcePolicy(), [], None, [PolicyRule(match="*", policy="nope")])
        assert governor.rules == []

    def test_conflicts_explained(self) -> None:
        """A later rule shadowed by an earlier one, and a rule matching nothing, are reported."""
        rules = [
            PolicyRule(match="architecture:*", policy="strict"),
            PolicyRule(match="architecture:security", policy="permissive"),
            PolicyRule(match="quantum:*", policy="strict"),
        ]
        assert rule_conflicts(rules, [SEC, PAT, SIP]) == [
            "rules[1] (architecture:security -> permissive) is shadowed for architecture:security by rules[0] "
            "(architecture:* -> strict): the first match wins",
            "rules[2] (quantum:* -> strict) matches no known capability",
        ]


class TestReload:
    def test_reload_keeps_budgets_and_breakers_and_adds_new_swarms(self) -> None:
        """A reload changes policy and rules, registers only new swarms, and keeps budgets and breakers."""
        governor = ruled([])
        governor.track_cost("cheap", "op", 5.0, now=NOW)
        governor.trip_circuit_breaker("careful", "manual_override", now=NOW, requested_by="ops")
        configure = Configure(
            policy=PRESETS["strict"], capabilities=[], rules=[PolicyRule(match="integration:*", policy="permissive")]
        )
        reply = governor.reload(
            configure, [profile("cheap", [SIP], cost_per_hour=1.0), profile("new", [SIP])], now=NOW + 1, trace_id="r"
        )
        assert (reply.changed, reply.registered) == (True, ["new"])
        assert governor.get_budget_report() == {"cheap": 20.0, "careful": 25.0, "new": 25.0}
        assert list(governor.get_circuit_breaker_status()) == ["careful"]
        assert governor.policy == PRESETS["strict"]
        again = governor.reload(configure, [profile("new", [SIP])], now=NOW + 2)
        assert (again.changed, again.registered) == (False, [])
