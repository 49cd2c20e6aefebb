"""The `governor` command: run the worker, and operator commands against a running one.

    governor run [--config F] [--nats-url URL]     serve (starts a bundled nats-server when no URL is given)
    governor assign CAP... [--max-cost X]          ask for an assignment
    governor cost SWARM OPERATION AMOUNT           report what an operation cost
    governor failure SWARM [--task-id T]           report a failed task
    governor success SWARM [--task-id T]           report a task that succeeded (closes a half-open breaker)
    governor reload                                make the governor re-read its config file
    governor trip SWARM --reason R --requested-by NAME
    governor reset SWARM --budget X --approved-by NAME [--yes]
    governor status | history | watch | audit      inspect
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

from schemas.codes import MANUAL_TRIP_REASONS
from schemas.config import check_pool_name, pool_prefix
from worker import errors
from worker.ops import commands, serve
from worker.ops.commands import DEFAULT_URL, INBOX_PREFIX_ENV
from worker.ops.serve import BUNDLED_PORT
from worker.service.config import NATS_URL_ENV, load_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="governor", description="IF.governor: swarm assignment and budget governance over NATS"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def client_command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--nats-url", help=f"NATS server (default: ${NATS_URL_ENV} or {DEFAULT_URL})")
        p.add_argument("--prefix", default="governor", help="subject prefix (default: governor)")
        p.add_argument("--pool", type=pool_name, help="the pool to ask: its subjects are <prefix>.<pool>.*")
        p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a reply")
        p.add_argument(
            "--inbox-prefix",
            help=f"subject prefix of this client's reply inboxes, e.g. _INBOX_alice (default: ${INBOX_PREFIX_ENV} "
            "or _INBOX); lets the NATS server keep each user's replies to that user",
        )
        return p

    run = sub.add_parser("run", help="run the worker")
    run.add_argument("--config", help="YAML config file (e.g. deploy/governor.yaml)")
    run.add_argument(
        "--nats-url",
        help="NATS servers, comma-separated (a cluster's); without it a bundled nats-server is started on loopback",
    )
    run.add_argument("--nats-port", type=int, default=BUNDLED_PORT, help="port of the bundled nats-server")
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
    p.add_argument("amount", type=float, nargs="?", help="USD; or give the tokens used with --input-tokens ...")
    p.add_argument("--input-tokens", type=int, help="tokens used instead of an amount, priced by the governor")
    p.add_argument("--output-tokens", type=int, default=0)
    p.add_argument("--cached-input-tokens", type=int, default=0)
    p.add_argument("--model", help="price the tokens as this model's (default: the swarm's)")
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
    p.add_argument("--reason", required=True, choices=MANUAL_TRIP_REASONS)
    p.add_argument("--requested-by", required=True)

    p = client_command("reset", "close a tripped breaker with a new budget (a human's decision)")
    p.add_argument("swarm")
    p.add_argument("--budget", type=float, required=True)
    p.add_argument("--approved-by", required=True, help="the human who approved the reset")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    p = client_command("complete", "close an assigned task with its outcome (and a final cost)")
    p.add_argument("task_id")
    p.add_argument("--outcome", required=True, choices=("success", "failure"))
    p.add_argument("--swarm", help="which of the task's swarms (default: the first assigned)")
    p.add_argument("--cost", type=float, help="a final cost to settle (USD)")
    p.add_argument("--error", help="what went wrong (with --outcome failure)")
    p.add_argument("--event-id", help="idempotency key: the same id is applied once")
    p.add_argument("--json", action="store_true")

    p = client_command("update", "change a swarm's profile without touching its budget or breaker")
    p.add_argument("swarm")
    p.add_argument("--reputation", type=float, help="reputation_score (0-1)")
    p.add_argument("--cost-per-hour", type=float)
    p.add_argument("--capabilities", help="the whole new list, comma-separated")
    p.add_argument("--model")
    p.add_argument("--max-concurrent-tasks", type=int)
    p.add_argument("--budget-group")
    p.add_argument("--requested-by", required=True, help="who asked for the change")
    p.add_argument("--event-id", help="idempotency key: the same id is applied once")

    p = client_command("topup", "add to a swarm's budget or a budget group's period (a human's decision)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--swarm", help="the swarm whose remaining budget grows")
    target.add_argument("--group", help="the budget group whose current period grows")
    p.add_argument("--amount", type=float, required=True, help="USD")
    p.add_argument("--approved-by", required=True, help="the human who approved the top-up")
    p.add_argument("--event-id", help="idempotency key: the same id is applied once")
    p.add_argument("--json", action="store_true")

    p = client_command("budgets", "budget groups as a tree: period, limit, spent, remaining, forecast")
    p.add_argument("--json", action="store_true")

    p = client_command("status", "swarms, budgets, breakers and policy")
    p.add_argument("--json", action="store_true")

    p = client_command("history", "recent assignments, newest last")
    p.add_argument("--limit", type=int)
    p.add_argument("--json", action="store_true")

    p = client_command("watch", "print events as they arrive")
    p.add_argument("--witness", action="store_true", help="also print witness records")
    p.add_argument("--count", type=int, default=0, help="stop after this many events")

    p = client_command("pools", "every pool serving on this NATS system, and its swarms")
    p.add_argument("--wait", type=float, default=0.5, help="seconds to wait for the pools' answers (default 0.5)")
    p.add_argument("--json", action="store_true")

    p = client_command("audit", "read the stored audit trail: events and witness records, oldest first")
    p.add_argument("--swarm", help="only the records about this swarm")
    p.add_argument("--operation", help="only this witness operation (cost_tracked) or event (breaker.tripped)")
    p.add_argument("--since", help="from this time: Unix seconds or ISO 8601 (UTC unless it says)")
    p.add_argument("--until", help="to this time")
    p.add_argument("--follow", action="store_true", help="then the new records as they are stored")
    p.add_argument("--json", action="store_true", help="one JSON object a line: subject, stored_at, record")

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
    p.add_argument("--pool", type=pool_name, help="the pool whose ledger to read (default: the config's)")
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
    p.add_argument(
        "--groups",
        type=int,
        default=0,
        choices=range(9),
        metavar="LEVELS",
        help="with --cell: every swarm under this many levels of budget groups (0-8, default 0)",
    )
    p.add_argument("--strategy", choices=("best", "spread"), default="best", help="with --cell: the policy's strategy")
    p.add_argument(
        "--profile",
        metavar="FILE",
        help="with --cell: sample the governor with py-spy during the cell, write its raw stacks to FILE and print "
        "where its time goes",
    )
    p.add_argument(
        "--pools",
        type=lambda text: [int(n) for n in text.split(",")],
        help="aggregate decisions/s of these numbers of pools on a local three-node cluster, e.g. 1,2,4",
    )

    from worker.ops import cluster  # governor cluster (make cluster)

    cluster.add_arguments(sub.add_parser("cluster", help=cluster.HELP))
    return parser


def pool_name(text: str) -> str:
    try:
        return check_pool_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check-config":
            return commands.check_config(args)
        if args.command == "schema":
            return commands.schema(args)
        if args.command == "bench":
            from worker import bench

            if args.pools:
                from worker.bench.pools import main as pools_main

                return pools_main(args.pools, seconds=args.seconds)
            if args.cell:
                return bench.cell(
                    args.cell,
                    mode=args.mode,
                    loop=args.loop,
                    swarms=args.swarms,
                    concurrency=args.concurrency,
                    seconds=args.seconds,
                    repeat=args.repeat,
                    groups=args.groups,
                    strategy=args.strategy,
                    profile_to=args.profile,
                )
            return int(bench.main(quick=args.quick))
        if args.command == "cluster":
            from worker.ops import cluster

            return cluster.main(args)
        if args.command == "run":
            args.data_dir = os.path.abspath(args.data_dir)
            config = load_config(args.config)  # once: it also says which event loop to run on
            with asyncio.Runner(loop_factory=serve.loop_factory(config.governor.event_loop)) as runner:
                return runner.run(serve.run(args, config))
        if getattr(args, "pool", None) and args.command != "ledger":
            args.prefix = pool_prefix(args.prefix, args.pool)
        return asyncio.run(commands.COMMANDS[args.command](args))
    except errors.ConfigError as exc:
        print(f"error: config: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
