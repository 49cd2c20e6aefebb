"""The worker's configuration file, typed. Unknown keys are errors, so a typo never goes unnoticed."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from schemas.budgets import BudgetGroup, GroupId
from schemas.policy import FailureThreshold, PolicyRule, ResourcePolicy
from schemas.pricing import ModelPrice
from schemas.types import Budget, CapabilityDef, CapabilityName, CostPerHour, ModelName, Ratio, SwarmId, TaskLimit

PoolName = Annotated[str, Meta(pattern=r"^[a-z0-9]+(-[a-z0-9]+)*\Z", max_length=32)]
"""Lower-case letters and digits, words joined by `-` (no `_`: stream names turn both into `_`, and two pools
must never share a stream)."""


def check_pool_name(name: str) -> str:
    """`name` if it is a pool's name (see `PoolName`); else ValueError saying what one is."""
    try:
        return msgspec.convert(name, PoolName)
    except msgspec.ValidationError:
        raise ValueError(f"pool {name!r}: expected lower-case letters and digits, words joined by '-'") from None


def pool_prefix(subject_prefix: str, pool: str | None) -> str:
    """The subjects of a pool: `<subject_prefix>.<pool>` (`governor.eu.assign`); no pool: `<subject_prefix>`."""
    return subject_prefix if pool is None else f"{subject_prefix}.{pool}"


class Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every config section."""


class GovernorSection(ResourcePolicy, Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The default resource policy (every field of `ResourcePolicy`, with its limits) and the worker's settings."""

    circuit_breaker_failure_threshold: FailureThreshold = msgspec.field(default=3, name="circuit_breaker_threshold")
    """Written `circuit_breaker_threshold` in the config file (its documented name)."""
    default_budget: Budget = 25.0
    history_limit: Annotated[int, Meta(ge=1, le=1_000_000)] = 1000
    subject_prefix: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\Z")] = "governor"
    pool: PoolName | None = None
    """This governor serves the pool of that name: its subjects are `<subject_prefix>.<pool>.*`, and its ledger,
    snapshots, lease and audit trail are streams of its own (`GOVERNOR_<POOL>_LEDGER`, ...). None: the one pool
    of `<subject_prefix>.*`. A swarm belongs to one pool: list it in that pool's config only."""
    mailbox_size: Annotated[int, Meta(ge=1, le=1_000_000)] = 10_000
    dedupe_horizon_s: Annotated[float, Meta(gt=0.0)] = 7 * 86400.0
    """How long an applied `event_id` is remembered: a retry inside it is answered `duplicate`."""
    dedupe_limit: Annotated[int, Meta(ge=1, le=10_000_000)] = 200_000
    max_request_bytes: Annotated[int, Meta(ge=4096, le=1_048_576)] = 65_536
    """Larger request bodies are refused (`invalid_request`) before they are decoded or queued: the ledger's
    messages stay far below the stream's limit, whatever padding a client adds."""
    pending_msgs_per_subject: Annotated[int, Meta(ge=64, le=1_000_000)] = 65_536
    pending_bytes_per_subject: Annotated[int, Meta(ge=1_048_576, le=1_073_741_824)] = 64 * 1024 * 1024
    """Requests read from the socket but not yet decoded, per subject: beyond either bound nats-py drops them
    (a slow consumer, logged; the clients time out and retry)."""
    event_loop: Literal["asyncio", "uvloop", "auto"] = "asyncio"
    """`governor run`'s event loop; `auto` takes uvloop when it is installed (the `fast` extra), else asyncio's."""

    @property
    def prefix(self) -> str:
        """The subject prefix this governor serves: its pool's (`governor.eu`), else `subject_prefix`."""
        return pool_prefix(self.subject_prefix, self.pool)


