"""Recovery fails safe, not dead: foreign messages on the ledger subject and broken snapshots, against a real server.

Foreign messages are published the way an attacker with a plain connection would (`nc.publish` on the ledger
subject, no headers); snapshots are broken through the object store's own subjects. After each, a worker or a
plain `Ledger` recovers, serves, and holds exactly what the governor's own messages make, to the cent; what was
passed over is reported through `on_foreign` with its sequence, and `governor ledger verify` lists it.
"""

from __future__ import annotations

import asyncio
import base64
import zlib
from typing import Any

import msgspec
import nats.errors
import pytest
from nats.aio.client import Client

from schemas.config import Config
from schemas.ledger import LedgerBatch, LedgerEntry
from schemas.requests import CostRequest
from tests.factories import EXAMPLE_SWARMS, make_config, profile
from tests.integration.helpers import answering, empty_snapshot, record, run_cli
from worker.client import GovernorClient
from worker.core.governor import Governor
from worker.errors import Unavailable
from worker.ops.natsserver import NatsServer
from worker.service.app import Worker
from worker.service.dispatch import register_request
from worker.service.replay import recover
from worker.service.replay import snapshot_of as state_snapshot
from worker.storage.entries import LedgerGap
from worker.storage.journal import Ledger, stream_name
from worker.storage.snapshots import snapshot_name
from worker.storage.verify import Problem, verify

pytestmark = pytest.mark.timeout(120)

LEDGER = "governor.ledger"
QUARANTINED = "governor.witness.ledger_message_quarantined"
STREAM = stream_name("governor")
NOW = 1_700_000_000.0
GARBAGE = b"\x00\xff not json"
NOT_JSON = "JSON is malformed: invalid character (byte 0)"  # msgspec on GARBAGE
NOT_ZLIB = "Error -3 while decompressing data: incorrect header check"  # zlib on data it did not compress
Reported = list[tuple[int, str]]


def batch(*entries: tuple[str, dict[str, Any]]) -> bytes:
    """A ledger message of (kind, body) entries, forged outside the governor."""
    return msgspec.json.encode(
        LedgerBatch(
            [LedgerEntry(kind, NOW, "forged", msgspec.Raw(msgspec.json.encode(body))) for kind, body in entries]
        )
    )


# A good cost entry before an unknown kind: had it been replayed, session-1-ndi would have lost 7 USD more.
UNKNOWN_KIND = batch(("cost", {"swarm_id": "session-1-ndi", "operation": "forged", "cost": 7.0}), ("mint", {}))
BAD_BODY = batch(("cost", {"swarm_id": "session-1-ndi", "operation": "forged", "cost": "lots"}))
REASONS = [
    "not a ledger batch: Expected `array`, got `object`",
    f"not a ledger batch: {NOT_JSON}",
    "entry 1: unknown kind 'mint'",
    "entry 0 (cost): Expected `float | null`, got `str` - at `$.cost`",
]


def durable_config() -> Config:
    """The example swarms, durable with a lease of 1 s."""
    return make_config(EXAMPLE_SWARMS, ledger={"lease_ttl_s": 1.0})


@pytest.fixture
def reported(monkeypatch: pytest.MonkeyPatch) -> Reported:
    """What the workers' ledgers report through `on_foreign`, in order (whatever else it is wired to is kept)."""
    seen: Reported = []

    class ReportingLedger(Ledger):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            wired = self.on_foreign

            def report(seq: int, reason: str) -> None:
                seen.append((seq, reason))
                if wired is not None:
                    wired(seq, reason)

            self.on_foreign = report

    monkeypatch.setattr("worker.service.app.Ledger", ReportingLedger)
    return seen


async def last_seq(nc: Client, stream: str = STREAM) -> int:
    return int((await nc.jetstream().stream_info(stream)).state.last_seq)


