"""Matching: coverage, the filters in their order, scoring, tie-breaks, the number of swarms, explanations,
the capability vocabulary and the assignment history."""

from __future__ import annotations

import msgspec
import pytest

from schemas.events import WitnessRecord
from schemas.policy import PRESETS, ResourcePolicy
from schemas.replies import Assignment, AssignmentRecord, SwarmExplanation
from tests.factories import NOW, SIP, governed, profile
from worker.core.capabilities import BUILTIN_CAPABILITIES
from worker.core.governor import Governor
from worker.errors import InvalidRequest, UnknownCapability

NDI = "integration:ndi"
WEBRTC = "integration:webrtc"
H323 = "integration:h323"
PYTHON = "code-analysis:python"
CPP = "code-analysis:cpp"
SECURITY = "architecture:security"
WRITING = "docs:technical-writing"
FIVE = [SIP, NDI, WEBRTC, H323, PYTHON]


def explain(governor: Governor, required: list[str], **kwargs: object) -> dict[str, str]:
    """The `rejected` of an explained assign: each swarm that does not qualify, with the first filter it failed."""
    reply = governor.assign("task-x", required, now=NOW, explain=True, **kwargs)  # type: ignore[arg-type]
    assert isinstance(reply.rejected, dict)
    return reply.rejected


class TestCoverage:
    def test_full_coverage_is_one(self) -> None:
        """A swarm holding every required capability has capability_match 1.0, whatever else it holds."""
        governor = governed(profile("a", [SIP, H323, SECURITY, PYTHON]))
        reply = governor.assign("t", [SIP], now=NOW)
        assert reply.assignments == [Assignment(swarm_id="a", capability_match=1.0, score=0.9 / 2.0)]

    def test_coverage_is_intersection_over_required(self) -> None:
        """Coverage is |swarm ∩ required| / |required|, not Jaccard: extra swarm capabilities do not dilute it."""
        governor = governed(
            profile("a", [SIP, NDI, WEBRTC, H323, CPP, SECURITY, WRITING]),
            policy=ResourcePolicy(min_capability_match=0.5),
        )
        reply = governor.assign("t", [SIP, NDI, PYTHON, SECURITY], now=NOW)
        assert reply.assignments[0].capability_match == 0.75

    def test_four_of_five_at_seventy_percent_qualifies(self) -> None:
        """4 of 5 required capabilities is 0.8 ≥ 0.7: the swarm qualifies with score 0.8 × reputation / cost."""
        governor = governed(profile("a", [SIP, NDI, WEBRTC, H323], cost_per_hour=2.0, reputation_score=0.9))
        reply = governor.assign("t", FIVE, now=NOW)
        assert reply.swarm_id == "a"
        assert reply.assignments == [Assignment(swarm_id="a", capability_match=0.8, score=(0.8 * 0.9) / 2.0)]

    def test_three_of_five_at_seventy_percent_does_not_qualify(self) -> None:
        """3 of 5 required capabilities is 0.6 < 0.7: the swarm is rejected for its capability match."""
        governor = governed(profile("a", [SIP, NDI, WEBRTC]))
        reply = governor.assign("t", FIVE, now=NOW, explain=True)
        assert reply.swarm_id is None
        assert reply.reason == "no_qualified_swarm"
        assert reply.rejected == {"a": "capability_match_below_threshold"}

    def test_coverage_exactly_at_threshold_qualifies(self) -> None:
        """7 of 10 is exactly 0.7, which meets a 0.7 minimum (the filter is `coverage < minimum`)."""
        required = list(BUILTIN_CAPABILITIES[:10])
        governor = governed(profile("a", required[:7]))
        reply = governor.assign("t", required, now=NOW)
        assert reply.swarm_id == "a"
        assert reply.assignments[0].capability_match == 0.7

    def test_duplicate_required_capabilities_count_once(self) -> None:
        """Required [sip, sip, h323] is two capabilities: a swarm with only sip covers exactly 0.5."""
        governor = governed(profile("a", [SIP]), policy=ResourcePolicy(min_capability_match=0.5))
        reply = governor.assign("t", [SIP, SIP, H323], now=NOW)
        assert reply.assignments == [Assignment(swarm_id="a", capability_match=0.5, score=(0.5 * 0.9) / 2.0)]
        assert governor.get_assignment_history()[0].required_capabilities == [SIP, H323]

    def test_duplicate_required_capability_does_not_lift_coverage(self) -> None:
        """Repeating a held capability in the request does not push a 1-of-2 swarm over a 0.7 minimum."""
        governor = governed(profile("a", [SIP]))
        assert explain(governor, [SIP, SIP, SIP, H323]) == {"a": "capability_match_below_threshold"}

    def test_zero_minimum_admits_a_swarm_sharing_nothing(self) -> None:
        """With min_capability_match 0 a swarm sharing no capability still qualifies, at coverage and score 0."""
        governor = governed(profile("a", [NDI]), policy=ResourcePolicy(min_capability_match=0.0))
        reply = governor.assign("t", [SIP], now=NOW)
        assert reply.assignments == [Assignment(swarm_id="a", capability_match=0.0, score=0.0)]


