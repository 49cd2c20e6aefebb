"""Reports: budgets, budget groups, breakers, history, holds and the paged status, read-only."""

from __future__ import annotations

from collections.abc import Iterator

from schemas.replies import (
    AssignmentRecord,
    BreakerState,
    GroupStatus,
    HoldStatus,
    ResetRecord,
    StatusReply,
    SwarmStatus,
)
from schemas.requests import PAGE_DEFAULT
from worker.core.history import newest
from worker.core.money import to_usd
from worker.core.parts import Parts
from worker.core.registry import Swarm


class Reports(Parts):
    """The `status` and `history` reads, and the design document's reports."""

    def get_budget_report(self) -> dict[str, float]:
        """Remaining budget (USD) of every swarm, in registration order."""
        return {s.swarm_id: to_usd(s.budget) for s in self.registry}

    def get_circuit_breaker_status(self) -> dict[str, BreakerState]:
        """The tripped breakers: swarm id -> (reason, tripped_at)."""
        return {s.swarm_id: s.breaker for s in self.registry if s.breaker is not None}

    def history(
        self, limit: int | None = None, cursor: str | None = None
    ) -> tuple[list[AssignmentRecord], list[ResetRecord], str | None]:
        """A page of the assignment and reset history, newest last (see `History.page`)."""
        return self.history_log.page(limit or PAGE_DEFAULT, cursor)

    def get_reset_history(self, limit: int | None = None) -> list[ResetRecord]:
        """The most recent resets, each with its approver, newest last."""
        return newest(self.history_log.resets, limit)

    def get_assignment_history(self, limit: int | None = None) -> list[AssignmentRecord]:
        """The most recent assignments, newest last."""
        return newest(self.history_log.assignments, limit)

    def holds(self, now: float) -> list[HoldStatus]:
        """The open reservations at `now` (expired ones excluded, whether or not swept yet)."""
        return self.reservations.at(now)

    def get_swarm_profile(self, swarm_id: str, *, now: float | None = None) -> SwarmStatus:
        """A swarm's profile with its live budget and breaker."""
        return self._status_of(self.registry.get(swarm_id), now)

    def _status_of(self, swarm: Swarm, now: float | None) -> SwarmStatus:
        failures = swarm.failures or ()
        if now is None:
            in_window = len(failures)
        else:
            horizon = now - self.policy.failure_window_s
            in_window = sum(1 for t in failures if t > horizon)
        remaining = to_usd(swarm.budget)
        return SwarmStatus(
            swarm_id=swarm.swarm_id,
            capabilities=list(swarm.capabilities),
            cost_per_hour=swarm.cost_per_hour,
            reputation_score=swarm.reputation_score,
            current_budget_remaining=remaining,
            model=swarm.model,
            budget_remaining=remaining,
            breaker=swarm.breaker,
            failures_in_window=in_window,
            operations_count=swarm.operations_count,
            held=to_usd(self.reservations.held_at(swarm, now)),
            budget_group=swarm.group.id if swarm.group is not None else None,
            in_flight=swarm.in_flight,
            max_concurrent_tasks=swarm.max_tasks,
        )

    def status(
        self, *, now: float, trace_id: str = "", limit: int | None = None, cursor: str | None = None
    ) -> StatusReply:
        """A page of swarms (registration order) with their budgets, breakers and holds, and the policy in force."""
        page, next_cursor = self.registry.page(limit or PAGE_DEFAULT, cursor)
        ids = {s.swarm_id for s in page}
        return StatusReply(
            swarms=[self._status_of(s, now) for s in page],
            budgets={s.swarm_id: to_usd(s.budget) for s in page},
            breakers={s.swarm_id: s.breaker for s in page if s.breaker is not None},
            policy=self.policy,
            holds=[h for h in self.holds(now) if h.swarm_id in ids],
            rules=list(self.rules),
            recent_assignments=self.get_assignment_history(10),
            next_cursor=next_cursor,
            groups=self.budgets.status(now) if cursor is None else [],
            trace_id=trace_id,
        )

    def groups(self, now: float) -> list[GroupStatus]:
        """Every budget group as of `now`, in config order."""
        return self.budgets.status(now)

    def gauges(self) -> Iterator[tuple[str, float, float, bool]]:
        """(swarm id, remaining USD, cost tracked USD, tripped) of every swarm: for metrics, read-only."""
        for s in list(self.registry):
            yield s.swarm_id, to_usd(s.budget), to_usd(s.cost_tracked), s.breaker is not None

    def in_flight(self) -> Iterator[tuple[str, int]]:
        """(swarm id, tasks in flight) of every swarm: for metrics, read-only."""
        for s in list(self.registry):
            yield s.swarm_id, s.in_flight
