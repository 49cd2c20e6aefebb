"""What the decision core's unit tests share."""

from __future__ import annotations

from schemas.policy import ResourcePolicy
from schemas.profiles import SwarmProfile
from worker.core.governor import Governor

NOW = 1_700_000_000.0


def governed(*profiles: SwarmProfile, policy: ResourcePolicy | None = None, **kwargs: object) -> Governor:
    """A governor with these swarms registered in order, and the registration events already taken."""
    governor = Governor(policy, **kwargs)  # type: ignore[arg-type]
    for p in profiles:
        governor.register_swarm(p, now=NOW)
    governor.take_events()
    return governor
