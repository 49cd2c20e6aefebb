"""The operator commands of `governor`: requests to a running governor and what each prints, `ledger verify`,
`check-config` and `schema`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import msgspec

from schemas.config import pool_prefix
from worker import errors
from worker.core.capabilities import BUILTIN_CAPABILITIES
from worker.core.rules import rule_conflicts
from worker.ops.render import budgets_table, escape, explain_table, print_json, status_table
from worker.service.bootstrap import profiles_of
from worker.service.config import NATS_URL_ENV, connect_options, load_config, redact

DEFAULT_URL = "nats://127.0.0.1:4222"
INBOX_PREFIX_ENV = "IF_GOVERNOR_INBOX_PREFIX"
"""The operator commands' `--inbox-prefix` when the flag is absent."""


def _client_url(args: argparse.Namespace) -> str:
    return str(args.nats_url or os.environ.get(NATS_URL_ENV) or DEFAULT_URL)


async def _with_client(args: argparse.Namespace, action: Callable[[Any], Awaitable[int]]) -> int:
    from worker.client import GovernorClient

    url = _client_url(args)
    options = connect_options(load_config(None).nats)  # credentials from IF_GOVERNOR_NATS_* variables
    inbox_prefix = args.inbox_prefix or os.environ.get(INBOX_PREFIX_ENV) or None
    try:
        client = await GovernorClient.connect(
            url, prefix=args.prefix, timeout=args.timeout, inbox_prefix=inbox_prefix, **options
        )
    except ValueError as exc:  # a malformed inbox prefix, refused before connecting
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"error: cannot connect to {redact(url)}: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    url = redact(url)
    try:
        return await action(client)
    except errors.GovernorError as exc:
        print(f"error: {exc.code}: {escape(exc.message)}", file=sys.stderr)  # it may quote what a client sent
        return 1
    except TimeoutError:
        print(
            f"error: no reply from the governor on {url} within {args.timeout}s (is it running?)",
            file=sys.stderr,
        )
        return 1
    except Exception as exc:  # nats-py's NoRespondersError and friends
        name = type(exc).__name__
        if "NoResponders" in name:
            print(f"error: no governor is serving {args.prefix}.* on {url}", file=sys.stderr)
        elif "Timeout" in name:
            print(f"error: no reply from the governor on {url} within {args.timeout}s", file=sys.stderr)
        else:
            print(f"error: {name}: {exc}", file=sys.stderr)
        return 1
    finally:
        await client.close()


async def _assign(args: argparse.Namespace) -> int:
    async def action(client: Any) -> int:
        reply = await client.assign(
            args.capabilities,
            task_id=args.task_id,
            max_cost=args.max_cost,
            max_swarms=args.max_swarms,
            explain=args.explain,
            estimated_cost=args.estimated_cost,
        )
        if args.json:
            print_json(reply)
        elif reply.swarm_id is None:
            print(f"task {reply.task_id}: no qualified swarm")
        else:
            for a in reply.assignments:
                print(f"task {reply.task_id} -> {a.swarm_id}  (match {a.capability_match:.2f}, score {a.score:.4f})")
        if args.explain and not args.json and reply.explanation:
            print(explain_table(reply.explanation, {a.swarm_id for a in reply.assignments}))
        return 0 if reply.swarm_id is not None else 3

    return await _with_client(args, action)


async def _cost(args: argparse.Namespace) -> int:
    from schemas.pricing import TokenUsage

    if (args.amount is None) == (args.input_tokens is None):
        print("error: give an amount or --input-tokens (with --output-tokens), not both", file=sys.stderr)
        return 2
    try:
        usage = (
            None
            if args.input_tokens is None
            else msgspec.convert(
                {
                    "input_tokens": args.input_tokens,
                    "output_tokens": args.output_tokens,
                    "cached_input_tokens": args.cached_input_tokens,
                },
                TokenUsage,
            )
        )
    except msgspec.ValidationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def action(client: Any) -> int:
        reply = await client.cost(
            args.swarm,
            args.operation,
            args.amount,
            usage=usage,
            model=args.model,
            event_id=args.event_id,
            task_id=args.task_id,
        )
        if args.json:
            print_json(reply)
        else:
            state = "TRIPPED" if reply.tripped else "ok"
            dup = " (duplicate: not applied again)" if reply.duplicate else ""
            charged = f"charged {reply.cost:.6f} USD, " if usage is not None and reply.cost is not None else ""
            print(f"{reply.swarm_id}: {charged}remaining {reply.remaining:.2f} USD, breaker {state}{dup}")
        return 0

    return await _with_client(args, action)


