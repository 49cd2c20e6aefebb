"""Loading the configuration: a YAML file merged with `IF_GOVERNOR_*` environment variables into typed Structs.

Every error names where the bad value came from (the file and the field path, or the environment variable), and
is raised before anything connects to anything.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import yaml

from schemas.config import Config, NatsSection, StorageLogin
from schemas.endpoints import ENDPOINTS
from schemas.policy import PRESETS
from worker.core import groups
from worker.core.capabilities import Vocabulary
from worker.errors import ConfigError, InvalidRequest

#: Environment variable -> (section, key) it overrides.
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "IF_GOVERNOR_DEFAULT_BUDGET": ("governor", "default_budget"),
    "IF_GOVERNOR_MIN_CAPABILITY_MATCH": ("governor", "min_capability_match"),
    "IF_GOVERNOR_CIRCUIT_BREAKER_THRESHOLD": ("governor", "circuit_breaker_threshold"),
    "IF_GOVERNOR_MAX_COST_PER_TASK": ("governor", "max_cost_per_task"),
    "IF_GOVERNOR_SUBJECT_PREFIX": ("governor", "subject_prefix"),
    "IF_GOVERNOR_POOL": ("governor", "pool"),
    "IF_GOVERNOR_EVENT_LOOP": ("governor", "event_loop"),
    "IF_GOVERNOR_METRICS_PORT": ("metrics", "port"),
    "IF_GOVERNOR_LOG_LEVEL": ("witness", "log_level"),
    "IF_GOVERNOR_LEDGER_ENABLED": ("ledger", "enabled"),
    "IF_GOVERNOR_NATS_CREDS": ("nats", "creds"),
    "IF_GOVERNOR_NATS_NKEY": ("nats", "nkey_seed"),
    "IF_GOVERNOR_NATS_USER": ("nats", "user"),
    "IF_GOVERNOR_NATS_PASSWORD": ("nats", "password"),
    "IF_GOVERNOR_NATS_TOKEN": ("nats", "token"),
    "IF_GOVERNOR_NATS_TLS_CA": ("nats", "tls_ca"),
    "IF_GOVERNOR_NATS_TLS_CERT": ("nats", "tls_cert"),
    "IF_GOVERNOR_NATS_TLS_KEY": ("nats", "tls_key"),
}
NATS_URL_ENV = "IF_GOVERNOR_NATS_URL"

_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read `path` (optional), apply the environment, validate, and return the typed Config."""
    env = os.environ if env is None else env
    source = str(path) if path is not None else "<defaults>"
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            raise ConfigError(f"{source}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: the top level must be a mapping, got {type(loaded).__name__}")
        raw = loaded

    from_env: dict[str, str] = {}  # field path -> env var, to name the variable in errors
    for var, (section, key) in ENV_OVERRIDES.items():
        if var in env:
            raw.setdefault(section, {})
            if not isinstance(raw[section], dict):
                raise ConfigError(f"{source}: `{section}` must be a mapping")
            raw[section][key] = env[var] if section == "nats" else _scalar(env[var])
            from_env[f"{section}.{key}"] = var
    if env.get(NATS_URL_ENV):
        raw.setdefault("nats", {})
        raw["nats"]["servers"] = server_urls(env[NATS_URL_ENV])
        from_env["nats.servers"] = NATS_URL_ENV

    try:
        config = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _PATH.search(message)
        field = match.group("path") if match else ""
        detail = _PATH.sub("", message)
        origin = next((var for p, var in from_env.items() if field == p or field.startswith(p + "[")), None)
        if origin is not None:
            raise ConfigError(f"{origin} (environment): {detail}") from None
        raise ConfigError(f"{source}: {field or '(top level)'}: {detail}") from None
    _check_swarms(config, source)
    _check_rules(config, source)
    _check_budgets(config, source)
    _check_security(config, source)
    _check_pool(config, source)
    return config


def _scalar(value: str) -> Any:
    """An environment value as YAML reads a scalar: `25` is an int, `0.7` a float, `abc` a string."""
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def _check_rules(config: Config, source: str) -> None:
    known = {"default", *PRESETS, *config.policies}
    for i, rule in enumerate(config.rules):
        if rule.policy not in known:
            raise ConfigError(f"{source}: rules[{i}].policy: unknown policy {rule.policy!r}; known: {sorted(known)}")


