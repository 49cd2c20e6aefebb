"""What recovery passes over as foreign, decided without a server: messages, entries, snapshots, and the report."""

from __future__ import annotations

import zlib

import msgspec
import pytest

from schemas.ledger import Configure, LedgerBatch, LedgerEntry
from schemas.policy import PolicyRule, ResourcePolicy
from schemas.requests import CostRequest
from tests.factories import NOW
from worker.core.governor import Governor
from worker.service.dispatch import replay_command
from worker.storage.entries import MAX_REASON, LedgerForeign, decode_message, decode_snapshot, short_reason
from worker.storage.snapshots import snapshot_name, snapshot_seq
from worker.storage.verify import Problem, Report, problem

COST = b'{"swarm_id":"a","operation":"op","cost":1.25,"event_id":"e1"}'


def reason(data: bytes) -> str:
    """Why `decode_message` refuses `data`."""
    with pytest.raises(LedgerForeign) as refused:
        decode_message(data)
    return refused.value.reason


class TestDecodeMessage:
    def test_a_batch_the_governor_writes_gives_each_entry_with_its_command(self) -> None:
        """A ledger batch decodes into its entries, each paired with the request its body records."""
        entry = LedgerEntry("cost", NOW, "t1", msgspec.Raw(COST))
        [(decoded, command)] = decode_message(msgspec.json.encode(LedgerBatch([entry])))
        assert decoded == entry
        assert command == CostRequest(swarm_id="a", operation="op", cost=1.25, event_id="e1")

    def test_a_status_reply_is_not_a_batch(self) -> None:
        """A JSON object (a reply aimed at the ledger subject) is refused as no ledger batch."""
        assert reason(b'{"ok":true,"swarms":[]}') == "not a ledger batch: Expected `array`, got `object`"

    def test_garbage_bytes_are_not_a_batch(self) -> None:
        """Bytes that are no JSON at all are refused as no ledger batch."""
        assert reason(b"\x00\xff not json") == "not a ledger batch: JSON is malformed: invalid character (byte 0)"

    def test_an_empty_message_is_not_a_batch(self) -> None:
        """An empty message is refused as no ledger batch."""
        assert reason(b"") == "not a ledger batch: Input data was truncated"

    def test_an_unknown_kind_is_refused(self) -> None:
        """An entry whose kind the governor never writes is refused, naming the entry and the kind."""
        assert reason(b'[[["mint",1.0,"t",{}]]]') == "entry 0: unknown kind 'mint'"

    def test_a_body_that_is_not_its_kinds_request_is_refused(self) -> None:
        """An entry whose body does not decode as its kind's request is refused, with msgspec's path."""
        body = b'{"swarm_id":"a","operation":"op","cost":"lots"}'
        assert (
            reason(b'[[["cost",1.0,"t",' + body + b"]]]")
            == "entry 0 (cost): Expected `float | null`, got `str` - at `$.cost`"
        )

    def test_one_foreign_entry_refuses_the_whole_message(self) -> None:
        """A good entry before a foreign one is not returned: nothing of such a message is replayed."""
        data = b'[[["cost",1.0,"t",' + COST + b'],["mint",1.0,"t",{}]]]'
        assert reason(data) == "entry 1: unknown kind 'mint'"

    def test_control_characters_in_a_kind_are_escaped(self) -> None:
        """A kind carrying a terminal escape shows as its escape sequence, not as the control character."""
        assert reason(b'[[["\\u001b[2Jmint",1.0,"t",{}]]]') == "entry 0: unknown kind '\\x1b[2Jmint'"


