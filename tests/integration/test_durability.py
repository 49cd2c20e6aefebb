"""Nothing lost, nothing counted twice: the durable ledger against killed workers and a killed nats-server.

Each test runs real processes (`governor run` and nats-server) on loopback, drives at least 10,000 cost events
from several concurrent clients that retry with the same `event_id` until they get an `ok`, kills something in
the middle, and then checks every budget to the cent against the events the clients saw acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest

from tests.factories import EXAMPLE_SWARMS, make_config
from tests.integration.helpers import WorkerProcess, answering, empty_snapshot
from tests.integration.load import (
    EVENTS,
    Load,
    assert_each_event_once,
    budgets,
    expected_budgets,
    launch,
    wait_serving,
    write_config,
)
from worker.client import GovernorClient
from worker.core.governor import Governor
from worker.errors import Unavailable
from worker.ops.natsserver import NatsServer
from worker.service.app import Worker
from worker.service.replay import catch_up, recover
from worker.storage.entries import LedgerGap
from worker.storage.journal import Ledger, stream_name
from worker.storage.snapshots import LEGACY_SNAPSHOT_NAME, snapshot_name

pytestmark = pytest.mark.timeout(300)


async def start_serving(tmp_path: Path, url: str, processes: list[WorkerProcess], log: str = "worker.log") -> Path:
    """Write the test config, start a `governor run` on it and wait until it serves; the config's path."""
    config = write_config(tmp_path / "governor.yaml")
    processes.append(launch(url, config, tmp_path / log))
    await wait_serving(url)
    return config


