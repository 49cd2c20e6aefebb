"""The registry: each registered swarm's mutable state, found by id or by ordinal, and its capability index.

A swarm's ordinal is its registration order; ordinals never change or repeat, so pages and tie-breaks by
ordinal stay stable while swarms come and go. Ids once deregistered stay known (with the breaker they had), so
that the config's swarms seed only ids never seen, and a swarm deregistered while tripped comes back tripped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

from schemas.profiles import SwarmProfile
from schemas.replies import BreakerState
from worker.core.index import CapabilityIndex
from worker.core.money import to_micros
from worker.errors import UnknownSwarm

if TYPE_CHECKING:
    from worker.core.groups import Group


class Swarm:
    """The mutable state of one registered swarm; private to the core."""

    __slots__ = (
        "admits",
        "alerted",
        "allocated",
        "breaker",
        "budget",
        "capabilities",
        "cost_per_hour",
        "cost_tracked",
        "failures",
        "group",
        "held",
        "holds",
        "in_flight",
        "max_tasks",
        "model",
        "operations_count",
        "ordinal",
        "reputation_score",
        "swarm_id",
        "value",
    )

    def __init__(self, profile: SwarmProfile, capabilities: list[str], ordinal: int) -> None:
        self.swarm_id = profile.swarm_id
        self.capabilities = capabilities
        self.cost_per_hour = profile.cost_per_hour
        self.reputation_score = profile.reputation_score
        self.model = profile.model
        self.ordinal = ordinal
        self.budget = to_micros(profile.current_budget_remaining)
        self.value = profile.reputation_score / profile.cost_per_hour  # the score at full coverage
        self.breaker: BreakerState | None = None
        self.failures: deque[float] | None = None  # created at the first failure: most swarms never fail
        self.operations_count = 0
        self.cost_tracked = 0
        self.admits = True  # budget > 0 and breaker closed (or half-open with probes left)
        self.allocated = self.budget  # the allocation the budget alerts are measured against
        self.alerted = 0.0  # the highest alert fraction fired for this allocation
        self.held = 0  # micro-dollars held by open reservations
        self.holds = 0  # how many open reservations
        self.group: Group | None = None  # its budget group (`budget_group`)
        self.in_flight = 0  # its open tasks (assigned, neither completed nor expired)
        self.max_tasks = profile.max_concurrent_tasks  # None: no limit


def admits(swarm: Swarm) -> bool:
    """Budget above zero, breaker closed (or half-open with probes left), no group of its chain exhausted and a
    task slot free."""
    breaker = swarm.breaker
    group = swarm.group
    limit = swarm.max_tasks
    return (
        swarm.budget > 0
        and (breaker is None or (breaker.state == "half_open" and breaker.probes_left > 0))
        and (group is None or not group.blocked)
        and (limit is None or swarm.in_flight < limit)
    )


class Registry:
    """The registered swarms by id and by ordinal, the ids retired, and the capability index over them."""

    def __init__(self) -> None:
        self.swarms: dict[str, Swarm] = {}
        self.by_ordinal: dict[int, Swarm] = {}
        self.index = CapabilityIndex()
        self.next_ordinal = 0
        self.retired: dict[str, BreakerState | None] = {}

    def __len__(self) -> int:
        return len(self.swarms)

    def __iter__(self) -> Iterator[Swarm]:
        return iter(self.swarms.values())

    def known(self, swarm_id: str) -> bool:
        """True when the id is registered or was registered once (and deregistered since)."""
        return swarm_id in self.swarms or swarm_id in self.retired

    def get(self, swarm_id: str) -> Swarm:
        try:
            return self.swarms[swarm_id]
        except KeyError:
            raise UnknownSwarm(f"no swarm {swarm_id!r} is registered") from None

    def new(self, profile: SwarmProfile, capabilities: list[str], group: Group | None = None) -> Swarm:
        """Register a profile under the next ordinal, in `group`; a retired id gets back the breaker it had."""
        swarm = Swarm(profile, capabilities, self.next_ordinal)
        swarm.breaker = self.retired.pop(swarm.swarm_id, None)
        self.next_ordinal += 1
        self.add(swarm, group)
        return swarm

    def add(self, swarm: Swarm, group: Group | None = None) -> None:
        if group is not None:
            swarm.group = group
            group.members[swarm.swarm_id] = swarm
        self.swarms[swarm.swarm_id] = swarm
        self.by_ordinal[swarm.ordinal] = swarm
        swarm.admits = admits(swarm)
        self.index.add(swarm, swarm.admits)

    def retire(self, swarm: Swarm) -> None:
        if swarm.group is not None:
            del swarm.group.members[swarm.swarm_id]
        del self.swarms[swarm.swarm_id]
        del self.by_ordinal[swarm.ordinal]
        self.index.remove(swarm)
        self.retired[swarm.swarm_id] = swarm.breaker

    def reindex(self, swarm: Swarm, capabilities: list[str] | None = None) -> None:
        """Index a swarm again after its capabilities or value changed (its ordinal, so its order, stays)."""
        self.index.remove(swarm)
        if capabilities is not None:
            swarm.capabilities = capabilities
        swarm.value = swarm.reputation_score / swarm.cost_per_hour
        swarm.admits = admits(swarm)
        self.index.add(swarm, swarm.admits)

    def refresh(self, swarm: Swarm) -> None:
        """Keep the index's eligible mask in step after a budget or breaker change."""
        now_admits = admits(swarm)
        if now_admits != swarm.admits:
            swarm.admits = now_admits
            self.index.set_eligible(swarm.ordinal, now_admits)

    def page(self, limit: int, cursor: str | None) -> tuple[list[Swarm], str | None]:
        """Up to `limit` swarms in registration order from the ordinal `cursor` names, and the next page's cursor
        (None: no swarm after these). Ordinals never change, so a swarm registered or removed between two pages
        neither shifts nor repeats the others."""
        by_ordinal = self.by_ordinal
        end = self.next_ordinal
        page: list[Swarm] = []
        ordinal = int(cursor) if cursor is not None else 0
        while ordinal < end:
            swarm = by_ordinal.get(ordinal)
            if swarm is not None:
                if len(page) == limit:
                    return page, str(ordinal)
                page.append(swarm)
            ordinal += 1
        return page, None
