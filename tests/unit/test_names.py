"""Strict names: ids, names and trace ids refuse control and invisible characters at decoding, naming the field;
the text log escapes whatever a client could put in a line."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
import unicodedata
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
import pytest

from schemas.config import Config
from schemas.ledger import CoreState, LedgerBatch, Reload
from schemas.requests import AssignRequest, CostRequest, RegisterRequest, ResetRequest, TripRequest
from schemas.types import (
    BLANK,
    CAPABILITY_DEF_PATTERN,
    CAPABILITY_NAME_PATTERN,
    INVISIBLE,
    NAME_PATTERN,
    SWARM_ID_PATTERN,
    TRACE_ID_PATTERN,
)
from worker.ops.logs import setup_logging
from worker.ops.render import escape

RESET = {"swarm_id": "sip", "new_budget": 25.0, "approved_by": "alice"}
COST = {"swarm_id": "sip", "operation": "sip_integration", "cost": 1.5}
ASSIGN = {"task_id": "t-1", "required_capabilities": ["integration:sip"]}
TRIP = {"swarm_id": "sip", "reason": "manual_override", "requested_by": "ops"}
REGISTER = {
    "swarm_id": "sip",
    "capabilities": ["integration:sip"],
    "cost_per_hour": 15.0,
    "reputation_score": 0.95,
    "current_budget_remaining": 10.0,
    "model": "sonnet",
}
SUBJECT_PREFIX_PATTERN = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\Z"
POLICY_NAME_PATTERN = r"^[a-z][a-z0-9_-]*\Z"
HOSTILE_NAMES = ["\u200b", "mallory\n", "\u202eevil", "a\x00b", "   ", "\u3164", "x\u2028y", "\ufeffalice"]


def refusal(pattern: str, path: str) -> str:
    """msgspec's message for a string that does not match `pattern`, at `path`."""
    return f"Expected `str` matching regex {pattern!r} - at `{path}`"


def decode_error(kind: type[Any], body: dict[str, Any]) -> str:
    """The message of the ValidationError that decoding `body` (as JSON) into `kind` raises."""
    with pytest.raises(msgspec.ValidationError) as raised:
        msgspec.json.decode(json.dumps(body).encode(), type=kind)
    return str(raised.value)


def unicode_chars(*categories: str) -> list[str]:
    """Every character of the given general categories in this interpreter's Unicode database."""
    return [chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) in categories]


def patterns(node: Any) -> list[str]:
    """Every `pattern` inside a JSON Schema."""
    if isinstance(node, dict):
        own = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
        return own + [p for value in node.values() for p in patterns(value)]
    if isinstance(node, list):
        return [p for value in node for p in patterns(value)]
    return []


