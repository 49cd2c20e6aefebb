"""Nothing lost, nothing counted twice on a three-node JetStream cluster: the ledger, its snapshots, the lease and
the audit trail each on three replicas (`ledger.replicas: 3`), against a lost node, a node back with an empty store,
a lost governor and a lost quorum.

Each test runs real processes on loopback (three nats-server nodes with `sync_interval: always`, and `governor
run`), drives a few thousand cost events from clients that retry with the same `event_id` until they get an `ok`,
does its fault in the middle, and then checks every budget to the cent against the events the clients saw
acknowledged, and that no request was answered twice. How long each recovery took is printed (`pytest -s`).

A governor given one node's URL connects there and learns the others from the server, so a test chooses which
node serves it (the roles: the node that leads the ledger stream, the governor's, the clients').
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import StreamInfo

from tests.integration.helpers import WorkerProcess, eventually
from tests.integration.load import (
    Load,
    assert_each_event_once,
    budgets,
    expected_budgets,
    launch,
    wait_serving,
    write_config,
)
from worker.client import GovernorClient
from worker.ops.contract import ERROR_CODE_HEADER
from worker.ops.natsserver import NatsCluster

EVENTS = 4_000
CLIENTS = 8
LEDGER = "GOVERNOR_LEDGER"
STREAMS = (LEDGER, "OBJ_GOVERNOR_LEDGER_SNAPSHOTS", "KV_GOVERNOR_LEDGER_LEASE", "GOVERNOR_AUDIT", "GOVERNOR_REFUSALS")
"""Every stream the governor keeps: the ledger, its snapshot store, the lease bucket, the audit trail, refusals."""

pytestmark = pytest.mark.timeout(240)


async def serve(tmp_path: Path, url: str, processes: list[WorkerProcess], log: str = "a.log") -> Path:
    """Write the config (replicas 3), start a `governor run` on `url` and wait until it serves; the config's path."""
    config = write_config(tmp_path / "governor.yaml", replicas=3)
    processes.append(launch(url, config, tmp_path / log))
    await wait_serving(url)
    return config


async def stream_info(nc: Client, stream: str, timeout: float = 30.0) -> StreamInfo:
    """The stream's info once it has a leader (a request is lost, not refused, while it elects one: asked again)."""
    js = nc.jetstream(timeout=2.0)
    async with asyncio.timeout(timeout):
        while True:
            try:
                info = await js.stream_info(stream)
                if info.cluster is not None and info.cluster.leader:
                    return info
            except nats.errors.Error:
                pass
            await asyncio.sleep(0.1)


async def leader(nc: Client, stream: str = LEDGER) -> str:
    """The server name of the node that leads the stream."""
    cluster = (await stream_info(nc, stream)).cluster
    assert cluster is not None and cluster.leader is not None
    return cluster.leader


async def lead(nc: Client, node: str, stream: str = LEDGER) -> None:
    """Move the stream's leadership to `node` (a server name), with JetStream's leader step-down."""
    request = msgspec.json.encode({"placement": {"preferred": node}})
    for _ in range(10):
        if await leader(nc, stream) == node:
            return
        with contextlib.suppress(nats.errors.TimeoutError):  # answered or not, the leader is asked again
            await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", request, timeout=2.0)
        await asyncio.sleep(0.2)
    pytest.fail(f"{stream} is still led by {await leader(nc, stream)}, not {node}")


async def wait_current(nc: Client, node: str, stream: str, timeout: float = 60.0) -> None:
    """Wait until `node` leads `stream` or holds a current replica of it, with no lag behind the leader."""
    seen = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                seen = (await stream_info(nc, stream)).cluster
                assert seen is not None
                if seen.leader == node or any(p.name == node and p.current and not p.lag for p in seen.replicas or []):
                    return
                await asyncio.sleep(0.1)
    except TimeoutError:
        pytest.fail(f"{node}'s replica of {stream} not current within {timeout:g}s: {seen}")