async def _failure(args: argparse.Namespace) -> int:
    async def action(client: Any) -> int:
        reply = await client.failure(args.swarm, task_id=args.task_id, error=args.error, event_id=args.event_id)
        state = "TRIPPED" if reply.tripped else "ok"
        print(f"{reply.swarm_id}: {reply.failures_in_window} failures in window, breaker {state}")
        return 0

    return await _with_client(args, action)


async def _success(args: argparse.Namespace) -> int:
    async def action(client: Any) -> int:
        reply = await client.success(args.swarm, task_id=args.task_id, event_id=args.event_id)
        closed = "breaker closed (probe succeeded)" if reply.closed else "recorded"
        print(f"{reply.swarm_id}: {closed}")
        return 0

    return await _with_client(args, action)


async def _reload(args: argparse.Namespace) -> int:
    async def action(client: Any) -> int:
        reply = await client.reload()
        registered = ", ".join(reply.registered) or "none"
        print(f"config reloaded: policy/rules {'changed' if reply.changed else 'unchanged'}; new swarms: {registered}")
        return 0

    return await _with_client(args, action)


async def _trip(args: argparse.Namespace) -> int:
    async def action(client: Any) -> int:
        reply = await client.trip(args.swarm, args.reason, requested_by=args.requested_by)
        print(f"{reply.swarm_id}: breaker tripped ({args.reason})")
        return 0

    return await _with_client(args, action)


async def _reset(args: argparse.Namespace) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            print("error: reset needs confirmation: pass --yes when not on a terminal", file=sys.stderr)
            return 2
        answer = await asyncio.to_thread(
            input,
            f"Reset {args.swarm} with a new budget of {args.budget:.2f} USD, approved by {args.approved_by}? [y/N] ",
        )
        if answer.strip().lower() not in ("y", "yes"):
            print("not reset")
            return 1

    async def action(client: Any) -> int:
        reply = await client.reset(args.swarm, args.budget, approved_by=args.approved_by)
        print(f"{reply.swarm_id}: breaker closed, budget {reply.remaining:.2f} USD (approved by {args.approved_by})")
        return 0

    return await _with_client(args, action)


async def _complete(args: argparse.Namespace) -> int:
    async def action(client: Any) -> int:
        reply = await client.complete(
            args.task_id, args.outcome, swarm_id=args.swarm, cost=args.cost, error=args.error, event_id=args.event_id
        )
        if args.json:
            print_json(reply)
            return 0
        again = " (already applied: this event_id was seen)" if reply.duplicate else ""
        breaker = ", breaker closed" if reply.closed else ", breaker TRIPPED" if reply.tripped else ""
        print(
            f"task {escape(reply.task_id)}: {reply.outcome} on {reply.swarm_id} after {reply.duration_s:.1f}s, "
            f"{reply.total_cost:.2f} USD in all{breaker}{again}"
        )
        return 0

    return await _with_client(args, action)


async def _update(args: argparse.Namespace) -> int:
    fields = {
        "reputation_score": args.reputation,
        "cost_per_hour": args.cost_per_hour,
        "capabilities": [c.strip() for c in args.capabilities.split(",") if c.strip()] if args.capabilities else None,
        "model": args.model,
        "max_concurrent_tasks": args.max_concurrent_tasks,
        "budget_group": args.budget_group,
    }
    given = {k: v for k, v in fields.items() if v is not None}
    if not given:
        print("error: name at least one field to change (--reputation, --cost-per-hour, ...)", file=sys.stderr)
        return 2

    async def action(client: Any) -> int:
        reply = await client.update(args.swarm, requested_by=args.requested_by, event_id=args.event_id, **given)
        changed = ", ".join(reply.changed) or "nothing (it had these values)"
        print(f"{reply.swarm_id}: changed {changed}{' (already applied)' if reply.duplicate else ''}")
        return 0

    return await _with_client(args, action)