@contextmanager
def root_log(fmt: str) -> Iterator[io.StringIO]:
    """The root logger set up as `governor run --log-format FMT` does, writing to the stream it yields."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        setup_logging("INFO", fmt)
        root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
        yield stream
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


class TestRequestNames:
    @pytest.mark.parametrize("name", HOSTILE_NAMES, ids=ascii)
    def test_hostile_approver_is_refused_at_its_path(self, name: str) -> None:
        """A reset approved by an invisible, blank, multi-line or bidi-reversed name fails at `$.approved_by`."""
        assert decode_error(ResetRequest, {**RESET, "approved_by": name}) == refusal(NAME_PATTERN, "$.approved_by")

    @pytest.mark.parametrize(
        ("kind", "body", "field", "path"),
        [
            (TripRequest, TRIP, "requested_by", "$.requested_by"),
            (AssignRequest, ASSIGN, "task_id", "$.task_id"),
            (CostRequest, COST, "operation", "$.operation"),
            (CostRequest, COST, "task_id", "$.task_id"),
            (CostRequest, COST, "event_id", "$.event_id"),
            (RegisterRequest, REGISTER, "model", "$.model"),
        ],
    )
    def test_every_name_field_refuses_a_newline(
        self, kind: type[Any], body: dict[str, Any], field: str, path: str
    ) -> None:
        """Requester, task id, operation, event id and model refuse a trailing newline, naming the field."""
        assert decode_error(kind, {**body, field: "ops\n"}) == refusal(NAME_PATTERN, path)

    def test_swarm_id_with_trailing_newline_is_refused(self) -> None:
        """`sip\\n` is not a swarm id (`$` would have let it through before the newline)."""
        assert decode_error(ResetRequest, {**RESET, "swarm_id": "sip\n"}) == refusal(SWARM_ID_PATTERN, "$.swarm_id")

    def test_capability_with_trailing_newline_is_refused(self) -> None:
        """A required capability `integration:sip\\n` fails at its index in the list."""
        body = {**ASSIGN, "required_capabilities": ["integration:ndi", "integration:sip\n"]}
        assert decode_error(AssignRequest, body) == refusal(CAPABILITY_NAME_PATTERN, "$.required_capabilities[1]")

    def test_registered_capability_with_bidi_override_is_refused(self) -> None:
        """A swarm cannot register a capability holding a right-to-left override."""
        body = {**REGISTER, "capabilities": ["integration:\u202epis"]}
        assert decode_error(RegisterRequest, body) == refusal(CAPABILITY_NAME_PATTERN, "$.capabilities[0]")

    @pytest.mark.parametrize("trace_id", ["a\r\nb", "a b", "\u202e1", "t\n", "x" * 129, ""], ids=ascii)
    def test_hostile_body_trace_id_is_refused(self, trace_id: str) -> None:
        """A body trace id with CR/LF, a space, a bidi override, a final newline, or outside 1..128 fails."""
        message = decode_error(ResetRequest, {**RESET, "trace_id": trace_id})
        expected = {
            129: "Expected `str` of length <= 128 - at `$.trace_id`",
            0: "Expected `str` of length >= 1 - at `$.trace_id`",
        }.get(len(trace_id), refusal(TRACE_ID_PATTERN, "$.trace_id"))
        assert message == expected

    @pytest.mark.parametrize("name", ["José", "运维", "Jane Doe", " x ", "ops-bot@example.com", "😀 launcher", "❤️"])
    def test_ordinary_names_pass(self, name: str) -> None:
        """Letters of any script, inner and outer spaces, symbols and emoji (with their variation selector) pass."""
        request = msgspec.json.decode(json.dumps({**RESET, "approved_by": name}).encode(), type=ResetRequest)
        assert request.approved_by == name

    @pytest.mark.parametrize(
        "trace_id",
        [
            os.urandom(6).hex() + f"{1:08x}",  # what the worker makes (worker.service.bus.Bus.new_trace_id)
            str(uuid.uuid4()),
            uuid.uuid4().hex,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # W3C traceparent
            "a+b/c=d:e@f.g_h",
            "x" * 128,
        ],
    )
    def test_ordinary_trace_ids_pass(self, trace_id: str) -> None:
        """The worker's own hex ids, uuids, W3C traceparents and base64 text are trace ids."""
        request = msgspec.json.decode(json.dumps({**COST, "trace_id": trace_id}).encode(), type=CostRequest)
        assert request.trace_id == trace_id


