"""The layers stay where they are: the decision core does no I/O and reads no clock, storage never reaches into
the core, and the wire contract depends on nothing of the worker's."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CORE = [*sorted(str(p.relative_to(ROOT)) for p in (ROOT / "worker" / "core").glob("*.py")), "worker/errors.py"]
STORAGE = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "worker" / "storage").glob("*.py"))
#: Every module of the worker but the bench itself and the one command that starts it (`governor bench`).
RUNTIME = sorted(
    path
    for path in (str(p.relative_to(ROOT)) for p in (ROOT / "worker").rglob("*.py"))
    if not path.startswith("worker/bench/") and path not in {"worker/ops/cli.py", "worker/__main__.py"}
)
#: What the core may not import: anything that blocks, talks to the network, exports metrics or reads the clock.
NOT_IN_CORE = {"asyncio", "nats", "prometheus_client", "time", "datetime", "socket", "threading"}
#: The one module of the core that does calendar arithmetic (budget periods in time zones): it may import datetime,
#: and is checked to call none of its clock reads.
CALENDAR_MODULE = "worker/core/periods.py"
CLOCK_READS = {"now", "utcnow", "today", "time", "monotonic", "perf_counter"}
#: The rooms above the core and storage, which neither may reach into.
SERVICE_AND_OPS = ("worker.service", "worker.ops", "worker.bench", "worker.client")


def imports(path: str) -> set[str]:
    """Every module a file imports, by its full dotted name (and each name taken from one, which may be a module)."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from worker import bench`
    return found


def tops(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


class TestLayers:
    @pytest.mark.parametrize("path", CORE)
    def test_the_core_does_no_io_and_reads_no_clock(self, path: str) -> None:
        """The decision core imports no asyncio, nats, prometheus_client, time (nor other clocks or sockets)."""
        allowed = {"datetime"} if path == CALENDAR_MODULE else set()
        assert tops(imports(path)) & NOT_IN_CORE <= allowed

    def test_the_calendar_module_reads_no_clock(self) -> None:
        """`periods.py` uses datetime for arithmetic only: no `now()`, `today()`, `utcnow()` (nor `time.*`)."""
        tree = ast.parse((ROOT / CALENDAR_MODULE).read_text(encoding="utf-8"))
        called = {
            node.func.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        }
        assert called & CLOCK_READS == set()

    @pytest.mark.parametrize("path", CORE)
    def test_the_core_knows_nothing_above_it(self, path: str) -> None:
        """The core imports neither storage nor the service, ops or the client: they drive it, never the reverse."""
        assert not {name for name in imports(path) if name.startswith(("worker.storage", *SERVICE_AND_OPS))}

    @pytest.mark.parametrize("path", STORAGE)
    def test_storage_never_reaches_into_the_core(self, path: str) -> None:
        """Storage imports neither the core nor what applies commands to it: it yields, the service applies."""
        assert not {name for name in imports(path) if name.startswith(("worker.core", *SERVICE_AND_OPS))}

    @pytest.mark.parametrize("path", RUNTIME)
    def test_the_runtime_never_imports_the_bench(self, path: str) -> None:
        """The benchmark ships beside the worker but nothing that serves imports it (only `governor bench` does)."""
        assert not {name for name in imports(path) if name.startswith("worker.bench")}

    def test_the_wire_contract_depends_on_nothing_of_the_worker(self) -> None:
        """No module of `schemas/` imports `worker`."""
        for path in sorted((ROOT / "schemas").glob("*.py")):
            assert "worker" not in tops(imports(str(path.relative_to(ROOT)))), path.name
