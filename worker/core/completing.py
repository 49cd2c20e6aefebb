"""Completing tasks: a coordinator closes an assignment with its outcome (and maybe a final cost), so that its
swarms' slots and holds are free again, the breaker hears of it, and the history shows how it ended."""

from __future__ import annotations

from schemas.pricing import TokenUsage
from schemas.replies import CompleteReply
from worker.core.money import to_usd
from worker.core.spending import Spending
from worker.errors import InvalidRequest, TaskClosed, UnknownTask


class Completing(Spending):
    """The `complete` command."""

    def complete_task(
        self,
        task_id: str,
        outcome: str,
        *,
        now: float,
        swarm_id: str | None = None,
        cost: float | None = None,
        usage: TokenUsage | None = None,
        model: str | None = None,
        error: str | None = None,
        event_id: str | None = None,
        trace_id: str = "",
    ) -> CompleteReply:
        """Close an open task: release its slots and holds, settle an optional final cost on `swarm_id` (default:
        the task's first swarm), count the outcome (a failure toward the breaker, a success closes a half-open one)
        and record outcome, duration and total cost in the history. A retry with the same `event_id` is answered
        `duplicate`; a task completed or expired already is refused (`task_closed`), one never assigned too."""
        if self.dedupe.applied_already("complete", event_id):
            return CompleteReply(
                task_id=task_id,
                swarm_id=swarm_id or "",
                outcome=outcome,
                duration_s=0.0,
                total_cost=0.0,
                duplicate=True,
                trace_id=trace_id,
            )
        if outcome not in ("success", "failure"):
            raise InvalidRequest(f"outcome must be success or failure, got {outcome!r}")
        ctx = self._begin(now, trace_id)  # a task whose time was up by now is expired first: then it is closed
        task = self.tasks.open.get(task_id)
        if task is None:
            if self.dedupe.assigned(task_id, now, self.policy.assign_window_s) is not None:
                raise TaskClosed(f"task {task_id!r} is closed already (completed, expired or reassigned)")
            raise UnknownTask(f"no open task {task_id!r} (never assigned, or closed too long ago to remember)")
        target = swarm_id or task.swarm_ids[0]
        if target not in task.swarm_ids:
            raise InvalidRequest(f"task {task_id!r} was not assigned to {target!r} (it was to {list(task.swarm_ids)})")
        swarm = self.registry.get(target)
        charge = None if cost is None and usage is None else self._priced(swarm, cost, usage, model)
        self.dedupe.seen("complete", event_id, now)
        if charge is not None:
            self._charge(ctx, swarm, "task_completed", charge[0], charge[1], usage=usage, model=model, task_id=task_id)
        self.tasks.pop(task_id)
        self.lifecycle.close(ctx, task, outcome, "completed")
        closed = False
        if outcome == "failure":
            self.breakers.failure(ctx, swarm, self.policy, task_id, error)
        else:
            closed = self.breakers.close(ctx, swarm, task_id)
        duration = now - task.assigned_at
        total = to_usd(task.cost)
        params = {
            "task_id": task_id,
            "swarm_id": target,
            "outcome": outcome,
            "duration_s": duration,
            "total_cost": total,
        }
        if error is not None:
            params["error"] = error
        ctx.witness("task_completed", params, "INFO")
        return CompleteReply(
            task_id=task_id,
            swarm_id=target,
            outcome=outcome,
            duration_s=duration,
            total_cost=total,
            tripped=swarm.breaker is not None,
            closed=closed,
            trace_id=trace_id,
        )