def _check_budgets(config: Config, source: str) -> None:
    """The `budgets:` list holds together (ids once, parents listed, no cycle, periods and time zones that parse)
    and every swarm's `budget_group` is one of it."""
    try:
        groups.check(list(config.budgets))
    except InvalidRequest as exc:
        raise ConfigError(f"{source}: {exc.message}") from None
    listed = {g.id for g in config.budgets}
    for i, swarm in enumerate(config.swarms):
        if swarm.budget_group is not None and swarm.budget_group not in listed:
            raise ConfigError(
                f"{source}: swarms[{i}].budget_group: {swarm.budget_group!r} is not a group of `budgets:`"
                f" (listed: {', '.join(sorted(listed)) or 'none'})"
            )


RESERVED_POOL_NAMES = frozenset({*(e.name for e in ENDPOINTS), "events", "witness", "audit", "ledger"})
"""Pool names that would put a pool's subjects among the unpooled governor's (`governor.events.assign`)."""


def _check_pool(config: Config, source: str) -> None:
    pool = config.governor.pool
    if pool in RESERVED_POOL_NAMES:
        raise ConfigError(
            f"{source}: governor.pool: {pool!r} is a name of the governor's own subjects; "
            f"choose another (reserved: {', '.join(sorted(RESERVED_POOL_NAMES))})"
        )


def _check_security(config: Config, source: str) -> None:
    sec = config.security
    own = config.governor.subject_prefix + "."
    for i, prefix in enumerate(sec.reply_prefixes):
        if own.startswith(prefix) or prefix.startswith(own):
            raise ConfigError(
                f"{source}: security.reply_prefixes[{i}]: {prefix!r} overlaps the governor's own subjects ({own}*)"
            )
    if sec.trust_request_info and not sec.operator_accounts:
        raise ConfigError(
            f"{source}: security.operator_accounts: name the operators' account(s) when trust_request_info is on"
        )
    if sec.require_authenticated_approver and not sec.trust_request_info:
        raise ConfigError(
            f"{source}: security.require_authenticated_approver: needs trust_request_info (an identity to compare)"
        )


def _check_swarms(config: Config, source: str) -> None:
    vocabulary = Vocabulary(config.capabilities)
    seen: set[str] = set()
    limit = config.governor.max_amount_usd
    if config.governor.default_budget > limit:
        raise ConfigError(f"{source}: governor.default_budget: above governor.max_amount_usd ({limit:g})")
    for i, swarm in enumerate(config.swarms):
        if swarm.initial_budget is not None and swarm.initial_budget > limit:
            raise ConfigError(f"{source}: swarms[{i}].initial_budget: above governor.max_amount_usd ({limit:g})")
        if swarm.swarm_id in seen:
            raise ConfigError(f"{source}: swarms[{i}].swarm_id: {swarm.swarm_id!r} is listed twice")
        seen.add(swarm.swarm_id)
        for j, cap in enumerate(swarm.capabilities):
            if cap not in vocabulary:
                raise ConfigError(f"{source}: swarms[{i}].capabilities[{j}]: {vocabulary.explain_unknown(cap)}")


def server_urls(text: str) -> list[str]:
    """NATS URLs given as one string, comma-separated (the flag's and the environment's form)."""
    return [url.strip() for url in text.split(",") if url.strip()]


def connect_options(nats_config: NatsSection, *, storage: bool = False) -> dict[str, Any]:
    """Keyword arguments for `nats.connect` that authenticate as the config says (files are read by nats-py).

    `storage`: for a storage connection, which logs in as `nats.storage` says when it is set."""
    n: NatsSection | StorageLogin = nats_config
    if storage and nats_config.storage is not None:
        n = nats_config.storage
    options: dict[str, Any] = {}
    if n.creds:
        options["user_credentials"] = n.creds
    if n.nkey_seed:
        options["nkeys_seed"] = n.nkey_seed
    if n.user is not None:
        options["user"] = n.user
        options["password"] = n.password or ""
    if n.token:
        options["token"] = n.token
    t = nats_config
    if t.tls_ca or t.tls_cert:
        context = ssl.create_default_context(cafile=t.tls_ca)
        if t.tls_cert:
            context.load_cert_chain(t.tls_cert, t.tls_key)
        options["tls"] = context
    return options


def redact(url: str) -> str:
    """A NATS URL without its user-info (user, password or token), for logs and messages."""
    return without_userinfo(url, "***@")


def without_userinfo(url: str, mask: str = "") -> str:
    """A NATS URL with its user-info (user, password or token) replaced by `mask` (nothing: the URL of a connection
    that logs in otherwise)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    return f"{scheme}://{mask}{rest.split('@', 1)[1]}"
