"""`python -m worker.bench`: the benchmark's children and its driver.

Child modes (used by `governor bench`, not meant for people), and the whole run:
    python -m worker.bench --echo URL [--uvloop]
    python -m worker.bench --serve URL[,URL...] --swarms N [--memory] [--uvloop] [--pool P --replicas R] [--groups L]
    python -m worker.bench --core N [--samples S] [--budget-s SECONDS]
    python -m worker.bench --run [--quick]           (the same as `governor bench`)
"""

from __future__ import annotations

import argparse
import json
import sys

from worker import bench
from worker.bench.children import run_child, serve_echo, serve_governor
from worker.bench.core_probe import core_probe


def run_mode() -> int:
    """Serve, probe or run the benchmark, as the flags say; the exit status."""
    parser = argparse.ArgumentParser(prog="python -m worker.bench", description=bench.__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--echo", metavar="URL", help="serve a bare echo responder")
    mode.add_argument("--serve", metavar="URL", help="serve the governor (durable unless --memory)")
    mode.add_argument("--core", metavar="N", type=int, help="measure the decision core with N swarms; print JSON")
    mode.add_argument("--run", action="store_true", help="the whole benchmark (as `governor bench`)")
    parser.add_argument("--swarms", type=int, default=1_000)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--budget-s", type=float, default=5.0)
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--memory", action="store_true", help="the governor without its ledger")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pool", help="the governor serves this pool (the pools mode)")
    parser.add_argument("--replicas", type=int, default=1, help="replicas of the governor's streams")
    parser.add_argument("--groups", type=int, default=0, help="levels of budget groups over the swarms")
    parser.add_argument("--strategy", choices=("best", "spread"), default="best", help="the policy's strategy")
    args = parser.parse_args()
    if args.echo:
        run_child(lambda: serve_echo(args.echo), args.uvloop)
    elif args.serve:
        run_child(
            lambda: serve_governor(
                args.serve,
                args.swarms,
                durable=not args.memory,
                pool=args.pool,
                replicas=args.replicas,
                groups=args.groups,
                strategy=args.strategy,
            ),
            args.uvloop,
        )
    elif args.core is not None:
        print(json.dumps(core_probe(args.core, args.samples, args.budget_s)))
    else:
        return bench.main(quick=args.quick)
    return 0


sys.exit(run_mode())
