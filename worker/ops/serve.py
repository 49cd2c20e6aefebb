"""`governor run`: the worker, served until SIGINT or SIGTERM, on a bundled nats-server when no URL is given."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from schemas.config import Config
from worker import errors
from worker.ops.logs import setup_logging
from worker.service.config import redact, server_urls

BUNDLED_PORT = 4222
"""The bundled nats-server's port when `--nats-port` is absent."""

log = logging.getLogger("if_governor")


def _bundled_server_config(data_dir: Path) -> Path:
    """A nats-server config for the bundled server: JetStream in `data_dir`, every write synced to disk."""
    data_dir.mkdir(parents=True, exist_ok=True)
    conf = data_dir / "nats-server.conf"
    conf.write_text(
        "# Written by `governor run` for its bundled nats-server.\n"
        f"jetstream {{\n  store_dir: {json.dumps(str(data_dir / 'jetstream'))}\n  sync_interval: always\n}}\n"
        "# A frozen governor (SIGSTOP, a paused VM) keeps its share of the queue group's requests until the server\n"
        "# drops its connection: after about 10-15 s with these, not the default 2 minutes or more.\n"
        'ping_interval: "5s"\nping_max: 2\n'
    )
    return conf


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop `governor run` uses: uvloop's when chosen (or `auto` and installed), else asyncio's (None)."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise errors.ConfigError(
                "governor.event_loop is uvloop, but uvloop is not installed (pip install 'if-governor[fast]')"
            ) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


async def run(args: argparse.Namespace, config: Config) -> int:
    """Serve `config` on `--nats-url` or the config's servers, else on a bundled nats-server; the exit code."""
    from worker.ops.natsserver import NatsServer

    setup_logging(args.log_level or config.witness.log_level, args.log_format)
    running_loop = type(asyncio.get_running_loop()).__module__.split(".")[0]  # "uvloop" or "asyncio"
    log.info("event loop: %s (governor.event_loop: %s)", running_loop, config.governor.event_loop)
    # A URL from the flag, else from IF_GOVERNOR_NATS_URL or the config's nats.servers; none: the bundled server.
    servers = server_urls(args.nats_url) if args.nats_url else config.nats.servers
    # Signals are ours from the start: a SIGTERM while starting still stops the bundled server.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    bundled: NatsServer | None = None
    try:
        if servers is None:
            data_dir = Path(args.data_dir)  # made absolute in main()
            bundled = NatsServer(
                port=args.nats_port,
                store_dir=data_dir,
                jetstream=False,
                config_file=_bundled_server_config(data_dir),
                log_file=data_dir / "nats-server.log",
            )
            try:
                bundled.start()
            except (RuntimeError, TimeoutError) as exc:
                print(f"error: cannot start the bundled nats-server on port {bundled.port}: {exc}", file=sys.stderr)
                return 1
            servers = [bundled.url]
            print(f"bundled nats-server listening on {bundled.url} (data in {data_dir})", flush=True)
        return await _serve(config, servers, stop, args.config)
    finally:
        if bundled is not None:
            bundled.stop()


async def _serve(config: Config, servers: list[str], stop: asyncio.Event, config_path: str | None) -> int:
    """Run the worker until `stop` is set; a stop while it is still starting cancels the start."""
    from worker.service.app import Worker

    shown = ", ".join(redact(u) for u in servers)
    serving: list[Worker] = []

    async def serve() -> None:
        worker = Worker(config, servers=servers, config_path=config_path)
        # Before it serves: a SIGHUP sent once it answers must reload, never meet the default action (exit).
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, worker.reload)
        async with worker:
            serving.append(worker)
            metrics = f", metrics on http://{config.metrics.host}:{worker.http.port}/metrics" if worker.http else ""
            print(
                f"governor serving {config.governor.prefix}.* on {shown} with {len(worker.core)} swarms{metrics}",
                flush=True,
            )
            await worker.wait_stopped()
            print("governor stopping: finishing in-flight requests", flush=True)

    task = asyncio.create_task(serve())
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            if serving:
                serving[0].stop()  # drain: answer what was taken, snapshot, give the lease up
            else:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        else:
            task.result()
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # the worker's own task group failed (e.g. the in-memory actor died): logged there
        causes = exc.exceptions if isinstance(exc, BaseExceptionGroup) else (exc,)
        print(f"error: the governor failed: {'; '.join(repr(c) for c in causes)}", file=sys.stderr)
        return 1
    finally:
        stopper.cancel()
    print("governor stopped", flush=True)
    return 0