async def _topup(args: argparse.Namespace) -> int:
    async def action(client: Any) -> int:
        reply = await client.topup(
            args.amount, approved_by=args.approved_by, swarm_id=args.swarm, group=args.group, event_id=args.event_id
        )
        if args.json:
            print_json(reply)
            return 0
        what = f"swarm {reply.swarm_id}" if reply.swarm_id is not None else f"group {reply.group}"
        again = " (already applied: this event_id was seen)" if reply.duplicate else ""
        print(f"{what}: +{reply.amount:.2f} USD, {reply.remaining:.2f} USD remaining{again}")
        if reply.unblocked:
            print(f"group {reply.group}: its swarms get work again")
        if reply.note:
            print(f"note: {reply.note}")
        return 0

    return await _with_client(args, action)


async def _budgets(args: argparse.Namespace) -> int:
    async def action(client: Any) -> int:
        groups = await client.budgets()
        if args.json:
            print_json(groups)
        else:
            print(budgets_table(groups, time.time()))
        return 0

    return await _with_client(args, action)


async def _status(args: argparse.Namespace) -> int:
    async def action(client: Any) -> int:
        status = await client.status()
        if args.json:
            print_json(status)
        else:
            print(status_table(status))
        return 0

    return await _with_client(args, action)


async def _history(args: argparse.Namespace) -> int:
    async def action(client: Any) -> int:
        history = await client.history(args.limit)
        if args.json:
            print_json(history)
        else:
            for a in history.assignments:
                stamp = time.strftime("%H:%M:%S", time.localtime(a.timestamp))
                print(f"{stamp}  {a.task_id} -> {', '.join(a.swarm_ids)}  (match {a.capability_match:.2f})")
        return 0

    return await _with_client(args, action)


async def _watch(args: argparse.Namespace) -> int:
    async def action(client: Any) -> int:
        print(f"watching {args.prefix}.events.>{' and witness records' if args.witness else ''} (Ctrl-C to stop)")
        count = 0
        async for subject, event in client.events(witness=args.witness):
            stamp = time.strftime("%H:%M:%S")
            print(f"{stamp} {subject} {msgspec.json.encode(event).decode()}", flush=True)
            count += 1
            if args.count and count >= args.count:
                break
        return 0

    return await _with_client(args, action)


def parse_time(text: str) -> float:
    """A point in time on the command line: Unix seconds, or an ISO 8601 date or time (UTC unless it says)."""
    try:
        return float(text)
    except ValueError:
        pass
    moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)).timestamp()


def _concerns(record: Any, swarm: str) -> bool:
    """Whether a stored record is about `swarm` (an event's swarm, or a witness record's swarm or swarms)."""
    if getattr(record, "swarm_id", None) == swarm:
        return True
    params = getattr(record, "params", None) or {}
    return bool(params.get("swarm_id") == swarm or swarm in (params.get("swarm_ids") or ()))


