"""End to end with a real Prometheus: it scrapes a running worker, loads deploy/prometheus/rules.yml, and reports
`CircuitBreakerTripped` firing through its own HTTP API after a breaker is tripped over NATS.

Needs Debian's `prometheus` package (`.ci/run` installs it); without it the test skips and says so.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.factories import EXAMPLE_SWARMS, make_config
from tests.integration.helpers import WorkerFactory, stop_process
from worker.client import GovernorClient
from worker.ops.natsserver import NatsServer, free_port

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "rules.yml"
SIP = "session-4-sip"
WAIT = 60.0


def api_get(port: int, path: str, **params: str) -> Any:
    """GET Prometheus' HTTP API; the decoded JSON, or None while it is not answering yet."""
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}{query}", timeout=5) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """A real Prometheus on loopback that scrapes a (future) worker every second: (its port, the worker's port)."""
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.skip("prometheus not installed: apt-get install prometheus")
    port, target = free_port(), free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "if-governor", "static_configs": [{"targets": [f"127.0.0.1:{target}"]}]}],
    }
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            exe,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield port, target
    finally:
        stop_process(process)
        log.close()


async def poll(what: str, check: Any, port: int, path: str, **params: str) -> Any:
    """Query Prometheus every 0.25 s until `check(answer)` holds; fail after WAIT seconds saying what was awaited."""
    answer: Any = None
    try:
        async with asyncio.timeout(WAIT):
            while True:
                answer = await asyncio.to_thread(api_get, port, path, **params)
                if answer is not None and check(answer):
                    return answer
                await asyncio.sleep(0.25)
    except TimeoutError:
        pytest.fail(f"after {WAIT:g}s Prometheus still did not show {what}; last answer: {answer}")


def firing(alerts: Any, swarm_id: str) -> bool:
    return any(
        a["labels"].get("alertname") == "CircuitBreakerTripped"
        and a["labels"].get("swarm_id") == swarm_id
        and a["state"] == "firing"
        for a in alerts["data"]["alerts"]
    )


class TestPrometheus:
    async def test_breaker_trip_fires_alert(
        self, prometheus: tuple[int, int], start_worker: WorkerFactory, nats_server: NatsServer
    ) -> None:
        """Prometheus scrapes the worker, and after a budget trip over NATS reports CircuitBreakerTripped firing
        for that swarm only."""
        port, target = prometheus
        config = make_config(EXAMPLE_SWARMS, metrics={"host": "127.0.0.1", "port": target})
        await start_worker(config)
        await poll("the governor's targets up", lambda a: a["data"]["result"], port, "/api/v1/query", query="up==1")
        series = f'if_governor_circuit_breaker_status{{swarm_id="{SIP}"}} == 0'
        await poll("the closed breaker scraped", lambda a: a["data"]["result"], port, "/api/v1/query", query=series)
        rules = await poll("the rules loaded", lambda a: a["data"]["groups"], port, "/api/v1/rules")
        names = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
        assert "CircuitBreakerTripped" in names
        alerts = await asyncio.to_thread(api_get, port, "/api/v1/alerts")
        assert not firing(alerts, SIP)

        async with await GovernorClient.connect(nats_server.url) as client:
            reply = await client.cost(SIP, "sip_integration", 30.0)
        assert (reply.remaining, reply.tripped) == (-5.0, True)

        alerts = await poll("CircuitBreakerTripped firing", lambda a: firing(a, SIP), port, "/api/v1/alerts")
        fired = [a for a in alerts["data"]["alerts"] if a["labels"]["alertname"] == "CircuitBreakerTripped"]
        assert [(a["labels"]["swarm_id"], a["labels"]["severity"], a["state"]) for a in fired] == [
            (SIP, "high", "firing")
        ]
        assert fired[0]["annotations"]["summary"] == f"Circuit breaker tripped for {SIP}"