async def publish_raw(nc: Client, subject: str, messages: list[bytes], stream: str = STREAM) -> list[int]:
    """Publish `messages` on `subject` as a plain client does (no headers, no ack); their stream sequences."""
    before = await last_seq(nc, stream)
    for data in messages:
        await nc.publish(subject, data)
    await nc.flush()
    for _ in range(250):  # a plain publish gets no ack: wait (up to 5 s) until the stream holds them
        if await last_seq(nc, stream) == before + len(messages):
            return list(range(before + 1, before + len(messages) + 1))
        await asyncio.sleep(0.02)
    raise AssertionError(f"{stream} did not take the {len(messages)} messages published on {subject}")


async def first_term(url: str, nc: Client) -> bytes:
    """A worker applies two costs and stops cleanly (snapshot at sequence 3); a status reply it sent, as bytes."""
    client = GovernorClient(nc)
    async with Worker(durable_config(), servers=[url], serve_metrics=False):
        await answering(nc)
        await client.cost("session-1-ndi", "op", 1.25, event_id="e1")
        await client.cost("session-4-sip", "op", 2.50, event_id="e2")
        status_reply = (await nc.request("governor.status", b"{}")).data
    return status_reply


async def poison(nc: Client, status_reply: bytes) -> list[int]:
    """A status reply, garbage bytes, a batch with an unknown kind and one with a bad body, on the ledger subject."""
    return await publish_raw(nc, LEDGER, [status_reply, GARBAGE, UNKNOWN_KIND, BAD_BODY])


class TestWorkerRecovery:
    async def test_foreign_messages_are_passed_over_and_budgets_stay_exact(
        self, nats_server: NatsServer, nc: Client, reported: Reported
    ) -> None:
        """After four foreign messages on the ledger, a restarted worker reports each by sequence, serves, and its
        budgets (and those of the next restart) are exactly what the governor's own entries make."""
        client = GovernorClient(nc)
        status_reply = await first_term(nats_server.url, nc)
        seqs = await poison(nc, status_reply)
        assert seqs == [4, 5, 6, 7]
        quarantined = await record(nc, QUARANTINED)

        async with Worker(durable_config(), servers=[nats_server.url], serve_metrics=False) as second:
            await answering(nc)
            assert reported == list(zip(seqs, REASONS, strict=True))
            assert second.ledger is not None and second.ledger.foreign == 4
            assert second.metrics.registry.get_sample_value("if_governor_ledger_quarantined_total") == 4.0
            # published when recovery read them, on the worker's own connection
            witnessed = await quarantined.wait_for(QUARANTINED, 4, timeout=5)
            assert [(w["params"]["seq"], w["params"]["reason"], w["severity"]) for w in witnessed] == [
                (seq, reason, "HIGH") for seq, reason in zip(seqs, REASONS, strict=True)
            ]
            assert (await client.status()).budgets == {"session-4-sip": 22.5, "session-1-ndi": 23.75}
            assert (await client.cost("session-1-ndi", "op", 0.75, event_id="e3")).remaining == 23.0
            assert (await client.cost("session-1-ndi", "op", 1.25, event_id="e1")).duplicate is True
            assert second.ledger.seq == 9  # the foreign messages are passed over, not in the way of new writes

        async with Worker(durable_config(), servers=[nats_server.url], serve_metrics=False) as third:
            await answering(nc)
            assert (await client.status()).budgets == {"session-4-sip": 22.5, "session-1-ndi": 23.0}
            assert third.ledger is not None and third.ledger.foreign == 0  # its snapshot (at 9) is after them
        assert len(reported) == 4

    async def test_a_broken_newest_snapshot_falls_back_and_the_foreign_messages_are_reported_again(
        self, nats_server: NatsServer, nc: Client, reported: Reported
    ) -> None:
        """With the newest snapshot broken, a restart reports it, reads the older one and the tail after it, reports
        the foreign messages in that tail again by the same sequences, and serves exact budgets."""
        client = GovernorClient(nc)
        status_reply = await first_term(nats_server.url, nc)
        seqs = await poison(nc, status_reply)
        async with Worker(durable_config(), servers=[nats_server.url], serve_metrics=False):
            await answering(nc)
            await client.cost("session-1-ndi", "op", 0.75, event_id="e3")  # sequence 8; the final snapshot is at 8
        store = await nc.jetstream().object_store(STREAM + "_SNAPSHOTS")
        await store.put(snapshot_name(8), b"not a snapshot")
        reported.clear()

        async with Worker(durable_config(), servers=[nats_server.url], serve_metrics=False) as third:
            await answering(nc)
            assert reported == [
                (
                    0,
                    f"snapshot {snapshot_name(8)} does not decode: {NOT_ZLIB}",
                ),
                *zip(seqs, REASONS, strict=True),
            ]
            assert third.ledger is not None and third.ledger.foreign == 5
            assert (await client.status()).budgets == {"session-4-sip": 22.5, "session-1-ndi": 23.0}

    async def test_a_foreign_message_while_serving_costs_a_takeover_not_the_service(
        self, nats_server: NatsServer, nc: Client, reported: Reported
    ) -> None:
        """A foreign message landing while the worker serves fences its next write; the worker recovers past it, takes
        the lease again and serves, and the retried cost is applied exactly once."""
        client = GovernorClient(nc, timeout=2.0)
        async with Worker(durable_config(), servers=[nats_server.url], serve_metrics=False) as worker:
            await answering(nc)
            await client.cost("session-1-ndi", "op", 1.25, event_id="e1")
            [seq] = await publish_raw(nc, LEDGER, [GARBAGE])
            refused = 0
            async with asyncio.timeout(30):
                while True:
                    try:
                        reply = await client.cost("session-1-ndi", "op", 1.0, event_id="e2")
                        break
                    except (Unavailable, nats.errors.NoRespondersError, TimeoutError):
                        refused += 1
                        await asyncio.sleep(0.1)
            assert refused >= 1
            assert reply.duplicate is False and reply.remaining == 22.75
            assert reported == [(seq, REASONS[1])]
            assert worker.ledger is not None and worker.ledger.foreign == 1
            assert (await client.status()).budgets == {"session-4-sip": 25.0, "session-1-ndi": 22.75}


