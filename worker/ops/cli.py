"""The `governor` command: run the worker, and operator commands against a running one.

    governor run [--config F] [--nats-url URL]     serve (starts a bundled nats-server when no URL is given)
    governor assign CAP... [--max-cost X]          ask for an assignment
    governor cost SWARM OPERATION AMOUNT           report what an operation cost
    governor failure SWARM [--task-id T]           report a failed task
    governor success SWARM [--task-id T]           report a task that succeeded (closes a half-open breaker)
    governor reload                                make the governor re-read its config file
    governor trip SWARM --reason R --requested-by NAME
    governor reset SWARM --budget X --approved-by NAME [--yes]
    governor status | history | watch              inspect
    governor check-config F                        validate a config file and exit
    governor schema [--out DIR]                    write the JSON Schemas and the AsyncAPI document
    governor bench [--quick | --cell WORKLOAD ...]  measure against a bare NATS responder
    governor ledger verify [--config F]            read the ledger and its snapshots; exit 1 on anything foreign

Errors print one line and exit non-zero (1 for a refused request or an unreachable server, 2 for usage/config,
3 for an assign that found no qualified swarm).

Operator commands reach NATS at `--nats-url` (or $IF_GOVERNOR_NATS_URL), log in with the IF_GOVERNOR_NATS_*
credentials, and take their replies on `--inbox-prefix` (or $IF_GOVERNOR_INBOX_PREFIX; default `_INBOX`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import msgspec

from worker import errors
from worker.core.capabilities import BUILTIN_CAPABILITIES
from worker.core.governor import rule_conflicts
from worker.ops import serve
from worker.ops.render import escape, explain_table, print_json, status_table
from worker.service.config import NATS_URL_ENV, connect_options, load_config, profiles_of, redact

DEFAULT_URL = "nats://127.0.0.1:4222"
INBOX_PREFIX_ENV = "IF_GOVERNOR_INBOX_PREFIX"
"""The operator commands' `--inbox-prefix` when the flag is absent."""


# -- operator commands ----------------------------------------------------------------------------------------


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
    async def action(client: Any) -> int:
        reply = await client.cost(args.swarm, args.operation, args.amount, event_id=args.event_id, task_id=args.task_id)
        if args.json:
            print_json(reply)
        else:
            state = "TRIPPED" if reply.tripped else "ok"
            dup = " (duplicate: not applied again)" if reply.duplicate else ""
            print(f"{reply.swarm_id}: remaining {reply.remaining:.2f} USD, breaker {state}{dup}")
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


