"""Spending: costs deducted at once from a swarm's budget and its budget groups' periods (an exhausted budget
trips the breaker, thresholds alert once, a task past its cap escalates), a human's reset with a new budget, an
operator's top-up, and the period boundaries' ticks."""

from __future__ import annotations

from typing import Any

import msgspec

from schemas.codes import RECOVERABLE
from schemas.events import BreakerReset, BudgetThreshold, Escalation, EscalationContext
from schemas.pricing import TokenUsage
from schemas.replies import CostReply, ResetRecord, ResetReply, TickReply, TopupReply
from worker.core.context import Context
from worker.core.money import check_budget, check_cost, crossed, price_micros, to_micros, to_usd
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
        cost, micros = self._priced(swarm, cost, usage, model)
        if self.dedupe.seen("cost", event_id, now):
            return CostReply(
                swarm_id=swarm_id,
                remaining=to_usd(swarm.budget),
                tripped=swarm.breaker is not None,
                duplicate=True,
                trace_id=trace_id,
            )
        ctx = self._begin(now, trace_id)
        return self._charge(
            ctx, swarm, operation, cost, micros, usage=usage, model=model, event_id=event_id, task_id=task_id
        )

    def _priced(
        self, swarm: Swarm, cost: float | None, usage: TokenUsage | None, model: str | None
    ) -> tuple[float, int]:
        """A checked cost as (USD, micro-dollars): `cost`, or `usage` priced by the swarm's model (or `model`)."""
        if usage is not None:
            priced_as = model or swarm.model
            price = self.pricing.get(priced_as)
            if price is None:
                known = ", ".join(sorted(self.pricing)) or "none"
                raise InvalidRequest(f"no price for model {priced_as!r} (pricing: lists {known})")
            micros = price_micros(usage, price)
            cost = to_usd(micros)
            check_cost(cost, "cost", self.policy.max_amount_usd)
            return cost, micros
        if cost is None:
            raise InvalidRequest("give exactly one of `cost` and `usage`")
        check_cost(cost, "cost", self.policy.max_amount_usd)
        return cost, to_micros(cost)

    def _charge(
        self,
        ctx: Context,
        swarm: Swarm,
        operation: str,
        cost: float,
        micros: int,
        *,
        usage: TokenUsage | None = None,
        model: str | None = None,
        event_id: str | None = None,
        task_id: str | None = None,
    ) -> CostReply:
        """Deduct a checked cost from the swarm, its groups and its open task; witness it; trip, alert and cap."""
        swarm_id = swarm.swarm_id
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
        if task_id is not None:
            if (task_id, swarm_id) in self.reservations:
                self.reservations.release(ctx, task_id, swarm, "settled", actual=cost)
            task = self.tasks.open.get(task_id)
            if task is not None and swarm_id in task.swarm_ids:
                task.cost += micros
        self._thresholds(ctx, swarm)
        if swarm.group is not None:
            self.budgets.spend(ctx, swarm.group, micros, self.registry.refresh)
        if swarm.budget <= 0 and (swarm.breaker is None or swarm.breaker.reason in RECOVERABLE):
            self.breakers.trip(ctx, swarm, "budget_exhausted", self.policy)  # money always needs a human
        elif swarm.budget <= 0:
            self.registry.refresh(swarm)
        if task_id is not None:
            self._task_cap(ctx, swarm, task_id, micros)
        return CostReply(
            swarm_id=swarm_id, remaining=remaining, tripped=swarm.breaker is not None, cost=cost, trace_id=ctx.trace_id
        )

    def _thresholds(self, ctx: Context, swarm: Swarm) -> None:
        """Each `budget_alerts` fraction of its allocation a swarm's spending crosses: a threshold event, once per
        allocation, and one MEDIUM escalation for the highest crossed (none when the cost exhausted the budget:
        the trip's HIGH escalation says it)."""
        allocated = swarm.allocated
        if allocated <= 0:
            return
        spent = allocated - swarm.budget
        fractions = crossed(self._swarm_alerts(), swarm.alerted, spent, allocated)
        if not fractions:
            return
        swarm.alerted = fractions[-1]
        for fraction in fractions:
            ctx.emit(
                BudgetThreshold(
                    swarm_id=swarm.swarm_id,
                    fraction=fraction,
                    spent=to_usd(spent),
                    limit=to_usd(allocated),
                    trace_id=ctx.trace_id,
                )
            )
            ctx.witness(
                "budget_threshold",
                {"swarm_id": swarm.swarm_id, "fraction": fraction, "spent": to_usd(spent), "limit": to_usd(allocated)},
                "MEDIUM",
            )
        if swarm.budget <= 0:
            return
        left = f"{to_usd(swarm.budget):.2f} of {to_usd(allocated):.2f} USD left"
        ctx.emit(
            Escalation(
                swarm_id=swarm.swarm_id,
                reason=f"Budget running low - {fractions[-1]:.0%} spent, {left}",
                context=EscalationContext(type="soft_budget", reason="budget_threshold", timestamp=ctx.now),
                trace_id=ctx.trace_id,
                severity="MEDIUM",
            )
        )

    def _swarm_alerts(self) -> tuple[float, ...]:
        """The policy's `budget_alerts` with `1 - soft_budget_ratio`, ascending (computed once per policy)."""
        policy = self.policy
        cached = self._alerts_of
        if cached is None or cached[0] is not policy:
            fractions = set(policy.budget_alerts)
            soft = round(1.0 - policy.soft_budget_ratio, 6)
            if 0.0 < soft < 1.0:  # soft_budget_ratio 0 (or 1): no warning of its own, as before
                fractions.add(soft)
            cached = self._alerts_of = (policy, tuple(sorted(fractions)))
        return cached[1]

    def _task_cap(self, ctx: Context, swarm: Swarm, task_id: str, micros: int) -> None:
        """Count a cost against its task's `max_spend_per_task`: passing it escalates once (and may trip)."""
        policy = self.policy
        cap = None if policy.max_spend_per_task is None else to_micros(policy.max_spend_per_task)
        tally = self.task_caps.charge(task_id, micros, cap, policy.on_task_over_budget)
        if tally is None:
            return
        spent, limit = to_usd(tally.spent), to_usd(tally.cap)
        ctx.emit(
            Escalation(
                swarm_id=swarm.swarm_id,
                reason=f"Task {task_id} over budget - {spent:.2f} USD reported against a cap of {limit:.2f}",
                context=EscalationContext(type="task_over_budget", reason="task_over_budget", timestamp=ctx.now),
                trace_id=ctx.trace_id,
                severity="HIGH" if tally.action == "trip" else "MEDIUM",
            )
        )
        ctx.witness(
            "task_over_budget",
            {"task_id": task_id, "swarm_id": swarm.swarm_id, "spent": spent, "cap": limit, "action": tally.action},
            "HIGH",
        )
        if tally.action == "trip" and (swarm.breaker is None or swarm.breaker.reason in RECOVERABLE):
            self.breakers.trip(ctx, swarm, "task_over_budget", self.policy)

    def top_up(
        self,
        *,
        amount: float,
        approved_by: str,
        now: float,
        swarm_id: str | None = None,
        group: str | None = None,
        event_id: str | None = None,
        trace_id: str = "",
    ) -> TopupReply:
        """An operator adds to a swarm's remaining budget (and its allocation) or to a group's current period. A
        tripped breaker stays tripped (the reply says so): only a reset closes it."""
        target = self.registry.get(swarm_id) if swarm_id is not None else None
        grp = self.budgets.get(group) if group is not None else None
        if target is None and grp is None:
            raise InvalidRequest("give exactly one of `swarm_id` and `group`")
        check_budget(amount, "amount", self.policy.max_amount_usd)
        if not approved_by.strip():
            raise InvalidRequest("approved_by must name the human who approved the top-up")
        if self.dedupe.applied_already("topup", event_id):
            remaining = target.budget if target is not None else grp.remaining if grp is not None else 0
            return TopupReply(
                swarm_id=swarm_id,
                group=group,
                amount=amount,
                remaining=to_usd(remaining),
                duplicate=True,
                trace_id=trace_id,
            )
        self.dedupe.seen("topup", event_id, now)
        ctx = self._begin(now, trace_id)
        micros = to_micros(amount)
        params: dict[str, Any] = {"amount": amount, "approved_by": approved_by}
        if target is not None:
            target.budget += micros
            target.allocated += micros
            self.registry.refresh(target)
            tripped = target.breaker is not None
            params |= {"swarm_id": target.swarm_id, "remaining": to_usd(target.budget), "tripped": tripped}
            ctx.witness("budget_topped_up", params, "MEDIUM")
            return TopupReply(
                swarm_id=target.swarm_id,
                amount=amount,
                remaining=to_usd(target.budget),
                tripped=tripped,
                note="the breaker is still tripped: a top-up never closes it; reset it (governor.reset)"
                if tripped
                else None,
                trace_id=trace_id,
            )
        assert grp is not None
        unblocked = self.budgets.top_up(ctx, grp, micros, self.registry.refresh)
        params |= {"group": grp.id, "remaining": to_usd(grp.remaining), "unblocked": unblocked}
        ctx.witness("budget_topped_up", params, "MEDIUM")
        return TopupReply(
            group=grp.id, amount=amount, remaining=to_usd(grp.remaining), unblocked=unblocked, trace_id=trace_id
        )

    def tick(self, *, now: float, trace_id: str = "") -> TickReply:
        """The actor's `tick` entry when time alone changes something: roll the budget periods that ended over and
        expire the tasks whose time is up (once: a later tick, or a command that did it first, finds nothing)."""
        refilled, expired = self._advance(self._context(now, trace_id))
        return TickReply(refilled=refilled, expired=expired, trace_id=trace_id)

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
        ctx = self._begin(now, trace_id)
        previous = swarm.breaker
        swarm.budget = swarm.allocated = to_micros(new_budget)
        swarm.alerted = 0.0
        self.breakers.clear(swarm)
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
