"""The contract for other languages: deploy/schemas/*.json and deploy/asyncapi.yaml are what `governor schema` makes
now, they are valid, and the payloads the governor really sends validate against them.

When a Struct or an endpoint (schemas/endpoints.py) changes, these tests fail until the files are
generated again: `governor schema` (or `python -m worker schema`) from the repository root.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from prometheus_client import CollectorRegistry

from schemas.events import EVENT_SUBJECTS, Event, WitnessRecord
from schemas.ledger import Configure, Reload
from schemas.replies import ErrorBody, ErrorReply
from worker.core.governor import Governor
from worker.ops import contract as schema
from worker.ops.metrics import Metrics
from worker.service.bus import Bus
from worker.service.dispatch import DECODERS, REQUEST_TYPES, apply
from worker.service.mailbox import Mailbox

try:
    import jsonschema
except ImportError:  # the structural checks still run; the payload checks skip and say why
    jsonschema = None

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
README = ROOT / "README.md"
REGENERATE = "run `governor schema` (python -m worker schema) from the repository root and commit the result"
NOW = 1_700_000_000.0

SIP = {
    "swarm_id": "session-4-sip",
    "capabilities": ["integration:sip", "integration:h323", "architecture:security"],
    "cost_per_hour": 15.0,
    "reputation_score": 0.95,
    "current_budget_remaining": 25.0,
    "model": "sonnet",
    "budget_group": "team",
}
NDI = {
    "swarm_id": "session-1-ndi",
    "capabilities": ["integration:ndi", "code-analysis:cpp"],
    "cost_per_hour": 2.0,
    "reputation_score": 0.9,
    "current_budget_remaining": 25.0,
    "model": "haiku",
}

#: The scenario's budget group: SIP's costs exhaust it, a top-up unblocks it, its hour refills it.
BUDGETS = {"id": "team", "limit": 30.0, "period": "1h", "forecast_alert": True}

#: A session through the core as wire requests: (endpoint, body, seconds after NOW). It makes every kind of event.
SCENARIO: list[tuple[str, dict[str, Any], float]] = [
    ("register", SIP, 0),
    ("register", NDI, 0),
    ("assign", {"task_id": "t-1", "required_capabilities": ["integration:sip"], "max_cost": 20.0}, 1),
    ("assign", {"task_id": "t-2", "required_capabilities": ["integration:ndi", "integration:sip"]}, 2),
    ("cost", {"swarm_id": "session-4-sip", "operation": "sip_integration", "cost": 20.0, "task_id": "t-1"}, 3),
    ("cost", {"swarm_id": "session-4-sip", "operation": "sip_integration", "cost": 6.0, "event_id": "e-1"}, 4),
    ("reset", {"swarm_id": "session-4-sip", "new_budget": 25.0, "approved_by": "alice"}, 5),
    ("cost", {"swarm_id": "session-4-sip", "operation": "sip_integration", "cost": 4.0}, 5),
    ("topup", {"group": "team", "amount": 10.0, "approved_by": "alice", "event_id": "top-1"}, 5),
    ("failure", {"swarm_id": "session-1-ndi", "task_id": "t-3", "error": "timeout"}, 6),
    ("failure", {"swarm_id": "session-1-ndi", "task_id": "t-4", "error": "timeout"}, 7),
    ("failure", {"swarm_id": "session-1-ndi", "task_id": "t-5", "error": "timeout"}, 8),
    ("trip", {"swarm_id": "session-4-sip", "reason": "manual_override", "requested_by": "ops"}, 9),
    ("assign", {"task_id": "t-6", "required_capabilities": ["integration:ndi"]}, 3600),
    ("success", {"swarm_id": "session-1-ndi", "task_id": "t-6"}, 3601),
    ("complete", {"task_id": "t-6", "outcome": "success", "cost": 0.5}, 3601),
    ("update", {"swarm_id": "session-1-ndi", "reputation_score": 0.8, "requested_by": "ops"}, 3601),
    ("reload", {}, 3602),
    ("status", {}, 3602),
    ("history", {"limit": 10}, 3603),
    ("deregister", {"swarm_id": "session-1-ndi"}, 3604),
]


#: What the worker makes of a `reload` request before the core applies it (it re-reads its config file).
RELOADED: dict[str, Any] = {
    "configure": {"policy": {}, "capabilities": [], "budgets": [BUDGETS]},
    "swarms": [
        {**NDI, "swarm_id": "session-2-webrtc", "capabilities": ["integration:webrtc", "docs:technical-writing"]}
    ],
}


def on_disk() -> dict[str, str]:
    """The committed files `governor schema` writes, by path relative to deploy/."""
    files = {f"schemas/{p.name}": p.read_text(encoding="utf-8") for p in sorted((DEPLOY / "schemas").glob("*.json"))}
    if (DEPLOY / "asyncapi.yaml").is_file():
        files["asyncapi.yaml"] = (DEPLOY / "asyncapi.yaml").read_text(encoding="utf-8")
    return files


def load_schema(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((DEPLOY / "schemas" / f"{name}.json").read_text(encoding="utf-8"))
    return document


def load_asyncapi() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DEPLOY / "asyncapi.yaml").read_text(encoding="utf-8"))
    return document


def refs(node: Any) -> list[str]:
    """Every `$ref` value inside `node`."""
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def resolve(document: dict[str, Any], ref: str) -> Any:
    """Follow a local JSON pointer (`#/a/b`) inside `document`; KeyError when it points nowhere."""
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def run_scenario() -> tuple[list[tuple[str, msgspec.Struct]], list[Event]]:
    """Apply SCENARIO to a fresh core; return each (endpoint, reply) and every event it recorded."""
    core = Governor()
    core.apply_configuration(msgspec.convert(RELOADED["configure"], Configure))
    results: list[tuple[str, msgspec.Struct]] = []
    for i, (kind, body, offset) in enumerate(SCENARIO):
        request = DECODERS[kind].decode(json.dumps(body))
        if kind == "reload":
            request = msgspec.convert(RELOADED, Reload)
        results.append((kind, apply(core, request, NOW + offset, f"trace-{i}")))
    return results, core.take_events()


def wire(value: msgspec.Struct) -> Any:
    """What a consumer receives: the Struct encoded as the worker encodes it, then parsed as plain JSON."""
    return json.loads(msgspec.json.encode(value))


@pytest.fixture
def validator() -> Any:
    """`validator(name)` returns a jsonschema validator for deploy/schemas/<name>.json."""
    if jsonschema is None:
        pytest.skip("jsonschema not installed: pip install jsonschema (it belongs in the dev extras)")

    def make(name: str) -> Any:
        return jsonschema.Draft202012Validator(load_schema(name), format_checker=jsonschema.FormatChecker())

    return make


class TestFreshness:
    def test_no_file_is_missing_or_extra(self) -> None:
        """deploy/ holds exactly the files `governor schema` generates: none missing, no stale schema left."""
        generated, committed = set(schema.render()), set(on_disk())
        assert generated - committed == set(), f"missing under deploy/: {sorted(generated - committed)}; {REGENERATE}"
        assert committed - generated == set(), f"stale under deploy/: {sorted(committed - generated)}; {REGENERATE}"

    def test_every_file_is_up_to_date(self) -> None:
        """Each committed file is byte for byte what `worker.ops.contract` generates now."""
        committed = on_disk()
        stale = sorted(path for path, text in schema.render().items() if committed.get(path, text) != text)
        assert stale == [], f"out of date under deploy/: {stale}; {REGENERATE}"

    def test_generation_is_deterministic(self) -> None:
        """Two runs generate the same text, so the files only change when the contract does."""
        assert schema.render() == schema.render()

    def test_write_replaces_stale_schemas(self, tmp_path: Path) -> None:
        """`write` removes a JSON schema that is no longer generated and leaves other files alone."""
        (tmp_path / "schemas").mkdir()
        (tmp_path / "schemas" / "Gone.json").write_text("{}")
        (tmp_path / "schemas" / "README.txt").write_text("kept")
        written = schema.write(tmp_path)
        names = sorted(p.name for p in (tmp_path / "schemas").iterdir())
        assert names == sorted([*(f"{n}.json" for n in schema.json_schemas()), "README.txt"])
        assert len(written) == len(schema.render())
        assert (tmp_path / "asyncapi.yaml").read_text(encoding="utf-8") == schema.render()["asyncapi.yaml"]


class TestJsonSchemas:
    def test_one_document_per_request_reply_and_event(self) -> None:
        """There is a schema for every request, every ok reply, the error reply and every event, named after it."""
        expected = {t.__name__ for t in REQUEST_TYPES.values()}
        expected |= {schema.reply_type(kind).__name__ for kind in REQUEST_TYPES}
        expected |= {"ErrorReply", *(t.__name__ for t in schema.event_types())}
        assert {p.stem for p in (DEPLOY / "schemas").glob("*.json")} == expected

    def test_every_event_type_has_a_subject(self) -> None:
        """Every member of `schemas.events.Event` but the witness record has an event subject."""
        events = set(schema.event_types())
        assert events - {WitnessRecord} == set(EVENT_SUBJECTS)

    @pytest.mark.parametrize("path", sorted((DEPLOY / "schemas").glob("*.json")), ids=lambda p: p.stem)
    def test_structure(self, path: Path) -> None:
        """Each document declares draft 2020-12, describes an object, requires only its properties, and every
        `$ref` resolves inside it."""
        document = json.loads(path.read_text(encoding="utf-8"))
        assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert document["title"] == path.stem
        assert document["type"] == "object"
        assert set(document.get("required", [])) <= set(document["properties"])
        for ref in refs(document):
            assert ref.startswith("#/$defs/"), ref
            assert isinstance(resolve(document, ref), dict), ref

    @pytest.mark.parametrize("path", sorted((DEPLOY / "schemas").glob("*.json")), ids=lambda p: p.stem)
    def test_valid_json_schema(self, path: Path, validator: Any) -> None:
        """Each document is a valid JSON Schema by the draft 2020-12 meta-schema."""
        jsonschema.Draft202012Validator.check_schema(json.loads(path.read_text(encoding="utf-8")))

    def test_requests_refuse_unknown_fields_and_the_rest_may_grow(self) -> None:
        """Request schemas forbid unknown fields; reply and event schemas allow new ones (they only gain fields)."""
        requests = {t.__name__ for t in REQUEST_TYPES.values()}
        for name in schema.json_schemas():
            additional = load_schema(name).get("additionalProperties", True)
            assert additional is (name not in requests), name


class TestPayloads:
    def test_core_events_validate(self, validator: Any) -> None:
        """Every event the core records in a full session, encoded as the worker sends it, validates."""
        _, events = run_scenario()
        for event in events:
            validator(type(event).__name__).validate(wire(event))
        assert {type(e) for e in events} == set(schema.event_types())

    def test_core_replies_validate_and_have_the_documented_type(self, validator: Any) -> None:
        """The core answers each endpoint with the reply type the documents name, and it validates."""
        results, _ = run_scenario()
        for kind, reply in results:
            assert type(reply) is schema.reply_type(kind), kind
            validator(type(reply).__name__).validate(wire(reply))
        missing = set(REQUEST_TYPES) - {kind for kind, _ in results}
        assert missing == set(), f"add a request to SCENARIO for each endpoint: {sorted(missing)}"

    def test_scenario_requests_validate(self, validator: Any) -> None:
        """The requests the scenario sends validate against their endpoint's schema."""
        for kind, body, _ in SCENARIO:
            validator(REQUEST_TYPES[kind].__name__).validate(body)

    @pytest.mark.parametrize(
        ("kind", "body"),
        [
            ("cost", {"swarm_id": "a", "operation": "op", "cost": -1.0}),
            ("cost", {"swarm_id": "a", "operation": "op", "cost": 1.0, "bogus": 1}),
            ("cost", {"swarm_id": "has space", "operation": "op", "cost": 1.0}),
            ("assign", {"task_id": "t", "required_capabilities": []}),
            ("assign", {"task_id": "t", "required_capabilities": ["integration:sip"], "max_swarms": 0}),
            ("reset", {"swarm_id": "a", "new_budget": 0.0, "approved_by": "alice"}),
            ("trip", {"swarm_id": "a", "reason": "bored", "requested_by": "ops"}),
            ("history", {"limit": 0}),
        ],
    )
    def test_schema_refuses_what_the_worker_refuses(self, kind: str, body: dict[str, Any], validator: Any) -> None:
        """A request the worker's decoder refuses is invalid by its schema too."""
        with pytest.raises(msgspec.ValidationError):
            DECODERS[kind].decode(json.dumps(body))
        assert not validator(REQUEST_TYPES[kind].__name__).is_valid(body)

    def test_error_reply_validates(self, validator: Any) -> None:
        """The error reply of every error class validates against ErrorReply."""
        for code in schema.error_statuses():
            reply = ErrorReply(error=ErrorBody(code=code, message="m"), trace_id="t")
            validator("ErrorReply").validate(wire(reply))
        assert not validator("ErrorReply").is_valid({"ok": True, "error": {"code": "x", "message": "m"}})

    def test_readme_examples_validate(self, validator: Any) -> None:
        """The event, witness and error payloads quoted in the README validate against their schemas."""
        by_subject = {f"{schema.PREFIX}.{subject}": t.__name__ for t, subject in EVENT_SUBJECTS.items()}
        line = re.compile(r"(governor\.(?:events|witness)\.[a-z_.]+) (\{.*\})$")
        checked: list[str] = []
        for match in map(line.search, README.read_text(encoding="utf-8").splitlines()):
            if match is None:
                continue
            subject, payload = match.groups()
            name = "WitnessRecord" if subject.startswith("governor.witness.") else by_subject[subject]
            validator(name).validate(json.loads(payload))
            checked.append(name)
        assert {"BreakerTripped", "BreakerReset", "Escalation", "WitnessRecord"} <= set(checked)
        errors = re.findall(r'^\{"ok":false,.*\}$', README.read_text(encoding="utf-8"), flags=re.MULTILINE)
        assert len(errors) >= 1
        for text in errors:
            validator("ErrorReply").validate(json.loads(text))


