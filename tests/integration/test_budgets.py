"""Budget groups over a real nats-server: the `budgets:` config and a swarm's `budget_group`, the events of an
exhausted, refilled or nearly spent group, `governor.topup`, the groups in `status`, `governor budgets` and
`governor topup`; a group exhausted by many concurrent clients, exact to the cent; and a `2s` period refilling
exactly once per boundary across a kill -9 and a standby's takeover."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
import yaml
from nats.aio.client import Client

from schemas.config import Config
from schemas.events import BudgetExhausted, BudgetRefilled, BudgetThreshold, Position
from tests.factories import make_config, swarm_entry
from tests.integration.helpers import Recorder, WorkerFactory, WorkerProcess, cli_env, eventually, run_cli
from tests.integration.load import launch, wait_serving
from worker import errors
from worker.client import GovernorClient
from worker.ops.natsserver import NatsServer

pytestmark = pytest.mark.timeout(240)

CAP = "code-analysis:python"


def config(**team: Any) -> Config:
    """org (100, lifetime) > team (1.0 unless `team` says); swarm `a` in team (the better value), `b` in none."""
    return make_config(
        [
            swarm_entry("a", [CAP], cost_per_hour=1.0, initial_budget=50.0, budget_group="team"),
            swarm_entry("b", [CAP], cost_per_hour=4.0, initial_budget=50.0),
        ],
        budgets=[{"id": "org", "limit": 100.0}, {"id": "team", "parent": "org", "limit": 1.0, **team}],
    )


class TestGroups:
    async def test_exhausted_blocks_its_swarms_and_a_top_up_unblocks_them(
        self, start_worker: WorkerFactory, client: GovernorClient, recorder: Recorder
    ) -> None:
        await start_worker(config(alerts=[0.5]))
        assert (await client.assign([CAP], task_id="t-1")).swarm_id == "a"
        await client.cost("a", "op", 0.6, task_id="t-1")
        [threshold] = await recorder.wait_for("governor.events.budget.threshold")
        assert {k: threshold[k] for k in ("group", "fraction", "spent", "limit")} == {
            "group": "team",
            "fraction": 0.5,
            "spent": 0.6,
            "limit": 1.0,
        }
        await client.cost("a", "op", 0.4, event_id="c-2")
        [exhausted] = await recorder.wait_for("governor.events.budget.exhausted")
        assert {k: exhausted[k] for k in ("group", "period_start", "period_end", "limit", "spent")} == {
            "group": "team",
            "period_start": None,
            "period_end": None,
            "limit": 1.0,
            "spent": 1.0,
        }
        escalations = await recorder.wait_for("governor.events.escalation", count=2)  # the 50% alert's, then this
        assert [(e.get("group"), e["swarm_id"], e["severity"]) for e in escalations][-1] == ("team", "", "HIGH")

        reply = await client.assign([CAP], task_id="t-2", explain=True)
        assert reply.swarm_id == "b"
        assert reply.rejected == {"a": "group_budget_exhausted"}
        assert reply.explanation is not msgspec.UNSET
        assert [(e.swarm_id, e.group) for e in reply.explanation] == [("a", "team"), ("b", None)]

        groups = {g.id: g for g in await client.budgets()}
        assert (groups["team"].spent, groups["team"].remaining, groups["team"].exhausted) == (1.0, 0.0, True)
        assert (groups["org"].spent, groups["org"].blocked, groups["org"].swarms) == (1.0, False, 0)
        status = await client.status(page_size=1)  # two pages: the groups come with the first
        assert [s.budget_group for s in status.swarms] == ["team", None]
        assert [g.id for g in status.groups] == ["org", "team"]

        topped = await client.topup(0.5, group="team", approved_by="alice", event_id="top-1")
        assert (topped.group, topped.remaining, topped.unblocked, topped.duplicate) == ("team", 0.5, True, False)
        again = await client.topup(0.5, group="team", approved_by="alice", event_id="top-1")
        assert (again.duplicate, again.remaining) == (True, 0.5)
        assert (await client.assign([CAP], task_id="t-3")).swarm_id == "a"
        [witness] = await recorder.wait_for("governor.witness.budget_topped_up")
        assert witness["params"] == {
            "amount": 0.5,
            "approved_by": "alice",
            "group": "team",
            "remaining": 0.5,
            "unblocked": True,
        }

    async def test_a_swarm_top_up_leaves_its_breaker_tripped(
        self, start_worker: WorkerFactory, client: GovernorClient
    ) -> None:
        await start_worker(config(limit=1000.0))
        assert (await client.cost("b", "op", 50.0)).tripped
        reply = await client.topup(10.0, swarm_id="b", approved_by="alice")
        assert (reply.swarm_id, reply.remaining, reply.tripped) == ("b", 10.0, True)
        assert reply.note is not None and "governor.reset" in reply.note
        assert (await client.status()).breakers["b"].reason == "budget_exhausted"

    @pytest.mark.parametrize(
        ("body", "code"),
        [
            ({"group": "nope", "amount": 1.0, "approved_by": "alice"}, "unknown_group"),
            ({"swarm_id": "nope", "amount": 1.0, "approved_by": "alice"}, "unknown_swarm"),
            ({"group": "team", "swarm_id": "a", "amount": 1.0, "approved_by": "alice"}, "invalid_request"),
            ({"group": "team", "amount": 0, "approved_by": "alice"}, "invalid_request"),
            ({"group": "team", "amount": 1.0, "approved_by": "alice", "extra": 1}, "invalid_request"),
            ({"group": "team", "amount": 1.0}, "invalid_request"),
        ],
        ids=["unknown-group", "unknown-swarm", "both", "zero", "unknown-field", "no-approver"],
    )
    async def test_a_bad_top_up_is_refused_and_changes_nothing(
        self, start_worker: WorkerFactory, client: GovernorClient, nc: Client, body: dict[str, Any], code: str
    ) -> None:
        await start_worker(config())
        before = await client.budgets()
        reply = msgspec.json.decode((await nc.request("governor.topup", msgspec.json.encode(body), timeout=5)).data)
        assert (reply["ok"], reply["error"]["code"]) == (False, code)
        assert await client.budgets() == before

    async def test_a_swarm_registered_into_an_unknown_group_is_refused(
        self, start_worker: WorkerFactory, nc: Client
    ) -> None:
        await start_worker(config())
        body = {
            "swarm_id": "c",
            "capabilities": [CAP],
            "cost_per_hour": 1.0,
            "reputation_score": 0.5,
            "current_budget_remaining": 5.0,
            "model": "haiku",
            "budget_group": "nope",
        }
        reply = msgspec.json.decode((await nc.request("governor.register", msgspec.json.encode(body), timeout=5)).data)
        assert (reply["ok"], reply["error"]["code"]) == (False, "unknown_group")

    async def test_a_2s_period_refills_on_time_while_idle(
        self, start_worker: WorkerFactory, client: GovernorClient, recorder: Recorder
    ) -> None:
        """Nothing is sent after the exhausting cost: the actor's own tick refills the group at the boundary."""
        await start_worker(config(period="2s"))
        await client.cost("a", "op", 1.0)
        [exhausted] = await recorder.wait_for("governor.events.budget.exhausted")
        [refilled] = await recorder.wait_for("governor.events.budget.refilled", timeout=5.0)
        assert refilled["group"] == "team" and refilled["was_exhausted"] is True
        assert refilled["period_start"] == exhausted["period_end"]
        assert refilled["period_end"] - refilled["period_start"] == 2.0
        late = time.time() - refilled["period_start"]
        assert late < 1.5, f"refilled {late:.2f}s after the boundary"
        assert (await client.assign([CAP], task_id="t")).swarm_id == "a"

    async def test_the_cli_shows_the_tree_and_tops_up(
        self, start_worker: WorkerFactory, client: GovernorClient
    ) -> None:
        worker = await start_worker(config(period="day", timezone="Europe/Paris"))
        await client.cost("a", "op", 1.0)
        url = worker.servers[0]
        shown = await run_cli("budgets", "--nats-url", url, env=cli_env())
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert lines[0].split() == [
            "GROUP",
            "PERIOD",
            "LIMIT",
            "SPENT",
            "REMAINING",
            "REFILLS",
            "RATE/H",
            "RUNS",
            "OUT",
            "STATE",
        ]
        assert lines[1].split()[:5] == ["org", "lifetime", "100.00", "1.00", "99.00"]
        assert lines[2].startswith("  team  day (Europe/Paris)") and lines[2].rstrip().endswith("EXHAUSTED")
        topped = await run_cli(
            "topup", "--group", "team", "--amount", "2", "--approved-by", "alice", "--nats-url", url, env=cli_env()
        )
        assert topped.returncode == 0, topped.stderr
        assert topped.stdout.splitlines() == [
            "group team: +2.00 USD, 2.00 USD remaining",
            "group team: its swarms get work again",
        ]

    async def test_a_forecast_alert_fires_once_per_period(
        self, start_worker: WorkerFactory, client: GovernorClient, recorder: Recorder
    ) -> None:
        """A lifetime group with `forecast_alert`: the first cost gives it a rate, so a forecast exhaustion, once."""
        await start_worker(config(limit=1000.0, forecast_alert=True))
        await client.cost("a", "op", 10.0)
        await client.cost("a", "op", 10.0)
        [forecast] = await recorder.wait_for("governor.events.budget.forecast")
        assert (forecast["group"], forecast["remaining"], forecast["period_end"]) == ("team", 990.0, None)
        assert forecast["rate_usd_per_hour"] == 600.0  # 10 USD over the minute a rate is measured over at least
        [team] = [g for g in await client.budgets() if g.id == "team"]
        assert team.forecast_exhausted_at is not None and team.rate_usd_per_hour == 1200.0
        await asyncio.sleep(0.2)
        assert len(recorder.bodies("governor.events.budget.forecast")) == 1

    @pytest.mark.parametrize("action", ["escalate", "trip"])
    async def test_a_task_past_its_cap_escalates_once(
        self, start_worker: WorkerFactory, client: GovernorClient, recorder: Recorder, action: str
    ) -> None:
        swarms = [swarm_entry("a", [CAP], initial_budget=50.0)]
        await start_worker(make_config(swarms, max_spend_per_task=1.0, on_task_over_budget=action))
        assert (await client.assign([CAP], task_id="t-1")).swarm_id == "a"
        await client.cost("a", "op", 0.6, task_id="t-1")
        reply = await client.cost("a", "op", 0.6, task_id="t-1")
        await client.cost("a", "op", 0.6, task_id="t-1")
        assert reply.tripped is (action == "trip")
        [record] = await recorder.wait_for("governor.witness.task_over_budget")
        assert record["params"] == {"task_id": "t-1", "swarm_id": "a", "spent": 1.2, "cap": 1.0, "action": action}
        escalations = [e for e in await recorder.wait_for("governor.events.escalation")]
        assert [e["context"]["type"] for e in escalations][:1] == ["task_over_budget"]
        await asyncio.sleep(0.2)
        assert len(recorder.bodies("governor.witness.task_over_budget")) == 1
        status = await client.status()
        assert (status.breakers["a"].reason if "a" in status.breakers else None) == (
            "task_over_budget" if action == "trip" else None
        )


