"""Costs reported as token usage over NATS: priced by the governor from `pricing:` (recorded in the ledger's
`configure` entry), deducted exactly and once; malformed usage refused by decoding; the CLI's token options."""

from __future__ import annotations

import msgspec
import pytest
from nats.aio.client import Client

from schemas.config import Config
from schemas.pricing import TokenUsage
from tests.factories import make_config, swarm_entry
from tests.integration.helpers import Recorder, WorkerFactory, cli_env, run_cli
from worker import errors
from worker.client import GovernorClient

PRICING = {
    "sonnet": {"input_usd_per_mtok": 3.0, "output_usd_per_mtok": 15.0, "cached_input_usd_per_mtok": 0.3},
    "haiku": {"input_usd_per_mtok": 0.8, "output_usd_per_mtok": 4.0},
}


def config() -> Config:
    return make_config(
        [swarm_entry("s", ["code-analysis:python"], model="sonnet", initial_budget=10.0)], pricing=PRICING
    )


class TestUsage:
    async def test_priced_deducted_witnessed_and_retried_once(
        self, start_worker: WorkerFactory, client: GovernorClient, recorder: Recorder
    ) -> None:
        await start_worker(config())
        usage = TokenUsage(input_tokens=200_000, output_tokens=40_000, cached_input_tokens=1_000_000)
        reply = await client.cost("s", "review", usage=usage, event_id="u-1")
        assert (reply.cost, reply.remaining) == (1.5, 8.5)  # 0.6 + 0.6 + 0.3
        again = await client.cost("s", "review", usage=usage, event_id="u-1")
        assert again.duplicate and again.remaining == 8.5
        [record] = await recorder.wait_for("governor.witness.cost_tracked")
        assert record["params"]["usage"] == msgspec.structs.asdict(usage)
        assert (record["params"]["model"], record["params"]["cost"]) == ("sonnet", 1.5)

    async def test_another_models_price_and_the_round_up(
        self, start_worker: WorkerFactory, client: GovernorClient
    ) -> None:
        await start_worker(config())
        one = TokenUsage(input_tokens=1, output_tokens=0)
        assert (await client.cost("s", "op", usage=one, model="haiku")).cost == 0.000001  # 0.8 rounded up to 1
        assert (await client.cost("s", "op", usage=one)).cost == 0.000003

    async def test_an_unknown_model_is_a_clear_error(self, start_worker: WorkerFactory, client: GovernorClient) -> None:
        await start_worker(config())
        with pytest.raises(errors.InvalidRequest, match=r"no price for model 'opus' \(pricing: lists haiku, sonnet\)"):
            await client.cost("s", "op", usage=TokenUsage(input_tokens=1, output_tokens=1), model="opus")
        assert (await client.status()).budgets == {"s": 10.0}

    @pytest.mark.parametrize(
        "body",
        [
            {"swarm_id": "s", "operation": "op"},
            {"swarm_id": "s", "operation": "op", "cost": 1.0, "usage": {"input_tokens": 1, "output_tokens": 1}},
            {"swarm_id": "s", "operation": "op", "usage": {"input_tokens": 1, "output_tokens": 1, "extra": 1}},
        ],
        ids=["neither", "both", "unknown-field"],
    )
    async def test_malformed_usage_is_refused_by_decoding(
        self, start_worker: WorkerFactory, nc: Client, body: dict[str, object]
    ) -> None:
        await start_worker(config())
        reply = msgspec.json.decode((await nc.request("governor.cost", msgspec.json.encode(body), timeout=5)).data)
        assert reply["ok"] is False and reply["error"]["code"] == "invalid_request"

    async def test_the_cli_reports_tokens(self, start_worker: WorkerFactory, nc: Client) -> None:
        worker = await start_worker(config())
        url = worker.servers[0]
        result = await run_cli(
            "cost", "s", "review", "--input-tokens", "1000000", "--output-tokens", "0", "--nats-url", url, env=cli_env()
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "s: charged 3.000000 USD, remaining 7.00 USD, breaker ok"
