"""The state codec: everything a core holds as one `CoreState` (a snapshot), and a core rebuilt from one."""

from __future__ import annotations

from collections import OrderedDict, deque

from schemas.ledger import CoreState, SwarmState
from schemas.policy import PRESETS
from schemas.profiles import SwarmProfile
from worker.core.parts import Parts
from worker.core.registry import Swarm


def export(core: Parts, seq: int) -> CoreState:
    """The core's whole state, as a snapshot covering ledger sequence `seq`."""
    registry, dedupe, history = core.registry, core.dedupe, core.history_log
    return CoreState(
        seq=seq,
        policy=core.policy,
        capabilities=list(core.vocabulary.extra),
        swarms=[
            SwarmState(
                s.swarm_id,
                s.capabilities,
                s.cost_per_hour,
                s.reputation_score,
                s.model,
                s.ordinal,
                s.budget,
                s.cost_tracked,
                s.operations_count,
                s.breaker,
                list(s.failures or ()),
                s.allocated,
                s.alerted > 0,
                s.alerted,
                s.group.id if s.group is not None else None,
                s.max_tasks,
            )
            for s in registry
        ],
        next_ordinal=registry.next_ordinal,
        history=list(history.assignments),
        resets=list(history.resets),
        history_seq=history.assignments_seq,
        resets_seq=history.resets_seq,
        applied=[(kind, event_id, at) for kind, window in dedupe.applied.items() for event_id, at in window.items()],
        tasks=[(task_id, list(assignments), at) for task_id, (assignments, at) in dedupe.tasks.items()],
        retired=sorted(registry.retired.items()),
        holds=core.reservations.export(),
        policies={k: v for k, v in core.policies.items() if PRESETS.get(k) != v},
        rules=list(core.rules),
        pricing=dict(core.pricing),
        budgets=core.budgets.configs(),
        groups=core.budgets.export(),
        task_spend=core.task_caps.export(),
        open_tasks=core.tasks.export(),
    )


def restore(core: Parts, state: CoreState) -> None:
    """Fill an empty core (made with the state's policy and capabilities) with the rest of the state."""
    registry, dedupe = core.registry, core.dedupe
    core.budgets.configure(list(state.budgets), registry.refresh)
    for st in state.swarms:
        profile = SwarmProfile(
            swarm_id=st.swarm_id,
            capabilities=st.capabilities,
            cost_per_hour=st.cost_per_hour,
            reputation_score=st.reputation_score,
            current_budget_remaining=1.0,  # replaced below by the exact micro-dollar amount
            model=st.model,
            max_concurrent_tasks=st.max_tasks,
        )
        swarm = Swarm(profile, list(st.capabilities), st.ordinal)
        swarm.budget = st.budget_micros
        swarm.cost_tracked = st.cost_tracked_micros
        swarm.operations_count = st.operations_count
        swarm.breaker = st.breaker
        swarm.failures = deque(st.failures) if st.failures else None
        swarm.allocated = st.allocated_micros or st.budget_micros
        swarm.alerted = st.alerted or (0.8 if st.soft_warned else 0.0)  # older snapshots: the soft warning's 0.8
        registry.add(swarm, core.budgets.groups[st.budget_group] if st.budget_group is not None else None)
        core.breakers.track(swarm)
    registry.next_ordinal = state.next_ordinal
    core.history_log.restore(state.history, state.resets, state.history_seq, state.resets_seq)
    for kind, event_id, at in state.applied:
        dedupe.applied.setdefault(kind, OrderedDict())[event_id] = at
    dedupe.tasks.update((task_id, (tuple(assignments), at)) for task_id, assignments, at in state.tasks)
    registry.retired.update(state.retired)
    core.policies = {**PRESETS, **state.policies}
    core.rules = list(state.rules)
    core.pricing = dict(state.pricing)
    core.reservations.restore(state.holds, registry.swarms)
    core.budgets.restore(list(state.groups), registry.refresh)
    core.task_caps.restore(state.task_spend)
    core.tasks.restore(state.open_tasks)
    for task in core.tasks.open.values():  # each open task holds a slot of each of its swarms
        for swarm_id in task.swarm_ids:
            registry.swarms[swarm_id].in_flight += 1
    for swarm in registry:
        if swarm.in_flight and swarm.max_tasks is not None:
            registry.refresh(swarm)