class TestConcurrentSpending:
    async def test_many_clients_exhaust_a_group_exactly(
        self, start_worker: WorkerFactory, nats_server: NatsServer
    ) -> None:
        """16 clients each assign a task and report its cost until the group refuses them: once exhausted, no more
        work is given out, so the group is overspent by at most the costs already in flight (one per client), and
        what it spent is the sum of the acknowledged costs, to the cent."""
        swarms = [swarm_entry(f"s{i}", [CAP], initial_budget=10_000.0, budget_group="team") for i in range(4)]
        await start_worker(make_config(swarms, budgets=[{"id": "team", "limit": 50.0}]))
        clients = 16
        acked: list[float] = []

        async def spend(n: int) -> None:
            nc = await nats.connect(nats_server.url)
            client = GovernorClient(nc, timeout=10.0)
            try:
                for k in range(10_000):
                    reply = await client.assign([CAP], task_id=f"c{n}-{k}")
                    if reply.swarm_id is None:
                        return
                    cost = 0.07 + 0.01 * (k % 3)
                    await client.cost(reply.swarm_id, "op", cost, task_id=f"c{n}-{k}", event_id=f"c{n}-{k}")
                    acked.append(cost)
            finally:
                await nc.close()

        await asyncio.wait_for(asyncio.gather(*(spend(n) for n in range(clients))), timeout=120)
        nc = await nats.connect(nats_server.url)
        try:
            [team] = await GovernorClient(nc).budgets()
        finally:
            await nc.close()
        total = round(sum(acked), 6)
        assert team.spent == total
        assert 50.0 <= team.spent < 50.0 + clients * 0.09 + 1e-9
        assert team.exhausted and team.remaining == round(50.0 - total, 6)
        print(f"{len(acked)} costs from {clients} clients: spent {team.spent:.2f} of 50.00")


