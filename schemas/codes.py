"""The words of the contract: every trip reason, breaker state, rejection code and witness operation, in one place.

The core is written against these types; replies and events carry them as plain strings (a client built today
still reads a reason added tomorrow), and the JSON Schemas list them as examples.
"""

from __future__ import annotations

from typing import Literal, get_args

#: Why a breaker tripped. Money (`budget_exhausted`) always needs a human's reset.
TripReason = Literal[
    "budget_exhausted", "repeated_failures", "performance_degradation", "manual_override", "task_over_budget"
]
#: The reasons an operator may trip a breaker for by hand (`governor.trip`).
ManualTripReason = Literal["repeated_failures", "performance_degradation", "manual_override"]
#: Trips that recover by themselves through half-open probes; the others need a human's reset.
RecoverableTripReason = Literal["repeated_failures", "performance_degradation"]

#: A tripped breaker is `open`, or `half_open` while it admits probes (closed breakers are not kept).
BreakerStateName = Literal["open", "half_open"]

#: The first filter a swarm failed, in the order the design document applies them (`explain`).
RejectionCode = Literal[
    "capability_match_below_threshold",
    "model_not_allowed",
    "cost_above_max",
    "budget_exhausted",
    "group_budget_exhausted",
    "budget_below_task_minimum",
    "available_budget_below_estimate",
    "breaker_tripped",
    "at_capacity",
]

#: The operation of each witness record (`governor.witness.<operation>`).
WitnessOperation = Literal[
    "task_assigned",
    "no_qualified_swarm",
    "cost_tracked",
    "failure_recorded",
    "circuit_breaker_tripped",
    "circuit_breaker_reset",
    "circuit_breaker_half_open",
    "circuit_breaker_closed",
    "circuit_breaker_reopened",
    "reservation_released",
    "budget_low",
    "budget_threshold",
    "budget_exhausted",
    "budget_refilled",
    "budget_forecast",
    "budget_topped_up",
    "task_over_budget",
    "task_completed",
    "task_expired",
    "swarm_updated",
    "config_reloaded",
    "swarm_registered",
    "swarm_deregistered",
    "request_rejected",
    "ledger_message_quarantined",
]

MANUAL_TRIP_REASONS: tuple[str, ...] = get_args(ManualTripReason)
RECOVERABLE: frozenset[str] = frozenset(get_args(RecoverableTripReason))
WITNESS_OPERATIONS: tuple[str, ...] = get_args(WitnessOperation)

#: Witness operations no ledger entry causes (refusals): stored apart from the decisions, without a position.
UNPOSITIONED_OPERATIONS: tuple[str, ...] = ("request_rejected", "ledger_message_quarantined")