async def load_a_third(url: str) -> tuple[Load, asyncio.Task[None]]:
    """Start the full load of retried cost events (EVENTS of them); return once a third of them are acknowledged."""
    load = Load(url)
    task = asyncio.create_task(load.run())
    await load.wait_acked(EVENTS // 3, task)
    return load, task


class TestCrashRecovery:
    async def test_worker_killed_mid_load_loses_and_duplicates_nothing(
        self, tmp_path: Path, nats_server: NatsServer, processes: list[WorkerProcess]
    ) -> None:
        """After kill -9 of the worker mid-load and a restart, every budget equals initial minus the acked events."""
        config = await start_serving(tmp_path, nats_server.url, processes)
        load, task = await load_a_third(nats_server.url)
        processes[-1].kill()
        processes.append(launch(nats_server.url, config, tmp_path / "worker.log"))
        await asyncio.wait_for(task, timeout=240)

        await assert_each_event_once(nats_server.url, load)
        assert processes[-1].stop(timeout=20.0) == 0

    async def test_nats_server_killed_mid_load_loses_and_duplicates_nothing(
        self, tmp_path: Path, nats_server: NatsServer, processes: list[WorkerProcess]
    ) -> None:
        """After kill -9 of nats-server mid-load and a restart on its data dir, budgets are exact to the cent."""
        await start_serving(tmp_path, nats_server.url, processes)
        load, task = await load_a_third(nats_server.url)
        nats_server.stop(kill=True)
        await asyncio.sleep(0.3)
        nats_server.start()
        await asyncio.wait_for(task, timeout=240)

        await assert_each_event_once(nats_server.url, load)
        assert processes[-1].process.poll() is None  # it survived
        assert processes[-1].stop(timeout=20.0) == 0

    async def test_clean_restart_recovers_from_snapshot_and_tail(
        self, tmp_path: Path, nats_server: NatsServer, processes: list[WorkerProcess]
    ) -> None:
        """A SIGTERM'd worker exits 0 and its successor serves the same budgets (snapshot plus ledger tail)."""
        config = await start_serving(tmp_path, nats_server.url, processes)
        load = Load(nats_server.url, events=1000)
        await load.run()
        before = await budgets(nats_server.url)
        assert before == expected_budgets(load)
        assert processes[-1].stop(timeout=20.0) == 0
        processes.append(launch(nats_server.url, config, tmp_path / "worker.log"))
        await wait_serving(nats_server.url)
        assert await budgets(nats_server.url) == before


class TestHotStandby:
    async def test_standby_takes_over_when_the_holder_dies(
        self, tmp_path: Path, nats_server: NatsServer, processes: list[WorkerProcess]
    ) -> None:
        """Kill -9 of the lease holder: the standby serves, no request is answered twice, budgets are exact."""
        config = await start_serving(tmp_path, nats_server.url, processes, log="a.log")
        processes.append(launch(nats_server.url, config, tmp_path / "b.log"))
        load, task = await load_a_third(nats_server.url)
        processes[0].kill()
        killed_at = time.monotonic()
        acked_at_kill = len(load.acked)
        try:
            await load.wait_acked(acked_at_kill + 100, task, timeout=30)
        except TimeoutError:  # say why: the standby's own log
            tail = (tmp_path / "b.log").read_text()[-3000:]
            raise AssertionError(f"the standby did not serve within 30 s; its log ends:\n{tail}") from None
        takeover = time.monotonic() - killed_at
        await asyncio.wait_for(task, timeout=240)

        print(f"standby took over {takeover:.2f}s after the holder was killed (lease_ttl_s 2.0)")
        await assert_each_event_once(nats_server.url, load)
        assert "lease acquired" in (tmp_path / "b.log").read_text()
        assert processes[1].stop(timeout=20.0) == 0

    async def test_a_frozen_holder_is_replaced_and_answers_nothing_stale_when_it_resumes(
        self, tmp_path: Path, nats_server: NatsServer, processes: list[WorkerProcess]
    ) -> None:
        """SIGSTOP of the lease holder mid-load: the standby serves within the lease TTL plus a few seconds, every
        retried event is applied once; when the frozen process resumes it learns it lost the lease, answers no
        request from its stale state, and stays up as a standby."""
        config = await start_serving(tmp_path, nats_server.url, processes, log="a.log")
        processes.append(launch(nats_server.url, config, tmp_path / "b.log"))
        load, task = await load_a_third(nats_server.url)
        frozen = processes[0].process
        os.kill(frozen.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            async with asyncio.timeout(30):  # the frozen holder still gets its share of the queue group's requests
                while True:
                    if "serving governor.*" in (tmp_path / "b.log").read_text():
                        break
                    await asyncio.sleep(0.05)
        except TimeoutError:
            tail = (tmp_path / "b.log").read_text()[-3000:]
            raise AssertionError(f"the standby did not serve within 30 s; its log ends:\n{tail}") from None
        takeover = time.monotonic() - stopped_at
        await load.wait_acked(len(load.acked) + 100, task, timeout=60)  # and the standby's answers arrive
        os.kill(frozen.pid, signal.SIGCONT)
        await asyncio.wait_for(task, timeout=240)

        print(f"standby took over {takeover:.2f}s after the holder was frozen (lease_ttl_s 2.0)")
        assert takeover < 2.0 + 5.0
        await assert_each_event_once(nats_server.url, load)
        resumed = (tmp_path / "a.log").read_text()
        assert "no longer serving" in resumed, resumed[-3000:]
        assert frozen.poll() is None  # resumed, as a standby
        assert processes[1].stop(timeout=20.0) == 0
        assert processes[0].stop(timeout=20.0) == 0


class TestFailClosed:
    async def test_cost_refused_while_jetstream_cannot_take_it(self, nats_server: NatsServer) -> None:
        """With the ledger stream gone, a cost is answered `unavailable` and changes nothing."""
        async with Worker(make_config(EXAMPLE_SWARMS), servers=[nats_server.url], serve_metrics=False) as worker:
            nc = await nats.connect(nats_server.url)
            try:
                client = GovernorClient(nc)
                before = msgspec.structs.replace(await client.status(), trace_id="")
                js = nc.jetstream()
                last_seq = (await js.stream_info(stream_name("governor"))).state.last_seq
                await js.delete_stream(stream_name("governor"))
                with pytest.raises(Unavailable):
                    await client.cost("session-1-ndi", "op", 5.0, event_id="while-down")
                after = msgspec.structs.replace(await client.status(), trace_id="")
                assert after == before
                assert after.budgets == {"session-4-sip": 25.0, "session-1-ndi": 25.0}
                assert worker.ledger is not None and worker.ledger.seq == last_seq
            finally:
                with contextlib.suppress(Exception):
                    await nc.close()


class TestSnapshots:
    @pytest.fixture
    async def ledger(self, nats_server: NatsServer) -> AsyncIterator[Ledger]:
        nc = await nats.connect(nats_server.url)
        try:
            ledger = Ledger(nc, prefix="snaptest", timeout=2.0)
            ledger.snapshot_timeout = 0.5
            await ledger.setup()
            yield ledger
        finally:
            await nc.close()

    async def test_a_snapshot_deleted_while_read_is_read_again(self, ledger: Ledger) -> None:
        """The reader saw a snapshot's description, then the snapshot was deleted (two newer ones were stored): the
        read gives up on it in time and reads the newest (the object store alone would wait forever)."""
        store = ledger._snapshots
        assert store is not None
        await ledger.save_snapshot(empty_snapshot(7), 7)
        stale = await store.get_info(snapshot_name(7))
        await ledger.save_snapshot(empty_snapshot(9), 9)
        await ledger.save_snapshot(empty_snapshot(11), 11)  # keeps 9 and 11: 7 and its chunks are gone
        get_info = store.get_info
        calls = 0

        async def stale_once(name: str, show_deleted: bool | None = False) -> Any:
            nonlocal calls
            calls += 1
            return stale if calls == 1 else await get_info(name, show_deleted)

        store.get_info = stale_once  # type: ignore[method-assign]
        state = await asyncio.wait_for(ledger.load_snapshot(), timeout=10)
        assert state is not None and state.seq == 11
        assert calls == 2

    async def test_a_late_older_snapshot_is_passed_over_then_deleted(self, ledger: Ledger) -> None:
        """A process that lost its lease stores an older snapshot late: recovery reads the newest; the next save
        deletes the stale one, and the store keeps the two newest."""
        await ledger.save_snapshot(empty_snapshot(10), 10)
        await ledger.save_snapshot(empty_snapshot(20), 20)
        assert ledger._snapshots is not None
        await ledger._snapshots.put(snapshot_name(5), empty_snapshot(5))  # the stale writer
        state = await ledger.load_snapshot()
        assert state is not None and state.seq == 20
        await ledger.save_snapshot(empty_snapshot(30), 30)
        assert await ledger._stored_snapshots() == [20, 30]
        store_stream = await ledger.js.stream_info("OBJ_SNAPTEST_LEDGER_SNAPSHOTS")
        assert store_stream.state.messages == 4  # two snapshots of one chunk each, with their descriptions: no markers

    async def test_an_earlier_versions_snapshot_is_read_then_replaced(self, ledger: Ledger) -> None:
        """A store holding only the single `latest` snapshot of earlier versions is read; the first save removes it."""
        assert ledger._snapshots is not None
        await ledger._snapshots.put(LEGACY_SNAPSHOT_NAME, empty_snapshot(4))
        state = await ledger.load_snapshot()
        assert state is not None and state.seq == 4
        await ledger.save_snapshot(empty_snapshot(8), 8)
        names = {info.name for info in await ledger._snapshots.list(ignore_deletes=True)}
        assert names == {snapshot_name(8)}


class TestTrim:
    async def test_trimmed_after_snapshots_and_recovered_exactly(self, nats_server: NatsServer) -> None:
        """Snapshots trim the ledger; a restart, a retried old event_id and a reader behind the trim stay exact."""
        config = make_config(EXAMPLE_SWARMS, ledger={"snapshot_every": 5})
        nc = await nats.connect(nats_server.url)
        try:
            client = GovernorClient(nc)
            async with Worker(config, servers=[nats_server.url], serve_metrics=False):
                await answering(nc)
                for i in range(60):
                    await client.cost("session-1-ndi", "op", 0.25, event_id=f"e{i}")
                before = (await client.status()).budgets
            assert before == {"session-4-sip": 25.0, "session-1-ndi": 10.0}
            js = nc.jetstream()
            state = (await js.stream_info(stream_name("governor"))).state
            assert state.first_seq > 30 and state.messages < state.last_seq  # the early entries are gone

            async with Worker(config, servers=[nats_server.url], serve_metrics=False):
                await answering(nc)
                assert (await client.status()).budgets == before
                assert (await client.cost("session-1-ndi", "op", 0.25, event_id="e3")).duplicate is True

            reader = Ledger(nc)  # a standby that had read nothing: the start of the ledger is gone
            await reader.setup()
            with pytest.raises(LedgerGap):
                await catch_up(reader, Governor())
            recovered = await recover(reader, Governor)
            assert recovered.get_budget_report() == before
        finally:
            await nc.close()
