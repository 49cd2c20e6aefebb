"""Hot reload over a real nats-server: `governor.reload` re-reads the config file, recorded in the ledger."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import msgspec
import nats
import yaml

from tests.factories import EXAMPLE_SWARMS
from tests.integration.helpers import Recorder, WorkerFactory, answering, spawn_worker, stop_process
from worker.client import GovernorClient
from worker.ops.natsserver import NatsServer
from worker.service.config import load_config
from worker.storage.journal import stream_name


def write(path: Path, **extra: Any) -> Path:
    path.write_text(yaml.safe_dump({"swarms": EXAMPLE_SWARMS, "metrics": {"port": 0}, **extra}))
    return path


class TestReload:
    async def test_reload_applies_policy_rules_and_new_swarms_keeping_budgets(
        self, tmp_path: Path, start_worker: WorkerFactory, client: GovernorClient, recorder: Recorder
    ) -> None:
        """After a reload the new policy, rules and swarms apply, spent budgets stay, and it is witnessed."""
        path = write(tmp_path / "governor.yaml")
        await start_worker(load_config(path), config_path=str(path))
        await client.cost("session-1-ndi", "op", 5.0)
        new_swarm = {**EXAMPLE_SWARMS[1], "swarm_id": "session-9-ndi", "cost_per_hour": 1.0}
        write(
            tmp_path / "governor.yaml",
            swarms=[*EXAMPLE_SWARMS, new_swarm],
            governor={"max_cost_per_task": 30.0},
            rules=[{"match": "integration:ndi", "policy": "default", "models": ["haiku"]}],
        )
        reply = msgspec.json.decode((await client.nc.request("governor.reload", b"{}", timeout=5)).data)
        assert (reply["ok"], reply["changed"], reply["registered"]) == (True, True, ["session-9-ndi"])
        status = await client.status()
        assert status.budgets == {"session-4-sip": 25.0, "session-1-ndi": 20.0, "session-9-ndi": 25.0}
        assert status.policy.max_cost_per_task == 30.0
        assert (await client.assign(["integration:ndi"])).swarm_id == "session-9-ndi"
        witness = await recorder.wait_for("governor.witness.config_reloaded")
        assert witness[0]["params"] == {"changed": True, "registered": ["session-9-ndi"]}

    async def test_bad_config_is_refused_and_changes_nothing(
        self, tmp_path: Path, start_worker: WorkerFactory, client: GovernorClient
    ) -> None:
        """A reload of a file with an error answers invalid_request naming the field; the state is unchanged."""
        path = write(tmp_path / "governor.yaml")
        await start_worker(load_config(path), config_path=str(path))
        before = msgspec.structs.replace(await client.status(), trace_id="")
        path.write_text(yaml.safe_dump({"swarms": EXAMPLE_SWARMS, "governor": {"min_capability_match": 7}}))
        msg = await client.nc.request("governor.reload", b"{}", timeout=5)
        reply = msgspec.json.decode(msg.data)
        assert reply["error"]["code"] == "invalid_request"
        assert "governor.min_capability_match" in reply["error"]["message"]
        assert msgspec.structs.replace(await client.status(), trace_id="") == before

    async def test_reload_survives_a_restart(
        self, tmp_path: Path, nats_server: NatsServer, start_worker: WorkerFactory
    ) -> None:
        """The reload is in the ledger: a restart with the new file finds nothing to reconcile and serves it."""
        path = write(tmp_path / "governor.yaml")
        worker = await start_worker(load_config(path), config_path=str(path))
        write(tmp_path / "governor.yaml", governor={"max_cost_per_task": 42.0})
        nc = await nats.connect(nats_server.url)
        try:
            assert msgspec.json.decode((await nc.request("governor.reload", b"{}", timeout=5)).data)["ok"]
            assert worker.ledger is not None
            seq = worker.ledger.seq
            await worker.__aexit__(None, None, None)
            restarted = await start_worker(load_config(path), config_path=str(path))
            assert restarted.core.policy.max_cost_per_task == 42.0
            assert restarted.ledger is not None and restarted.ledger.seq == seq  # no configure entry was needed
        finally:
            await nc.close()

    async def test_a_reload_the_ledger_refused_leaves_the_config_in_force(
        self, tmp_path: Path, start_worker: WorkerFactory, client: GovernorClient
    ) -> None:
        """With the ledger stream gone, a reload is answered `unavailable` and the worker keeps the config it had
        (a later reconciliation will not bring in what was never applied); once the ledger takes it, it is in force."""
        path = write(tmp_path / "governor.yaml")
        worker = await start_worker(load_config(path), config_path=str(path))
        write(tmp_path / "governor.yaml", governor={"max_cost_per_task": 42.0})
        js = client.nc.jetstream()
        await js.delete_stream(stream_name("governor"))
        refused = msgspec.json.decode((await client.nc.request("governor.reload", b"{}", timeout=10)).data)
        assert (refused["ok"], refused["error"]["code"]) == (False, "unavailable")
        assert worker.config.governor.max_cost_per_task == 10.0
        assert worker.actor is not None
        assert worker.actor.core.policy.max_cost_per_task == 10.0


class TestSighup:
    async def test_sighup_reloads_the_file_and_a_bad_file_changes_nothing(
        self, tmp_path: Path, nats_server: NatsServer, client: GovernorClient, recorder: Recorder
    ) -> None:
        """`kill -HUP` on `governor run` re-reads the file as `governor.reload` does (the actor reads it, the ledger
        records it): the new policy is in force. A bad file afterwards is refused, witnessed, and changes nothing."""
        path = write(tmp_path / "governor.yaml")
        process = spawn_worker(nats_server.url, path, tmp_path / "worker.log")
        try:
            await answering(client.nc, timeout=30.0)
            write(path, governor={"max_cost_per_task": 30.0})
            process.send_signal(signal.SIGHUP)
            witness = await recorder.wait_for("governor.witness.config_reloaded", timeout=10.0)
            assert witness[0]["params"] == {"changed": True, "registered": []}
            assert (await client.status()).policy.max_cost_per_task == 30.0
            path.write_text(yaml.safe_dump({"swarms": EXAMPLE_SWARMS, "governor": {"min_capability_match": 7}}))
            process.send_signal(signal.SIGHUP)
            rejected = await recorder.wait_for("governor.witness.request_rejected", timeout=10.0)
            assert rejected[0]["params"]["subject"] == "signal.SIGHUP"
            assert rejected[0]["params"]["code"] == "invalid_request"
            assert "governor.min_capability_match" in rejected[0]["params"]["message"]
            status = await client.status()
            assert (status.policy.max_cost_per_task, status.policy.min_capability_match) == (30.0, 0.7)
        finally:
            stop_process(process)