class TestFilters:
    def test_below_threshold_reason(self) -> None:
        """A swarm whose coverage is below the minimum is rejected with `capability_match_below_threshold`."""
        governor = governed(profile("a", [NDI]))
        assert explain(governor, [SIP]) == {"a": "capability_match_below_threshold"}

    def test_cost_above_max_reason(self) -> None:
        """A swarm whose cost_per_hour exceeds max_cost is rejected with `cost_above_max`."""
        governor = governed(profile("a", [SIP], cost_per_hour=15.0))
        assert explain(governor, [SIP], max_cost=14.99) == {"a": "cost_above_max"}

    def test_cost_equal_to_max_qualifies(self) -> None:
        """cost_per_hour equal to max_cost passes (the filter is strictly `cost_per_hour > max_cost`)."""
        governor = governed(profile("a", [SIP], cost_per_hour=15.0))
        reply = governor.assign("t", [SIP], now=NOW, max_cost=15.0, explain=True)
        assert reply.swarm_id == "a"
        assert reply.rejected == {}

    def test_budget_exhausted_reason(self) -> None:
        """A swarm whose budget reached exactly 0 is rejected with `budget_exhausted`."""
        governor = governed(profile("a", [SIP], budget=5.0))
        governor.track_cost("a", "op", 5.0, now=NOW)
        assert governor.get_budget_report() == {"a": 0.0}
        assert explain(governor, [SIP]) == {"a": "budget_exhausted"}

    def test_breaker_tripped_reason(self) -> None:
        """A swarm with budget left but a tripped breaker is rejected with `breaker_tripped`."""
        governor = governed(profile("a", [SIP]))
        governor.trip_circuit_breaker("a", "manual_override", now=NOW, requested_by="ops")
        assert explain(governor, [SIP]) == {"a": "breaker_tripped"}

    def test_coverage_is_checked_before_cost(self) -> None:
        """A swarm failing coverage, cost, budget and breaker is reported for coverage, the first filter."""
        governor = governed(profile("a", [NDI], cost_per_hour=50.0, budget=1.0))
        governor.track_cost("a", "op", 2.0, now=NOW)
        assert explain(governor, [SIP]) == {"a": "capability_match_below_threshold"}

    def test_cost_is_checked_before_budget(self) -> None:
        """A swarm failing cost, budget and breaker is reported for its cost, the second filter."""
        governor = governed(profile("a", [SIP], cost_per_hour=50.0, budget=1.0))
        governor.track_cost("a", "op", 2.0, now=NOW)
        assert explain(governor, [SIP]) == {"a": "cost_above_max"}

    def test_budget_is_checked_before_breaker(self) -> None:
        """An exhausted swarm (whose breaker tripped with it) is reported as `budget_exhausted`, the third filter."""
        governor = governed(profile("a", [SIP], budget=1.0))
        governor.track_cost("a", "op", 2.0, now=NOW)
        assert governor.get_circuit_breaker_status()["a"].reason == "budget_exhausted"
        assert explain(governor, [SIP]) == {"a": "budget_exhausted"}

    def test_explain_lists_every_rejected_swarm_and_no_qualified_one(self) -> None:
        """`rejected` names each non-qualifying swarm with its first failed filter and leaves qualified ones out."""
        governor = governed(
            profile("ok", [SIP]),
            profile("far", [NDI]),
            profile("dear", [SIP], cost_per_hour=30.0),
            profile("broke", [SIP], budget=1.0),
            profile("off", [SIP]),
        )
        governor.track_cost("broke", "op", 1.0, now=NOW)
        governor.trip_circuit_breaker("off", "performance_degradation", now=NOW, requested_by="ops")
        reply = governor.assign("t", [SIP], now=NOW, max_cost=20.0, explain=True)
        assert reply.swarm_id == "ok"
        assert reply.rejected == {
            "far": "capability_match_below_threshold",
            "dear": "cost_above_max",
            "broke": "budget_exhausted",
            "off": "breaker_tripped",
        }

    def test_rejected_is_unset_without_explain(self) -> None:
        """Without `explain` the reply carries no `rejected`, not even an empty one, on the wire."""
        governor = governed(profile("a", [NDI]))
        reply = governor.assign("t", [SIP], now=NOW)
        assert reply.rejected is msgspec.UNSET
        assert b"rejected" not in msgspec.json.encode(reply)

    def test_every_filter_failing_means_no_qualified_swarm(self) -> None:
        """When every swarm is filtered out the reply is swarm_id None, no assignments, `no_qualified_swarm`."""
        governor = governed(profile("a", [NDI]), profile("b", [SIP], cost_per_hour=99.0))
        reply = governor.assign("t", [SIP], now=NOW)
        assert (reply.swarm_id, reply.assignments, reply.reason) == (None, [], "no_qualified_swarm")


