"""The governor's in-process errors. Each one becomes an error reply on the wire, in one place (`worker.service.bus`).

GovernorError                 code                  Nats-Service-Error-Code
├── InvalidRequest            invalid_request       400
│   ├── UnknownCapability     unknown_capability    400
│   ├── InvalidCost           invalid_cost          400
│   └── InvalidBudget         invalid_budget        400
├── Forbidden                 forbidden             403
├── UnknownSwarm              unknown_swarm         404
├── UnknownGroup              unknown_group         404
├── UnknownTask               unknown_task          404
├── Conflict                  (abstract)            409
│   ├── NotTripped            not_tripped           409
│   ├── AlreadyTripped        already_tripped       409
│   ├── AlreadyRegistered     already_registered    409
│   ├── HoldLimit             hold_limit            409
│   ├── OpenTaskLimit         task_limit            409
│   └── TaskClosed            task_closed           409
├── DeadlineExceeded          deadline_exceeded     408
├── ReplyTooLarge             reply_too_large       413
├── Overloaded                overloaded            503
└── Unavailable               unavailable           503

ConfigError                   a bad configuration file or environment; the CLI exits before connecting
"""

from __future__ import annotations


class GovernorError(Exception):
    """A request the governor refuses. Nothing changed in the state."""

    code: str = "internal"
    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(GovernorError):
    """Not JSON, a wrong type, a missing or unknown field, or a value out of range."""

    code = "invalid_request"
    status = 400


class UnknownCapability(InvalidRequest):
    """A capability that is neither built in nor declared in the config."""

    code = "unknown_capability"


class InvalidCost(InvalidRequest):
    """A cost that is negative, not finite or over the maximum."""

    code = "invalid_cost"


class InvalidBudget(InvalidRequest):
    """A budget that is not a finite number above zero."""

    code = "invalid_budget"


class Forbidden(GovernorError):
    """The sender may not do this (its account is not an operator account, or it claims another identity)."""

    code = "forbidden"
    status = 403


class UnknownSwarm(GovernorError):
    """No swarm with that id is registered."""

    code = "unknown_swarm"
    status = 404


class UnknownGroup(GovernorError):
    """No budget group with that id is configured."""

    code = "unknown_group"
    status = 404


class UnknownTask(GovernorError):
    """No open assignment has that task id, and none closed recently (within `assign_window_s`)."""

    code = "unknown_task"
    status = 404


class Conflict(GovernorError):
    """The request does not fit the swarm's current state."""

    status = 409


class NotTripped(Conflict):
    """A reset of a swarm whose breaker is closed."""

    code = "not_tripped"


class AlreadyTripped(Conflict):
    """A manual trip of a swarm whose breaker is already open."""

    code = "already_tripped"


class AlreadyRegistered(Conflict):
    """Registration of an id that exists: only a reset by a named approver restores budget."""

    code = "already_registered"


class HoldLimit(Conflict):
    """An assign with `estimated_cost` would open more reservations than the policy allows."""

    code = "hold_limit"


class OpenTaskLimit(Conflict):
    """An assign would open more assignments than the policy's `max_open_tasks`."""

    code = "task_limit"


class TaskClosed(Conflict):
    """A completion of a task already completed or expired."""

    code = "task_closed"


class DeadlineExceeded(GovernorError):
    """The request's deadline passed before the actor reached it: dropped, not applied."""

    code = "deadline_exceeded"
    status = 408


class ReplyTooLarge(GovernorError):
    """The reply would exceed the server's max_payload: the client asks for a smaller page."""

    code = "reply_too_large"
    status = 413


class Overloaded(GovernorError):
    """The mailbox is full; the request was not queued. Retry later."""

    code = "overloaded"
    status = 503


class Unavailable(GovernorError):
    """The governor cannot apply this now: the ledger did not acknowledge it, or this process is not the owner."""

    code = "unavailable"
    status = 503


class ConfigError(Exception):
    """A bad configuration: names the file (or env var) and the field."""