async def governor_verify(url: str) -> tuple[int, str]:
    """Run `governor ledger verify --nats-url URL`, which must print nothing on stderr: (exit code, stdout)."""
    result = await run_cli("ledger", "verify", "--nats-url", url)
    assert result.stderr == "", result.stderr
    return result.returncode, result.stdout


class TestVerifyCommand:
    async def test_a_clean_ledger_exits_0(self, nats_server: NatsServer, nc: Client) -> None:
        """`governor ledger verify` on a ledger only the governor wrote says what it read and exits 0."""
        await first_term(nats_server.url, nc)
        code, out = await governor_verify(nats_server.url)
        assert (code, out) == (
            0,
            "ledger GOVERNOR_LEDGER: sequences 1 to 3, 3 messages read, 4 entries; 1 snapshot (at 3)\n"
            "0 problems found\n",
        )

    async def test_a_poisoned_ledger_exits_1_listing_each_foreign_sequence(
        self, nats_server: NatsServer, nc: Client
    ) -> None:
        """After the poisoning, `governor ledger verify` lists each foreign message by sequence and exits 1."""
        status_reply = await first_term(nats_server.url, nc)
        await poison(nc, status_reply)
        code, out = await governor_verify(nats_server.url)
        assert (code, out.splitlines()) == (
            1,
            [
                "ledger GOVERNOR_LEDGER: sequences 1 to 7, 7 messages read, 4 entries; 1 snapshot (at 3)",
                "4 problems found:",
                *(f"  sequence {seq}: {reason}" for seq, reason in zip([4, 5, 6, 7], REASONS, strict=True)),
            ],
        )


# -- a plain Ledger: its snapshots, and what verify finds ------------------------------------------------------

PROFILE = profile("s1", ["code-analysis:python"], cost_per_hour=2.0, reputation_score=0.9, budget=25.0, model="haiku")


def register() -> LedgerEntry:
    return LedgerEntry("register", NOW, "t", msgspec.Raw(msgspec.json.encode(register_request(PROFILE))))


def cost(amount: float, event_id: str) -> LedgerEntry:
    body = CostRequest(swarm_id="s1", operation="op", cost=amount, event_id=event_id)
    return LedgerEntry("cost", NOW, "t", msgspec.Raw(msgspec.json.encode(body)))


