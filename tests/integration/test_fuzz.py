"""Hostile input on every request subject: the worker answers each message with a valid error and changes nothing.

Hypothesis draws the messages up front (no I/O while drawing); the test then sends them, many at a time, to a
durable worker on a real nats-server and judges every reply. The registry is built so that no drawn message can
change state: every state-changing body is shaped to fail on its *key* field (an unregistered swarm, an already
registered one for `register`, an unknown capability for `assign`), and mutations of the key field only ever
produce invalid values. Only `status` and `history` (read-only) may answer `ok`.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec
import nats
import nats.errors
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER

from schemas.types import MAX_USD
from tests.factories import make_config
from tests.integration.helpers import WorkerFactory
from worker.client import ERRORS_BY_CODE
from worker.ops.natsserver import NatsServer
from worker.service.app import Worker
from worker.service.dispatch import READ_ONLY, REQUEST_TYPES
from worker.service.effects import TRACE_HEADER

MESSAGES_PER_RUN = 10_000
IN_FLIGHT = 500
"""Requests sent at once; below the default mailbox (10,000), so `overloaded` is allowed but not expected."""
REPLY_TIMEOUT = 10.0
RUN_TIMEOUT = 90.0

DOCUMENTED_CODES = frozenset(
    {
        "invalid_request",
        "invalid_cost",
        "invalid_budget",
        "unknown_capability",
        "unknown_swarm",
        "unknown_group",
        "unknown_task",
        "task_closed",
        "task_limit",
        "not_tripped",
        "already_tripped",
        "already_registered",
        "overloaded",
        "deadline_exceeded",
    }
)
ERROR_HEADERS = frozenset({ERROR_HEADER, ERROR_CODE_HEADER, TRACE_HEADER})

SUBJECTS = sorted(REQUEST_TYPES)
REGISTERED = "fz-alpha-7c1e"
UNREGISTERED = "fz-nobody-0b6f"
FUZZ_SWARMS: list[dict[str, Any]] = [
    {
        "swarm_id": REGISTERED,
        "capabilities": ["integration:sip", "code-analysis:rust"],
        "cost_per_hour": 4.0,
        "reputation_score": 0.9,
        "initial_budget": 50.0,
        "model": "sonnet",
    },
    {
        "swarm_id": "fz-beta-93d0",
        "capabilities": ["integration:ndi"],
        "cost_per_hour": 1.0,
        "reputation_score": 0.7,
        "model": "haiku",
    },
]

#: A well-formed body per subject that must still be refused, and the code it is refused with.
TEMPLATES: dict[str, tuple[dict[str, Any], str]] = {
    "assign": (
        {"task_id": "t-1", "required_capabilities": ["fuzz:no-such-skill"], "max_cost": 5.0, "max_swarms": 1},
        "unknown_capability",
    ),
    "cost": (
        {"swarm_id": UNREGISTERED, "operation": "op", "cost": 1.0, "event_id": "e-1", "task_id": "t-1"},
        "unknown_swarm",
    ),
    "reset": (
        {"swarm_id": UNREGISTERED, "new_budget": 10.0, "approved_by": "alice", "event_id": "e-2"},
        "unknown_swarm",
    ),
    "trip": ({"swarm_id": UNREGISTERED, "reason": "manual_override", "requested_by": "alice"}, "unknown_swarm"),
    "failure": ({"swarm_id": UNREGISTERED, "task_id": "t-1", "error": "boom", "event_id": "e-3"}, "unknown_swarm"),
    "success": ({"swarm_id": UNREGISTERED, "task_id": "t-1", "event_id": "e-4"}, "unknown_swarm"),
    "register": (
        {
            "swarm_id": REGISTERED,
            "capabilities": ["integration:sip"],
            "cost_per_hour": 1.0,
            "reputation_score": 0.5,
            "current_budget_remaining": 10.0,
            "model": "m",
        },
        "already_registered",
    ),
    "deregister": ({"swarm_id": UNREGISTERED}, "unknown_swarm"),
    "complete": ({"task_id": "fz-no-task-3a1f", "outcome": "success", "event_id": "e-6"}, "unknown_task"),
    "update": ({"swarm_id": UNREGISTERED, "reputation_score": 0.5, "requested_by": "alice"}, "unknown_swarm"),
    "topup": ({"swarm_id": UNREGISTERED, "amount": 5.0, "approved_by": "alice", "event_id": "e-5"}, "unknown_swarm"),
    "reload": ({}, "invalid_request"),  # the worker under test was started without a config file
    "status": ({}, "ok"),
    "history": ({"limit": 10}, "ok"),
}
#: The field whose value guarantees the refusal; mutations give it invalid values only.
KEY_FIELD = {
    "assign": "required_capabilities",
    "complete": "task_id",
    **{s: "swarm_id" for s in SUBJECTS if "swarm_id" in TEMPLATES[s][0]},
}


class Message(NamedTuple):
    subject: str
    body: bytes
    trace_header: str | None


# -- strategies -----------------------------------------------------------------------------------------------

EDGE_NUMBERS: list[Any] = [
    0,
    -0.0,
    -1,
    5e-324,
    1e-320,
    MAX_USD,
    math.nextafter(MAX_USD, math.inf),
    1e11,
    math.nextafter(1e11, math.inf),
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63) - 1,
    10**400,
    -(10**400),
    1.7976931348623157e308,
    -1.7976931348623157e308,
    math.nan,
    math.inf,
    -math.inf,
]
NUMBER_LITERALS = [
    b"NaN",
    b"-NaN",
    b"nan",
    b"Infinity",
    b"-Infinity",
    b"inf",
    b"1e999",
    b"-1e999",
    b"1" + b"0" * 400,
    b"-" + b"9" * 400,
    b"0." + b"0" * 400 + b"1",
    b"1e-999",
    b"0x10",
    b"01",
    b"1.",
    b".5",
    b"+1",
    b"1e",
    b"--1",
    b"1_000",
    b"true",
    b"null",
]
BAD_UTF8 = [b"\xff", b"\xfe", b"\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x80"]
EMPTY_BODIES = [b"", b" ", b"\n", b"\t\r\n ", b"\x00", b"\xef\xbb\xbf"]

keys = st.text(max_size=12)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=40),
    st.sampled_from(EDGE_NUMBERS),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(keys, inner, max_size=6)),
    max_leaves=20,
)
long_text = st.one_of(
    st.integers(min_value=0, max_value=20_000).map(lambda n: "x" * n),
    st.sampled_from([1, 64, 65, 127, 128, 129, 255, 256, 257, 4095, 4096, 4097]).map(lambda n: "é" * n),
)
long_lists = st.tuples(st.integers(min_value=0, max_value=3_000), scalars).map(lambda t: [t[1]] * t[0])
hostile = st.one_of(json_values, long_text, long_lists, st.sampled_from(EDGE_NUMBERS))
non_strings = json_values.filter(lambda v: not isinstance(v, str))

#: Values the key field can never accept.
invalid_swarm_ids = st.one_of(
    non_strings,
    st.just(""),
    st.integers(min_value=257, max_value=5_000).map(lambda n: "a" * n),
    st.text(max_size=40).map(lambda s: "-" + s),  # must start with a letter or digit
    st.text(max_size=40).map(lambda s: "a b" + s),  # no spaces
    st.sampled_from(["é", "a\nb", "a\x00b", "😀", "a\\b"]),
)
invalid_capabilities = st.one_of(
    non_strings.filter(lambda v: not isinstance(v, list)),
    st.just([]),
    st.integers(min_value=65, max_value=2_000).map(lambda n: ["integration:sip"] * n),
    st.tuples(st.lists(st.text(min_size=1, max_size=20), max_size=4), non_strings).map(lambda t: [*t[0], t[1]]),
    st.lists(st.text(min_size=1, max_size=20), max_size=4).map(lambda caps: [*caps, ""]),
    st.lists(st.text(min_size=1, max_size=20), max_size=4).map(lambda caps: [*caps, "x" * 129]),
    st.lists(st.text(min_size=1, max_size=128), min_size=1, max_size=64),  # unknown names
)
invalid_names = st.one_of(  # a task id: visible characters of any script, inner spaces allowed
    non_strings,
    st.just(""),
    st.integers(min_value=257, max_value=5_000).map(lambda n: "a" * n),
    st.sampled_from(["   ", "a\nb", "a\x00b", "\u200b", "\u202e", "a\tb"]),
)
INVALID_KEYS = {"swarm_id": invalid_swarm_ids, "required_capabilities": invalid_capabilities, "task_id": invalid_names}

PLACEHOLDER = "\u2063fuzz-slot\u2063"


def encode(body: Any, ascii_only: bool = True) -> bytes:
    """JSON as Python's encoder writes it: big integers exactly, NaN and Infinity as bare literals."""
    return json.dumps(body, ensure_ascii=ascii_only, allow_nan=True).encode()


