"""`governor bench`: the governor against the bare NATS limit, and the decision core on its own.

Processes, so that every responder gets the same treatment:

    this process (load generator) ──┬── nats-server, a fresh one per responder (loopback, JetStream synced)
                                    ├── echo child      python -m worker.bench --echo URL      (bare nats-py)
                                    ├── governor child  python -m worker.bench --serve URL --swarms N
                                    └── core child      python -m worker.bench --core N        (no I/O at all)

The load generator drives each responder with the same payloads (echo: the assign requests, bounced back;
`assign`: tasks needing 1-5 of 200 capabilities; `cost`: small costs on random swarms; mixed: 80% assign, 20%
cost) at concurrency 1, 64 and 256 (that many asyncio tasks, each with one request outstanding, on one
connection) for a fixed short time per cell. Throughput is shown as a ratio to the echo responder measured in
the same run under the same event loop. CPU time per request of the responder, of nats-server and of the load
generator comes from /proc/<pid>/stat: steadier than throughput on a busy 2-core machine. The governor runs in
its default durable mode (ledger on JetStream) and in memory; with `uvloop` importable, echo and the durable
governor are measured under uvloop too (the load generator's loop stays asyncio for every row); the targets are
judged on the rows of `governor run`'s default loop (asyncio), on which the 100,000-swarm governor runs too.

The decision core is measured in a fresh process per registry size (100 to 100,000 swarms): latency per
`core.assign` (time.perf_counter_ns around the call) and resident memory per swarm (VmRSS before and after
registering). A last section compares the run with issue 4's targets, met or not.

The modules: `plan` (the sessions and profiles), `workload` (the synthetic swarms and payloads), `children`
(the responders' processes), `measure` (the load generator and what it records), `core_probe` (the decision
core alone), `report` (the tables and targets), `run` (the driver); `__main__` parses the modes of
`python -m worker.bench`.
"""

from worker.bench.run import cell, main

__all__ = ["cell", "main"]
