"""Circuit breakers: closed (not kept), open, half-open.

A budget at or below zero trips a breaker for good: only a human's reset, with a new budget, closes it. Repeated
failures (or an operator, for failures or degraded performance) trip it recoverably: after a cool-down it turns
half-open and admits `half_open_probes` tasks; a probe's success closes it, a probe's failure opens it again with
the cool-down doubled (up to `breaker_max_cooldown_s`). Every trip raises an escalation.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import msgspec

from schemas.codes import RECOVERABLE, TripReason
from schemas.events import BreakerClosed, BreakerHalfOpen, BreakerTripped, Escalation, EscalationContext
from schemas.policy import ResourcePolicy
from schemas.replies import BreakerState
from worker.core.context import Context
from worker.core.money import to_usd
from worker.core.registry import Registry, Swarm


class Breakers:
    """The breaker transitions of the registry's swarms, and the swarms whose breaker may recover by itself."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self.recovering: dict[str, Swarm] = {}

    def track(self, swarm: Swarm) -> None:
        """Follow a swarm added with a breaker already tripped (a retired id, a stored state)."""
        if swarm.breaker is not None and swarm.breaker.reason in RECOVERABLE:
            self.recovering[swarm.swarm_id] = swarm

    def forget(self, swarm_id: str) -> None:
        self.recovering.pop(swarm_id, None)

    def failed(self, swarm: Swarm, now: float, window_s: float) -> int:
        """Count a failure at `now`; the failures inside the window."""
        if swarm.failures is None:
            swarm.failures = deque()
        failures = swarm.failures
        failures.append(now)
        horizon = now - window_s
        while failures and failures[0] <= horizon:
            failures.popleft()
        return len(failures)

    def failure(
        self, ctx: Context, swarm: Swarm, policy: ResourcePolicy, task_id: str | None, error: str | None
    ) -> int:
        """A task failed on a swarm: count it (witnessed); a half-open breaker opens again, enough failures inside
        the window trip a closed one. The failures inside the window."""
        count = self.failed(swarm, ctx.now, policy.failure_window_s)
        ctx.witness(
            "failure_recorded",
            {"swarm_id": swarm.swarm_id, "task_id": task_id, "error": error, "failures_in_window": count},
            "INFO",
        )
        if swarm.breaker is not None and swarm.breaker.state == "half_open":
            self.reopen(ctx, swarm, policy)
        elif count >= policy.circuit_breaker_failure_threshold and swarm.breaker is None:
            self.trip(ctx, swarm, "repeated_failures", policy)
        return count

    def trip(
        self, ctx: Context, swarm: Swarm, reason: TripReason, policy: ResourcePolicy, requested_by: str | None = None
    ) -> None:
        now = ctx.now
        if reason in RECOVERABLE:
            cooldown = policy.breaker_cooldown_s
            swarm.breaker = BreakerState(
                reason=reason, tripped_at=now, next_probe_at=now + cooldown, cooldown_s=cooldown
            )
            self.recovering[swarm.swarm_id] = swarm
        else:
            swarm.breaker = BreakerState(reason=reason, tripped_at=now)
            self.recovering.pop(swarm.swarm_id, None)
        self._registry.refresh(swarm)
        remaining = to_usd(swarm.budget)
        ctx.emit(self._tripped(ctx, swarm, reason))
        ctx.emit(
            Escalation(
                swarm_id=swarm.swarm_id,
                reason=f"Circuit breaker tripped - {reason.replace('_', ' ')}",
                context=EscalationContext(type="circuit_breaker", reason=reason, timestamp=now),
                trace_id=ctx.trace_id,
            )
        )
        params: dict[str, Any] = {
            "swarm_id": swarm.swarm_id,
            "reason": reason,
            "old_budget": remaining,
            "operations_count": swarm.operations_count,
        }
        if requested_by is not None:
            params["requested_by"] = requested_by
        ctx.witness("circuit_breaker_tripped", params, "HIGH")

    def reopen(self, ctx: Context, swarm: Swarm, policy: ResourcePolicy) -> None:
        """A probe failed: open again, with the cool-down doubled (capped)."""
        assert swarm.breaker is not None
        cooldown = min(swarm.breaker.cooldown_s * 2, policy.breaker_max_cooldown_s)
        swarm.breaker = msgspec.structs.replace(
            swarm.breaker, state="open", next_probe_at=ctx.now + cooldown, cooldown_s=cooldown, probes_left=0
        )
        self._registry.refresh(swarm)
        ctx.emit(self._tripped(ctx, swarm, swarm.breaker.reason))
        ctx.witness(
            "circuit_breaker_reopened",
            {"swarm_id": swarm.swarm_id, "reason": swarm.breaker.reason, "cooldown_s": cooldown},
            "HIGH",
        )

    def advance(self, ctx: Context, policy: ResourcePolicy) -> None:
        """Open breakers of recoverable trips whose cool-down has passed become half-open and admit probes."""
        if not self.recovering:
            return
        now = ctx.now
        for swarm in list(self.recovering.values()):
            breaker = swarm.breaker
            if breaker is None or breaker.state != "open" or breaker.next_probe_at is None:
                continue
            if now < breaker.next_probe_at:
                continue
            probes = policy.half_open_probes
            swarm.breaker = msgspec.structs.replace(breaker, state="half_open", probes_left=probes)
            self._registry.refresh(swarm)
            ctx.emit(
                BreakerHalfOpen(
                    swarm_id=swarm.swarm_id, reason=breaker.reason, probes=probes, at=now, trace_id=ctx.trace_id
                )
            )
            ctx.witness(
                "circuit_breaker_half_open",
                {"swarm_id": swarm.swarm_id, "reason": breaker.reason, "probes": probes},
                "MEDIUM",
            )

    def take_probe(self, swarm: Swarm) -> None:
        assert swarm.breaker is not None
        swarm.breaker = msgspec.structs.replace(swarm.breaker, probes_left=swarm.breaker.probes_left - 1)
        self._registry.refresh(swarm)

    def close(self, ctx: Context, swarm: Swarm, task_id: str | None) -> bool:
        """A task succeeded: a half-open breaker closes by itself (True); any other stays as it is."""
        breaker = swarm.breaker
        if breaker is None or breaker.state != "half_open":
            return False
        self.clear(swarm)
        ctx.emit(
            BreakerClosed(swarm_id=swarm.swarm_id, reason=breaker.reason, closed_at=ctx.now, trace_id=ctx.trace_id)
        )
        ctx.witness(
            "circuit_breaker_closed",
            {"swarm_id": swarm.swarm_id, "reason": breaker.reason, "task_id": task_id},
            "MEDIUM",
        )
        return True

    def clear(self, swarm: Swarm) -> None:
        """Close the breaker and forget the failures (a probe's success, or a human's reset)."""
        swarm.breaker = None
        swarm.failures = None
        self.recovering.pop(swarm.swarm_id, None)
        self._registry.refresh(swarm)

    @staticmethod
    def _tripped(ctx: Context, swarm: Swarm, reason: str) -> BreakerTripped:
        return BreakerTripped(
            swarm_id=swarm.swarm_id,
            reason=reason,
            remaining=to_usd(swarm.budget),
            operations_count=swarm.operations_count,
            tripped_at=ctx.now,
            trace_id=ctx.trace_id,
            identity=ctx.identity,
        )
