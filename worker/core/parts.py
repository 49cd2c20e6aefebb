"""The stores one core holds, and what every command group of the façade shares: a context per command and
the events it records."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from schemas.events import Event, Identity
from schemas.policy import PRESETS, PolicyRule, ResourcePolicy
from schemas.pricing import ModelPrice
from worker.core.breakers import Breakers
from worker.core.capabilities import Vocabulary
from worker.core.caps import TaskCaps
from worker.core.context import Context
from worker.core.dedupe import Dedupe
from worker.core.groups import Budgets
from worker.core.history import History
from worker.core.registry import Registry
from worker.core.reservations import Reservations
from worker.core.tasks import Lifecycle, Tasks


class Parts:
    """The registry, breakers, reservations, dedupe windows, history, budget groups, task caps and configuration
    of one core."""

    def __init__(
        self,
        policy: ResourcePolicy | None = None,
        *,
        capabilities: Iterable[str] = (),
        history_limit: int = 1000,
        dedupe_limit: int = 200_000,
        dedupe_horizon_s: float = 7 * 86400.0,
    ) -> None:
        self.policy = policy if policy is not None else ResourcePolicy()
        self.policies: dict[str, ResourcePolicy] = dict(PRESETS)
        self.rules: list[PolicyRule] = []
        self.pricing: dict[str, ModelPrice] = {}
        """USD per million tokens by model, for costs reported as token usage."""
        self.vocabulary = Vocabulary(capabilities)
        self.registry = Registry()
        self.breakers = Breakers(self.registry)
        self.reservations = Reservations()
        self.dedupe = Dedupe(dedupe_limit, dedupe_horizon_s)
        self.history_log = History(history_limit)
        self.budgets = Budgets()
        self.tasks = Tasks()
        self.lifecycle = Lifecycle(self.tasks, self.registry, self.reservations, self.history_log, self.breakers)
        self._alerts_of: tuple[ResourcePolicy, tuple[float, ...]] | None = None
        self.task_caps = TaskCaps()
        self._events: list[Event] = []
        self.identity: Identity | msgspec.UnsetType = msgspec.UNSET
        """The authenticated sender of the command being applied (set around each command by `dispatch.apply`):
        it goes into that command's witness records, trip and reset events and reset history."""

    def _context(self, now: float, trace_id: str) -> Context:
        return Context(now, trace_id, self.identity, self._events)

    def _begin(self, now: float, trace_id: str) -> Context:
        """The context of a command that changes budgets or tasks: what time alone changed by `now` first (see
        `_advance`)."""
        ctx = Context(now, trace_id, self.identity, self._events)
        self._advance(ctx)
        return ctx

    def _advance(self, ctx: Context) -> tuple[list[str], list[str]]:
        """Roll the budget periods that ended by `ctx.now` over, and expire the tasks whose time is up: the groups
        refilled and the tasks expired."""
        refilled = self.budgets.advance(ctx, self.registry.refresh) if self.budgets.due(ctx.now) else []
        expired = self.lifecycle.expire(ctx, self.policy) if self.tasks.may_expire(ctx.now) else []
        return refilled, expired

    def next_due(self) -> float:
        """When time alone next changes something (a period's end, a task's expiry): the actor ticks then."""
        return min(self.budgets.next_end, self.tasks.next_expiry)

    def due(self, now: float) -> bool:
        return self.budgets.due(now) or self.tasks.next_expiry <= now

    @property
    def evicted(self) -> dict[str, int]:
        """Ids forgotten before their horizon because their kind's window was full (assignments under `assign`)."""
        return self.dedupe.evicted

    def take_events(self) -> list[Event]:
        """Return the events recorded since the last call, oldest first, and forget them."""
        events, self._events = self._events, []
        return events
