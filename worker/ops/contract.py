"""The wire contract for other languages: a JSON Schema per request, reply and event, and an AsyncAPI 3 document.

    governor schema [--out DIR]     writes DIR/schemas/<Name>.json and DIR/asyncapi.yaml (default DIR: deploy)

Everything is generated from the msgspec Structs in `schemas/` and the endpoint table in `worker.service.dispatch`, so
the documents say exactly what the worker decodes and sends. The output is deterministic (struct fields in their
declared order, every other mapping in a fixed or sorted order), and `tests/unit/test_schema_fresh.py` fails when
the committed files differ from what this module generates now.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import msgspec
import yaml

from schemas.codes import WITNESS_OPERATIONS
from schemas.endpoints import BY_NAME
from schemas.events import EVENT_SUBJECTS, Event, WitnessRecord
from schemas.replies import ErrorReply
from worker import __version__ as VERSION
from worker.errors import GovernorError
from worker.service.dispatch import REQUEST_TYPES
from worker.service.effects import TRACE_HEADER

DIALECT = "https://json-schema.org/draft/2020-12/schema"
PREFIX = "governor"
"""The subject prefix the AsyncAPI document is written for (the default of `governor.subject_prefix`)."""

ERROR_HEADER = "Nats-Service-Error"
ERROR_CODE_HEADER = "Nats-Service-Error-Code"


#: Where each event is published, after `<prefix>.` (witness records go to `witness.<operation>`).
WITNESS_SUBJECT = "witness.{operation}"

#: Operations named in witness subjects, as examples for the `operation` channel parameter (not a closed list).
WITNESS_EXAMPLES = list(WITNESS_OPERATIONS)


# -- which types ----------------------------------------------------------------------------------------------


def reply_type(kind: str) -> type[msgspec.Struct]:
    """The ok reply of endpoint `kind`, from the endpoint table."""
    return BY_NAME[kind].reply


def event_types() -> list[type[Any]]:
    """Every event the governor publishes (the members of `schemas.events.Event`), in declared order."""
    types: list[type[Any]] = list(typing.get_args(Event))
    for t in types:
        if t is not WitnessRecord and t not in EVENT_SUBJECTS:
            raise LookupError(f"event {t.__name__}: no subject; add it to worker.ops.contract.EVENT_SUBJECTS")
    return types


def message_types() -> list[type[Any]]:
    """Every top-level message: the requests, the ok replies, the error reply and the events, without repeats."""
    found: list[type[Any]] = []
    for kind, request in REQUEST_TYPES.items():
        found += [request, reply_type(kind)]
    found += [ErrorReply, *event_types()]
    return list(dict.fromkeys(found))


def error_statuses() -> dict[str, int]:
    """Every error code the governor answers with, and its `Nats-Service-Error-Code`, sorted by code."""
    codes: dict[str, int] = {}
    pending: list[type[GovernorError]] = list(GovernorError.__subclasses__())
    while pending:
        cls = pending.pop()
        if "code" in vars(cls):  # abstract groupings (Conflict) define only a status
            codes[cls.code] = cls.status
        pending.extend(cls.__subclasses__())
    return dict(sorted(codes.items()))


# -- JSON Schema ----------------------------------------------------------------------------------------------


def json_schemas() -> dict[str, dict[str, Any]]:
    """One standalone JSON Schema (draft 2020-12) per message type, named after its Struct, sorted by name."""
    documents: dict[str, dict[str, Any]] = {}
    for t in message_types():
        _, components = msgspec.json.schema_components([t], ref_template="#/$defs/{name}")
        name = t.__name__
        top = components.pop(name)
        document: dict[str, Any] = {"$schema": DIALECT, **top}
        if f'"#/$defs/{name}"' in json.dumps([top, components]):  # a type that contains itself keeps its definition
            components[name] = top
        if components:
            document["$defs"] = dict(sorted(components.items()))
        documents[name] = document
    return dict(sorted(documents.items()))


# -- AsyncAPI -------------------------------------------------------------------------------------------------


def _ref(*path: str) -> dict[str, str]:
    return {"$ref": "#/" + "/".join(path)}


def _summary(t: type[Any]) -> str:
    """The first paragraph of the type's docstring, on one line (the name when it has none)."""
    doc = (t.__doc__ or "").strip()
    return " ".join(doc.split("\n\n", 1)[0].split()) if doc else t.__name__


def _header_schemas() -> dict[str, dict[str, Any]]:
    trace = {
        "type": "string",
        "minLength": 1,
        "maxLength": 128,
        "description": "Trace id: wins over the body's `trace_id`; echoed in the reply and every event it causes.",
    }
    statuses = sorted({str(status) for status in error_statuses().values()})
    return {
        "RequestHeaders": {
            "title": "RequestHeaders",
            "description": "Optional headers of every request.",
            "type": "object",
            "properties": {TRACE_HEADER: trace},
        },
        "ErrorHeaders": {
            "title": "ErrorHeaders",
            "description": "The NATS micro protocol error headers, sent with every error reply.",
            "type": "object",
            "properties": {
                ERROR_HEADER: {
                    "type": "string",
                    "maxLength": 512,
                    "description": "The error message, on one line.",
                },
                ERROR_CODE_HEADER: {
                    "type": "string",
                    "enum": statuses,
                    "description": "An HTTP-like status: the class of the error (see the ErrorReply message).",
                },
                TRACE_HEADER: {**trace, "description": "The request's trace id."},
            },
            "required": [ERROR_HEADER, ERROR_CODE_HEADER, TRACE_HEADER],
        },
    }


