"""Retries answered as the first time: event ids applied already, and the tasks assigned already.

One window per kind (so a flood of fresh cost ids never pushes a reset's id out), oldest first. An id is kept for
`horizon_s` and at most `limit` per kind: a retry inside that is a no-op; an id pushed out by the limit before its
horizon is counted in `evicted`, by kind (assignments under `assign`). Assignments are remembered for the policy's
`assign_window_s`, at most `limit` of them.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from schemas.replies import Assignment


class Dedupe:
    """The windows of applied event ids by kind, and of assigned tasks."""

    def __init__(self, limit: int, horizon_s: float) -> None:
        self.limit = limit
        self.horizon_s = horizon_s
        self.applied: dict[str, OrderedDict[str, float]] = {}
        # task_id -> (its assignments, when). Tuples of untracked Structs: the cyclic GC need not scan up to
        # `limit` of them.
        self.tasks: OrderedDict[str, tuple[tuple[Assignment, ...], float]] = OrderedDict()
        self.evicted: dict[str, int] = {}

    def applied_already(self, kind: str, event_id: str | None) -> bool:
        """Whether this event id of this kind was applied (within its window), without remembering it: for
        requests that check for a retry before they validate, and remember the id (`seen`) only once valid."""
        return event_id is not None and event_id in self.applied.get(kind, ())

    def seen(self, kind: str, event_id: str | None, now: float) -> bool:
        """True when this event id was applied already; otherwise remember it (bounded, oldest forgotten)."""
        if event_id is None:
            return False
        applied = self.applied.get(kind)
        if applied is None:
            applied = self.applied[kind] = OrderedDict()
        if event_id in applied:
            return True
        applied[event_id] = now
        horizon = now - self.horizon_s
        if len(applied) > self.limit or next(iter(applied.values())) < horizon:
            self._bound(kind, applied, horizon)
        return False

    def assigned(self, task_id: str, now: float, window_s: float) -> tuple[Assignment, ...] | None:
        """The assignments of a task assigned within `window_s` before `now` (one assigned earlier is forgotten)."""
        prior = self.tasks.get(task_id)
        if prior is not None and prior[1] < now - window_s:
            del self.tasks[task_id]
            return None
        return None if prior is None else prior[0]

    def forget_task(self, task_id: str) -> None:
        self.tasks.pop(task_id, None)

    def remember_task(self, task_id: str, assignments: tuple[Assignment, ...], now: float, window_s: float) -> None:
        tasks = self.tasks
        tasks.pop(task_id, None)  # (a reassigned task goes to the end: the window is oldest first)
        tasks[task_id] = (assignments, now)
        horizon = now - window_s
        if len(tasks) > self.limit or next(iter(tasks.values()))[1] < horizon:
            self._bound("assign", tasks, horizon)

    def _bound(self, kind: str, window: OrderedDict[str, Any], horizon: float) -> None:
        """Forget a window's entries older than `horizon`, and its oldest beyond `limit` (counted)."""
        while window:
            oldest = next(iter(window.values()))
            at = oldest[1] if isinstance(oldest, tuple) else oldest
            if at < horizon:
                window.popitem(last=False)
            elif len(window) > self.limit:
                window.popitem(last=False)
                self.evicted[kind] = self.evicted.get(kind, 0) + 1
            else:
                return