class TestScoring:
    def test_score_is_coverage_times_reputation_over_cost(self) -> None:
        """The score is (coverage × reputation) / cost_per_hour, exactly."""
        governor = governed(
            profile("a", [SIP, NDI, WEBRTC, H323], cost_per_hour=3.0, reputation_score=0.6),
        )
        reply = governor.assign("t", FIVE, now=NOW)
        assert reply.assignments[0].score == (0.8 * 0.6) / 3.0

    def test_highest_score_wins_over_higher_reputation(self) -> None:
        """`IF.governor.md`'s example: Haiku (0.45) beats Sonnet (0.0633..) despite the lower reputation."""
        governor = governed(
            profile("swarm-b", [SIP, H323, SECURITY, PYTHON], cost_per_hour=15.0, reputation_score=0.95),
            profile("swarm-a", [SIP, H323], cost_per_hour=2.0, reputation_score=0.90),
        )
        reply = governor.assign("t", [SIP], now=NOW, max_cost=20.0, max_swarms=2)
        assert reply.swarm_id == "swarm-a"
        assert reply.assignments == [
            Assignment(swarm_id="swarm-a", capability_match=1.0, score=0.45),
            Assignment(swarm_id="swarm-b", capability_match=1.0, score=0.95 / 15.0),
        ]
        assert reply.assignments[1].score == pytest.approx(0.0633333333)

    def test_better_coverage_can_lose_to_better_value(self) -> None:
        """A partial but cheap swarm outscores a complete but expensive one: only the score decides."""
        governor = governed(
            profile("full", [SIP, NDI, WEBRTC, H323, PYTHON], cost_per_hour=10.0, reputation_score=1.0),
            profile("part", [SIP, NDI, WEBRTC, H323], cost_per_hour=1.0, reputation_score=0.5),
        )
        reply = governor.assign("t", FIVE, now=NOW)
        assert reply.swarm_id == "part"
        assert reply.assignments[0].score == 0.4

    def test_max_cost_absent_uses_policy_max_cost_per_task(self) -> None:
        """Without max_cost the policy's max_cost_per_task (10.0 by default) is the ceiling."""
        governor = governed(profile("cheap", [SIP], cost_per_hour=10.0), profile("dear", [SIP], cost_per_hour=10.01))
        reply = governor.assign("t", [SIP], now=NOW, max_swarms=3, explain=True)
        assert [a.swarm_id for a in reply.assignments] == ["cheap"]
        assert reply.rejected == {"dear": "cost_above_max"}

    def test_max_cost_absent_follows_a_custom_policy(self) -> None:
        """With a policy max_cost_per_task of 20.0, a 15.0/hour swarm qualifies when max_cost is absent."""
        governor = governed(profile("dear", [SIP], cost_per_hour=15.0), policy=ResourcePolicy(max_cost_per_task=20.0))
        assert governor.assign("t", [SIP], now=NOW).swarm_id == "dear"

    def test_explicit_max_cost_overrides_policy(self) -> None:
        """An explicit max_cost replaces the policy's ceiling, above or below it."""
        governor = governed(profile("dear", [SIP], cost_per_hour=15.0))
        assert governor.assign("t1", [SIP], now=NOW, max_cost=20.0).swarm_id == "dear"
        governed_cheap = governed(profile("cheap", [SIP], cost_per_hour=5.0))
        assert governed_cheap.assign("t2", [SIP], now=NOW, max_cost=4.0).swarm_id is None


