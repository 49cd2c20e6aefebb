"""The layers stay where they are: the decision core does no I/O and reads no clock, storage never reaches into
the core, and the wire contract depends on nothing of the worker's."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CORE = ["worker/core.py", "worker/index.py", "worker/capabilities.py", "worker/errors.py"]
STORAGE = ["worker/ledger.py", "worker/lease.py", "worker/verify.py"]
#: What the core may not import: anything that blocks, talks to the network, exports metrics or reads the clock.
NOT_IN_CORE = {"asyncio", "nats", "prometheus_client", "time", "datetime", "socket", "threading"}
#: What storage may not import: the core, and the modules that apply commands to it.
NOT_IN_STORAGE = {"worker.core", "worker.dispatch", "worker.replay", "worker.actor", "worker.app", "worker.bus"}


def imports(path: str) -> set[str]:
    """Every module a file imports, by its full dotted name."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            found.add(node.module)
    return found


def tops(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


class TestLayers:
    @pytest.mark.parametrize("path", CORE)
    def test_the_core_does_no_io_and_reads_no_clock(self, path: str) -> None:
        """The decision core imports no asyncio, nats, prometheus_client, time (nor other clocks or sockets)."""
        assert tops(imports(path)) & NOT_IN_CORE == set()

    @pytest.mark.parametrize("path", STORAGE)
    def test_storage_never_reaches_into_the_core(self, path: str) -> None:
        """Storage imports neither the core nor what applies commands to it: it yields, the service applies."""
        assert imports(path) & NOT_IN_STORAGE == set()

    def test_the_wire_contract_depends_on_nothing_of_the_worker(self) -> None:
        """No module of `schemas/` imports `worker`."""
        for path in sorted((ROOT / "schemas").glob("*.py")):
            assert "worker" not in tops(imports(str(path.relative_to(ROOT)))), path.name
