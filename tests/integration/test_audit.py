"""The stored audit trail over a real nats-server: every event and witness record stored once, in ledger order,
whatever crashes in between; a takeover publishes what the old holder had not; `governor audit` reads it back."""

from __future__ import annotations

import asyncio
import collections
import json
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from nats.aio.client import Client

from schemas.config import AuditSection
from schemas.events import BreakerTripped, Escalation, Event, Position, WitnessRecord
from tests.factories import EXAMPLE_SWARMS, make_config, swarm_entry
from tests.integration.helpers import answering, record, run_cli, serve, start_worker_process
from worker.client import GovernorClient
from worker.ops.natsserver import NatsServer
from worker.storage.audit import AuditLog, stream_names
from worker.storage.journal import message_hash

AUDIT, REFUSALS = stream_names("governor")


async def stored(nc: Client, operation: str | None = None) -> list[tuple[str, Event]]:
    """Every record the audit stream holds (of one operation), oldest first, typed."""
    return [(subject, event) async for subject, _, event in GovernorClient(nc).audit(operation=operation)]


def by_subject(records: list[tuple[str, Event]]) -> collections.Counter[str]:
    return collections.Counter(subject for subject, _ in records)


class TestStored:
    async def test_a_late_reader_finds_each_record_once_in_ledger_order(
        self, nats_server: NatsServer, nc: Client
    ) -> None:
        """Records published while nobody listened are in the stream, each with its ledger position and the hash
        of the ledger message it comes from; a record published again (same `Nats-Msg-Id`) is stored once."""
        worker = await serve(make_config(EXAMPLE_SWARMS), servers=[nats_server.url], timeout=30)
        try:
            await answering(nc)
            client = GovernorClient(nc)
            await client.cost("session-1-ndi", "op", 30.0, event_id="c1")  # exhausts the budget: a trip
            await client.assign(["integration:sip"], task_id="t1", max_cost=20.0)
        finally:
            await worker.__aexit__(None, None, None)
        records = await stored(nc)
        counts = by_subject(records)
        assert counts["governor.witness.swarm_registered"] == 2
        assert counts["governor.witness.cost_tracked"] == 1
        assert counts["governor.events.breaker.tripped"] == counts["governor.events.escalation"] == 1
        assert counts["governor.witness.task_assigned"] == 1
        positions = [e.position for _, e in records if isinstance(e.position, Position)]
        assert len(positions) == len(records)
        # Ledger order: message by message; inside one, a subject's records in order, the subjects in the order of
        # their first record (one stored message per subject: worker.service.positions).
        assert len({(p.seq, p.index) for p in positions}) == len(positions)
        assert [p.seq for p in positions] == sorted(p.seq for p in positions)
        for subject in counts:
            mine = [(e.position.seq, e.position.index) for s, e in records if s == subject]  # type: ignore[union-attr]
            assert mine == sorted(mine), subject
        ledger = await ledger_hashes(nc)
        assert all(p.batch == ledger[p.seq] for p in positions)
        # The same group of records again, with its id: the stream keeps one.
        trip = next(e for _, e in records if isinstance(e, BreakerTripped))
        assert isinstance(trip.position, Position)
        ack = await nc.jetstream().publish(
            "governor.audit.events.breaker.tripped",
            msgspec.json.encode([trip]),
            headers={"Nats-Msg-Id": f"{trip.position.seq}.{trip.position.index}"},
        )
        assert ack.duplicate
        assert by_subject(await stored(nc))["governor.events.breaker.tripped"] == 1

    async def test_refused_requests_are_kept_apart(self, nats_server: NatsServer, nc: Client) -> None:
        """A refused request's witness record has no ledger position: it is stored in the refusals stream, and the
        decisions' stream holds only records with a position."""
        worker = await serve(make_config(EXAMPLE_SWARMS), servers=[nats_server.url], timeout=30)
        try:
            await answering(nc)
            reply = msgspec.json.decode((await nc.request("governor.cost", b'{"swarm_id": 1}', timeout=5)).data)
            assert reply["error"]["code"] == "invalid_request"
        finally:
            await worker.__aexit__(None, None, None)
        refusals = [r async for r in AuditLog(nc).read("governor.witness.request_rejected")]
        assert [r.subject for r in refusals] == ["governor.witness.request_rejected"]
        assert all(isinstance(e.position, Position) for _, e in await stored(nc))