async def _audit(args: argparse.Namespace) -> int:
    since = parse_time(args.since) if args.since else None
    until = parse_time(args.until) if args.until else None

    def show(subject: str, stored_at: float, record: Any) -> None:
        body = msgspec.json.encode(record).decode()
        if args.json:
            print(json.dumps({"subject": subject, "stored_at": stored_at, "record": json.loads(body)}), flush=True)
        else:
            stamp = datetime.datetime.fromtimestamp(stored_at, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            print(f"{stamp} {subject} {escape(body)}", flush=True)

    async def action(client: Any) -> int:
        records = client.audit(operation=args.operation, since=since, follow=args.follow)
        async with contextlib.aclosing(records):
            async for subject, stored_at, record in records:
                if until is not None and stored_at > until:
                    break
                if args.swarm is None or _concerns(record, args.swarm):
                    show(subject, stored_at, record)
        return 0

    return await _with_client(args, action)


def check_config(args: argparse.Namespace) -> int:
    """`governor check-config F`: print what the file holds and notes on its rules (a bad file raises ConfigError)."""
    config = load_config(args.file)
    profiles = profiles_of(config)
    g = config.governor
    print(
        f"{args.file}: ok: {len(profiles)} swarms, {len(config.capabilities)} extra capabilities, "
        f"min_capability_match={g.min_capability_match}, max_cost_per_task={g.max_cost_per_task}, "
        f"circuit_breaker_threshold={g.circuit_breaker_failure_threshold}"
    )
    for p in profiles:
        print(f"  {p.swarm_id}: {p.model}, {p.cost_per_hour:g} USD/h, budget {p.current_budget_remaining:g} USD")
    for i, rule in enumerate(config.rules):
        models = f", models {', '.join(rule.models)}" if rule.models else ""
        print(f"  rules[{i}]: {rule.match} -> {rule.policy}{models}")
    known = list(BUILTIN_CAPABILITIES) + list(config.capabilities)
    for note in rule_conflicts(config.rules, known):
        print(f"  note: {note}")
    return 0


def schema(args: argparse.Namespace) -> int:
    """`governor schema`: write the JSON Schemas and the AsyncAPI document under `--out`."""
    from worker.ops.contract import write

    written = write(args.out)
    print(f"wrote {len(written)} files under {args.out}/ (schemas/*.json and asyncapi.yaml)")
    return 0


async def _ledger(args: argparse.Namespace) -> int:
    """`governor ledger verify`: read the whole ledger and its snapshots with the governor's storage login; exit 0
    when nothing is wrong, 1 when something is (or the ledger cannot be read)."""
    import nats
    import nats.errors
    import nats.js.errors

    from worker.storage.journal import Ledger, stream_name
    from worker.storage.verify import verify

    config = load_config(args.config)  # the governor's file names its prefix, its servers and its storage login
    servers = [args.nats_url] if args.nats_url else (config.nats.servers or [DEFAULT_URL])
    prefix = args.prefix or config.governor.prefix
    if args.pool:
        prefix = pool_prefix(args.prefix or config.governor.subject_prefix, args.pool)
    shown = ", ".join(redact(u) for u in servers)

    async def quiet(exc: Exception) -> None:  # the exception is reported below; no log noise from nats-py
        return None

    try:
        nc = await nats.connect(
            servers=servers,
            connect_timeout=min(args.timeout, 2.0),
            max_reconnect_attempts=2,
            reconnect_time_wait=0.25,
            error_cb=quiet,
            **connect_options(config.nats, storage=True),
        )
    except Exception as exc:
        print(f"error: cannot connect to {shown}: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    try:
        report = await verify(Ledger(nc, prefix=prefix, timeout=args.timeout))
    except nats.js.errors.NotFoundError:
        print(f"error: no ledger for {prefix}.* on {shown} (no stream {stream_name(prefix)})", file=sys.stderr)
        return 1
    except (nats.errors.Error, TimeoutError) as exc:
        print(f"error: the ledger could not be read: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        await nc.close()
    print(report.summary())
    return 0 if report.clean else 1


async def _pools(args: argparse.Namespace) -> int:
    """`governor pools`: every pool that serves on this NATS system, its swarms, and any swarm found in more than
    one pool (exit 1: a swarm must belong to one pool only)."""
    from worker.pools import PoolRouter, Pools, discover

    async def action(client: Any) -> int:
        found = await discover(client.nc, wait=args.wait)
        if not found:
            print("no governor answered discovery ($SRV.INFO.governor)", file=sys.stderr)
            return 1
        pools = Pools(client.nc, PoolRouter([]), timeout=args.timeout)
        owners: dict[str, list[str]] = {}
        rows = []
        for entry in found:
            name = entry.pool or "-"
            status = await pools.client(entry.pool or None).status() if entry.prefix else None
            swarms = [s.swarm_id for s in status.swarms] if status is not None else []
            for swarm_id in swarms:
                owners.setdefault(swarm_id, []).append(name)
            rows.append((name, entry.prefix, str(len(swarms)), entry.service_id, entry.version))
        if args.json:
            print_json([dict(zip(("pool", "prefix", "swarms", "service_id", "version"), r, strict=True)) for r in rows])
        else:
            widths = [
                max(len(r[i]) for r in [("POOL", "SUBJECTS", "SWARMS", "SERVING", "VERSION"), *rows]) for i in range(5)
            ]
            for row in [("POOL", "SUBJECTS", "SWARMS", "SERVING", "VERSION"), *rows]:
                print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        shared = {swarm_id: names for swarm_id, names in owners.items() if len(names) > 1}
        for swarm_id, names in sorted(shared.items()):
            print(f"error: swarm {escape(swarm_id)} is in pools {', '.join(names)}: give it to one", file=sys.stderr)
        return 1 if shared else 0

    return await _with_client(args, action)


COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "assign": _assign,
    "cost": _cost,
    "failure": _failure,
    "trip": _trip,
    "success": _success,
    "reload": _reload,
    "reset": _reset,
    "topup": _topup,
    "complete": _complete,
    "update": _update,
    "budgets": _budgets,
    "status": _status,
    "history": _history,
    "watch": _watch,
    "audit": _audit,
    "ledger": _ledger,
    "pools": _pools,
}
"""The operator commands that run on an event loop, by their name on the command line."""
