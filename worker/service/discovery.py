"""Discovery: the NATS micro protocol's `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` answers for this process, and
the per-endpoint counts behind STATS (requests, errors, the last error, time from receipt to reply)."""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping

from schemas.discovery import EndpointInfo, EndpointStats, InfoResponse, PingResponse, StatsResponse
from schemas.endpoints import ENDPOINTS
from worker import __version__

SERVICE = "governor"
DESCRIPTION = "IF.governor: capability-aware task assignment and budget governance"
QUEUE_GROUP = "q"
VERBS = ("PING", "INFO", "STATS")


class Discovery:
    """One serving term's identity and endpoint statistics, as the micro protocol reports them."""

    def __init__(self, prefix: str, pool: str | None = None) -> None:
        self.prefix = prefix
        self.pool = pool
        self.service_id = os.urandom(11).hex()
        self.started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        names = [e.name for e in ENDPOINTS]
        self.errors: dict[str, int] = dict.fromkeys(names, 0)
        self.last_error: dict[str, str] = dict.fromkeys(names, "")
        self.processing_ns: dict[str, int] = dict.fromkeys(names, 0)
        self.replies: dict[str, int] = dict.fromkeys(names, 0)

    def subjects(self, verb: str) -> list[str]:
        """The subjects one verb is asked on: for every service, for this one, for this instance."""
        return [f"$SRV.{verb}", f"$SRV.{verb}.{SERVICE}", f"$SRV.{verb}.{SERVICE}.{self.service_id}"]

    def refused(self, kind: str, code: str, message: str) -> None:
        if kind in self.errors:
            self.errors[kind] += 1
            self.last_error[kind] = f"{code}: {message}"

    def replied(self, kind: str, elapsed_ns: int) -> None:
        if kind in self.replies:
            self.processing_ns[kind] += elapsed_ns
            self.replies[kind] += 1

    @property
    def _metadata(self) -> dict[str, str]:
        return {"subject_prefix": self.prefix, "pool": self.pool or ""}

    def ping(self) -> PingResponse:
        return PingResponse(name=SERVICE, id=self.service_id, version=__version__, metadata=self._metadata)

    def info(self) -> InfoResponse:
        endpoints = [
            EndpointInfo(name=e.name, subject=f"{self.prefix}.{e.name}", queue_group=QUEUE_GROUP) for e in ENDPOINTS
        ]
        return InfoResponse(
            name=SERVICE,
            id=self.service_id,
            version=__version__,
            metadata=self._metadata,
            description=DESCRIPTION,
            endpoints=endpoints,
        )

    def stats(self, received: Mapping[str, int]) -> StatsResponse:
        endpoints = [
            EndpointStats(
                name=n,
                subject=f"{self.prefix}.{n}",
                queue_group=QUEUE_GROUP,
                num_requests=received.get(n, 0),
                num_errors=self.errors[n],
                last_error=self.last_error[n],
                processing_time=self.processing_ns[n],
                average_processing_time=self.processing_ns[n] // max(1, self.replies[n]),
            )
            for n in (e.name for e in ENDPOINTS)
        ]
        return StatsResponse(
            name=SERVICE,
            id=self.service_id,
            version=__version__,
            metadata=self._metadata,
            started=self.started,
            endpoints=endpoints,
        )