class TestTieBreak:
    def test_tie_goes_to_earliest_registered(self) -> None:
        """Equal scores: the swarm registered first wins."""
        governor = governed(profile("first", [SIP]), profile("second", [SIP]))
        assert governor.assign("t", [SIP], now=NOW).swarm_id == "first"

    def test_tie_follows_registration_not_name(self) -> None:
        """The tie-break is registration order, not alphabetical order of ids."""
        governor = governed(profile("zeta", [SIP]), profile("alpha", [SIP]))
        assert governor.assign("t", [SIP], now=NOW).swarm_id == "zeta"

    def test_tie_with_several_required_capabilities(self) -> None:
        """With two required capabilities, the earlier registered of two tied partial matches wins."""
        governor = governed(
            profile("holds-h323", [H323]),
            profile("holds-sip", [SIP]),
            policy=ResourcePolicy(min_capability_match=0.5),
        )
        reply = governor.assign("t", [SIP, H323], now=NOW, max_swarms=2)
        assert [a.swarm_id for a in reply.assignments] == ["holds-h323", "holds-sip"]

    def test_reregistration_moves_swarm_to_the_end(self) -> None:
        """A swarm deregistered and registered again loses ties to swarms registered before its return."""
        governor = governed(profile("a", [SIP]), profile("b", [SIP]))
        governor.deregister_swarm("a", now=NOW)
        governor.register_swarm(profile("a", [SIP]), now=NOW)
        reply = governor.assign("t", [SIP], now=NOW, max_swarms=2)
        assert [a.swarm_id for a in reply.assignments] == ["b", "a"]

    def test_tied_assignments_listed_in_registration_order(self) -> None:
        """With max_swarms > 1, tied swarms appear in registration order after strictly better ones."""
        governor = governed(
            profile("t1", [SIP]),
            profile("best", [SIP], cost_per_hour=1.0),
            profile("t2", [SIP]),
            profile("t3", [SIP]),
        )
        reply = governor.assign("t", [SIP], now=NOW, max_swarms=3)
        assert [a.swarm_id for a in reply.assignments] == ["best", "t1", "t2"]


class TestMaxSwarms:
    def test_returns_up_to_max_swarms_best_first(self) -> None:
        """max_swarms 3 of 5 qualified returns the three best, best first, and swarm_id is the best."""
        governor = governed(
            *(profile(f"s{i}", [SIP], cost_per_hour=float(i)) for i in range(1, 6)),
        )
        reply = governor.assign("t", [SIP], now=NOW, max_swarms=3)
        assert reply.swarm_id == "s1"
        assert [(a.swarm_id, a.score) for a in reply.assignments] == [("s1", 0.9), ("s2", 0.45), ("s3", 0.3)]

    def test_capped_by_policy_max_swarms_per_task(self) -> None:
        """max_swarms above the policy's max_swarms_per_task is cut down to it."""
        governor = governed(*(profile(f"s{i}", [SIP]) for i in range(5)), policy=ResourcePolicy(max_swarms_per_task=2))
        reply = governor.assign("t", [SIP], now=NOW, max_swarms=5)
        assert [a.swarm_id for a in reply.assignments] == ["s0", "s1"]

    def test_strict_preset_assigns_one_swarm(self) -> None:
        """Under the strict preset (max_swarms_per_task 1) only one swarm is returned."""
        governor = governed(*(profile(f"s{i}", [SIP]) for i in range(3)), policy=PRESETS["strict"])
        assert len(governor.assign("t", [SIP], now=NOW, max_cost=5.0, max_swarms=3).assignments) == 1

    def test_fewer_qualified_than_requested(self) -> None:
        """When fewer swarms qualify than max_swarms, all qualified ones are returned."""
        governor = governed(profile("a", [SIP]), profile("b", [NDI]))
        reply = governor.assign("t", [SIP], now=NOW, max_swarms=3)
        assert [a.swarm_id for a in reply.assignments] == ["a"]

    def test_default_is_one_swarm(self) -> None:
        """Without max_swarms exactly one swarm is assigned."""
        governor = governed(profile("a", [SIP]), profile("b", [SIP]))
        assert [a.swarm_id for a in governor.assign("t", [SIP], now=NOW).assignments] == ["a"]