class TestDecodeSnapshot:
    def test_a_snapshot_the_governor_stores_decodes(self) -> None:
        """A compressed msgpack CoreState decodes into the state it holds."""
        state = Governor().export_state(42)
        assert decode_snapshot(zlib.compress(msgspec.msgpack.encode(state))) == state

    def test_an_empty_snapshot_is_refused(self) -> None:
        """An empty object is no snapshot."""
        with pytest.raises(LedgerForeign) as refused:
            decode_snapshot(b"")
        assert refused.value.reason == "is empty"

    def test_data_that_do_not_decompress_are_refused(self) -> None:
        """Data that are not zlib-compressed are refused with zlib's reason."""
        with pytest.raises(LedgerForeign) as refused:
            decode_snapshot(b"garbage")
        assert refused.value.reason == "does not decode: Error -3 while decompressing data: incorrect header check"

    def test_compressed_data_that_are_no_state_are_refused(self) -> None:
        """Compressed msgpack that is not a CoreState is refused with msgspec's reason."""
        with pytest.raises(LedgerForeign) as refused:
            decode_snapshot(zlib.compress(msgspec.msgpack.encode([1, 2])))
        assert refused.value.reason == "does not decode: Expected `object`, got `array`"


class TestReplayCommand:
    def test_a_refused_configure_changes_nothing(self) -> None:
        """A `configure` whose rule names an unknown policy replays as a refusal: the policy stays as it was."""
        core = Governor()
        before = (core.policy, core.rules, dict(core.policies))
        refused = Configure(
            policy=ResourcePolicy(max_swarms_per_task=1),
            capabilities=[],
            rules=[PolicyRule(match="a:*", policy="nope")],
        )
        replay_command(core, refused, NOW, "t")
        assert (core.policy, core.rules, dict(core.policies)) == before


class TestNames:
    def test_a_snapshot_name_gives_its_sequence(self) -> None:
        """`snapshot_seq` inverts `snapshot_name`."""
        assert snapshot_seq(snapshot_name(1234)) == 1234

    @pytest.mark.parametrize("name", ["latest", "seq-", "seq-12a", "seq-\u0663", "other-0001"])
    def test_other_names_give_no_sequence(self, name: str) -> None:
        """A name that is not `seq-` and ASCII digits gives no sequence."""
        assert snapshot_seq(name) is None

    def test_a_long_reason_is_cut(self) -> None:
        """A reason longer than MAX_REASON is cut to MAX_REASON characters, ending in an ellipsis."""
        cut = short_reason("x" * 500)
        assert cut == "x" * (MAX_REASON - 3) + "..."

    def test_line_breaks_and_bidi_controls_are_escaped(self) -> None:
        """Newlines and right-to-left overrides in a reason are written as escapes: it stays one honest line."""
        assert short_reason("a\nb\u202ec") == "a\\nb\\u202ec"


class TestReport:
    def test_a_clean_report_says_what_was_read(self) -> None:
        """A report without problems is clean and says the range, messages, entries and snapshots read."""
        report = Report(
            stream="GOVERNOR_LEDGER", first_seq=1, last_seq=4, messages=4, entries=7, snapshots=[4], problems=[]
        )
        assert report.clean
        assert report.summary() == (
            "ledger GOVERNOR_LEDGER: sequences 1 to 4, 4 messages read, 7 entries; 1 snapshot (at 4)\n0 problems found"
        )

    def test_each_problem_is_one_line(self) -> None:
        """Problems are listed one a line, a message's by its sequence, the snapshot store's by its reason alone."""
        report = Report(
            stream="GOVERNOR_LEDGER",
            first_seq=1,
            last_seq=5,
            messages=5,
            entries=4,
            snapshots=[],
            problems=[Problem(5, "entry 0: unknown kind 'mint'"), problem(0, "snapshot seq-9 is empty\n")],
        )
        assert not report.clean
        assert report.summary() == (
            "ledger GOVERNOR_LEDGER: sequences 1 to 5, 5 messages read, 4 entries; 0 snapshots\n"
            "2 problems found:\n"
            "  sequence 5: entry 0: unknown kind 'mint'\n"
            "  snapshot seq-9 is empty\\n"
        )
