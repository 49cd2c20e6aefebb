"""The operator commands for explanations, estimates, half-open recovery and reload, against a worker on a real
nats-server."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import yaml

from tests.factories import EXAMPLE_SWARMS, make_config
from tests.integration.helpers import WorkerFactory, run_cli
from worker.ops.natsserver import NatsServer
from worker.service.config import load_config


async def governor(url: str, *args: str) -> tuple[int, str]:
    """`governor ARGS... --nats-url URL` with the test run's environment: (exit status, stdout and stderr)."""
    result = await run_cli(*args, "--nats-url", url, env=os.environ, merge_stderr=True)
    return result.returncode, result.stdout


class TestCommands:
    async def test_explain_table(self, nats_server: NatsServer, start_worker: WorkerFactory) -> None:
        """`assign --explain` prints every swarm with its match, score and result."""
        await start_worker()
        code, out = await governor(nats_server.url, "assign", "integration:sip", "--max-cost", "20", "--explain")
        assert code == 0
        assert out.splitlines()[1:] == [
            "  SWARM          MATCH  SCORE   RESULT",
            "  session-4-sip  1.00   0.0633  chosen",
            "  session-1-ndi  0.00   0.0000  capability_match_below_threshold",
        ]

    async def test_estimated_cost_holds_budget(self, nats_server: NatsServer, start_worker: WorkerFactory) -> None:
        """`assign --estimated-cost` holds budget: a second estimate that no longer fits finds no swarm."""
        await start_worker()
        first = await governor(nats_server.url, "assign", "integration:ndi", "--estimated-cost", "20")
        second = await governor(nats_server.url, "assign", "integration:ndi", "--estimated-cost", "20")
        assert (first[0], second[0]) == (0, 3)
        assert second[1].endswith(": no qualified swarm\n")

    async def test_success_closes_half_open_breaker(self, nats_server: NatsServer, start_worker: WorkerFactory) -> None:
        """After failures and the cool-down, a probe is assigned and `success` closes the breaker."""
        await start_worker(make_config(EXAMPLE_SWARMS, breaker_cooldown_s=0.2))
        for _ in range(3):
            assert (await governor(nats_server.url, "failure", "session-1-ndi"))[0] == 0
        await asyncio.sleep(0.3)
        code, out = await governor(nats_server.url, "assign", "integration:ndi")
        assert (code, out.split(" -> ")[1].split()[0]) == (0, "session-1-ndi")
        status = (await governor(nats_server.url, "status"))[1]
        assert "HALF-OPEN (repeated_failures, 0 probes)" in status
        assert await governor(nats_server.url, "success", "session-1-ndi") == (
            0,
            "session-1-ndi: breaker closed (probe succeeded)\n",
        )

    async def test_reload(self, tmp_path: Path, nats_server: NatsServer, start_worker: WorkerFactory) -> None:
        """`reload` makes the worker re-read its config file and says what changed."""
        path = tmp_path / "governor.yaml"
        path.write_text(yaml.safe_dump({"swarms": EXAMPLE_SWARMS}))
        await start_worker(load_config(path), config_path=str(path))
        extra = {**EXAMPLE_SWARMS[1], "swarm_id": "session-7"}
        path.write_text(yaml.safe_dump({"swarms": [*EXAMPLE_SWARMS, extra], "governor": {"max_cost_per_task": 20.0}}))
        assert await governor(nats_server.url, "reload") == (
            0,
            "config reloaded: policy/rules changed; new swarms: session-7\n",
        )
