"""The seed's SwarmProfile: what a swarm can do, what it costs, how reliable it is, what it may still spend."""

from __future__ import annotations

import msgspec

from schemas.budgets import GroupId
from schemas.types import Budget, Capabilities, CostPerHour, ModelName, Ratio, SwarmId, TaskLimit


class SwarmProfile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Profile for a swarm (pool of agents), as registered."""

    swarm_id: SwarmId
    capabilities: Capabilities
    cost_per_hour: CostPerHour
    reputation_score: Ratio
    current_budget_remaining: Budget
    model: ModelName
    budget_group: GroupId | None = None
    """The budget group whose limits (and its ancestors') this swarm's costs count against."""
    max_concurrent_tasks: TaskLimit | None = None
    """Tasks it may run at once (assigned and neither completed nor expired); None: no limit."""
