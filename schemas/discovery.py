"""Service discovery replies: the NATS micro protocol (`io.nats.micro.v1`), as `nats micro` and `$SRV.*` clients
read them. The governor answers `$SRV.PING|INFO|STATS` (alone, `.governor`, `.governor.<id>`) itself."""

from __future__ import annotations

import msgspec


class EndpointInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    subject: str
    queue_group: str
    metadata: dict[str, str] | None = None


class EndpointStats(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    subject: str
    queue_group: str
    num_requests: int
    num_errors: int
    last_error: str
    processing_time: int  # nanoseconds from receipt to reply, summed over the replies sent
    average_processing_time: int  # nanoseconds per reply
    data: None = None


class _Identity(msgspec.Struct, frozen=True, kw_only=True):
    """What every discovery reply starts with."""

    type: str
    name: str
    id: str
    version: str
    metadata: dict[str, str]


class PingResponse(_Identity, frozen=True, kw_only=True):
    type: str = "io.nats.micro.v1.ping_response"


class InfoResponse(_Identity, frozen=True, kw_only=True):
    type: str = "io.nats.micro.v1.info_response"
    description: str
    endpoints: list[EndpointInfo]


class StatsResponse(_Identity, frozen=True, kw_only=True):
    type: str = "io.nats.micro.v1.stats_response"
    started: str  # RFC 3339, UTC
    endpoints: list[EndpointStats]
