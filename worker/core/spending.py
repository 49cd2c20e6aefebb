"""Spending: costs deducted at once (an exhausted budget trips the breaker, a low one warns once), and a
human's reset with a new budget."""

from __future__ import annotations

from typing import Any

import msgspec

from schemas.codes import RECOVERABLE
from schemas.events import BreakerReset, Escalation, EscalationContext
from schemas.pricing import TokenUsage
from schemas.replies import CostReply, ResetRecord, ResetReply
from worker.core.context import Context
from worker.core.money import check_budget, check_cost, price_micros, to_micros, to_usd
from worker.core.parts import Parts
from worker.core.registry import Swarm
from worker.errors import InvalidRequest, NotTripped


class Spending(Parts):
    """The `cost` and `reset` commands."""

    def track_cost(
        self,
        swarm_id: str,
        operation: str,
        cost: float | None,
        *,
        now: float,
        usage: TokenUsage | None = None,
        model: str | None = None,
        event_id: str | None = None,
        task_id: str | None = None,
        trace_id: str = "",
    ) -> CostReply:
        """Deduct a cost at once: `cost` USD, or `usage` priced by the swarm's model (or `model`). Reaching ≤ 0
        trips the breaker (once; later costs are still recorded)."""
        swarm = self.registry.get(swarm_id)
        if usage is not None:
            priced_as = model or swarm.model
            price = self.pricing.get(priced_as)
            if price is None:
                known = ", ".join(sorted(self.pricing)) or "none"
                raise InvalidRequest(f"no price for model {priced_as!r} (pricing: lists {known})")
            micros = price_micros(usage, price)
            cost = to_usd(micros)
            check_cost(cost, "cost", self.policy.max_amount_usd)
        elif cost is None:
            raise InvalidRequest("give exactly one of `cost` and `usage`")
        else:
            check_cost(cost, "cost", self.policy.max_amount_usd)
            micros = to_micros(cost)
        if self.dedupe.seen("cost", event_id, now):
            return CostReply(
                swarm_id=swarm_id,
                remaining=to_usd(swarm.budget),
                tripped=swarm.breaker is not None,
                duplicate=True,
                trace_id=trace_id,
            )
        ctx = self._context(now, trace_id)
        self.reservations.expire(ctx, self.registry.swarms)
        swarm.budget -= micros
        swarm.cost_tracked += micros
        swarm.operations_count += 1
        remaining = to_usd(swarm.budget)
        params: dict[str, Any] = {"swarm_id": swarm_id, "operation": operation, "cost": cost, "remaining": remaining}
        if task_id is not None:
            params["task_id"] = task_id
        if event_id is not None:
            params["event_id"] = event_id
        if usage is not None:
            params["usage"] = msgspec.structs.asdict(usage)
            params["model"] = model or swarm.model
        ctx.witness("cost_tracked", params, "INFO")
        if task_id is not None and (task_id, swarm_id) in self.reservations:
            self.reservations.release(ctx, task_id, swarm, "settled", actual=cost)
        self._soft_budget(ctx, swarm)
        if swarm.budget <= 0 and (swarm.breaker is None or swarm.breaker.reason in RECOVERABLE):
            self.breakers.trip(ctx, swarm, "budget_exhausted", self.policy)  # money always needs a human
        elif swarm.budget <= 0:
            self.registry.refresh(swarm)
        return CostReply(
            swarm_id=swarm_id, remaining=remaining, tripped=swarm.breaker is not None, cost=cost, trace_id=trace_id
        )

    def _soft_budget(self, ctx: Context, swarm: Swarm) -> None:
        """The first time a budget falls below `soft_budget_ratio` of its allocation: a MEDIUM escalation."""
        if swarm.soft_warned or swarm.budget >= swarm.allocated * self.policy.soft_budget_ratio:
            return
        swarm.soft_warned = True
        if swarm.budget <= 0:  # exhausted at once: the trip's HIGH escalation says it
            return
        remaining, allocated = to_usd(swarm.budget), to_usd(swarm.allocated)
        ctx.emit(
            Escalation(
                swarm_id=swarm.swarm_id,
                reason=f"Budget running low - {remaining:.2f} of {allocated:.2f} USD left",
                context=EscalationContext(type="soft_budget", reason="budget_low", timestamp=ctx.now),
                trace_id=ctx.trace_id,
                severity="MEDIUM",
            )
        )
        ctx.witness(
            "budget_low", {"swarm_id": swarm.swarm_id, "remaining": remaining, "allocated": allocated}, "MEDIUM"
        )

    def reset_circuit_breaker(
        self,
        swarm_id: str,
        new_budget: float,
        *,
        approved_by: str,
        now: float,
        event_id: str | None = None,
        trace_id: str = "",
    ) -> ResetReply:
        """A named human closes a tripped breaker and allocates a new budget."""
        swarm = self.registry.get(swarm_id)
        if self.dedupe.applied_already("reset", event_id):
            return ResetReply(swarm_id=swarm_id, remaining=to_usd(swarm.budget), duplicate=True, trace_id=trace_id)
        if swarm.breaker is None:
            raise NotTripped(f"swarm {swarm_id!r} is not tripped; nothing to reset")
        check_budget(new_budget, "new_budget", self.policy.max_amount_usd)
        if not approved_by.strip():
            raise InvalidRequest("approved_by must name the human who approved the reset")
        self.dedupe.seen("reset", event_id, now)
        previous = swarm.breaker
        swarm.budget = swarm.allocated = to_micros(new_budget)
        swarm.soft_warned = False
        self.breakers.clear(swarm)
        ctx = self._context(now, trace_id)
        self.history_log.reset(
            ResetRecord(
                swarm_id=swarm_id,
                new_budget=new_budget,
                approved_by=approved_by,
                previous_reason=previous.reason,
                tripped_at=previous.tripped_at,
                reset_at=now,
                trace_id=trace_id,
                identity=ctx.identity,
            )
        )
        ctx.emit(
            BreakerReset(
                swarm_id=swarm_id,
                new_budget=new_budget,
                approved_by=approved_by,
                reset_at=now,
                trace_id=trace_id,
                identity=ctx.identity,
            )
        )
        ctx.witness(
            "circuit_breaker_reset",
            {
                "swarm_id": swarm_id,
                "new_budget": new_budget,
                "approved_by": approved_by,
                "previous_reason": previous.reason,
                "tripped_at": previous.tripped_at,
            },
            "MEDIUM",
        )
        return ResetReply(swarm_id=swarm_id, remaining=to_usd(swarm.budget), trace_id=trace_id)
