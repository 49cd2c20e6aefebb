"""The worker answers over a real nats-server: the shortest path through every layer."""

from __future__ import annotations

from pathlib import Path

import nats
import yaml

from tests.factories import EXAMPLE_SWARMS
from tests.integration.helpers import Recorder, WorkerFactory, answering, start_worker_process
from worker.client import GovernorClient
from worker.ops.natsserver import NatsServer, free_port


class TestSmoke:
    async def test_assign_cost_trip_reset_over_nats(
        self, start_worker: WorkerFactory, client: GovernorClient, recorder: Recorder
    ) -> None:
        """A coordinator assigns, spends the budget to zero, sees the trip, and an operator resets it."""
        await start_worker()
        reply = await client.assign(["integration:sip"], task_id="t-1", max_cost=20.0)
        assert reply.swarm_id == "session-4-sip"
        cost = await client.cost("session-4-sip", "sip_integration", 25.0)
        assert (cost.remaining, cost.tripped) == (0.0, True)
        tripped = await recorder.wait_for("governor.events.breaker.tripped")
        assert tripped[0]["reason"] == "budget_exhausted"
        reset = await client.reset("session-4-sip", 25.0, approved_by="alice")
        assert reset.remaining == 25.0


class TestServerList:
    async def test_governor_run_takes_a_comma_separated_nats_url(self, tmp_path: Path, nats_server: NatsServer) -> None:
        """`governor run --nats-url A,B` (a cluster's URLs) connects to the first that answers: here B, A being a
        port nobody listens on."""
        config = tmp_path / "governor.yaml"
        config.write_text(yaml.safe_dump({"swarms": EXAMPLE_SWARMS, "metrics": {"port": 0}}))
        nowhere = f"nats://127.0.0.1:{free_port()}"
        worker = start_worker_process(f"{nowhere},{nats_server.url}", config, tmp_path / "worker.log")
        try:
            nc = await nats.connect(nats_server.url)
            try:
                await answering(nc, timeout=30.0, worker=worker)
                assert (await GovernorClient(nc).status()).budgets == {"session-4-sip": 25.0, "session-1-ndi": 25.0}
            finally:
                await nc.close()
        finally:
            worker.stop()