class TestValueOrderWalk:
    """Tasks needing all their capabilities walk the rarest one's value-sorted list (see `Governor._rank`)."""

    def test_a_better_swarm_missing_one_capability_is_passed_over(self) -> None:
        """Of [SIP, NDI, WEBRTC], the cheap swarm has SIP (the rarest) and NDI but not WEBRTC: the next one wins."""
        governor = governed(
            profile("cheap", [SIP, NDI], cost_per_hour=0.5),
            profile("cheap-webrtc", [SIP, WEBRTC], cost_per_hour=0.6),
            profile("full", [SIP, NDI, WEBRTC], cost_per_hour=3.0),
            *(profile(f"n{i}", [NDI, WEBRTC, PYTHON]) for i in range(5)),  # NDI and WEBRTC are common, SIP rare
        )
        reply = governor.assign("t", [NDI, WEBRTC, SIP], now=NOW, max_swarms=2)
        assert [a.swarm_id for a in reply.assignments] == ["full"]

    def test_the_walk_stops_at_max_swarms_in_value_order(self) -> None:
        """Ten swarms hold both capabilities; the three best values come back, best first, ties by registration."""
        governor = governed(
            *(profile(f"s{i}", [SIP, NDI], cost_per_hour=float(10 - i % 4)) for i in range(10)),
        )
        reply = governor.assign("t", [SIP, NDI], now=NOW, max_swarms=3)
        assert [a.swarm_id for a in reply.assignments] == ["s3", "s7", "s2"]


class TestExplain:
    def test_every_swarm_with_coverage_score_and_filter(self) -> None:
        """Explain lists every registered swarm, in order, with coverage, score and the first failing filter."""
        governor = governed(
            profile("a", capabilities=[SIP, PYTHON]), profile("b", capabilities=[PYTHON], cost_per_hour=4.0)
        )
        reply = governor.assign("t", [SIP, PYTHON], now=NOW, explain=True)
        assert reply.explanation == [
            SwarmExplanation(swarm_id="a", capability_match=1.0, score=0.45, rejected_by=None),
            SwarmExplanation(
                swarm_id="b", capability_match=0.5, score=0.1125, rejected_by="capability_match_below_threshold"
            ),
        ]


