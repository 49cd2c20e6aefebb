"""What a task's outcome does to a breaker: failures trip it (or reopen a half-open one), a success closes a
half-open one; and an operator's trip by hand."""

from __future__ import annotations

from typing import cast

from schemas.codes import MANUAL_TRIP_REASONS, ManualTripReason
from schemas.replies import FailureReply, SuccessReply, TripReply
from worker.core.parts import Parts
from worker.errors import AlreadyTripped, InvalidRequest


class Outcomes(Parts):
    """The `failure`, `success` and `trip` commands."""

    def record_failure(
        self,
        swarm_id: str,
        *,
        now: float,
        task_id: str | None = None,
        error: str | None = None,
        event_id: str | None = None,
        trace_id: str = "",
    ) -> FailureReply:
        """Record a failed task; `circuit_breaker_failure_threshold` failures inside the window trip the breaker."""
        swarm = self.registry.get(swarm_id)
        window_s = self.policy.failure_window_s
        if self.dedupe.seen("failure", event_id, now):
            horizon = now - window_s
            return FailureReply(
                swarm_id=swarm_id,
                failures_in_window=sum(1 for t in swarm.failures or () if t > horizon),
                tripped=swarm.breaker is not None,
                duplicate=True,
                trace_id=trace_id,
            )
        count = self.breakers.failure(self._context(now, trace_id), swarm, self.policy, task_id, error)
        return FailureReply(
            swarm_id=swarm_id, failures_in_window=count, tripped=swarm.breaker is not None, trace_id=trace_id
        )

    def record_success(
        self,
        swarm_id: str,
        *,
        now: float,
        task_id: str | None = None,
        event_id: str | None = None,
        trace_id: str = "",
    ) -> SuccessReply:
        """A task succeeded: a half-open breaker closes by itself (a budget trip still needs a human)."""
        swarm = self.registry.get(swarm_id)
        if self.dedupe.seen("success", event_id, now):
            return SuccessReply(swarm_id=swarm_id, closed=False, duplicate=True, trace_id=trace_id)
        closed = self.breakers.close(self._context(now, trace_id), swarm, task_id)
        return SuccessReply(swarm_id=swarm_id, closed=closed, trace_id=trace_id)

    def trip_circuit_breaker(
        self,
        swarm_id: str,
        reason: str,
        *,
        now: float,
        requested_by: str,
        trace_id: str = "",
        event_id: str | None = None,
    ) -> TripReply:
        """Trip a breaker by hand, for one of the manual reasons (a retry with the same `event_id` is a no-op)."""
        swarm = self.registry.get(swarm_id)
        if reason not in MANUAL_TRIP_REASONS:
            raise InvalidRequest(f"reason must be one of {sorted(MANUAL_TRIP_REASONS)}, got {reason!r}")
        if self.dedupe.applied_already("trip", event_id):
            return TripReply(swarm_id=swarm_id, duplicate=True, trace_id=trace_id)
        if swarm.breaker is not None:
            raise AlreadyTripped(f"swarm {swarm_id!r} is already tripped ({swarm.breaker.reason})")
        self.dedupe.seen("trip", event_id, now)
        manual = cast(ManualTripReason, reason)
        self.breakers.trip(self._context(now, trace_id), swarm, manual, self.policy, requested_by=requested_by)
        return TripReply(swarm_id=swarm_id, trace_id=trace_id)