def meta_subject(ledger: Ledger, name: str) -> str:
    """The subject of an object's description in the snapshot store."""
    return f"$O.{ledger.snapshot_bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"


async def read_back(nc: Client) -> tuple[Governor, Ledger, Reported]:
    """A fresh reader of the `falltest` ledger recovers a core: the core, the reader, and what it passed over."""
    seen: Reported = []
    reader = Ledger(nc, prefix="falltest", timeout=2.0, on_foreign=lambda seq, why: seen.append((seq, why)))
    await reader.setup()
    return await recover(reader, Governor), reader, seen


class TestSnapshotFallback:
    @pytest.fixture
    async def writer(self, nc: Client) -> Ledger:
        """A ledger holding: register (1), cost 1.00 (2), snapshot at 2, cost 2.00 (3), snapshot at 3, cost 4.00 (4)."""
        ledger = Ledger(nc, prefix="falltest", timeout=2.0, trim=False)
        await ledger.setup()
        await ledger.append([register()])
        await ledger.append([cost(1.0, "c1")])
        core = await recover(ledger, Governor)
        await ledger.save_snapshot(state_snapshot(ledger, core), ledger.seq)
        await ledger.append([cost(2.0, "c2")])
        core = await recover(ledger, Governor)
        await ledger.save_snapshot(state_snapshot(ledger, core), ledger.seq)
        await ledger.append([cost(4.0, "c4")])
        return ledger

    async def test_a_newest_snapshot_whose_description_does_not_decode_falls_back_to_the_older(
        self, nc: Client, writer: Ledger
    ) -> None:
        """A garbage description of the newest snapshot is reported with sequence 0 and the older snapshot plus its
        tail give the exact budget (the object store's own listing would have waited forever on it)."""
        await publish_raw(nc, meta_subject(writer, snapshot_name(3)), [GARBAGE], stream="OBJ_FALLTEST_LEDGER_SNAPSHOTS")
        core, reader, seen = await read_back(nc)
        assert core.get_budget_report() == {"s1": 18.0}
        assert seen == [
            (
                0,
                f"snapshot {snapshot_name(3)}: its description does not decode: {NOT_JSON}",
            )
        ]
        assert (reader.seq, reader.foreign) == (4, 1)

    async def test_with_every_snapshot_broken_the_ledger_is_replayed_from_its_start(
        self, nc: Client, writer: Ledger
    ) -> None:
        """Both snapshots broken on an untrimmed ledger: both are reported, and the whole ledger gives the budget."""
        assert writer._snapshots is not None
        await writer._snapshots.put(snapshot_name(2), b"")
        await writer._snapshots.put(snapshot_name(3), zlib.compress(b"\x01"))
        core, _, seen = await read_back(nc)
        assert core.get_budget_report() == {"s1": 18.0}
        assert seen == [
            (0, f"snapshot {snapshot_name(3)} does not decode: Expected `object`, got `int`"),
            (0, f"snapshot {snapshot_name(2)} is empty"),
        ]

    async def test_with_every_snapshot_broken_and_the_ledger_trimmed_recovery_refuses(
        self, nc: Client, writer: Ledger
    ) -> None:
        """Both snapshots broken and the entries before them trimmed: recovery raises instead of serving a state built
        from the tail alone."""
        assert writer._snapshots is not None
        await writer._snapshots.put(snapshot_name(2), b"garbage")
        await writer._snapshots.put(snapshot_name(3), b"garbage")
        await nc.jetstream().purge_stream(writer.stream, seq=3)  # the entries up to 2 are gone
        reader = Ledger(nc, prefix="falltest", timeout=2.0)
        await reader.setup()
        with pytest.raises(LedgerGap):
            await recover(reader, Governor)
        assert reader.foreign == 6  # both snapshots, at each of the three attempts