async def last_message(nc: Client) -> tuple[int, bytes]:
    """The ledger's last sequence and the message stored there, as its leader reads them."""
    last = (await stream_info(nc, LEDGER)).state.last_seq
    message = await nc.jetstream(timeout=5.0).get_msg(LEDGER, last)
    return last, message.data or b""


def sent_after_answered_before(load: Load, start: float, end: float) -> list[tuple[float, float]]:
    """The acknowledgements of attempts sent after `start` and answered before `end` (monotonic times)."""
    return [(sent, answered) for sent, answered in load.acked_at if sent > start and answered < end]


class TestReplication:
    async def test_every_stream_the_governor_keeps_has_three_replicas(
        self, tmp_path: Path, cluster: NatsCluster, cluster_nc: Client, processes: list[WorkerProcess]
    ) -> None:
        """With `ledger.replicas: 3` the ledger, its snapshot store, the lease bucket and both audit streams are
        each on all three nodes once the governor serves."""
        await serve(tmp_path, cluster.urls[0], processes)
        for stream in STREAMS:
            info = await stream_info(cluster_nc, stream)
            assert info.config.num_replicas == 3, stream
            assert info.cluster is not None and len(info.cluster.replicas or []) == 2, stream
            peers = {info.cluster.leader, *(p.name for p in info.cluster.replicas or [])}
            assert peers == {"n1", "n2", "n3"}, stream