def write_config(path: Path) -> Path:
    """A durable governor (2 s lease) with one swarm in a group of 1 USD per 2 s, alerting at half."""
    body = {
        "swarms": [swarm_entry("a", [CAP], initial_budget=1_000_000.0, budget_group="team")],
        "budgets": [{"id": "team", "limit": 1.0, "period": "2s", "alerts": [0.5]}],
        "metrics": {"port": 0},
        "ledger": {"lease_ttl_s": 2.0, "timeout_s": 1.0, "snapshot_every": 50},
    }
    path.write_text(yaml.safe_dump(body))
    return path


class TestAcrossFailures:
    async def test_a_2s_period_refills_once_across_a_kill_and_a_takeover(
        self, tmp_path: Path, nats_server: NatsServer, processes: list[WorkerProcess]
    ) -> None:
        """Costs of 0.3 USD flow into a group of 1 USD per 2 s while the serving governor is killed (-9), restarted
        beside a standby, and the standby takes over after a second kill. The stored audit trail then holds one
        refill per rollover, chained boundary to boundary, one threshold per period at most, and the same records
        the live subscribers saw (a record published again has the same position)."""
        url = nats_server.url
        path = write_config(tmp_path / "governor.yaml")
        processes.append(launch(url, path, tmp_path / "a.log"))
        await wait_serving(url)
        live: list[tuple[str, Any]] = []
        watcher = await nats.connect(url)

        async def seen(msg: Any) -> None:
            live.append((msg.subject, msgspec.json.decode(msg.data)))

        await watcher.subscribe("governor.events.budget.>", cb=seen)
        stop = asyncio.Event()
        acked: list[str] = []

        async def spend() -> None:
            nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
            client = GovernorClient(nc, timeout=2.0)
            try:
                n = 0
                while not stop.is_set():
                    event_id = f"e-{n}"
                    try:
                        await client.cost("a", "op", 0.3, event_id=event_id)
                    except (errors.GovernorError, nats.errors.Error, TimeoutError):
                        await asyncio.sleep(0.1)
                        continue  # the same event_id again: applied once
                    acked.append(event_id)
                    n += 1
                    await asyncio.sleep(0.15)
            finally:
                await nc.close()

        load = asyncio.create_task(spend())
        await asyncio.sleep(5)
        processes[0].kill()
        await asyncio.sleep(4.5)  # a whole period passes with no governor at all: two boundaries
        processes.append(launch(url, path, tmp_path / "b.log"))
        await wait_serving(url)
        processes.append(launch(url, path, tmp_path / "c.log"))  # a standby
        await asyncio.sleep(4)
        processes[1].kill()
        await eventually(lambda: "lease acquired" in (tmp_path / "c.log").read_text(), "the standby serving", 20)
        await asyncio.sleep(5)
        stop.set()
        await asyncio.wait_for(load, timeout=30)
        await asyncio.sleep(1)

        nc = await nats.connect(url)
        try:
            client = GovernorClient(nc)
            stored: list[tuple[str, Any]] = []
            async for subject, _, record in client.audit():
                if subject.startswith("governor.events.budget."):
                    stored.append((subject, record))
            [team] = await client.budgets()
        finally:
            await nc.close()
            await watcher.close()

        refills = [r for s, r in stored if isinstance(r, BudgetRefilled)]
        assert len(refills) >= 6, f"only {len(refills)} refills in about 16 s"
        starts = [r.period_start for r in refills]
        assert len(starts) == len(set(starts)), "a boundary refilled twice"
        for before, after in itertools.pairwise(refills):
            assert after.period_start == before.period_end + 2.0 * (after.periods - 1), (before, after)
        thresholds = Counter((r.period_start, r.fraction) for s, r in stored if isinstance(r, BudgetThreshold))
        assert thresholds and max(thresholds.values()) == 1, thresholds
        exhausted = Counter(r.period_start for s, r in stored if isinstance(r, BudgetExhausted))
        assert exhausted and max(exhausted.values()) == 1, exhausted
        skipped = [r for r in refills if r.periods > 1]
        assert skipped, "the boundary passed while no governor ran refills with the next"

        positions: dict[tuple[str, float | None], set[Any]] = {}
        for subject, body in live:
            if subject == "governor.events.budget.refilled":
                positions.setdefault((body["group"], body["period_start"]), set()).add(
                    msgspec.convert(body["position"], Position)
                )
        assert all(len(p) == 1 for p in positions.values()), positions
        assert {start for _, start in positions} <= set(starts)
        # What the group spent in the period now running is the acked costs since its start (0.3 each).
        assert team.spent == pytest.approx(0.3 * round(team.spent / 0.3), abs=1e-9)
        assert len(acked) == len(set(acked))
