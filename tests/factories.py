"""Builders of what the tests start from: swarm profiles, governors (decision cores), config entries and configs.

One set for every test. Each default is the common case (a haiku swarm holding `integration:sip`, 2.0 USD an hour,
reputation 0.9, 25.0 USD of budget); a test whose outcome depends on a value passes it, even when it is the default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from schemas.config import Config
from schemas.policy import ResourcePolicy
from schemas.profiles import SwarmProfile
from worker.core.governor import Governor

NOW = 1_700_000_000.0
"""The time the core tests run at (the core takes the time as an argument, so any fixed instant does)."""
SIP = "integration:sip"


def profile(
    swarm_id: str,
    capabilities: Sequence[str] = (SIP,),
    *,
    cost_per_hour: float = 2.0,
    reputation_score: float = 0.9,
    budget: float = 25.0,
    model: str = "haiku",
    group: str | None = None,
) -> SwarmProfile:
    """A swarm's profile as the core registers it (`budget` is its `current_budget_remaining`, `group` its
    `budget_group`)."""
    return SwarmProfile(
        swarm_id=swarm_id,
        capabilities=list(capabilities),
        cost_per_hour=cost_per_hour,
        reputation_score=reputation_score,
        current_budget_remaining=budget,
        model=model,
        budget_group=group,
    )


def governed(*profiles: SwarmProfile, policy: ResourcePolicy | None = None, **options: Any) -> Governor:
    """A governor (`options` as `Governor` takes them) with these swarms registered in order at NOW, and the
    registration events already taken."""
    governor = Governor(policy, **options)
    for p in profiles:
        governor.register_swarm(p, now=NOW)
    governor.take_events()
    return governor


def swarm_entry(
    swarm_id: str,
    capabilities: Sequence[str] = (SIP,),
    *,
    cost_per_hour: float = 2.0,
    reputation_score: float = 0.9,
    initial_budget: float | None = 25.0,
    model: str = "haiku",
    budget_group: str | None = None,
    max_concurrent_tasks: int | None = None,
) -> dict[str, Any]:
    """A `swarms:` entry of a config file, as plain data (`initial_budget=None`: the entry names none, so the
    governor's `default_budget` applies)."""
    entry: dict[str, Any] = {
        "swarm_id": swarm_id,
        "capabilities": list(capabilities),
        "cost_per_hour": cost_per_hour,
        "reputation_score": reputation_score,
        "initial_budget": initial_budget,
        "model": model,
    }
    if budget_group is not None:
        entry["budget_group"] = budget_group
    if max_concurrent_tasks is not None:
        entry["max_concurrent_tasks"] = max_concurrent_tasks
    if initial_budget is None:
        del entry["initial_budget"]
    return entry


EXAMPLE_SWARMS: list[dict[str, Any]] = [
    swarm_entry(
        "session-4-sip",
        ["integration:sip", "integration:h323", "architecture:security"],
        cost_per_hour=15.0,
        reputation_score=0.95,
        model="sonnet",
    ),
    swarm_entry("session-1-ndi", ["integration:ndi", "code-analysis:cpp"], cost_per_hour=2.0, reputation_score=0.90),
]
"""The two swarms of deploy/governor.yaml (the example of `IF.governor.md`): session-4-sip and session-1-ndi,
25.0 USD each. A worker a test starts without a config of its own serves these."""


def make_config(
    swarms: Sequence[Mapping[str, Any]] = (),
    *,
    capabilities: list[str] | None = None,
    nats: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    ledger: dict[str, Any] | None = None,
    security: dict[str, Any] | None = None,
    pricing: dict[str, Any] | None = None,
    budgets: list[dict[str, Any]] | None = None,
    **governor: Any,
) -> Config:
    """A Config from plain values: these `swarms:` entries, the keywords as `governor:` settings, and the sections
    given by name; the metrics endpoint is off unless `metrics` says otherwise."""
    raw: dict[str, Any] = {"governor": governor, "swarms": list(swarms), "metrics": metrics or {"port": 0}}
    sections = {
        "capabilities": capabilities,
        "nats": nats,
        "ledger": ledger,
        "security": security,
        "pricing": pricing,
        "budgets": budgets,
    }
    raw.update({name: section for name, section in sections.items() if section is not None})
    return msgspec.convert(raw, Config)
