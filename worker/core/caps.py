"""Per-task spending caps: the costs reported with one `task_id`, summed against the policy's
`max_spend_per_task`; passing it raises one `task_over_budget` escalation (and, with `on_task_over_budget:
trip`, trips the swarm). Only tasks under a cap are tracked, in a bounded table (the oldest forgotten first)."""

from __future__ import annotations

from collections import OrderedDict

TRACKED_LIMIT = 100_000
"""Tasks tracked at most; beyond it the least recently charged is forgotten (its later costs start from zero)."""


class Tally:
    __slots__ = ("action", "cap", "fired", "spent")

    def __init__(self, cap: int, action: str, spent: int = 0, fired: bool = False) -> None:
        self.spent = spent
        self.cap = cap
        self.action = action
        self.fired = fired


class TaskCaps:
    """What each capped task has cost so far."""

    def __init__(self, limit: int = TRACKED_LIMIT) -> None:
        self.limit = limit
        self.tasks: OrderedDict[str, Tally] = OrderedDict()

    def open(self, task_id: str, cap: int, action: str) -> None:
        """An assignment under a capped policy: its costs are counted against that policy's cap."""
        tally = self.tasks.get(task_id)
        if tally is None:
            self._add(task_id, Tally(cap, action))
        else:
            tally.cap, tally.action = cap, action

    def charge(self, task_id: str, micros: int, cap: int | None, action: str) -> Tally | None:
        """Count a cost; the tally when this cost passed its cap for the first time. A task never assigned under a
        capped policy is counted against `cap` (the default policy's), when there is one."""
        tally = self.tasks.get(task_id)
        if tally is None:
            if cap is None:
                return None
            tally = self._add(task_id, Tally(cap, action))
        else:
            self.tasks.move_to_end(task_id)
        tally.spent += micros
        if tally.fired or tally.spent <= tally.cap:
            return None
        tally.fired = True
        return tally

    def _add(self, task_id: str, tally: Tally) -> Tally:
        self.tasks[task_id] = tally
        while len(self.tasks) > self.limit:
            self.tasks.popitem(last=False)
        return tally

    def export(self) -> list[tuple[str, int, int, str, bool]]:
        return [(task_id, t.spent, t.cap, t.action, t.fired) for task_id, t in self.tasks.items()]

    def restore(self, rows: list[tuple[str, int, int, str, bool]]) -> None:
        for task_id, spent, cap, action, fired in rows:
            self.tasks[task_id] = Tally(cap, action, spent, fired)