async def ledger_hashes(nc: Client) -> dict[int, str]:
    """The hash of every message in the ledger stream, by sequence."""
    js = nc.jetstream()
    last = (await js.stream_info("GOVERNOR_LEDGER")).state.last_seq
    return {seq: message_hash((await js.get_msg("GOVERNOR_LEDGER", seq)).data or b"") for seq in range(1, last + 1)}


class TestCrashes:
    @pytest.mark.slow
    async def test_kill_9_during_a_trip_storm_loses_no_record_and_stores_none_twice(
        self, tmp_path: Path, nats_server: NatsServer, nc: Client
    ) -> None:
        """600 swarms, each tripped by one cost, while the worker is killed with -9 three times (the clients retry
        with the same event ids): the stream then holds exactly one trip, one escalation and one
        `circuit_breaker_tripped` record per swarm, and one `cost_tracked` record per acknowledged cost."""
        swarms = [swarm_entry(f"s{i:03d}", initial_budget=1.0) for i in range(600)]
        path = tmp_path / "governor.yaml"
        path.write_text(yaml.safe_dump({"swarms": swarms, "metrics": {"port": 0}}))
        worker = start_worker_process(nats_server.url, path, tmp_path / "worker.log")
        client = GovernorClient(nc, timeout=2.0, retry_for=90.0)

        async def storm() -> list[Any]:
            """Twenty costs at a time, a few milliseconds apart: the storm outlasts the kills."""
            replies: list[Any] = []
            for start in range(0, len(swarms), 20):
                chunk = swarms[start : start + 20]
                replies += await asyncio.gather(
                    *(client.cost(s["swarm_id"], "op", 2.0, event_id=f"e-{s['swarm_id']}") for s in chunk)
                )
                await asyncio.sleep(0.02)
            return replies

        try:
            await answering(nc, timeout=60.0, worker=worker)
            running = asyncio.ensure_future(storm())
            for _ in range(3):
                await asyncio.sleep(0.3)
                assert not running.done(), "the storm ended before the kill: make it longer"
                worker.kill()
                worker = start_worker_process(nats_server.url, path, tmp_path / "worker.log")
                await answering(nc, timeout=60.0, worker=worker)
            replies = await running
            assert all(r.tripped for r in replies)
            await asyncio.sleep(1.0)  # the last term's own records are acknowledged
        finally:
            worker.stop()
        records = await stored(nc)
        trips = collections.Counter(e.swarm_id for _, e in records if isinstance(e, BreakerTripped))
        escalations = collections.Counter(e.swarm_id for _, e in records if isinstance(e, Escalation))
        witness = [e for _, e in records if isinstance(e, WitnessRecord)]
        tripped = collections.Counter(e.params["swarm_id"] for e in witness if e.operation == "circuit_breaker_tripped")
        costs = collections.Counter(e.params["event_id"] for e in witness if e.operation == "cost_tracked")
        names = {s["swarm_id"] for s in swarms}
        assert trips == escalations == tripped == dict.fromkeys(names, 1)
        assert costs == {f"e-{name}": 1 for name in names}