class SwarmConfig(Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    swarm_id: SwarmId
    capabilities: Annotated[list[CapabilityName], Meta(min_length=1, max_length=64)]
    cost_per_hour: CostPerHour
    reputation_score: Ratio
    model: ModelName
    initial_budget: Budget | None = None
    """Missing: the governor's `default_budget`."""
    budget_group: GroupId | None = None
    """A group of `budgets:`: its limits (and its ancestors') apply to this swarm's costs."""
    max_concurrent_tasks: TaskLimit | None = None
    """Tasks it may run at once; a swarm at its limit is passed over (`at_capacity`). None: no limit."""


class WitnessSection(Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    endpoint: str | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class StorageLogin(Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Another login for the storage connections (ledger, snapshots, lease): the serving one then needs no
    JetStream permission at all. TLS settings are shared with the serving connection."""

    creds: str | None = None
    nkey_seed: str | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None


class NatsSection(Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    servers: Annotated[list[str], Meta(min_length=1)] | None = None
    """NATS URLs tried in order. None: `governor run` starts a bundled nats-server on loopback."""
    name: str = "if-governor"
    connect_timeout_s: Annotated[float, Meta(gt=0.0, le=3600.0)] = 15.0
    """How long `governor run` tries to reach NATS at start before it gives up (later, it reconnects forever)."""
    # Authentication: whatever the NATS operator uses. Secrets are never logged or echoed in errors.
    creds: str | None = None
    """Path of a `.creds` file (JWT + nkey seed)."""
    nkey_seed: str | None = None
    """Path of an nkey seed file."""
    user: str | None = None
    password: str | None = None
    token: str | None = None
    tls_ca: str | None = None
    """CA bundle to verify the server; with it (or a client certificate) the connection uses TLS."""
    tls_cert: str | None = None
    tls_key: str | None = None
    storage: StorageLogin | None = None
    """None: the storage connections log in as the serving one does."""


class MetricsSection(Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host: str = "0.0.0.0"
    port: Annotated[int, Meta(ge=0, le=65535)] = 9090
    """0 disables the HTTP endpoint."""


class LedgerSection(Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True
    """Durable mode: every change is acknowledged by JetStream before the reply. False: in memory only."""
    replicas: Annotated[int, Meta(ge=1, le=5)] = 1
    """Stream replicas; use 3 in a cluster (R3) so an acknowledged cost survives the loss of a server."""
    timeout_s: Annotated[float, Meta(gt=0.0, le=60.0)] = 5.0
    snapshot_every: Annotated[int, Meta(ge=1)] = 10_000
    """Ledger messages between snapshots (recovery replays at most about this many)."""
    lease_ttl_s: Annotated[float, Meta(ge=1.0, le=60.0)] = 3.0
    """A standby takes over at most about this long after the serving process died."""
    trim: bool = True
    """After each snapshot, purge the entries before the previous one: the stream holds about two intervals."""


class AuditSection(Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The stored audit trail (durable mode): every event and witness record in JetStream, replicas as the ledger's."""

    enabled: bool = True
    max_age_days: Annotated[float, Meta(gt=0.0, le=36_500.0)] = 400.0
    """Records older than this are removed (a year and a month: "who reset swarm X last month?" has its answer)."""
    max_bytes: Annotated[int, Meta(ge=1_048_576)] = 1 << 30
    """The oldest records are removed beyond this size (1 GiB)."""
    refusals_max_bytes: Annotated[int, Meta(ge=1_048_576)] = 256 << 20
    """The refused requests' records (`request_rejected`, `ledger_message_quarantined`) are kept apart, within this
    size: a client that floods refused requests cannot push the decisions out."""
    ack_timeout_s: Annotated[float, Meta(gt=0.0, le=300.0)] = 5.0
    """A record JetStream has not acknowledged within this is published again (stored once: `Nats-Msg-Id`)."""
    readers: list[Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]+\Z", max_length=64)]] = []
    """Durable pull consumers the governor keeps on the decisions' stream, one per reader in another account:
    deploy/nats-server.conf exports each one's next-message and acknowledgement subjects to its account, and
    nothing else of JetStream (read-only: a reader can neither create, change nor delete anything)."""


class SecuritySection(Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Who may be answered and who may do what (SECURITY.md draws the whole threat model)."""

    reply_prefixes: list[Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*\Z", max_length=64)]] = []
    """Reply-subject prefixes answered besides `_INBOX.` and `_R_.` (e.g. `_INBOX_alice.` for per-user inboxes).
    A request whose reply subject starts with none of them is not answered: it could aim the reply at the
    governor's own storage or event subjects."""
    trust_request_info: bool = False
    """The deployment makes the NATS server stamp `Nats-Request-Info` (service imports with `share: true`, as
    deploy/nats-server.conf does): the governor records the authenticated user and account of every request and
    checks roles by account. False: the header is never believed, and an operator-only request carrying it is
    refused."""
    operator_accounts: list[Annotated[str, Meta(min_length=1, max_length=256)]] = []
    """With `trust_request_info`: the accounts whose users may reset, trip, top up, register, deregister and reload."""
    chassis_accounts: list[Annotated[str, Meta(min_length=1, max_length=256)]] = []
    """With `trust_request_info`: the accounts (IF.chassis) whose users may send `governor.update` with
    `reputation_score` only; any other field from them is refused (`forbidden`)."""
    require_authenticated_approver: bool = False
    """With `trust_request_info`: a reset's `approved_by` and a trip's `requested_by` must be the authenticated
    user's name, or the request is refused (`forbidden`)."""


class Config(Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    governor: GovernorSection = GovernorSection()
    capabilities: list[CapabilityDef] = []
    swarms: list[SwarmConfig] = []
    witness: WitnessSection = WitnessSection()
    nats: NatsSection = NatsSection()
    metrics: MetricsSection = MetricsSection()
    ledger: LedgerSection = LedgerSection()
    security: SecuritySection = SecuritySection()
    audit: AuditSection = AuditSection()
    policies: dict[Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_-]*\Z", max_length=64)], ResourcePolicy] = {}
    """Named policies for `rules:` (the presets strict, permissive and production are always there)."""
    rules: list[PolicyRule] = []
    """Per-task policy by capability pattern, first match wins; no match: the `governor:` policy."""
    budgets: list[BudgetGroup] = []
    """Budget groups (organisation, team, project), each with a limit per period; a swarm names its own with
    `budget_group`."""
    pricing: dict[ModelName, ModelPrice] = {}
    """USD per million tokens of each model, for costs reported as `usage` (a model not listed: such a cost is
    refused)."""
