"""After its start, a governor gives the memory of the start's burst back (a record per swarm registered, encoded,
published and stored): the start's records are not held for the term, and once they are stored the freed heap
goes back to the operating system. `governor bench` measures the effect (RSS when serving and the start's peak)."""

from __future__ import annotations

import pytest

from tests.integration.helpers import WorkerFactory
from worker.bench.workload import bench_config
from worker.ops import memory
from worker.service import app


def test_the_c_library_can_give_memory_back() -> None:
    """On glibc (this machine, and the shipped container's Debian base) the call exists and runs."""
    assert memory.release_freed_memory() is True


@pytest.mark.parametrize("durable", [True, False], ids=["durable", "memory"])
async def test_released_once_the_start_is_stored(
    start_worker: WorkerFactory, monkeypatch: pytest.MonkeyPatch, durable: bool
) -> None:
    released: list[int] = []

    def release() -> bool:
        released.append(1)
        return True

    monkeypatch.setattr(app, "release_freed_memory", release)
    worker = await start_worker(bench_config(2_000, durable=durable))
    await worker.start_settled()
    assert released == [1]
    if durable:  # every record of the start (2,200 registrations) was stored before the memory was released
        assert worker.bus is not None and worker.ledger is not None
        assert await worker.bus.effects.stored(worker.ledger.seq, wait_s=0.0)