class TestConfigNames:
    @pytest.mark.parametrize(
        ("raw", "pattern", "path"),
        [
            ({"capabilities": ["integration:sip\n"]}, CAPABILITY_DEF_PATTERN, "$.capabilities[0]"),
            ({"governor": {"subject_prefix": "governor\n"}}, SUBJECT_PREFIX_PATTERN, "$.governor.subject_prefix"),
            ({"swarms": [{**REGISTER, "swarm_id": "sip\n"}]}, SWARM_ID_PATTERN, "$.swarms[0].swarm_id"),
            (
                {"swarms": [{**REGISTER, "capabilities": ["\u200b"]}]},
                CAPABILITY_NAME_PATTERN,
                "$.swarms[0].capabilities[0]",
            ),
            ({"rules": [{"match": "integration:*\n"}]}, NAME_PATTERN, "$.rules[0].match"),
            ({"rules": [{"match": "*", "models": ["sonnet\u202e"]}]}, NAME_PATTERN, "$.rules[0].models[0]"),
        ],
        ids=["capability", "subject_prefix", "swarm_id", "swarm capability", "rule match", "rule model"],
    )
    def test_config_refuses_hostile_names(self, raw: dict[str, Any], pattern: str, path: str) -> None:
        """Capability definitions, the subject prefix, swarm ids and rules refuse newlines and invisible characters."""
        swarms = raw.get("swarms")
        if swarms:  # a config swarm has an initial budget, not a remaining one
            raw = {"swarms": [{k: v for k, v in s.items() if k != "current_budget_remaining"} for s in swarms]}
        with pytest.raises(msgspec.ValidationError) as raised:
            msgspec.convert(raw, Config)
        assert str(raised.value) == refusal(pattern, path)

    def test_policy_name_with_trailing_newline_is_refused(self) -> None:
        """A named policy `strict\\n` is refused as a key of `policies:`."""
        with pytest.raises(msgspec.ValidationError) as raised:
            msgspec.convert({"policies": {"strict\n": {}}}, Config)
        assert str(raised.value) == refusal(POLICY_NAME_PATTERN, "key` in `$.policies")


class TestCharacterClasses:
    def test_no_pattern_ends_in_dollar(self) -> None:
        """Every regex of the requests, the config and the ledger ends in `\\Z`: none matches before a final newline."""
        from worker.service.dispatch import REQUEST_TYPES

        _, components = msgspec.json.schema_components(
            [*REQUEST_TYPES.values(), Config, LedgerBatch, Reload, CoreState]
        )
        found = sorted(set(patterns(components)))
        assert len(found) >= 5
        assert [p for p in found if not p.endswith(r"\Z") or "$" in p] == []

    def test_invisible_covers_every_control_format_and_separator(self) -> None:
        """Every Cc, Cf, Zl, Zp and Cs character of this interpreter's Unicode database is in INVISIBLE."""
        invisible = re.compile(f"[{INVISIBLE}]")
        missing = [f"U+{ord(c):04X}" for c in unicode_chars("Cc", "Cf", "Zl", "Zp", "Cs") if not invisible.match(c)]
        assert missing == []

    def test_invisible_holds_nothing_that_shows(self) -> None:
        """INVISIBLE holds only controls, format characters, separators and surrogates (or unassigned code points)."""
        invisible = re.compile(f"[{INVISIBLE}]")
        allowed = {"Cc", "Cf", "Zl", "Zp", "Cs", "Cn"}
        held = {unicodedata.category(chr(c)) for c in range(sys.maxunicode + 1) if invisible.match(chr(c))}
        assert held <= allowed

    def test_every_space_alone_is_not_a_name(self) -> None:
        """A name made only of spaces (any Zs character, repeated) does not match NAME_PATTERN."""
        name = re.compile(NAME_PATTERN)
        accepted = [f"U+{ord(c):04X}" for c in unicode_chars("Zs") if name.search(c * 3)]
        assert accepted == []

    def test_blank_is_allowed_inside_a_name_never_alone(self) -> None:
        """Each visible BLANK character may stand between two letters, and a name of only that character is refused."""
        name, blank, invisible = re.compile(NAME_PATTERN), re.compile(f"[{BLANK}]"), re.compile(f"[{INVISIBLE}]")
        blanks = [chr(c) for c in range(sys.maxunicode + 1) if blank.match(chr(c)) and not invisible.match(chr(c))]
        refused_inside = [f"U+{ord(c):04X}" for c in blanks if not name.search(f"a{c}b")]
        accepted_alone = [f"U+{ord(c):04X}" for c in blanks if name.search(c)]
        assert (len(blanks), refused_inside, accepted_alone) == (39, [], [])

    def test_longest_refusal_fits_an_error_header(self) -> None:
        """The refusal of a name at the longest request path fits the 512 characters of `Nats-Service-Error`."""
        body = {**REGISTER, "capabilities": ["integration:sip"] * 63 + ["\u200b"]}
        message = decode_error(RegisterRequest, body)
        assert (message, len(message) <= 512) == (refusal(CAPABILITY_NAME_PATTERN, "$.capabilities[63]"), True)