def with_raw(template: dict[str, Any], field: str, raw: bytes) -> bytes:
    """The template encoded with `field`'s value replaced by raw bytes (which need not be JSON)."""
    return encode({**template, field: PLACEHOLDER}).replace(encode(PLACEHOLDER), raw)


def deep(depth: int, opener: str) -> bytes:
    """`depth` nested arrays or objects."""
    if opener == "[":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


def structured(subject: str) -> st.SearchStrategy[bytes]:
    """JSON bodies: the template, with unknown fields, a missing field, a hostile value, an invalid key, or junk."""
    template, _ = TEMPLATES[subject]
    fields = [f.name for f in msgspec.structs.fields(REQUEST_TYPES[subject])]
    required = [f.name for f in msgspec.structs.fields(REQUEST_TYPES[subject]) if f.required]
    key = KEY_FIELD.get(subject)
    others = [f for f in fields if f != key]
    options: list[st.SearchStrategy[Any]] = [
        st.just(template),
        st.dictionaries(keys.filter(lambda k: k not in fields), hostile, min_size=1, max_size=3).map(
            lambda extra: {**template, **extra}
        ),
        st.tuples(st.sampled_from(others), hostile).map(lambda t: {**template, t[0]: t[1]}),
        st.tuples(st.sampled_from(others), st.sampled_from(EDGE_NUMBERS)).map(lambda t: {**template, t[0]: t[1]}),
        st.dictionaries(st.one_of(st.sampled_from(fields), keys), json_values, max_size=8),
        json_values,
    ]
    if key is not None:
        options.append(INVALID_KEYS[key].map(lambda v: {**template, key: v}))
    if required:
        options.append(st.sampled_from(required).map(lambda f: {k: v for k, v in template.items() if k != f}))
    return st.tuples(st.one_of(options), st.booleans()).map(lambda t: encode(t[0], t[1]))


