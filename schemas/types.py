"""Constrained scalar types shared by every wire struct.

Limits live here, in the types, so that a bad value fails while decoding, with the path of the field in the
message ("Expected `float` >= 0.0 - at `$.cost`"), before any code of ours sees it.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

#: Upper bound for any amount of money on the wire, in USD. Keeps sums exact in micro-dollars and refuses
#: absurd values (and the infinity that an out-of-range JSON number decodes to).
MAX_USD = 1_000_000_000.0

Name = Annotated[str, Meta(min_length=1, max_length=256)]
"""An identifier: task, operation, approver, requester."""

SwarmId = Annotated[str, Meta(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@/-]*$")]
"""A swarm's id: printable, no spaces, safe as a metrics label."""

CapabilityName = Annotated[str, Meta(min_length=1, max_length=128)]
"""A capability as sent by a client; whether it is known is the core's business (it suggests close names)."""

CapabilityDef = Annotated[str, Meta(max_length=128, pattern=r"^[a-z0-9][a-z0-9-]*:[a-z0-9][a-z0-9.+#-]*$")]
"""A capability as defined in config: `category:specific-skill`, lower case."""

Capabilities = Annotated[list[CapabilityName], Meta(min_length=1, max_length=64)]

TraceId = Annotated[str, Meta(min_length=1, max_length=128)]

EventId = Annotated[str, Meta(min_length=1, max_length=256)]
"""A client-chosen idempotency key: the same id is applied at most once."""

Cost = Annotated[float, Meta(ge=0.0, le=MAX_USD)]
"""A non-negative amount spent, USD."""

Budget = Annotated[float, Meta(gt=0.0, le=MAX_USD)]
"""A budget to allocate: strictly positive and finite, USD."""

CostPerHour = Annotated[float, Meta(gt=0.0, le=MAX_USD)]

Ratio = Annotated[float, Meta(ge=0.0, le=1.0)]

ModelName = Annotated[str, Meta(min_length=1, max_length=64)]

ErrorText = Annotated[str, Meta(max_length=4096)]

SwarmCount = Annotated[int, Meta(ge=1, le=64)]

HistoryLimit = Annotated[int, Meta(ge=1, le=100_000)]

Deadline = Annotated[float, Meta(ge=0.0, le=1e11)]
"""Unix time in seconds."""
