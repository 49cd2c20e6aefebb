"""From the configuration to a core: the policy and swarms a config describes, the cores a worker starts from,
and the config file read again for a `reload` command."""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from schemas.config import Config
from schemas.ledger import Configure, CoreState, Reload
from schemas.policy import PRESETS, ResourcePolicy
from schemas.profiles import SwarmProfile
from worker.core.capabilities import Vocabulary
from worker.core.governor import Governor
from worker.errors import ConfigError, InvalidRequest
from worker.service.config import load_config
from worker.service.dispatch import register_request
from worker.service.mailbox import Command


def policy_of(config: Config) -> ResourcePolicy:
    """The default resource policy the config describes (the `governor:` section's policy fields)."""
    g = config.governor
    return ResourcePolicy(**{name: getattr(g, name) for name in ResourcePolicy.__struct_fields__})


def profiles_of(config: Config) -> list[SwarmProfile]:
    """The swarms the config registers at start, `initial_budget` defaulting to `default_budget`."""
    return [
        SwarmProfile(
            swarm_id=s.swarm_id,
            capabilities=list(s.capabilities),
            cost_per_hour=s.cost_per_hour,
            reputation_score=s.reputation_score,
            current_budget_remaining=s.initial_budget
            if s.initial_budget is not None
            else config.governor.default_budget,
            model=s.model,
            budget_group=s.budget_group,
            max_concurrent_tasks=s.max_concurrent_tasks,
        )
        for s in config.swarms
    ]


def configure_body(config: Config) -> Configure:
    """The `configure` ledger entry that the config describes."""
    return Configure(
        policy=policy_of(config),
        capabilities=Vocabulary(config.capabilities).extra,
        policies={k: v for k, v in config.policies.items() if PRESETS.get(k) != v},
        rules=list(config.rules),
        pricing=dict(config.pricing),
        budgets=list(config.budgets),
    )


def empty_core(config: Config) -> Governor:
    """The core a ledger replays into from its first entry (policy and capabilities come from the ledger)."""
    g = config.governor
    return Governor(history_limit=g.history_limit, dedupe_limit=g.dedupe_limit, dedupe_horizon_s=g.dedupe_horizon_s)


def restorer(config: Config) -> Callable[[CoreState], Governor]:
    """Rebuilds a core from a snapshot, with the config's bounds on history and dedupe windows."""
    g = config.governor

    def restore(state: CoreState) -> Governor:
        return Governor.from_state(
            state, history_limit=g.history_limit, dedupe_limit=g.dedupe_limit, dedupe_horizon_s=g.dedupe_horizon_s
        )

    return restore


def build_core(config: Config, now: float) -> Governor:
    """An in-memory core with the config's policy and capabilities, and its swarms registered."""
    core = empty_core(config)
    core.apply_configuration(configure_body(config))
    for profile in profiles_of(config):
        core.register_swarm(profile, now=now, trace_id="config")
    return core


class ConfigFile:
    """The config file a worker was started with, read again for each `reload` command (by the actor, before the
    command is written: the ledger records the config as read, so a replay applies exactly what was applied)."""

    def __init__(self, path: str, on_applied: Callable[[Config], None]) -> None:
        self.path = path
        self.on_applied = on_applied

    def read(self, command: Command) -> None:
        try:
            config = load_config(self.path)
        except ConfigError as exc:
            raise InvalidRequest(f"config not reloaded: {exc}") from None
        reload = Reload(
            configure=configure_body(config),
            swarms=[register_request(p) for p in profiles_of(config)],
            trace_id=command.request.trace_id,
        )
        command.request, command.raw, command.note = reload, msgspec.json.encode(reload), config

    def applied(self, command: Command) -> None:
        # Later reconciliations (after a lease change, say) use the file as read for this reload, once applied: a
        # reload the ledger refused changes nothing, the config this process reconciles with included.
        assert isinstance(command.note, Config)
        self.on_applied(command.note)
