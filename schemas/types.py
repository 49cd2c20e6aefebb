r"""Constrained scalar types shared by every wire struct.

Limits live here, in the types, so that a bad value fails while decoding, with the path of the field in the
message ("Expected `float` >= 0.0 - at `$.cost`"), before any code of ours sees it.

Patterns are Python `re` syntax (msgspec applies them with `re.search`) and end in `\Z`, never `$`: `$` also
matches before a final newline, so `^[a-z]+$` accepts "sip\n".
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

#: Upper bound for any amount of money on the wire, in USD. Keeps sums exact in micro-dollars and refuses
#: absurd values (and the infinity that an out-of-range JSON number decodes to).
MAX_USD = 1_000_000_000.0

#: What no name may hold, as the body of a regex character class: control characters (Unicode Cc, which
#: include CR, LF, tab, NUL and ESC), format characters (Cf: soft hyphen, zero-width space and joiners, bidi
#: marks, embeddings, overrides and isolates, word joiner, invisible operators, BOM, tags...), line and paragraph
#: separators (Zl, Zp) and lone surrogates (Cs). Such a character hides or reorders what a reader sees, or splits a
#: log line: "\u202eevil" shows as "live", "mallory\n" starts a new line. Written out rather than computed, so the
#: JSON Schemas do not change with the interpreter's Unicode version (a unit test checks it against `unicodedata`).
INVISIBLE = (
    r"\x00-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200f"
    r"\u2028-\u202e\u2060-\u2064\u2066-\u206f\ud800-\udfff\ufeff\ufff9-\ufffb\U000110bd\U000110cd"
    r"\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f"
)

#: What a name may not consist of only, as the body of a regex character class: white space (`\s`: every Unicode
#: space, and controls INVISIBLE refuses anyway) and characters that show nothing on their own (the combining
#: grapheme joiner, Hangul fillers, the braille blank, variation selectors).
BLANK = r"\s\u034f\u115f\u1160\u2800\u3164\ufe00-\ufe0f\uffa0"

#: A name: no invisible character anywhere, and not only blanks. Inner spaces and letters of any script are fine
#: ("José", "运维", "Jane Doe"). Each class appears once, to keep msgspec's error message (which quotes the
#: pattern) short: it must fit, with the longest field path, the 512 characters of a `Nats-Service-Error` header.
NAME_PATTERN = rf"^(?:[ -~]*[!-~][ -~]*|(?![{BLANK}]*\Z)[^{INVISIBLE}]+)\Z"
"""(The first branch is printable ASCII with something visible: most names, matched at twice the speed.)"""

#: A trace id: letters, digits and `._:@/+=-` (hex, uuids, W3C traceparent, base64 all fit), at most 128. It goes
#: into log lines and the `X-IF-Trace-ID` header as it is, so nothing else is allowed.
TRACE_ID_PATTERN = r"^[A-Za-z0-9._:@/+=-]{1,128}\Z"

#: A swarm id: ASCII letters, digits and `._:@/-`, starting with a letter or digit (safe as a metrics label).
SWARM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@/-]*\Z"

#: A capability as config defines it: `category:specific-skill`, lower-case ASCII.
CAPABILITY_DEF_PATTERN = r"^[a-z0-9][a-z0-9-]*:[a-z0-9][a-z0-9.+#-]*\Z"

Name = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=256,
        pattern=NAME_PATTERN,
        description="A name: visible characters of any script, inner spaces allowed; no control or invisible ones.",
    ),
]
"""An identifier: task, operation, approver, requester."""

SwarmId = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=256,
        pattern=SWARM_ID_PATTERN,
        description="A swarm id: ASCII letters, digits and `._:@/-`, starting with a letter or digit.",
    ),
]
"""A swarm's id: printable, no spaces, safe as a metrics label."""

#: A capability as a client sends it: printable ASCII without spaces. Every capability that can exist is lower-case
#: ASCII (`CAPABILITY_DEF_PATTERN`), so this refuses nothing that could match, while whether it is known (with
#: suggestions for a near miss such as `Integration:SIP`) stays the core's business. A simple class: an assign
#: carries up to 64 of these, each checked while decoding.
CAPABILITY_NAME_PATTERN = r"^[!-~]+\Z"

CapabilityName = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=128,
        pattern=CAPABILITY_NAME_PATTERN,
        description="A capability, e.g. `integration:sip`: printable ASCII, no spaces.",
    ),
]
"""A capability as sent by a client; whether it is known is the core's business (it suggests close names)."""

CapabilityDef = Annotated[
    str,
    Meta(
        max_length=128,
        pattern=CAPABILITY_DEF_PATTERN,
        description="A capability definition: `category:specific-skill`, lower-case ASCII.",
    ),
]
"""A capability as defined in config: `category:specific-skill`, lower case."""

Capabilities = Annotated[list[CapabilityName], Meta(min_length=1, max_length=64)]

TraceId = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=128,
        pattern=TRACE_ID_PATTERN,
        description="A trace id: 1 to 128 ASCII letters, digits or `._:@/+=-`.",
    ),
]
"""A request's trace id, as the client chose it: safe to print in a log line and to send back in a header."""

EventId = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=256,
        pattern=NAME_PATTERN,
        description="An idempotency key: visible characters only.",
    ),
]
"""A client-chosen idempotency key: the same id is applied at most once."""

Cost = Annotated[float, Meta(ge=0.0, le=MAX_USD)]
TaskLimit = Annotated[int, Meta(ge=1, le=1_000_000)]
"""Tasks a swarm may run at once (`max_concurrent_tasks`)."""
"""A non-negative amount spent, USD."""

Budget = Annotated[float, Meta(gt=0.0, le=MAX_USD)]
"""A budget to allocate: strictly positive and finite, USD."""

CostPerHour = Annotated[float, Meta(gt=0.0, le=MAX_USD)]

Ratio = Annotated[float, Meta(ge=0.0, le=1.0)]

ModelName = Annotated[
    str,
    Meta(min_length=1, max_length=64, pattern=NAME_PATTERN, description="A model name: visible characters only."),
]

ErrorText = Annotated[str, Meta(max_length=4096)]

SwarmCount = Annotated[int, Meta(ge=1, le=64)]

HistoryLimit = Annotated[int, Meta(ge=1, le=100_000)]

Deadline = Annotated[float, Meta(ge=0.0, le=1e11)]
"""Unix time in seconds."""