def raw(subject: str) -> st.SearchStrategy[bytes]:
    """Bodies that are not valid JSON documents, or not valid UTF-8, or oddly shaped."""
    template, _ = TEMPLATES[subject]
    fields = [f.name for f in msgspec.structs.fields(REQUEST_TYPES[subject])]
    target = st.sampled_from([*fields, "zz_unknown"])
    whole = encode(template)
    return st.one_of(
        st.binary(max_size=512),
        structured(subject).flatmap(lambda b: st.integers(0, max(0, len(b) - 1)).map(lambda i: b[:i])),
        st.tuples(target, st.sampled_from(NUMBER_LITERALS)).map(lambda t: with_raw(template, t[0], t[1])),
        st.tuples(target, st.binary(max_size=16), st.sampled_from(BAD_UTF8), st.binary(max_size=16)).map(
            lambda t: with_raw(template, t[0], b'"' + t[1] + t[2] + t[3] + b'"')
        ),
        st.tuples(st.sampled_from(BAD_UTF8), st.integers(0, len(whole))).map(
            lambda t: whole[: t[1]] + t[0] + whole[t[1] :]
        ),
        st.sampled_from(EMPTY_BODIES),
        st.tuples(st.integers(1, 100_000), st.sampled_from(["[", "{"]), st.one_of(st.none(), target)).map(
            lambda t: deep(t[0], t[1]) if t[2] is None else with_raw(template, t[2], deep(t[0], t[1]))
        ),
        st.sampled_from([b"x", b"}", b"{}", b",", b"\x00", b" []"]).map(lambda tail: whole + tail),
        st.just(b"\xef\xbb\xbf" + whole),
    )


trace_headers = st.one_of(
    st.none(),
    st.none(),
    st.none(),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200),
)
BODIES = {s: st.one_of(structured(s), raw(s)) for s in SUBJECTS}
messages = st.sampled_from(SUBJECTS).flatmap(
    lambda s: st.tuples(st.just(s), BODIES[s], trace_headers).map(lambda t: Message(*t))
)