class _CapturingConnection:
    """Stands in for a NATS connection: records what the bus publishes."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> None:
        self.published.append((subject, payload))


class TestAsyncApi:
    def test_parses_as_asyncapi_3(self) -> None:
        """deploy/asyncapi.yaml is YAML with `asyncapi: 3.0.0`, a NATS server and the service's title."""
        document = load_asyncapi()
        assert document["asyncapi"] == "3.0.0"
        assert document["servers"]["nats"]["protocol"] == "nats"
        assert document["info"]["title"] == "IF.governor"
        assert document["defaultContentType"] == "application/json"

    def test_every_ref_resolves(self) -> None:
        """Every `$ref` in the document points at something in it."""
        document = load_asyncapi()
        for ref in refs(document):
            assert isinstance(resolve(document, ref), dict), ref

    def test_every_request_subject_is_a_channel_with_a_reply(self) -> None:
        """Each endpoint's subject is a channel; its operation is received and replies with the ok or error reply."""
        document = load_asyncapi()
        addresses = {c["address"]: name for name, c in document["channels"].items()}
        for kind, request in REQUEST_TYPES.items():
            channel = addresses[f"governor.{kind}"]
            operation = document["operations"][kind]
            assert operation["action"] == "receive"
            assert operation["channel"] == {"$ref": f"#/channels/{channel}"}
            assert resolve(document, operation["messages"][0]["$ref"]) == {
                "$ref": f"#/components/messages/{request.__name__}"
            }
            reply_channel = resolve(document, operation["reply"]["channel"]["$ref"])
            assert reply_channel["address"] is None
            replies = [resolve(document, r["$ref"])["$ref"] for r in operation["reply"]["messages"]]
            assert replies == [
                f"#/components/messages/{schema.reply_type(kind).__name__}",
                "#/components/messages/ErrorReply",
            ]

    def test_event_and_witness_channels(self) -> None:
        """Each event has its subject as a channel the governor sends on; witness records have a parameterised one."""
        document = load_asyncapi()
        sent = {
            document["channels"][op["channel"]["$ref"].rsplit("/", 1)[1]]["address"]
            for op in document["operations"].values()
            if op["action"] == "send"
        }
        expected = {f"governor.{subject}" for subject in EVENT_SUBJECTS.values()}
        assert sent == expected | {"governor.witness.{operation}"}
        witness = document["channels"]["witnessRecord"]
        assert "operation" in witness["parameters"]

    def test_messages_point_at_the_json_schemas(self) -> None:
        """Each message's payload is the component schema of the same name, equal to its standalone JSON Schema."""
        document = load_asyncapi()
        schemas = document["components"]["schemas"]
        for name, message in document["components"]["messages"].items():
            assert message["payload"] == {"$ref": f"#/components/schemas/{name}"}
            standalone = load_schema(name)
            component = json.loads(json.dumps(schemas[name]).replace("#/components/schemas/", "#/$defs/"))
            assert component == {k: v for k, v in standalone.items() if k not in ("$schema", "$defs")}

    def test_error_reply_and_headers(self) -> None:
        """The error reply carries the three headers; the status header lists every status an error can have."""
        document = load_asyncapi()
        error = document["components"]["messages"]["ErrorReply"]
        headers = resolve(document, error["headers"]["$ref"])
        assert headers["required"] == ["Nats-Service-Error", "Nats-Service-Error-Code", "X-IF-Trace-ID"]
        assert headers["properties"]["Nats-Service-Error-Code"]["enum"] == [
            "400",
            "403",
            "404",
            "408",
            "409",
            "413",
            "503",
        ]
        for code in schema.error_statuses():
            assert f"`{code}`" in error["description"]
        requests = {t.__name__ for t in REQUEST_TYPES.values()}
        for name in requests:
            request_headers = document["components"]["messages"][name]["headers"]
            assert resolve(document, request_headers["$ref"])["properties"]["X-IF-Trace-ID"]["maxLength"] == 128

    def test_component_schemas_are_valid(self, validator: Any) -> None:
        """Every component schema is a valid JSON Schema (draft 7, the base of AsyncAPI's schema format)."""
        for name, component in load_asyncapi()["components"]["schemas"].items():
            try:
                jsonschema.Draft7Validator.check_schema(component)
            except jsonschema.SchemaError as exc:
                pytest.fail(f"components.schemas.{name}: {exc.message}")

    async def test_bus_publishes_on_the_documented_subjects(self) -> None:
        """The bus publishes each event of the scenario on the subject the document gives it."""
        _, events = run_scenario()
        nc = _CapturingConnection()
        bus = Bus(nc, Mailbox(1), Metrics(CollectorRegistry()))  # type: ignore[arg-type]
        await bus.effects.publish(events)
        assert len(nc.published) == len(events)
        for (subject, payload), event in zip(nc.published, events, strict=True):
            if isinstance(event, WitnessRecord):
                assert subject == f"governor.witness.{event.operation}"
            else:
                assert subject == f"governor.{EVENT_SUBJECTS[type(event)]}"
            assert payload == msgspec.json.encode(event)
