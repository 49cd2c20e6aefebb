"""Open tasks: each assignment from its assign until a completion, a reassign or its timeout closes it.

An open task takes one slot of each swarm it was assigned to (`in_flight`, bounded by the swarm's
`max_concurrent_tasks`), sums the costs reported with its id, and knows where its history record is, so that the
completion can write its outcome, duration and total cost there. Expiries are a heap, swept at each command and at
the actor's ticks (the core reads no clock).
"""

from __future__ import annotations

import heapq

import msgspec

from schemas.policy import ResourcePolicy
from worker.core.breakers import Breakers
from worker.core.context import Context
from worker.core.history import History
from worker.core.money import to_usd
from worker.core.registry import Registry
from worker.core.reservations import Reservations


class OpenTask(msgspec.Struct, gc=False):
    """One open task. A Struct the cyclic GC does not track (it holds strings and numbers only, so it can be in no
    cycle): up to `max_open_tasks` of them live for a task's whole run, and a full collection need not scan them;
    made in a quarter of the time of a class with `__slots__` and an `__init__`."""

    task_id: str
    swarm_ids: tuple[str, ...]
    assigned_at: float
    expires_at: float
    expire_as: str
    record: int
    """The position of its assignment record in the history (`History.assignments_seq` when it was kept)."""
    cost: int = 0
    """Micro-dollars reported with this task id while it was open."""


#: A closed task's heap entry stays until it reaches the top; once the heap holds more than twice the open tasks
#: and this many entries besides, it is rebuilt from the open tasks (amortised O(1) per close). Without it, one
#: long-open task at the top would keep the entry of every task closed after it, for as long as its timeout.
COMPACT_SLACK = 1024


class Tasks:
    """The open tasks by id, and a heap of their expiries (at most twice the open tasks, plus COMPACT_SLACK)."""

    def __init__(self) -> None:
        self.open: dict[str, OpenTask] = {}
        self._expiry: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self.open)

    @property
    def next_expiry(self) -> float:
        """When the earliest open task expires (inf: none is open). Entries of closed tasks are dropped lazily."""
        heap, open_ = self._expiry, self.open
        while heap and (heap[0][1] not in open_ or open_[heap[0][1]].expires_at != heap[0][0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else float("inf")

    def may_expire(self, now: float) -> bool:
        """Whether the heap's earliest entry is due by `now`: a closed task's entry too, so it may be a false alarm
        (`expired` then finds nothing and drops it), but never misses one; a test per command, cheaper than
        `next_expiry`'s exact answer, which the actor's ticks need."""
        heap = self._expiry
        return bool(heap) and heap[0][0] <= now

    def add(self, task: OpenTask) -> None:
        self.open[task.task_id] = task
        heapq.heappush(self._expiry, (task.expires_at, task.task_id))

    def pop(self, task_id: str) -> OpenTask:
        task = self.open.pop(task_id)
        self._compact()
        return task

    def _compact(self) -> None:
        if len(self._expiry) > 2 * len(self.open) + COMPACT_SLACK:
            self._expiry = [(t.expires_at, t.task_id) for t in self.open.values()]
            heapq.heapify(self._expiry)

    def expired(self, now: float) -> list[OpenTask]:
        """Take the open tasks whose time was up by `now`, earliest first."""
        out: list[OpenTask] = []
        heap, open_ = self._expiry, self.open
        while heap and heap[0][0] <= now:
            expires_at, task_id = heapq.heappop(heap)
            task = open_.get(task_id)
            if task is not None and task.expires_at == expires_at:
                del open_[task_id]
                out.append(task)
        return out

    def forget(self, swarm_id: str) -> None:
        """A deregistered swarm leaves its open tasks (a task left with no swarm is dropped)."""
        for task_id, task in list(self.open.items()):
            if swarm_id in task.swarm_ids:
                task.swarm_ids = tuple(s for s in task.swarm_ids if s != swarm_id)
                if not task.swarm_ids:
                    del self.open[task_id]
        self._compact()

    def export(self) -> list[tuple[str, list[str], float, float, str, int, int]]:
        return [
            (t.task_id, list(t.swarm_ids), t.assigned_at, t.expires_at, t.expire_as, t.record, t.cost)
            for t in self.open.values()
        ]

    def restore(self, rows: list[tuple[str, list[str], float, float, str, int, int]]) -> None:
        for task_id, swarm_ids, assigned_at, expires_at, expire_as, record, cost in rows:
            self.add(OpenTask(task_id, tuple(swarm_ids), assigned_at, expires_at, expire_as, record, cost))


class Lifecycle:
    """What closing a task does: its swarms' slots and holds released, its history record given its outcome, its
    expiry counted as a failure when its policy says so."""

    def __init__(
        self, tasks: Tasks, registry: Registry, reservations: Reservations, history: History, breakers: Breakers
    ) -> None:
        self.tasks = tasks
        self._registry = registry
        self._reservations = reservations
        self._history = history
        self._breakers = breakers

    def close(self, ctx: Context, task: OpenTask, outcome: str | None, why: str) -> None:
        """Free the task's slots and holds (`why`: completed, expired, reassigned); with an `outcome`, write it
        with the duration and total cost into the task's history record."""
        swarms = self._registry.swarms
        for swarm_id in task.swarm_ids:
            swarm = swarms.get(swarm_id)
            if swarm is None:  # deregistered meanwhile
                continue
            swarm.in_flight -= 1
            if swarm.max_tasks is not None:
                self._registry.refresh(swarm)
            if (task.task_id, swarm_id) in self._reservations:
                self._reservations.release(ctx, task.task_id, swarm, why)
        if outcome is not None:
            self._history.closed(task.record, task.task_id, outcome, ctx.now - task.assigned_at, to_usd(task.cost))

    def expire(self, ctx: Context, policy: ResourcePolicy) -> list[str]:
        """Close every task whose time is up: witnessed (`task_expired`), counted as a failure of its first swarm
        when its policy's `expire_as` is `failure`. The ids expired."""
        expired: list[str] = []
        for task in self.tasks.expired(ctx.now):
            self.close(ctx, task, "expired", "expired")
            expired.append(task.task_id)
            primary = self._registry.swarms.get(task.swarm_ids[0])
            ctx.witness(
                "task_expired",
                {
                    "task_id": task.task_id,
                    "swarm_ids": list(task.swarm_ids),
                    "assigned_at": task.assigned_at,
                    "expire_as": task.expire_as,
                },
                "MEDIUM",
            )
            if task.expire_as == "failure" and primary is not None:
                self._breakers.failure(ctx, primary, policy, task.task_id, "task expired")
        return expired
