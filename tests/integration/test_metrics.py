"""The metrics endpoint of a running worker: a scenario over NATS, then exact values scraped over HTTP.

Also `/healthz`, `/readyz` (200 only while serving: a standby that does not hold the lease answers 503), an unknown
path, and that every metric the dashboard and the alert rules query is really exported.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from schemas.config import Config
from tests.factories import EXAMPLE_SWARMS, make_config
from tests.integration.helpers import WorkerFactory, http_get
from worker import errors
from worker.client import GovernorClient
from worker.ops.natsserver import NatsServer, free_port
from worker.service.app import Worker

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "governor.json"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
METRIC_NAME = re.compile(r"\bif_governor_[a-z_]+")

SIP = "session-4-sip"
NDI = "session-1-ndi"


def metrics_config(port: int) -> Config:
    """The example swarms, with the metrics endpoint on loopback at `port`."""
    return make_config(EXAMPLE_SWARMS, metrics={"host": "127.0.0.1", "port": port})


async def get_page(port: int, path: str) -> tuple[int, str]:
    """GET http://127.0.0.1:<port><path> with a real HTTP client; (status, body)."""
    return await asyncio.to_thread(http_get, port, path)


class Scrape:
    """One scrape of `/metrics`, parsed: sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        """The value of the one sample with exactly this name and these labels (KeyError when absent)."""
        return self.samples[(name, frozenset(labels.items()))]

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}

    def label_values(self, name: str, label: str) -> set[str]:
        return {dict(labels)[label] for n, labels in self.samples if n == name and label in dict(labels)}


async def scrape(port: int) -> Scrape:
    status, body = await get_page(port, "/metrics")
    assert status == 200
    return Scrape(body)


@pytest.fixture
async def served(start_worker: WorkerFactory, nats_server: NatsServer) -> AsyncIterator[tuple[Worker, int, Any]]:
    """A serving (durable) worker with its metrics endpoint on a free loopback port, and a client opened after it."""
    port = free_port()
    worker = await start_worker(metrics_config(port))
    client = await GovernorClient.connect(nats_server.url, timeout=5.0)
    try:
        yield worker, port, client
    finally:
        await client.close()


class TestScrape:
    async def test_scenario_values(self, served: tuple[Worker, int, GovernorClient]) -> None:
        """After assigning, spending past a budget, a reset and five refusals, every series has its exact value."""
        _, port, client = served
        before = await scrape(port)
        assert before.value("if_governor_budget_remaining_usd", swarm_id=SIP) == 25.0
        assert before.value("if_governor_circuit_breaker_status", swarm_id=SIP) == 0.0
        assert before.value("if_governor_assignments_total") == 0.0

        assert (await client.assign(["integration:sip"], task_id="t-1", max_cost=20.0)).swarm_id == SIP
        assert (await client.assign(["integration:ndi", "integration:sip"], task_id="t-2")).swarm_id is None
        with pytest.raises(errors.UnknownCapability):
            await client.assign(["nonsense:capability"], task_id="t-3")
        assert (await client.cost(SIP, "sip_integration", 10.0)).remaining == 15.0
        tripping = await client.cost(SIP, "sip_integration", 20.0)
        assert (tripping.remaining, tripping.tripped) == (-5.0, True)

        tripped = await scrape(port)
        assert tripped.value("if_governor_circuit_breaker_status", swarm_id=SIP) == 1.0
        assert tripped.value("if_governor_budget_remaining_usd", swarm_id=SIP) == -5.0
        assert tripped.value("if_governor_circuit_breaker_trips_total", reason="budget_exhausted") == 1.0

        assert (await client.reset(SIP, 25.0, approved_by="alice")).remaining == 25.0
        with pytest.raises(errors.NotTripped):
            await client.reset(NDI, 10.0, approved_by="alice")
        with pytest.raises(errors.UnknownSwarm):
            await client.cost("ghost", "op", 1.0)
        with pytest.raises(errors.InvalidCost):
            await client.cost(SIP, "op", -1.0)
        reply = await client.nc.request("governor.cost", b"not json", timeout=5)
        assert msgspec.json.decode(reply.data)["error"]["code"] == "invalid_request"

        after = await scrape(port)
        assert after.value("if_governor_assignments_total") == 1.0
        assert after.value("if_governor_assignments_failed_total") == 1.0
        assert after.value("if_governor_assignment_latency_ms_count") == 2.0
        assert after.value("if_governor_budget_remaining_usd", swarm_id=SIP) == 25.0
        assert after.value("if_governor_budget_remaining_usd", swarm_id=NDI) == 25.0
        assert after.value("if_governor_cost_tracked_usd", swarm_id=SIP) == 30.0
        assert after.value("if_governor_cost_tracked_usd", swarm_id=NDI) == 0.0
        assert after.value("if_governor_circuit_breaker_trips_total", reason="budget_exhausted") == 1.0
        assert after.label_values("if_governor_circuit_breaker_trips_total", "reason") == {"budget_exhausted"}
        assert after.value("if_governor_circuit_breaker_resets_total") == 1.0
        assert after.value("if_governor_circuit_breaker_status", swarm_id=SIP) == 0.0
        assert after.value("if_governor_circuit_breaker_status", swarm_id=NDI) == 0.0
        assert after.label_values("if_governor_budget_remaining_usd", "swarm_id") == {SIP, NDI}
        rejected = {
            code: after.value("if_governor_requests_rejected_total", code=code)
            for code in after.label_values("if_governor_requests_rejected_total", "code")
        }
        assert rejected == {
            "unknown_capability": 1.0,
            "not_tripped": 1.0,
            "unknown_swarm": 1.0,
            "invalid_cost": 1.0,
            "invalid_request": 1.0,
        }
        assert after.value("if_governor_requests_total", subject="assign") == 3.0
        assert after.value("if_governor_requests_total", subject="cost") == 5.0
        assert after.value("if_governor_requests_total", subject="reset") == 2.0
        assert after.value("if_governor_mailbox_depth") == 0.0

    async def test_deregistered_swarm_series_disappear(self, served: tuple[Worker, int, GovernorClient]) -> None:
        """Deregistering a swarm removes its budget, cost and breaker series."""
        _, port, client = served
        await client.cost(NDI, "op", 1.5)
        assert (await scrape(port)).value("if_governor_cost_tracked_usd", swarm_id=NDI) == 1.5
        await client.deregister(NDI)
        after = await scrape(port)
        for name in (
            "if_governor_budget_remaining_usd",
            "if_governor_cost_tracked_usd",
            "if_governor_circuit_breaker_status",
        ):
            assert after.label_values(name, "swarm_id") == {SIP}, name

    async def test_dashboard_and_rules_query_exported_metrics(
        self, start_worker: WorkerFactory, nats_server: NatsServer
    ) -> None:
        """Every metric named in the Grafana dashboard and the alert rules is in the scrape after a scenario that
        exhausts and refills a budget group, forecasts another's exhaustion, tops one up and passes a task's cap."""
        port = free_port()
        swarms = [{**EXAMPLE_SWARMS[0], "budget_group": "team"}, *EXAMPLE_SWARMS[1:]]
        budgets = [{"id": "org", "limit": 1000.0}, {"id": "team", "parent": "org", "limit": 10.0, "period": "1s"}]
        config = make_config(
            swarms, metrics={"host": "127.0.0.1", "port": port}, budgets=budgets, max_spend_per_task=5.0
        )
        await start_worker(config)
        client = await GovernorClient.connect(nats_server.url, timeout=5.0)
        try:
            await client.assign(["integration:sip"], max_cost=20.0)
            await client.assign(["integration:ndi", "integration:sip"])
            await client.cost(SIP, "op", 30.0, task_id="t-1")
            await client.reset(SIP, 25.0, approved_by="alice")
            await client.topup(5.0, group="org", approved_by="alice")
            with pytest.raises(errors.UnknownSwarm):
                await client.cost("ghost", "op", 1.0)
            await asyncio.sleep(1.2)  # the team's 1 s period ends: a refill
            exported = (await scrape(port)).names()
        finally:
            await client.close()
        queried = set(METRIC_NAME.findall(DASHBOARD.read_text(encoding="utf-8")))
        queried |= set(METRIC_NAME.findall(RULES.read_text(encoding="utf-8")))
        assert len(queried) >= 8
        assert queried - exported == set()


class TestProbes:
    async def test_serving_worker(self, served: tuple[Worker, int, GovernorClient]) -> None:
        """A serving worker answers 200 on /healthz and /readyz, and 404 on any other path."""
        worker, port, _ = served
        assert worker.ready
        assert await get_page(port, "/healthz") == (200, "ok\n")
        assert await get_page(port, "/readyz") == (200, "ready\n")
        assert await get_page(port, "/readyz?verbose=1") == (200, "ready\n")
        assert await get_page(port, "/nope") == (404, "not found\n")
        assert await get_page(port, "/metrics/extra") == (404, "not found\n")

    async def test_standby_is_live_but_not_ready(
        self, served: tuple[Worker, int, GovernorClient], start_worker: WorkerFactory
    ) -> None:
        """A second durable worker on the same NATS stays standby while the first holds the lease: /readyz is 503."""
        _, serving_port, client = served
        standby_port = free_port()
        standby = await start_worker(metrics_config(standby_port), wait_until_serving=False)
        for _ in range(500):  # at most 10 s
            if standby.state == "standby":
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.0)  # several lease polls: it must still not serve
        assert standby.state == "standby"
        assert await get_page(standby_port, "/healthz") == (200, "ok\n")
        assert await get_page(standby_port, "/readyz") == (503, "not ready\n")
        assert await get_page(serving_port, "/readyz") == (200, "ready\n")
        # Vault's convention for a caught-up standby (what a Kubernetes readiness probe of two replicas asks).
        assert await get_page(standby_port, "/readyz?standbyok=true") == (200, "standby\n")
        assert await get_page(serving_port, "/readyz?standbyok=true") == (200, "ready\n")
        assert (await client.status()).swarms[0].swarm_id == SIP