def _check_config(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    profiles = profiles_of(config)
    g = config.governor
    print(
        f"{args.file}: ok: {len(profiles)} swarms, {len(config.capabilities)} extra capabilities, "
        f"min_capability_match={g.min_capability_match}, max_cost_per_task={g.max_cost_per_task}, "
        f"circuit_breaker_threshold={g.circuit_breaker_threshold}"
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


def _schema(args: argparse.Namespace) -> int:
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
    prefix = args.prefix or config.governor.subject_prefix
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


# -- parser ---------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="governor", description="IF.governor: swarm assignment and budget governance over NATS"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def client_command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--nats-url", help=f"NATS server (default: ${NATS_URL_ENV} or {DEFAULT_URL})")
        p.add_argument("--prefix", default="governor", help="subject prefix (default: governor)")
        p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a reply")
        p.add_argument(
            "--inbox-prefix",
            help=f"subject prefix of this client's reply inboxes, e.g. _INBOX_alice (default: ${INBOX_PREFIX_ENV} "
            "or _INBOX); lets the NATS server keep each user's replies to that user",
        )
        return p

    run = sub.add_parser("run", help="run the worker")
    run.add_argument("--config", help="YAML config file (e.g. deploy/governor.yaml)")
    run.add_argument("--nats-url", help="NATS server to use; without it a bundled nats-server is started on loopback")
    run.add_argument("--nats-port", type=int, default=serve.BUNDLED_PORT, help="port of the bundled nats-server")
    run.add_argument("--data-dir", default="var/nats", help="data directory of the bundled nats-server")
    run.add_argument("--log-format", choices=["text", "json"], default="text")
    run.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    p = client_command("assign", "ask which swarm gets a task")
    p.add_argument("capabilities", nargs="+", metavar="CAP", help="required capabilities, e.g. integration:sip")
    p.add_argument("--task-id")
    p.add_argument("--max-cost", type=float, help="highest acceptable cost per hour")
    p.add_argument("--max-swarms", type=int)
    p.add_argument(
        "--explain", action="store_true", help="a table: every swarm's match, score and first failing filter"
    )
    p.add_argument("--estimated-cost", type=float, help="hold this much (USD) of the chosen swarm's budget")
    p.add_argument("--json", action="store_true")

    p = client_command("cost", "report what an operation cost")
    p.add_argument("swarm")
    p.add_argument("operation")
    p.add_argument("amount", type=float)
    p.add_argument("--event-id", help="idempotency key: the same id is applied once")
    p.add_argument("--task-id")
    p.add_argument("--json", action="store_true")

    p = client_command("failure", "report a failed task")
    p.add_argument("swarm")
    p.add_argument("--task-id")
    p.add_argument("--error")
    p.add_argument("--event-id")

    p = client_command("success", "report a task that succeeded (closes a half-open breaker)")
    p.add_argument("swarm")
    p.add_argument("--task-id")
    p.add_argument("--event-id")

    client_command("reload", "make the governor re-read its config file (operators)")

    p = client_command("trip", "trip a swarm's breaker by hand")
    p.add_argument("swarm")
    p.add_argument(
        "--reason", required=True, choices=["repeated_failures", "performance_degradation", "manual_override"]
    )
    p.add_argument("--requested-by", required=True)

    p = client_command("reset", "close a tripped breaker with a new budget (a human's decision)")
    p.add_argument("swarm")
    p.add_argument("--budget", type=float, required=True)
    p.add_argument("--approved-by", required=True, help="the human who approved the reset")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    p = client_command("status", "swarms, budgets, breakers and policy")
    p.add_argument("--json", action="store_true")

    p = client_command("history", "recent assignments, newest last")
    p.add_argument("--limit", type=int)
    p.add_argument("--json", action="store_true")

    p = client_command("watch", "print events as they arrive")
    p.add_argument("--witness", action="store_true", help="also print witness records")
    p.add_argument("--count", type=int, default=0, help="stop after this many events")

    p = sub.add_parser("check-config", help="validate a config file")
    p.add_argument("file")

    p = sub.add_parser("schema", help="write JSON Schemas and the AsyncAPI document (the contract for other languages)")
    p.add_argument("--out", default="deploy", help="output directory (default: deploy)")

    ledger = sub.add_parser("ledger", help="inspect the durable ledger")
    actions = ledger.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser("verify", help="read the ledger and its snapshots; report anything foreign or broken")
    p.add_argument("--config", help="the governor's YAML config (its prefix, NATS servers and storage login)")
    p.add_argument("--nats-url", help=f"NATS server (default: ${NATS_URL_ENV}, the config's, or {DEFAULT_URL})")
    p.add_argument("--prefix", help="subject prefix (default: the config's, else governor)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each read")

    p = sub.add_parser("bench", help="benchmark against a bare NATS responder")
    p.add_argument("--quick", action="store_true", help="a shorter run (under a minute)")
    p.add_argument(
        "--cell",
        choices=("echo", "assign", "cost", "mixed"),
        help="measure only this workload at one concurrency (for A/B runs of two checkouts); see the options below",
    )
    p.add_argument("--mode", choices=("durable", "memory"), default="durable", help="with --cell (default durable)")
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="with --cell (default asyncio)")
    p.add_argument("--swarms", type=int, default=1_000, help="with --cell (default 1000)")
    p.add_argument("--concurrency", type=int, default=64, help="with --cell (default 64)")
    p.add_argument("--seconds", type=float, default=5.0, help="with --cell (default 5)")
    p.add_argument("--repeat", type=int, default=1, help="with --cell: runs, each on a fresh server (default 1)")
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "assign": _assign,
    "cost": _cost,
    "failure": _failure,
    "trip": _trip,
    "success": _success,
    "reload": _reload,
    "reset": _reset,
    "status": _status,
    "history": _history,
    "watch": _watch,
    "ledger": _ledger,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check-config":
            return _check_config(args)
        if args.command == "schema":
            return _schema(args)
        if args.command == "bench":
            from worker import bench

            if args.cell:
                return bench.cell(
                    args.cell,
                    mode=args.mode,
                    loop=args.loop,
                    swarms=args.swarms,
                    concurrency=args.concurrency,
                    seconds=args.seconds,
                    repeat=args.repeat,
                )
            return int(bench.main(quick=args.quick))
        if args.command == "run":
            args.data_dir = os.path.abspath(args.data_dir)
            config = load_config(args.config)  # once: it also says which event loop to run on
            with asyncio.Runner(loop_factory=serve.loop_factory(config.governor.event_loop)) as runner:
                return runner.run(serve.run(args, config))
        return asyncio.run(COMMANDS[args.command](args))
    except errors.ConfigError as exc:
        print(f"error: config: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