def draw(strategy: st.SearchStrategy[Any], count: int, batch: int = 50) -> list[Any]:
    """At least `count` values drawn by hypothesis (generation only: no shrinking, no database, no I/O)."""
    drawn: list[Any] = []

    @settings(
        max_examples=max(1, count // batch),
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
    )
    @given(st.lists(strategy, min_size=batch, max_size=batch))
    def collect(values: list[Any]) -> None:
        drawn.extend(values)

    for _ in range(10):
        if len(drawn) >= count:
            break
        collect()
    return drawn


# -- sending and judging ----------------------------------------------------------------------------------------


@dataclass
class Verdicts:
    """What came back: counts per outcome, and every wrong answer with its input."""

    sent: int = 0
    replies: int = 0
    ok: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    wrong: list[str] = field(default_factory=list)
    stalled: bool = False


def judge(message: Message, reply: Msg) -> str | None:
    """None when the reply is acceptable, else what is wrong with it."""
    try:
        body = msgspec.json.decode(reply.data)
    except msgspec.DecodeError:
        return f"reply is not JSON: data={reply.data[:200]!r} headers={reply.headers}"
    if not isinstance(body, dict) or not isinstance(body.get("ok"), bool):
        return f"reply has no boolean `ok`: {reply.data[:200]!r}"
    if body["ok"]:
        return None if message.subject in READ_ONLY else f"accepted: {reply.data[:200]!r}"
    error = body.get("error")
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return f"error reply without error.code/message: {reply.data[:200]!r}"
    code = error.get("code")
    if code not in DOCUMENTED_CODES:
        return f"undocumented code {code!r}: {reply.data[:300]!r}"
    headers = reply.headers or {}
    if set(headers) != ERROR_HEADERS:
        return f"error headers {sorted(headers)} instead of {sorted(ERROR_HEADERS)}: {headers!r}"
    if headers[ERROR_CODE_HEADER] != str(ERRORS_BY_CODE[code].status):
        return f"{ERROR_CODE_HEADER} {headers[ERROR_CODE_HEADER]!r} for code {code}"
    return None


async def send_all(nc: Client, batch: list[Message], verdicts: Verdicts) -> None:
    """Send every message, `IN_FLIGHT` at a time, and judge each reply; stop early at the first silence."""

    async def one(message: Message) -> None:
        headers = {TRACE_HEADER: message.trace_header} if message.trace_header is not None else None
        try:
            reply = await nc.request(
                f"governor.{message.subject}", message.body, timeout=REPLY_TIMEOUT, headers=headers
            )
        except nats.errors.TimeoutError:
            verdicts.stalled = True
            verdicts.wrong.append(f"no reply within {REPLY_TIMEOUT:g}s to {describe(message)}")
            return
        verdicts.replies += 1
        problem = judge(message, reply)
        if problem is not None:
            verdicts.wrong.append(f"{problem}\n    input: {describe(message)}")
            return
        body = msgspec.json.decode(reply.data)
        if body["ok"]:
            verdicts.ok += 1
        else:
            verdicts.codes[body["error"]["code"]] = verdicts.codes.get(body["error"]["code"], 0) + 1

    async with asyncio.timeout(RUN_TIMEOUT):
        for start in range(0, len(batch), IN_FLIGHT):
            chunk = batch[start : start + IN_FLIGHT]
            verdicts.sent += len(chunk)
            await asyncio.gather(*(one(m) for m in chunk))
            if verdicts.stalled:
                return


def describe(message: Message) -> str:
    body = message.body if len(message.body) <= 200 else message.body[:200] + b"...(%d bytes)" % len(message.body)
    return f"governor.{message.subject} body={body!r} trace_header={message.trace_header!r}"


def report(verdicts: Verdicts, limit: int = 15) -> str:
    shown = "\n".join(verdicts.wrong[:limit])
    return f"{len(verdicts.wrong)} wrong answers out of {verdicts.sent} messages; first {limit}:\n{shown}"


def near(subject: str, size: int, shape: int) -> bytes:
    """A body of at most `size` bytes (within a few of it) in one of four shapes: a too-long string in a known
    field, a huge list in an unknown field, deep nesting in a known field, or invalid UTF-8 throughout."""
    template, _ = TEMPLATES[subject]
    if shape == 0:
        room = size - len(encode({**template, "trace_id": ""}))
        return encode({**template, "trace_id": "x" * room})
    if shape == 1:
        room = size - len(encode({**template, "zz_padding": []}))
        return encode({**template, "zz_padding": ["integration:sip"] * (room // 19)})
    if shape == 2:
        room = size - len(with_raw(template, "trace_id", b""))
        return with_raw(template, "trace_id", deep(room // 2, "["))
    return b"\xff" * size


# -- fixtures ----------------------------------------------------------------------------------------------------


@dataclass
class Target:
    worker: Worker
    nc: Client

    async def snapshot(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The status and the full history, trace ids blanked."""
        status = msgspec.json.decode((await self.nc.request("governor.status", b"{}", timeout=5)).data)
        history = msgspec.json.decode((await self.nc.request("governor.history", b"{}", timeout=5)).data)
        assert status["ok"] is True and history["ok"] is True, (status, history)
        return {**status, "trace_id": ""}, {**history, "trace_id": ""}


@pytest.fixture
async def target(start_worker: WorkerFactory, nats_server: NatsServer) -> AsyncIterator[Target]:
    """A durable worker with the fuzz registry, and a connection opened after it serves."""
    worker = await start_worker(make_config(FUZZ_SWARMS))
    nc = await nats.connect(nats_server.url, max_reconnect_attempts=0)
    try:
        yield Target(worker, nc)
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def hostile_batch() -> list[Message]:
    """The drawn messages, drawn before any worker starts (drawing blocks; a blocked loop would lose the lease)."""
    return draw(messages, MESSAGES_PER_RUN)


class TestTemplates:
    @pytest.mark.parametrize("subject", SUBJECTS)
    async def test_template_is_refused_on_its_key_field(self, target: Target, subject: str) -> None:
        """Each subject's well-formed fuzz template is answered with the code the fuzz design relies on."""
        template, expected = TEMPLATES[subject]
        reply = msgspec.json.decode((await target.nc.request(f"governor.{subject}", encode(template), timeout=5)).data)
        assert (reply["error"]["code"] if not reply["ok"] else "ok") == expected


class TestHostileInput:
    async def test_ten_thousand_hostile_messages_on_every_subject(
        self, hostile_batch: list[Message], target: Target
    ) -> None:
        """10,000 drawn messages across every subject each get a documented error (or a read-only ok) and change
        nothing."""
        batch = hostile_batch
        assert len(batch) >= MESSAGES_PER_RUN
        assert {m.subject for m in batch} == set(SUBJECTS)
        before = await target.snapshot()
        verdicts = Verdicts()
        started = time.monotonic()
        await send_all(target.nc, batch, verdicts)
        elapsed = time.monotonic() - started
        assert verdicts.wrong == [], report(verdicts)
        assert (verdicts.sent, verdicts.replies) == (len(batch), len(batch))
        assert target.worker.ready
        assert await target.snapshot() == before
        assert elapsed < RUN_TIMEOUT

    async def test_payloads_near_max_payload(self, target: Target) -> None:
        """Bodies within 4 KiB of the server's max_payload, on every subject, are refused like any other."""
        limit = target.nc.max_payload

        big = st.tuples(st.sampled_from(SUBJECTS), st.integers(limit - 4096, limit - 1), st.integers(0, 3)).map(
            lambda t: Message(t[0], near(t[0], t[1], t[2]), None)
        )
        batch = draw(big, 60, batch=10)
        before = await target.snapshot()
        verdicts = Verdicts()
        await send_all(target.nc, batch, verdicts)
        assert verdicts.wrong == [], report(verdicts)
        assert verdicts.replies == len(batch)
        assert target.worker.ready
        assert await target.snapshot() == before

    async def test_payload_over_max_payload_never_reaches_the_worker(
        self, target: Target, nats_server: NatsServer
    ) -> None:
        """A publish one byte over max_payload is refused by the server itself; the worker never sees it."""
        received = target.worker.metrics.registry.get_sample_value
        before = received("if_governor_requests_total", {"subject": "cost"})
        limit = target.nc.max_payload
        reader, writer = await asyncio.open_connection(nats_server.host, nats_server.port)
        try:
            async with asyncio.timeout(5):
                info = await reader.readline()
                assert info.startswith(b"INFO ")
                writer.write(b'CONNECT {"verbose":false,"pedantic":false}\r\n')
                writer.write(b"PUB governor.cost _INBOX.over %d\r\n" % (limit + 1))
                await writer.drain()
                answer = await reader.readline()
        finally:
            writer.close()
        assert answer == b"-ERR 'Maximum Payload Violation'\r\n"
        assert received("if_governor_requests_total", {"subject": "cost"}) == before
        reply = msgspec.json.decode((await target.nc.request("governor.status", b"", timeout=5)).data)
        assert reply["ok"] is True