def _message(
    t: type[Any], headers: str | None = None, description: str | None = None, summary: str | None = None
) -> dict[str, Any]:
    message: dict[str, Any] = {"name": t.__name__, "title": t.__name__, "summary": summary or _summary(t)}
    if description is not None:
        message["description"] = description
    message["contentType"] = "application/json"
    if headers is not None:
        message["headers"] = _ref("components", "schemas", headers)
    message["payload"] = _ref("components", "schemas", t.__name__)
    return message


def _error_description() -> str:
    rows = "\n".join(f"| `{code}` | {status} |" for code, status in error_statuses().items())
    return (
        "The one error shape. The request changed nothing. `error.code` is one of:\n\n"
        f"| code | {ERROR_CODE_HEADER} |\n|---|---|\n{rows}\n"
    )


def asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the service, for the default subject prefix."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}

    answers: dict[type[Any], list[str]] = {}
    for kind in REQUEST_TYPES:
        answers.setdefault(reply_type(kind), []).append(f"`{PREFIX}.{kind}`")
    for reply, subjects in answers.items():
        summary = _summary(reply) if reply.__doc__ else f"The ok reply to {' and '.join(subjects)}."
        messages[reply.__name__] = _message(reply, summary=summary)

    for kind, request in REQUEST_TYPES.items():
        reply = reply_type(kind)
        messages[request.__name__] = _message(request, headers="RequestHeaders")
        channels[kind] = {
            "address": f"{PREFIX}.{kind}",
            "title": f"{PREFIX}.{kind}",
            "summary": _summary(request),
            "messages": {request.__name__: _ref("components", "messages", request.__name__)},
        }
        reply_channel = f"{kind}Reply"
        channels[reply_channel] = {
            "address": None,
            "description": "The requester's inbox: the reply subject of the NATS request.",
            "messages": {
                reply.__name__: _ref("components", "messages", reply.__name__),
                ErrorReply.__name__: _ref("components", "messages", ErrorReply.__name__),
            },
        }
        operation: dict[str, Any] = {
            "action": "receive",
            "channel": _ref("channels", kind),
            "summary": _summary(request),
        }
        if kind == "cost":
            operation["description"] = "Also taken as a plain publish (no reply subject): applied, nobody answered."
        operation["messages"] = [_ref("channels", kind, "messages", request.__name__)]
        operation["reply"] = {
            "channel": _ref("channels", reply_channel),
            "messages": [
                _ref("channels", reply_channel, "messages", reply.__name__),
                _ref("channels", reply_channel, "messages", ErrorReply.__name__),
            ],
        }
        operations[kind] = operation
    messages[ErrorReply.__name__] = _message(ErrorReply, headers="ErrorHeaders", description=_error_description())

    for event in event_types():
        name = event.__name__
        messages[name] = _message(event)
        channel_id = name[0].lower() + name[1:]
        if event is WitnessRecord:
            channels[channel_id] = {
                "address": f"{PREFIX}.{WITNESS_SUBJECT}",
                "title": f"{PREFIX}.witness.>",
                "summary": _summary(event),
                "parameters": {
                    "operation": {
                        "description": "The operation recorded (also the record's `operation` field).",
                        "examples": WITNESS_EXAMPLES,
                    }
                },
                "messages": {name: _ref("components", "messages", name)},
            }
        else:
            subject = f"{PREFIX}.{EVENT_SUBJECTS[event]}"
            channels[channel_id] = {
                "address": subject,
                "title": subject,
                "summary": _summary(event),
                "messages": {name: _ref("components", "messages", name)},
            }
        operations[f"publish{name}"] = {
            "action": "send",
            "channel": _ref("channels", channel_id),
            "summary": _summary(event),
            "messages": [_ref("channels", channel_id, "messages", name)],
        }

    _, components = msgspec.json.schema_components(message_types(), ref_template="#/components/schemas/{name}")
    schemas = {**components, **_header_schemas()}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "IF.governor",
            "version": VERSION,
            "description": (
                "Capability-aware task assignment and budget governance for agent swarms: a NATS request-reply "
                "service (the NATS micro protocol, service name `governor`, discovery on `$SRV.PING|INFO|STATS`).\n\n"
                f"Subjects are shown with the default prefix `{PREFIX}` (config `governor.subject_prefix`); a "
                f"governor of a pool (config `governor.pool`) serves the same subjects under `{PREFIX}.<pool>`, "
                "and discovery's metadata names its `pool`. "
                "Requests refuse unknown fields; replies and events only gain fields, each with a default. "
                "Every ok reply has `ok: true`; every error reply is an ErrorReply with the "
                f"`{ERROR_HEADER}`, `{ERROR_CODE_HEADER}` and `{TRACE_HEADER}` headers.\n"
            ),
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": "localhost:4222",
                "protocol": "nats",
                "description": "The NATS server (or cluster) the governor serves on.",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": dict(sorted(messages.items())),
            "schemas": dict(sorted(schemas.items())),
        },
    }


# -- files ----------------------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings, so descriptions stay readable in the YAML."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def render() -> dict[str, str]:
    """Every generated file's text, by its path relative to the output directory."""
    files = {
        f"schemas/{name}.json": json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
        for name, doc in json_schemas().items()
    }
    header = "# Generated by `governor schema` from schemas/ (endpoints: schemas/endpoints.py): do not edit by hand.\n"
    body = yaml.dump(asyncapi(), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)
    files["asyncapi.yaml"] = header + body
    return files


def write(directory: str | Path = "deploy") -> list[Path]:
    """Write `schemas/<Name>.json` and `asyncapi.yaml` under `directory`; remove JSON schemas no longer generated."""
    root = Path(directory)
    (root / "schemas").mkdir(parents=True, exist_ok=True)
    files = render()
    for stale in sorted((root / "schemas").glob("*.json")):
        if f"schemas/{stale.name}" not in files:
            stale.unlink()
    written = []
    for relative, text in files.items():
        path = root / relative
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