class TestTakeover:
    async def test_a_standby_publishes_what_the_old_holder_had_not(self, nats_server: NatsServer, nc: Client) -> None:
        """The serving worker applies three costs whose records never reach the stream (as if it had died between
        the ledger's acknowledgement and the publication: nothing is stored again, and its last snapshot is not
        stored, for those records are not acknowledged); the standby that takes over publishes exactly those, live
        subscribers see them again, and the stream then holds each record once."""
        config = msgspec.structs.replace(
            make_config(EXAMPLE_SWARMS, ledger={"lease_ttl_s": 1.0}), audit=AuditSection(ack_timeout_s=0.5)
        )
        first = await serve(config, servers=[nats_server.url], timeout=30, holder_id="first")
        standby = await serve(
            config, servers=[nats_server.url], timeout=30, holder_id="second", wait_until_serving=False
        )
        try:
            await answering(nc)
            assert first.bus is not None and first.bus.effects.confirmations is not None
            lost: list[bytes] = []
            publish = first.bus.effects._publish

            async def lose(subject: str, data: bytes, **options: Any) -> None:
                if "Nats-Msg-Id" in (options.get("headers") or {}):
                    lost.append(data)
                    return
                await publish(subject, data, **options)

            async def never() -> None:
                return None

            first.bus.effects._publish = lose  # type: ignore[assignment]
            first.bus.effects.confirmations.resend = never  # type: ignore[method-assign]
            client = GovernorClient(nc)
            for i in range(3):
                await client.cost("session-4-sip", "op", 1.0, event_id=f"lost-{i}")
            lost_costs = [
                r for group in map(msgspec.json.decode, lost) for r in group if r["operation"] == "cost_tracked"
            ]
            assert [r["params"]["event_id"] for r in lost_costs] == ["lost-0", "lost-1", "lost-2"]
            live = await record(nc, "governor.witness.cost_tracked")
            await first.__aexit__(None, None, None)
            await asyncio.wait_for(standby.wait_serving(), 30)
            await live.wait_for("governor.witness.cost_tracked", count=3, timeout=10)
        finally:
            await standby.__aexit__(None, None, None)
        costs = [msgspec.to_builtins(e) for _, e in await stored(nc, "cost_tracked")]
        assert costs == lost_costs


class TestAuditCommand:
    async def test_filters_by_swarm_operation_and_time(self, nats_server: NatsServer, nc: Client) -> None:
        """`governor audit` reads the stored trail: `--operation` (server-side, by subject), `--swarm` and
        `--since`/`--until` narrow it; `--json` prints one object a line."""
        worker = await serve(make_config(EXAMPLE_SWARMS), servers=[nats_server.url], timeout=30)
        try:
            await answering(nc)
            client = GovernorClient(nc)
            await client.cost("session-1-ndi", "early", 1.0, event_id="a1")
            await client.cost("session-4-sip", "early", 2.0, event_id="a2")
            await asyncio.sleep(1.2)
            middle = time.time()
            await asyncio.sleep(0.2)
            await client.cost("session-1-ndi", "late", 3.0, event_id="a3")
            await asyncio.sleep(0.5)
        finally:
            await worker.__aexit__(None, None, None)

        async def audit(*args: str) -> list[dict[str, Any]]:
            result = await run_cli("audit", "--nats-url", nats_server.url, "--json", *args)
            assert (result.returncode, result.stderr) == (0, ""), result.stderr
            return [json.loads(line) for line in result.stdout.splitlines()]

        costs = await audit("--operation", "cost_tracked")
        assert [r["record"]["params"]["event_id"] for r in costs] == ["a1", "a2", "a3"]
        assert {r["subject"] for r in costs} == {"governor.witness.cost_tracked"}
        ndi = await audit("--operation", "cost_tracked", "--swarm", "session-1-ndi")
        assert [r["record"]["params"]["event_id"] for r in ndi] == ["a1", "a3"]
        late = await audit("--operation", "cost_tracked", "--since", str(middle))
        assert [r["record"]["params"]["event_id"] for r in late] == ["a3"]
        early = await audit("--operation", "cost_tracked", "--until", str(middle))
        assert [r["record"]["params"]["event_id"] for r in early] == ["a1", "a2"]
        everything = await audit("--swarm", "session-4-sip")
        assert {r["record"]["operation"] for r in everything} == {"swarm_registered", "cost_tracked"}
        unknown = await run_cli("audit", "--nats-url", nats_server.url, "--operation", "nonsense")
        assert unknown.returncode != 0 and "unknown operation 'nonsense'" in unknown.stderr
