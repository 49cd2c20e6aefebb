"""Assigning tasks: the command that chooses swarms for a task, holds its estimate and remembers it, and the
design document's two queries (`validate_capability_match`, `find_qualified_swarm`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from schemas.policy import PolicyRule
from schemas.replies import (
    Assignment,
    AssignmentRecord,
    AssignReply,
    SwarmExplanation,
)
from schemas.requests import PAGE_DEFAULT
from worker.core import matching
from worker.core.context import Context
from worker.core.money import check_cost, to_micros, to_usd
from worker.core.parts import Parts
from worker.core.registry import Swarm
from worker.core.rules import allowed_models, governing, rule_name
from worker.core.tasks import OpenTask
from worker.errors import InvalidRequest, OpenTaskLimit


class Assigning(Parts):
    """The `assign` command."""

    def validate_capability_match(
        self, required_capabilities: Sequence[str], swarm_capabilities: Sequence[str]
    ) -> tuple[bool, float]:
        """The design document's policy check: (coverage ≥ policy minimum, coverage)."""
        required = set(required_capabilities)
        if not required:
            return False, 0.0
        covered = len(required & set(swarm_capabilities)) / len(required)
        return covered >= self.policy.min_capability_match, covered

    def find_qualified_swarm(self, required_capabilities: Sequence[str], max_cost: float | None = None) -> str | None:
        """The design document's query: the best qualified swarm's id, or None. Records nothing."""
        required = self._required(required_capabilities)
        policy, rule = governing(self.rules, self.policy, self.policies, required)
        ceiling = policy.max_cost_per_task if max_cost is None else max_cost
        min_budget = to_micros(policy.min_budget_per_task) if policy.min_budget_per_task else 0
        ranked = matching.rank(
            self.registry,
            required,
            policy.min_capability_match,
            ceiling,
            1,
            min_budget,
            allowed_models(rule),
            policy.strategy == "spread",
        )
        return ranked[0][2].swarm_id if ranked else None

    def assign(
        self,
        task_id: str,
        required_capabilities: Sequence[str],
        *,
        now: float,
        max_cost: float | None = None,
        max_swarms: int = 1,
        explain: bool = False,
        estimated_cost: float | None = None,
        trace_id: str = "",
        explain_limit: int | None = None,
        explain_cursor: str | None = None,
        reassign: bool = False,
    ) -> AssignReply:
        """Choose up to `max_swarms` (at most the policy's `max_swarms_per_task`) swarms for a task.

        With `estimated_cost`, a swarm qualifies only if its available budget (remaining minus open holds) covers
        the estimate, and the estimate is held on each chosen swarm until a cost with this `task_id` settles it
        or `policy.reservation_ttl_s` passes.

        `task_id` is the assignment's key: a repeated assign of a task assigned within `policy.assign_window_s`
        gets the same assignment back (`duplicate`: no second hold, history entry or probe), whatever else it
        asks; `reassign` releases the task's earlier holds and assigns it afresh.
        """
        required = self._required(required_capabilities)
        ctx = self._context(now, trace_id)
        prior = self.dedupe.assigned(task_id, now, self.policy.assign_window_s)
        if prior is not None and reassign:
            self.dedupe.forget_task(task_id)
            for earlier in prior:
                if (task_id, earlier.swarm_id) in self.reservations:
                    self.reservations.release(ctx, task_id, self.registry.swarms[earlier.swarm_id], "reassigned")
        elif prior is not None:
            return AssignReply(
                task_id=task_id, swarm_id=prior[0].swarm_id, assignments=list(prior), duplicate=True, trace_id=trace_id
            )
        if estimated_cost is not None:
            check_cost(estimated_cost, "estimated_cost", self.policy.max_amount_usd)
        estimate = to_micros(estimated_cost) if estimated_cost else 0
        policy, rule = governing(self.rules, self.policy, self.policies, required)
        min_budget = to_micros(policy.min_budget_per_task) if policy.min_budget_per_task else 0
        spread = policy.strategy == "spread"
        limit = max(1, min(max_swarms, policy.max_swarms_per_task))
        ceiling = policy.max_cost_per_task if max_cost is None else max_cost
        models = allowed_models(rule)
        self._advance(ctx)
        self.reservations.expire(ctx, self.registry.swarms)
        self.breakers.advance(ctx, self.policy)
        if task_id in self.tasks.open:  # a task assigned afresh: its earlier assignment's slots are free again
            self.lifecycle.close(ctx, self.tasks.pop(task_id), None, "reassigned")
        if len(self.tasks) >= policy.max_open_tasks:
            raise OpenTaskLimit(
                f"{len(self.tasks)} tasks are open, the most the policy allows is {policy.max_open_tasks}: complete "
                "some first (governor.complete)"
            )
        ranked = matching.rank(
            self.registry,
            required,
            policy.min_capability_match,
            ceiling,
            limit,
            max(estimate, min_budget),
            models,
            spread,
        )
        explained: dict[str, Any] = {}
        if explain:
            page, next_cursor = self.registry.page(explain_limit or PAGE_DEFAULT, explain_cursor)
            explanation = self._explain(
                page, required, policy.min_capability_match, ceiling, estimate, models, min_budget, spread
            )
            explained = {
                "rejected": {e.swarm_id: e.rejected_by for e in explanation if e.rejected_by is not None},
                "explanation": explanation,
                "explain_next_cursor": next_cursor,
            }
        if not ranked:
            ctx.witness(
                "no_qualified_swarm",
                {"task_id": task_id, "required_capabilities": required, "max_cost": ceiling},
                "MEDIUM",
            )
            return AssignReply(
                task_id=task_id,
                swarm_id=None,
                assignments=[],
                reason="no_qualified_swarm",
                trace_id=trace_id,
                **explained,
            )
        if estimate:
            self.reservations.check(task_id, [swarm for _, _, swarm, _ in ranked], self.policy)
        reserved = to_usd(estimate)
        assignments = tuple(
            [
                Assignment(swarm_id=swarm.swarm_id, capability_match=covered, score=score, reserved=reserved)
                for score, _, swarm, covered in ranked
            ]
        )
        expires_at = now + self.policy.reservation_ttl_s
        for _, _, swarm, _ in ranked:
            if swarm.breaker is not None:  # half-open: this task is one of its probes
                self.breakers.take_probe(swarm)
            if estimate:
                self.reservations.hold(task_id, swarm, estimate, expires_at)
            swarm.in_flight += 1
            if swarm.max_tasks is not None:
                self.registry.refresh(swarm)
        self._assigned(ctx, task_id, required, assignments, rule, reserved if estimate else None)
        self.tasks.add(
            OpenTask(
                task_id,
                tuple([a.swarm_id for a in assignments]),
                now,
                now + policy.task_timeout_s,
                policy.expire_as,
                self.history_log.assignments_seq - 1,
            )
        )
        if policy.max_spend_per_task is not None:
            self.task_caps.open(task_id, to_micros(policy.max_spend_per_task), policy.on_task_over_budget)
        self.dedupe.remember_task(task_id, assignments, now, self.policy.assign_window_s)
        best = assignments[0]
        return AssignReply(
            task_id=task_id, swarm_id=best.swarm_id, assignments=list(assignments), trace_id=trace_id, **explained
        )

    def _assigned(
        self,
        ctx: Context,
        task_id: str,
        required: list[str],
        assignments: tuple[Assignment, ...],
        rule: PolicyRule | None,
        reserved: float | None,
    ) -> None:
        """Keep the assignment in the history and witness it."""
        best = assignments[0]
        swarm_ids = [a.swarm_id for a in assignments]
        name = rule_name(rule)
        self.history_log.assigned(
            AssignmentRecord(
                task_id=task_id,
                swarm_id=best.swarm_id,
                swarm_ids=swarm_ids,
                required_capabilities=required,
                capability_match=best.capability_match,
                score=best.score,
                timestamp=ctx.now,
                trace_id=ctx.trace_id,
                rule=name,
            )
        )
        params: dict[str, Any] = {
            "task_id": task_id,
            "swarm_id": best.swarm_id,
            "swarm_ids": swarm_ids,
            "required_capabilities": required,
            "capability_match": best.capability_match,
            "score": best.score,
        }
        if reserved is not None:
            params["reserved"] = reserved
        if name is not None:
            params["rule"] = name
        ctx.witness("task_assigned", params, "INFO")

    @staticmethod
    def _explain(
        page: list[Swarm],
        required: list[str],
        min_match: float,
        ceiling: float,
        estimate: int,
        models: set[str] | None,
        min_budget: int,
        spread: bool,
    ) -> list[SwarmExplanation]:
        """Each swarm of a page with its coverage, score (under `spread`, discounted by its load) and the first
        filter it failed."""
        req = set(required)
        explained: list[SwarmExplanation] = []
        for swarm in page:
            covered = matching.coverage(req, swarm.capabilities)
            rejected = matching.rejection(swarm, covered, min_match, ceiling, estimate, models, min_budget)
            factor = matching.load_factor(swarm) if spread else None
            explained.append(
                SwarmExplanation(
                    swarm_id=swarm.swarm_id,
                    capability_match=covered,
                    score=matching.score(covered, swarm) * (factor or 1.0),
                    rejected_by=rejected,
                    group=matching.blocking_group(swarm) if rejected == "group_budget_exhausted" else None,
                    in_flight=swarm.in_flight,
                    load_factor=factor,
                )
            )
        return explained

    def _required(self, required_capabilities: Sequence[str]) -> list[str]:
        required = self.vocabulary.check(required_capabilities)
        if not required:
            raise InvalidRequest("required_capabilities must name at least one capability")
        return required