@pytest.fixture
def text_log() -> Iterator[io.StringIO]:
    """The root logger as `governor run --log-format text` sets it up, writing to the returned stream."""
    with root_log("text") as stream:
        yield stream


class TestTextLog:
    def test_escape_writes_each_unsafe_character_as_an_escape(self) -> None:
        """CR, LF, tab, ESC, NUL, C1, bidi, zero-width, separators and tags become escapes; the rest is kept."""
        text = "a\r\nb\tc\x1b[2J\x00\x85\u202eevil\u200b\u2028\U000e0041 José 运维 \\n"
        assert escape(text) == ("a\\r\\nb\\tc\\x1b[2J\\x00\\x85\\u202eevil\\u200b\\u2028\\U000e0041 José 运维 \\n")

    def test_hostile_trace_id_and_message_stay_on_one_line(self, text_log: io.StringIO) -> None:
        """A trace id and a message holding CR/LF, ESC and a bidi override print as one escaped line."""
        forged = "x\r\n2024-01-01 00:00:00,000 INFO if_governor.bus [t] reset approved"
        logger = logging.getLogger("if_governor.test")
        logger.warning("refused %s: %s", "governor.reset", f"\x1b[31m{forged}\u202e", extra={"trace_id": forged})
        lines = text_log.getvalue().splitlines()
        escaped = "x\\r\\n2024-01-01 00:00:00,000 INFO if_governor.bus [t] reset approved"
        assert len(lines) == 1
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} .*", lines[0])
        assert lines[0].split(" ", 2)[2] == (
            f"WARNING if_governor.test [{escaped}] refused governor.reset: \\x1b[31m{escaped}\\u202e"
        )

    def test_line_without_trace_id_shows_a_dash(self, text_log: io.StringIO) -> None:
        """A record logged without a trace id prints `[-]`, as before."""
        logging.getLogger("if_governor.test").info("serving")
        assert text_log.getvalue().split(" ", 2)[2] == "INFO if_governor.test [-] serving\n"

    def test_traceback_lines_are_indented_and_escaped(self, text_log: io.StringIO) -> None:
        """An exception's lines follow the record indented, its message escaped: none starts like a record."""
        try:
            raise ValueError("bad\n2024-01-01 00:00:00,000 INFO forged\x1b")
        except ValueError:
            logging.getLogger("if_governor.test").exception("failed")
        lines = text_log.getvalue().splitlines()
        assert lines[0].split(" ", 2)[2] == "ERROR if_governor.test [-] failed"
        assert lines[1] == "  Traceback (most recent call last):"
        assert lines[-2:] == ["  ValueError: bad", "  2024-01-01 00:00:00,000 INFO forged\\x1b"]
        assert [line for line in lines[1:] if not line.startswith("  ")] == []


class TestJsonLog:
    def test_hostile_strings_are_escaped_by_json(self) -> None:
        """The JSON formatter writes one ASCII line whose fields decode back to exactly what was logged."""
        hostile = "a\r\nb\x1b\u202e\u2028\u200b"
        with root_log("json") as stream:
            logging.getLogger("if_governor.test").info("msg %s", hostile, extra={"trace_id": hostile})
        text = stream.getvalue()
        entry = json.loads(text)
        assert (text.count("\n"), text.isascii()) == (1, True)
        assert (entry["trace_id"], entry["msg"]) == (hostile, f"msg {hostile}")