class TestCapabilities:
    def test_22_builtin_capabilities(self) -> None:
        """The vocabulary starts with the 22 `category:skill` names of `IF.governor.md`."""
        assert len(BUILTIN_CAPABILITIES) == 22
        assert len(set(BUILTIN_CAPABILITIES)) == 22
        assert len(Governor().vocabulary) == 22

    def test_unknown_capability_suggests_closest(self) -> None:
        """An unknown capability raises UnknownCapability whose message names it and suggests the closest one."""
        governor = governed(profile("a", [SIP]))
        with pytest.raises(UnknownCapability) as caught:
            governor.assign("t", ["integration:sipp"], now=NOW)
        assert caught.value.code == "unknown_capability"
        assert caught.value.message.startswith("unknown capability 'integration:sipp'; did you mean 'integration:sip'")

    def test_unknown_capability_with_no_close_name(self) -> None:
        """A name close to nothing is refused without a suggestion."""
        with pytest.raises(UnknownCapability, match=r"^unknown capability 'zzz'$"):
            Governor().assign("t", ["zzz"], now=NOW)

    def test_unknown_capability_records_nothing(self) -> None:
        """A refused assign records no event and no history."""
        governor = governed(profile("a", [SIP]))
        with pytest.raises(UnknownCapability):
            governor.assign("t", [SIP, "code-analysis:pyton"], now=NOW)
        assert governor.take_events() == []
        assert governor.get_assignment_history() == []

    def test_unknown_capability_in_find_qualified_swarm(self) -> None:
        """find_qualified_swarm refuses unknown capabilities just as assign does."""
        with pytest.raises(UnknownCapability, match="code-analysis:python"):
            Governor().find_qualified_swarm(["code-analysis:pyton"])

    def test_unknown_capability_in_registration(self) -> None:
        """A profile declaring an unknown capability is refused and not registered."""
        governor = Governor()
        with pytest.raises(UnknownCapability, match="integration:webrtc"):
            governor.register_swarm(profile("a", [SIP, "integration:webrtcc"]), now=NOW)
        assert "a" not in governor.get_budget_report()
        assert governor.take_events() == []

    def test_config_declared_capability_is_known(self) -> None:
        """A capability passed as `Governor(capabilities=[...])` can be registered and required."""
        governor = governed(profile("q", ["quantum:annealing", SIP]), capabilities=["quantum:annealing"])
        reply = governor.assign("t", ["quantum:annealing"], now=NOW)
        assert reply.swarm_id == "q"
        assert "quantum:annealing" in governor.vocabulary
        assert len(governor.vocabulary) == 23

    def test_empty_required_is_invalid_request(self) -> None:
        """A task requiring nothing is refused with InvalidRequest (a GovernorError), recording nothing."""
        governor = governed(profile("a", [SIP]))
        with pytest.raises(InvalidRequest):
            governor.assign("t", [], now=NOW)
        with pytest.raises(InvalidRequest):
            governor.find_qualified_swarm([])
        assert governor.take_events() == []

    def test_config_declared_capability_unknown_elsewhere(self) -> None:
        """A governor without that declaration refuses the same capability."""
        with pytest.raises(UnknownCapability):
            Governor().assign("t", ["quantum:annealing"], now=NOW)


class TestValidateCapabilityMatch:
    def test_the_documented_example(self) -> None:
        """`IF.governor.md`'s example: required [sip] against [sip, h323] is (True, 1.0)."""
        assert Governor().validate_capability_match([SIP], [SIP, H323]) == (True, 1.0)

    def test_four_of_five(self) -> None:
        """4 of 5 is (True, 0.8) under the production minimum of 0.7."""
        assert Governor().validate_capability_match(FIVE, [SIP, NDI, WEBRTC, H323]) == (True, 0.8)

    def test_three_of_five(self) -> None:
        """3 of 5 is (False, 0.6) under the production minimum of 0.7."""
        assert Governor().validate_capability_match(FIVE, [SIP, NDI, WEBRTC]) == (False, 0.6)

    def test_uses_the_policy_minimum(self) -> None:
        """Under the strict preset (0.9), 4 of 5 no longer passes; under permissive (0.6), 3 of 5 does."""
        assert Governor(PRESETS["strict"]).validate_capability_match(FIVE, FIVE[:4]) == (False, 0.8)
        assert Governor(PRESETS["permissive"]).validate_capability_match(FIVE, FIVE[:3]) == (True, 0.6)

    def test_duplicates_count_once(self) -> None:
        """Duplicates on either side count once: [sip, sip, ndi] against [sip, sip] is 1 of 2."""
        assert Governor().validate_capability_match([SIP, SIP, NDI], [SIP, SIP]) == (False, 0.5)

    def test_no_overlap(self) -> None:
        """No shared capability is (False, 0.0)."""
        assert Governor().validate_capability_match([SIP], [NDI]) == (False, 0.0)

    def test_empty_required(self) -> None:
        """Nothing required is (False, 0.0), never a division by zero."""
        assert Governor().validate_capability_match([], [SIP]) == (False, 0.0)