class TestVerify:
    @pytest.fixture
    async def ledger(self, nc: Client) -> Ledger:
        """A ledger of three messages (register, two costs) and no snapshot."""
        ledger = Ledger(nc, prefix="verifytest", timeout=2.0)
        await ledger.setup()
        await ledger.append([register()])
        await ledger.append([cost(1.0, "c1")])
        await ledger.append([cost(2.0, "c2"), cost(3.0, "c3")])
        return ledger

    async def test_a_message_deleted_from_the_middle_is_a_gap(self, nc: Client, ledger: Ledger) -> None:
        """A message deleted from the middle of the stream is reported as missing, by its sequence."""
        await nc.jetstream().delete_msg(ledger.stream, 2)
        report = await verify(Ledger(nc, prefix="verifytest"))
        assert (report.messages, report.entries) == (2, 3)
        assert report.problems == [Problem(2, "missing from the stream")]

    async def test_a_message_that_does_not_follow_the_one_before_breaks_the_chain(
        self, nc: Client, ledger: Ledger
    ) -> None:
        """Each message names the SHA-256 of the one before it: the governor's own messages form a clean chain; a
        batch of valid entries written by another (naming another predecessor, or none after a chained one) is
        reported by sequence as a break, and so is the message after a changed one."""
        assert (await verify(Ledger(nc, prefix="verifytest"))).problems == []
        forged = msgspec.json.encode(LedgerBatch([cost(5.0, "forged")], "0" * 64))
        unchained = msgspec.json.encode(LedgerBatch([cost(6.0, "unchained")]))
        seqs = await publish_raw(nc, ledger.subject, [forged, unchained], stream=ledger.stream)
        report = await verify(Ledger(nc, prefix="verifytest"))
        assert [p.seq for p in report.problems] == seqs
        assert all("breaks the hash chain" in p.reason for p in report.problems), report.problems
        assert report.problems[0].reason.startswith("breaks the hash chain: it follows 0000000000000000, ")

    async def test_a_snapshot_beyond_the_end_is_reported(self, nc: Client, ledger: Ledger) -> None:
        """A snapshot at a sequence the stream never reached is reported and not counted as a snapshot."""
        await ledger.save_snapshot(empty_snapshot(99), 99)
        report = await verify(Ledger(nc, prefix="verifytest"))
        assert report.snapshots == []
        assert report.problems == [
            Problem(0, f"snapshot {snapshot_name(99)} is at sequence 99, beyond the ledger's last (3)")
        ]

    async def test_broken_snapshots_and_strangers_in_the_store_are_reported(self, nc: Client, ledger: Ledger) -> None:
        """An undecodable snapshot, one whose name and content disagree, a garbage description and an object that is
        no snapshot are each reported; the one good snapshot is counted."""
        assert ledger._snapshots is not None
        await ledger._snapshots.put(snapshot_name(1), b"garbage")
        await ledger._snapshots.put(snapshot_name(2), empty_snapshot(1))
        await ledger._snapshots.put(snapshot_name(3), empty_snapshot(3))
        await ledger._snapshots.put("notes", b"hello")
        await publish_raw(nc, meta_subject(ledger, "seq-x"), [b"{"], stream="OBJ_VERIFYTEST_LEDGER_SNAPSHOTS")
        report = await verify(Ledger(nc, prefix="verifytest"))
        assert report.snapshots == [3]
        assert sorted(report.problems, key=lambda p: p.reason) == [
            Problem(
                0,
                f"snapshot {snapshot_name(1)} does not decode: {NOT_ZLIB}",
            ),
            Problem(0, f"snapshot {snapshot_name(2)} holds the state at sequence 1, not 2"),
            Problem(0, "snapshot seq-x: its description does not decode: Input data was truncated"),
            Problem(0, "the snapshot store holds 'notes', which is no snapshot"),
        ]

    async def test_a_ledger_trimmed_past_every_snapshot_is_reported(self, nc: Client, ledger: Ledger) -> None:
        """Entries trimmed with no snapshot reaching them: verify says recovery cannot rebuild the state."""
        await nc.jetstream().purge_stream(ledger.stream, seq=3)
        report = await verify(Ledger(nc, prefix="verifytest"))
        assert (report.first_seq, report.last_seq, report.messages, report.entries) == (3, 3, 1, 2)
        assert report.problems == [
            Problem(
                3,
                "the entries before 3 are trimmed but no snapshot that decodes reaches 2 (newest: none): "
                "recovery cannot rebuild the state",
            )
        ]
