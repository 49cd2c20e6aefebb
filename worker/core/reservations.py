"""Reservations: budget held on a swarm by an assign with an estimated cost, until a cost of that task settles it,
a reassign releases it, or its time (`policy.reservation_ttl_s`) runs out. Open holds are bounded, in all and per
swarm; a swarm's available budget is its remaining budget less what its open holds keep."""

from __future__ import annotations

import heapq
from typing import Any

from schemas.policy import ResourcePolicy
from schemas.replies import HoldStatus
from worker.core.context import Context
from worker.core.money import to_usd
from worker.core.registry import Swarm
from worker.errors import HoldLimit

#: A released hold's heap entry stays until it reaches the top; once the heap holds more than twice the open holds
#: and this many entries besides, it is rebuilt from the open holds (amortised O(1) per release), so that holds
#: settled long before their time cannot pile up behind an earlier one.
COMPACT_SLACK = 1024


class Reservations:
    """The open holds by (task id, swarm id), with a heap of their expiries (at most twice the open holds, plus
    COMPACT_SLACK)."""

    def __init__(self) -> None:
        # (task_id, swarm_id) -> (micro-dollars, expires_at)
        self.open: dict[tuple[str, str], tuple[int, float]] = {}
        self._expiry: list[tuple[float, str, str]] = []  # heap of (expires_at, task_id, swarm_id)

    def __len__(self) -> int:
        return len(self.open)

    def __contains__(self, key: object) -> bool:
        return key in self.open

    def check(self, task_id: str, chosen: list[Swarm], policy: ResourcePolicy) -> None:
        """Refuse an assign whose holds would pass the policy's limits (in all, or on one swarm)."""
        new = [s for s in chosen if (task_id, s.swarm_id) not in self.open]
        if len(self.open) + len(new) > policy.max_holds:
            raise HoldLimit(f"{len(self.open)} reservations are open, the most the policy allows is {policy.max_holds}")
        for swarm in new:
            if swarm.holds >= policy.max_holds_per_swarm:
                raise HoldLimit(
                    f"swarm {swarm.swarm_id!r} has {swarm.holds} open reservations, the most the policy allows is "
                    f"{policy.max_holds_per_swarm}: settle or release some first"
                )

    def hold(self, task_id: str, swarm: Swarm, micros: int, expires_at: float) -> None:
        key = (task_id, swarm.swarm_id)
        previous = self.open.pop(key, None)
        if previous is not None:
            swarm.held -= previous[0]
        else:
            swarm.holds += 1
        self.open[key] = (micros, expires_at)
        swarm.held += micros
        heapq.heappush(self._expiry, (expires_at, task_id, swarm.swarm_id))
        self._compact()

    def release(self, ctx: Context, task_id: str, swarm: Swarm, why: str, actual: float | None = None) -> None:
        micros, _ = self.open.pop((task_id, swarm.swarm_id))
        swarm.held -= micros
        swarm.holds -= 1
        self._compact()
        params: dict[str, Any] = {"task_id": task_id, "swarm_id": swarm.swarm_id, "held": to_usd(micros), "why": why}
        if actual is not None:
            params["actual"] = actual
        ctx.witness("reservation_released", params, "INFO")

    def expire(self, ctx: Context, swarms: dict[str, Swarm]) -> None:
        """Release every hold whose time is up (a hold never outlives `reservation_ttl_s`)."""
        now = ctx.now
        while self._expiry and self._expiry[0][0] <= now:  # (a release may compact: the heap is read each time)
            expires_at, task_id, swarm_id = heapq.heappop(self._expiry)
            hold = self.open.get((task_id, swarm_id))
            if hold is not None and hold[1] == expires_at:
                self.release(ctx, task_id, swarms[swarm_id], "expired")

    def forget(self, swarm_id: str) -> None:
        """Drop a deregistered swarm's holds (its budget is forgotten with it)."""
        for key in [k for k in self.open if k[1] == swarm_id]:
            del self.open[key]
        self._compact()

    def _compact(self) -> None:
        if len(self._expiry) > 2 * len(self.open) + COMPACT_SLACK:
            self._expiry = [(exp, task_id, swarm_id) for (task_id, swarm_id), (_, exp) in self.open.items()]
            heapq.heapify(self._expiry)

    def held_at(self, swarm: Swarm, now: float | None) -> int:
        """Micro-dollars held on a swarm by holds still open at `now` (swept or not)."""
        if not swarm.held or now is None:
            return swarm.held
        sid = swarm.swarm_id
        return sum(m for (_, s), (m, exp) in self.open.items() if s == sid and exp > now)

    def at(self, now: float) -> list[HoldStatus]:
        """The open reservations at `now` (expired ones excluded, whether or not swept yet)."""
        return [
            HoldStatus(task_id=task_id, swarm_id=swarm_id, amount=to_usd(micros), expires_at=expires_at)
            for (task_id, swarm_id), (micros, expires_at) in self.open.items()
            if expires_at > now
        ]

    def restore(self, holds: list[tuple[str, str, int, float]], swarms: dict[str, Swarm]) -> None:
        """Reopen the holds of a stored state (as `export` lists them)."""
        for task_id, swarm_id, micros, expires_at in holds:
            self.open[(task_id, swarm_id)] = (micros, expires_at)
            swarms[swarm_id].held += micros
            swarms[swarm_id].holds += 1
            heapq.heappush(self._expiry, (expires_at, task_id, swarm_id))

    def export(self) -> list[tuple[str, str, int, float]]:
        return [(task_id, swarm_id, m, exp) for (task_id, swarm_id), (m, exp) in self.open.items()]