class TestFindQualifiedSwarm:
    def test_returns_best_swarm_id(self) -> None:
        """find_qualified_swarm returns the id of the best-scoring qualified swarm."""
        governor = governed(profile("dear", [SIP], cost_per_hour=15.0), profile("cheap", [SIP], cost_per_hour=1.0))
        assert governor.find_qualified_swarm([SIP], 20.0) == "cheap"

    def test_returns_none_when_nothing_qualifies(self) -> None:
        """find_qualified_swarm returns None when no swarm passes the filters."""
        governor = governed(profile("a", [NDI]))
        assert governor.find_qualified_swarm([SIP], 20.0) is None

    def test_max_cost_defaults_to_policy(self) -> None:
        """find_qualified_swarm without max_cost applies the policy's max_cost_per_task."""
        governor = governed(profile("dear", [SIP], cost_per_hour=15.0))
        assert governor.find_qualified_swarm([SIP]) is None
        assert governor.find_qualified_swarm([SIP], 15.0) == "dear"

    def test_records_nothing(self) -> None:
        """find_qualified_swarm is a query: no event, no history."""
        governor = governed(profile("a", [SIP]))
        governor.find_qualified_swarm([SIP])
        governor.find_qualified_swarm([NDI])
        assert governor.take_events() == []
        assert governor.get_assignment_history() == []


class TestHistory:
    def test_assignment_is_recorded(self) -> None:
        """A successful assign appends the exact AssignmentRecord."""
        governor = governed(profile("a", [SIP]), profile("b", [SIP], cost_per_hour=3.0))
        governor.assign("task-1", [SIP], now=NOW + 5, max_swarms=2, trace_id="tr-1")
        assert governor.get_assignment_history() == [
            AssignmentRecord(
                task_id="task-1",
                swarm_id="a",
                swarm_ids=["a", "b"],
                required_capabilities=[SIP],
                capability_match=1.0,
                score=0.45,
                timestamp=NOW + 5,
                trace_id="tr-1",
            )
        ]

    def test_assignment_is_witnessed(self) -> None:
        """A successful assign records one `task_assigned` witness record of severity INFO."""
        governor = governed(profile("a", [SIP]))
        governor.assign("task-1", [SIP], now=NOW, trace_id="tr-1")
        assert governor.take_events() == [
            WitnessRecord(
                operation="task_assigned",
                params={
                    "task_id": "task-1",
                    "swarm_id": "a",
                    "swarm_ids": ["a"],
                    "required_capabilities": [SIP],
                    "capability_match": 1.0,
                    "score": 0.45,
                },
                timestamp=NOW,
                severity="INFO",
                trace_id="tr-1",
            )
        ]

    def test_newest_last(self) -> None:
        """History lists assignments oldest first, newest last."""
        governor = governed(profile("a", [SIP]))
        for i in range(3):
            governor.assign(f"task-{i}", [SIP], now=NOW + i)
        assert [r.task_id for r in governor.get_assignment_history()] == ["task-0", "task-1", "task-2"]

    def test_bounded_by_history_limit(self) -> None:
        """Only the newest `history_limit` assignments are kept."""
        governor = governed(profile("a", [SIP]), history_limit=3)
        for i in range(5):
            governor.assign(f"task-{i}", [SIP], now=NOW + i)
        assert [r.task_id for r in governor.get_assignment_history()] == ["task-2", "task-3", "task-4"]

    def test_limit_returns_the_newest(self) -> None:
        """`limit` returns the newest entries, still newest last; a limit above the size returns all."""
        governor = governed(profile("a", [SIP]))
        for i in range(4):
            governor.assign(f"task-{i}", [SIP], now=NOW + i)
        assert [r.task_id for r in governor.get_assignment_history(limit=2)] == ["task-2", "task-3"]
        assert len(governor.get_assignment_history(limit=100)) == 4

    def test_no_qualified_swarm_is_witnessed_not_recorded(self) -> None:
        """A task nobody qualifies for is not in the history but is witnessed as `no_qualified_swarm`, MEDIUM."""
        governor = governed(profile("a", [NDI]))
        governor.assign("task-9", [SIP, SIP], now=NOW, trace_id="tr-9")
        assert governor.get_assignment_history() == []
        assert governor.take_events() == [
            WitnessRecord(
                operation="no_qualified_swarm",
                params={"task_id": "task-9", "required_capabilities": [SIP], "max_cost": 10.0},
                timestamp=NOW,
                severity="MEDIUM",
                trace_id="tr-9",
            )
        ]