class TestNodeLost:
    async def test_the_ledger_leaders_node_killed_then_restarted(
        self, tmp_path: Path, cluster: NatsCluster, cluster_nc: Client, processes: list[WorkerProcess]
    ) -> None:
        """kill -9 of the node that leads the ledger stream (and nothing else: not the governor's node, not the
        clients', not a leader of the lease or the audit trail): writes stall until the other two elect a leader,
        then resume; the node restarts and catches up; every acknowledged event is counted once, to the cent, and
        the governor kept running."""
        await serve(tmp_path, cluster.urls[0], processes)  # the governor on n1, the clients on n3
        for stream in STREAMS[1:]:
            await lead(cluster_nc, "n1", stream)
        await lead(cluster_nc, "n2")
        load = Load([cluster.urls[2]], events=EVENTS, clients=CLIENTS)
        task = asyncio.create_task(load.run())
        await load.wait_acked(EVENTS // 4, task)

        logged = len(processes[0].log())
        cluster.stop(1, kill=True)
        killed = time.monotonic()
        await load.wait_acked(len(load.acked) + 100, task, timeout=60)
        resumed = load.first_ack_after(killed)
        cluster.start(1)
        await asyncio.wait_for(task, timeout=120)
        await wait_current(cluster_nc, "n2", LEDGER)

        held = "lost" if "lease lost" in processes[0].log()[logged:] else "kept"
        print(
            f"\nthe ledger's leader n2 killed (the governor on n1, the clients on n3, the other streams led by n1): "
            f"the next ack {resumed:.2f}s later, the ledger led by {await leader(cluster_nc)}; "
            f"the governor {held} its lease"
        )
        await assert_each_event_once(cluster.urls, load)
        assert processes[0].process.poll() is None
        assert processes[0].stop(timeout=20.0) == 0

    async def test_a_node_back_with_an_empty_store_catches_up_and_holds_quorum(
        self, tmp_path: Path, cluster: NatsCluster, cluster_nc: Client, processes: list[WorkerProcess]
    ) -> None:
        """The ledger leader's node killed mid-load, its store wiped, restarted: it catches up with every stream;
        then the new ledger leader is killed, so that the wiped node takes part in the election and each write
        needs it; the load goes on and every event is counted once; the wiped node then leads the ledger, holding
        all of it, and a new governor recovers the same budgets."""
        config = await serve(tmp_path, cluster.urls[0], processes)  # the governor and the clients on n1
        await lead(cluster_nc, "n2")
        before = Load([cluster.urls[0]], events=EVENTS // 2, clients=CLIENTS)
        task = asyncio.create_task(before.run())
        await before.wait_acked(EVENTS // 8, task)

        cluster.stop(1, kill=True)
        cluster.wipe(1)
        cluster.start(1)
        restarted = time.monotonic()
        for stream in STREAMS:
            await wait_current(cluster_nc, "n2", stream)
        caught_up = time.monotonic() - restarted
        await lead(cluster_nc, "n3")
        cluster.stop(2, kill=True)  # n1 and the wiped n2 elect the ledger's leader; nothing is stored without n2
        killed = time.monotonic()
        await asyncio.wait_for(task, timeout=120)
        after = Load([cluster.urls[0]], events=EVENTS // 2, clients=CLIENTS, first=EVENTS // 2)
        await asyncio.wait_for(after.run(), timeout=120)
        await assert_each_event_once(cluster.urls[0], before, after)

        last = await last_message(cluster_nc)
        await lead(cluster_nc, "n2")
        assert await last_message(cluster_nc) == last
        processes[0].kill()
        processes.append(launch(cluster.urls[0], config, tmp_path / "b.log"))
        await wait_serving(cluster.urls[0])
        assert await budgets(cluster.urls[0]) == expected_budgets(before, after)
        resumed = min(load.first_ack_after(killed) for load in (before, after) if load.acked_at[-1][0] > killed)
        print(
            f"\nthe ledger's leader n2 killed, wiped and restarted: every stream current on it {caught_up:.2f}s "
            f"later; the ledger's next leader n3 killed: the next ack {resumed:.2f}s later"
        )
        assert processes[1].stop(timeout=20.0) == 0


class TestGovernorLost:
    async def test_the_standby_on_another_node_takes_over(
        self, tmp_path: Path, cluster: NatsCluster, processes: list[WorkerProcess]
    ) -> None:
        """kill -9 of the serving governor (on n1) with a standby connected to n2: the standby serves about a
        lease TTL later, no request is answered by both, every budget is exact."""
        config = await serve(tmp_path, cluster.urls[0], processes, log="a.log")
        processes.append(launch(cluster.urls[1], config, tmp_path / "b.log"))
        await eventually(lambda: "recovered to ledger sequence" in processes[1].log(), "standby recovered", timeout=30)
        load = Load([cluster.urls[2]], events=EVENTS, clients=CLIENTS)
        task = asyncio.create_task(load.run())
        await load.wait_acked(EVENTS // 4, task)

        processes[0].kill()
        killed = time.monotonic()
        try:
            await load.wait_acked(len(load.acked) + 100, task, timeout=30)
        except TimeoutError:
            pytest.fail(f"the standby did not serve within 30 s; its log ends:\n{processes[1].log()[-3000:]}")
        takeover = load.first_ack_after(killed)
        await asyncio.wait_for(task, timeout=120)

        print(f"\nthe standby on n2 answered {takeover:.2f}s after the holder on n1 was killed (lease_ttl_s 2.0)")
        await assert_each_event_once(cluster.urls, load)
        assert "lease acquired" in processes[1].log()
        assert processes[1].stop(timeout=20.0) == 0


IN_DOUBT = "retry with the same event_id"
UNAVAILABLE = {
    f"the ledger did not acknowledge in time (no acknowledgement in time); {IN_DOUBT}",
    f"an earlier ledger write was not acknowledged; {IN_DOUBT}",
    "the ledger is unavailable: no JetStream stream answered for the ledger",
    "this governor is not serving (it lost its lease); retry",
}
"""What the governor answers a cost it cannot store, with the code `unavailable`: in doubt (the write may land
later), refused (nothing stored), or fenced (its lease ran out)."""

CLIENT_TIMEOUT = 5.0
"""GovernorClient's default timeout: a reply later than this is lost to a client that does not wait longer."""

PROBE = msgspec.json.encode({"swarm_id": "swarm-0", "operation": "probe", "cost": 0.01, "event_id": "probe"})


class TestQuorumLost:
    @pytest.mark.parametrize(
        "ledger_leader", ["n1", "n2"], ids=["the-survivor-leads-the-ledger", "the-ledger-leader-is-lost"]
    )
    async def test_fails_closed_then_serves_when_quorum_returns(
        self,
        tmp_path: Path,
        cluster: NatsCluster,
        cluster_nc: Client,
        processes: list[WorkerProcess],
        ledger_leader: str,
    ) -> None:
        """Two of three nodes killed mid-load, while a ledger write is in flight (the governor's and the clients'
        node n1 survives, and leads the ledger or not): no request sent meanwhile is acknowledged; a cost sent then
        is answered `unavailable` (503), within a client's timeout; then no governor answers at all (its lease
        cannot be renewed); once a node returns the governor serves again, and every request the clients and the
        prober retried with its event_id is counted once, to the cent (a write answered `unavailable` may have
        landed: its retry is a duplicate)."""
        await serve(tmp_path, cluster.urls[0], processes)
        await lead(cluster_nc, ledger_leader)
        load = Load([cluster.urls[0]], events=EVENTS, clients=CLIENTS)
        task = asyncio.create_task(load.run())
        await load.wait_acked(EVENTS // 4, task)
        if ledger_leader == "n2":
            cluster.freeze(1)  # the writes in flight now are never acknowledged: in doubt, as on a survivor that leads
            await asyncio.sleep(0.2)
        prober = await nats.connect(cluster.urls[0])
        try:
            cluster.stop(1, kill=True)
            cluster.stop(2, kill=True)
            lost = time.monotonic()
            reply = asyncio.create_task(timed(prober.request("governor.cost", PROBE, timeout=120)))
            await no_governor_answers(prober)
            stopped_serving = time.monotonic() - lost
            await asyncio.sleep(lost + CLIENT_TIMEOUT + 1.0 - time.monotonic())  # down for longer than a client waits

            cluster.start(1)
            back = time.monotonic()
            answer, answered_at = await reply
            answered = answered_at - lost
            await asyncio.wait_for(task, timeout=120)
            retried = await GovernorClient(prober, retry_for=60).cost("swarm-0", "probe", 0.01, event_id="probe")
        finally:
            await prober.close()

        body = msgspec.json.decode(answer.data)
        assert body["ok"] is False and body["error"]["code"] == "unavailable", body
        assert body["error"]["message"] in UNAVAILABLE
        assert answer.headers is not None and answer.headers[ERROR_CODE_HEADER] == "503"
        assert sent_after_answered_before(load, lost, back) == []
        assert set(load.refused) <= {"unavailable", "no_responders"}, load.refused
        expected = expected_budgets(load)
        expected["swarm-0"] = round(expected["swarm-0"] - 0.01, 2)  # the probe, once
        assert len(load.acked) == len(load.events) and max(load.replies.values()) == 1
        assert await budgets(cluster.urls[0]) == expected
        landed = "had landed" if retried.duplicate else "had not landed"
        print(
            f"\nquorum lost (ledger led by {ledger_leader}): the probe answered {body['error']['message']!r} "
            f"{answered:.2f}s after; no governor answering {stopped_serving:.2f}s after; quorum back: the next ack "
            f"{load.first_ack_after(back):.2f}s later; the probe {landed}; load refusals {dict(load.refused)}"
        )
        assert processes[0].stop(timeout=20.0) == 0
        # Within a client's wait: a refused write is answered at once, before the ledger can be read again.
        assert answered < CLIENT_TIMEOUT, f"answered {answered:.1f}s after the quorum was lost"


async def timed(request: Awaitable[Msg]) -> tuple[Msg, float]:
    """The reply to a request, and when it came (monotonic)."""
    reply = await request
    return reply, time.monotonic()


async def no_governor_answers(nc: Client, timeout: float = 20.0) -> None:
    """Wait until a `status` request gets `no responders`: no governor subscribes (none holds the lease)."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                await nc.request("governor.status", b"{}", timeout=1.0)
            except nats.errors.NoRespondersError:
                return
            except nats.errors.TimeoutError:
                pass
            await asyncio.sleep(0.1)
