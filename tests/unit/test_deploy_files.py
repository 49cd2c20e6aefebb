"""The deployment files under deploy/ parse, agree with each other, and name only metrics the worker exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from schemas.endpoints import ENDPOINTS, Endpoint
from worker.ops.metrics import Metrics
from worker.ops.natsserver import nats_server_binary
from worker.service.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
PROMETHEUS = DEPLOY / "prometheus"

#: Every metric the worker exports (worker/ops/metrics.py), as named in PromQL.
METRICS = {
    "if_governor_assignments_total",
    "if_governor_assignments_failed_total",
    "if_governor_assignment_latency_ms",
    "if_governor_budget_remaining_usd",
    "if_governor_cost_tracked_usd",
    "if_governor_circuit_breaker_trips_total",
    "if_governor_circuit_breaker_resets_total",
    "if_governor_circuit_breaker_status",
    "if_governor_requests_rejected_total",
    "if_governor_mailbox_depth",
}
HISTOGRAMS = {"if_governor_assignment_latency_ms", "if_governor_task_duration_seconds"}
#: The budget groups' metrics (issue 15), which the dashboard's "Budget groups" row shows.
BUDGET_GROUP_METRICS = {
    "if_governor_group_budget_limit_usd",
    "if_governor_group_budget_spent_usd",
    "if_governor_group_budget_remaining_usd",
    "if_governor_group_budget_exhausted",
    "if_governor_group_burn_rate_usd_per_hour",
    "if_governor_group_forecast_exhaustion_seconds",
    "if_governor_group_period_end_timestamp_seconds",
    "if_governor_budget_refills_total",
    "if_governor_budget_thresholds_total",
    "if_governor_topups_total",
    "if_governor_tasks_over_budget_total",
}
METRICS |= BUDGET_GROUP_METRICS
#: The task lifecycle's metrics (governor.complete and the expiries), which the dashboard's "Tasks" row shows.
TASK_METRICS = {
    "if_governor_tasks_in_flight",
    "if_governor_task_completions_total",
    "if_governor_tasks_expired_total",
    "if_governor_task_duration_seconds",
}
METRICS |= TASK_METRICS
METRIC_TOKEN = re.compile(r"if_governor_[a-z_]+")
HISTOGRAM_SUFFIX = re.compile(r"_(bucket|sum|count)$")

YAML_FILES = sorted(p for ext in ("*.yaml", "*.yml") for p in DEPLOY.rglob(ext))
K8S_MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def unknown_metrics(expr: str) -> set[str]:
    """The `if_governor_*` names in `expr` that the worker does not export."""
    unknown = set()
    for token in METRIC_TOKEN.findall(expr):
        if token in METRICS or HISTOGRAM_SUFFIX.sub("", token) in HISTOGRAMS:
            continue
        unknown.add(token)
    return unknown


def exported_metrics() -> set[str]:
    """The metric names a fresh `Metrics` registers, as PromQL names them (a counter with its `_total`)."""
    registry = CollectorRegistry()
    Metrics(registry)
    return {family.name + ("_total" if family.type == "counter" else "") for family in registry.collect()}


def alerts(groups: list[dict[str, Any]]) -> dict[str, str]:
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool not installed: apt-get install prometheus")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)


class TestMetricNames:
    def test_the_hand_written_names_are_exported(self) -> None:
        """Every name the deployment files may query (METRICS above) is a metric the worker registers."""
        assert METRICS - exported_metrics() == set()
        assert HISTOGRAMS <= METRICS


class TestYaml:
    def test_there_are_yaml_files(self) -> None:
        """deploy/ holds the config, the Prometheus files, compose and the Kubernetes manifests."""
        names = {p.relative_to(DEPLOY).as_posix() for p in YAML_FILES}
        assert {
            "governor.yaml",
            "compose.yaml",
            "prometheus/prometheus.yml",
            "prometheus/rules.yml",
            "prometheus/rules_test.yml",
            "kubernetes/deployment.yaml",
            "kubernetes/configmap.yaml",
            "kubernetes/service.yaml",
            "kubernetes/prometheusrule.yaml",
            "kubernetes/pdb.yaml",
            "kubernetes/nats-configmap.yaml",
            "kubernetes/nats-statefulset.yaml",
            "kubernetes/nats-headless-service.yaml",
            "kubernetes/nats-service.yaml",
            "kubernetes/nats-pdb.yaml",
            "kubernetes/kustomization.yaml",
            "compose/governor.yaml",
        } <= names

    @pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(DEPLOY).as_posix())
    def test_every_yaml_file_parses(self, path: Path) -> None:
        """Every YAML file under deploy/ parses into at least one non-empty document."""
        documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        assert documents
        assert all(doc for doc in documents)


class TestGovernorConfig:
    def test_keeps_the_design_docs_example(self) -> None:
        """The example config keeps the design doc's governor values and its two swarms."""
        config = load(DEPLOY / "governor.yaml")
        governor = config["governor"]
        assert (
            governor["default_budget"],
            governor["min_capability_match"],
            governor["max_cost_per_task"],
            governor["circuit_breaker_threshold"],
        ) == (25.0, 0.7, 10.0, 3)
        assert [s["swarm_id"] for s in config["swarms"]] == ["session-4-sip", "session-1-ndi"]
        assert config["witness"] == {"endpoint": "http://localhost:8080", "log_level": "INFO"}

    def test_swarms_use_the_profile_keys(self) -> None:
        """Each swarm has exactly the keys of a swarm profile in config, and the budget group both share."""
        keys = {"swarm_id", "capabilities", "cost_per_hour", "reputation_score", "initial_budget", "model"}
        keys.add("budget_group")
        config = load(DEPLOY / "governor.yaml")
        assert [set(s) for s in config["swarms"]] == [keys, keys]
        assert {s["budget_group"] for s in config["swarms"]} == {"integrations"}
        assert [g["id"] for g in config["budgets"]] == ["infrafabric", "integrations"]

    def test_loads_with_the_workers_loader(self) -> None:
        """The worker's own loader accepts the file; it names no NATS server, so `governor run` bundles one."""
        config = load_config(DEPLOY / "governor.yaml", env={})
        assert config.nats.servers is None
        assert (config.metrics.host, config.metrics.port) == ("0.0.0.0", 9090)
        assert config.governor.subject_prefix == "governor"

    def test_trusts_no_identity_header(self) -> None:
        """The file also runs the bundled single-account server and compose's unauthenticated NATS, where a client
        can write `Nats-Request-Info` itself: it believes no such header and checks no approver against one."""
        security = load_config(DEPLOY / "governor.yaml", env={}).security
        assert (
            security.trust_request_info,
            security.operator_accounts,
            security.chassis_accounts,
            security.require_authenticated_approver,
        ) == (False, [], [], False)


class TestKubernetes:
    @pytest.mark.parametrize("path", K8S_MANIFESTS, ids=lambda p: p.name)
    def test_manifest_has_identity(self, path: Path) -> None:
        """Every manifest names its apiVersion, kind and metadata.name."""
        manifest = load(path)
        assert manifest["apiVersion"]
        assert manifest["kind"]
        assert manifest["metadata"]["name"]

    def test_kustomization_lists_every_manifest(self) -> None:
        """kustomization.yaml lists exactly the manifests in its directory."""
        assert sorted(load(K8S / "kustomization.yaml")["resources"]) == [p.name for p in K8S_MANIFESTS]

    def test_deployment_container_has_image_and_probes(self) -> None:
        """The Deployment's container has an image, liveness on /healthz and readiness on /readyz at 9090, where a
        caught-up standby counts as ready (`standbyok=true`)."""
        deployment = load(K8S / "deployment.yaml")
        assert deployment["kind"] == "Deployment"
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 9090}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz?standbyok=true", "port": 9090}

    def test_deployment_runs_locked_down(self) -> None:
        """The pod runs as non-root on a read-only root filesystem, with the config mounted from the ConfigMap; it
        logs in to NATS as `governor` with that user's password from the Secret, and takes the servers from the
        config (no IF_GOVERNOR_NATS_URL to replace them)."""
        pod = load(K8S / "deployment.yaml")["spec"]["template"]["spec"]
        [container] = pod["containers"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
        assert env == {
            "IF_GOVERNOR_NATS_USER": "governor",
            "IF_GOVERNOR_NATS_PASSWORD": {"secretKeyRef": {"name": "nats-passwords", "key": "GOVERNOR_PASSWORD"}},
        }
        config = next(v for v in pod["volumes"] if v["name"] == "config")
        assert config["configMap"]["name"] == load(K8S / "configmap.yaml")["metadata"]["name"]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
        assert mount["mountPath"] == "/etc/infrafabric"

    def test_configmap_holds_governor_yaml(self) -> None:
        """The ConfigMap's governor.yaml parses to the same value as deploy/governor.yaml but for `security`, the
        NATS servers (the cluster's nodes) and `ledger` (R3)."""
        embedded = yaml.safe_load(load(K8S / "configmap.yaml")["data"]["governor.yaml"])
        example = load(DEPLOY / "governor.yaml")
        assert set(embedded) == set(example) | {"ledger"}
        assert embedded["ledger"] == {"replicas": 3}
        assert {k: v for k, v in embedded["nats"].items() if k != "servers"} == example["nats"]
        assert {k: v for k, v in embedded.items() if k not in ("security", "nats", "ledger")} == {
            k: v for k, v in example.items() if k not in ("security", "nats")
        }

    def test_configmap_trusts_the_shipped_server_config(self, tmp_path: Path) -> None:
        """The ConfigMap's config, which runs against deploy/nats-server.conf, loads with the worker's loader and
        believes the server-stamped identity, lets only the OPS account operate (and the CHASSIS account send its
        reputations) and requires the approver to be the authenticated user; OPS is the account of nats-server.conf
        that imports the operator-only subjects, CHASSIS the other one that imports `governor.update`."""
        path = tmp_path / "governor.yaml"
        path.write_text(load(K8S / "configmap.yaml")["data"]["governor.yaml"], encoding="utf-8")
        security = load_config(path, env={}).security
        assert (
            security.trust_request_info,
            security.operator_accounts,
            security.chassis_accounts,
            security.require_authenticated_approver,
            security.reply_prefixes,
        ) == (True, ["OPS"], ["CHASSIS"], True, [])
        conf = nats_conf_blocks()
        assert set(conf) == {"GOVERNOR", "COORD", "OPS", "CHASSIS", "WITNESS", "ALERTS"}
        assert [name for name, block in conf.items() if '"governor.reset" }' in block] == ["OPS"]
        assert [name for name, block in conf.items() if '"governor.update" }' in block] == ["OPS", "CHASSIS"]

    def test_metrics_service_selects_the_deployment(self) -> None:
        """The metrics Service exposes port 9090 as `metrics` and selects the Deployment's pods."""
        service = load(K8S / "service.yaml")
        labels = load(K8S / "deployment.yaml")["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("metrics", 9090)]


def nats_conf_blocks() -> dict[str, str]:
    """The account blocks of deploy/nats-server.conf by name (`NAME {` at two spaces' indent, to the next one)."""
    text = (DEPLOY / "nats-server.conf").read_text(encoding="utf-8")
    body = text[text.index("\naccounts {\n") :]
    names = list(re.finditer(r"^  ([A-Z]+) \{$", body, flags=re.MULTILINE))
    return {
        m.group(1): body[m.end() : names[i + 1].start() if i + 1 < len(names) else len(body)]
        for i, m in enumerate(names)
    }


def exported_to(endpoint: Endpoint) -> str:
    """The accounts deploy/nats-server.conf exports an endpoint to, as it lists them."""
    if endpoint.chassis_fields:
        return "OPS, CHASSIS"
    return "OPS" if endpoint.operator_only else "COORD, OPS"


ROLE_PASSWORDS = (
    "GOVERNOR_PASSWORD",
    "COORDINATOR_PASSWORD",
    "OPERATOR_PASSWORD",
    "CHASSIS_PASSWORD",
    "WITNESS_PASSWORD",
    "ALERTING_PASSWORD",
)


class TestNatsServerConf:
    def test_nats_server_accepts_it(self) -> None:
        """`nats-server -c deploy/nats-server.conf -t` accepts the file with the six passwords set, and refuses it
        without the chassis's (every password is needed)."""
        env = {**os.environ, **{name: f"p{name.lower()}" for name in ROLE_PASSWORDS}}

        def check() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [nats_server_binary(), "-c", str(DEPLOY / "nats-server.conf"), "-t"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                env=env,
            )

        result = check()
        assert result.returncode == 0, result.stdout + result.stderr
        del env["CHASSIS_PASSWORD"]
        result = check()
        assert result.returncode != 0
        assert "CHASSIS_PASSWORD" in result.stdout + result.stderr

    def test_each_role_has_its_own_account_with_its_user_and_password(self) -> None:
        """Six accounts, each with one of the six users and that user's password variable, read once."""
        text = (DEPLOY / "nats-server.conf").read_text(encoding="utf-8")
        users = {
            name: re.findall(r"user: (\w+)\s+password: \$([A-Z_]+)", block)
            for name, block in nats_conf_blocks().items()
        }
        assert users == {
            "GOVERNOR": [("governor", "GOVERNOR_PASSWORD")],
            "COORD": [("coordinator", "COORDINATOR_PASSWORD")],
            "OPS": [("operator", "OPERATOR_PASSWORD")],
            "CHASSIS": [("chassis", "CHASSIS_PASSWORD")],
            "WITNESS": [("witness", "WITNESS_PASSWORD")],
            "ALERTS": [("alerting", "ALERTING_PASSWORD")],
        }
        assert [text.count(f"${name}") for name in ROLE_PASSWORDS] == [1] * len(ROLE_PASSWORDS)
        assert "authorization {" not in text  # no users outside the accounts (they would share the global account)

    def test_only_the_governor_account_has_jetstream(self) -> None:
        """JetStream is enabled in the GOVERNOR account alone, with every write synced to disk."""
        text = (DEPLOY / "nats-server.conf").read_text(encoding="utf-8")
        assert [name for name, block in nats_conf_blocks().items() if "jetstream: enabled" in block] == ["GOVERNOR"]
        settings = [line.strip() for line in text.splitlines() if not line.lstrip().startswith("#")]
        assert (settings.count("jetstream: enabled"), settings.count("sync_interval: always")) == (1, 1)

    def test_the_lines_the_integration_tests_replace_appear_once(self) -> None:
        """tests/integration/shipped.py changes only the data directory and the two ports: each line is there once."""
        text = (DEPLOY / "nats-server.conf").read_text(encoding="utf-8")
        lines = ("store_dir: /data/jetstream", "listen: 0.0.0.0:4222", "http: 0.0.0.0:8222", "server_name:")
        assert [text.count(line) for line in lines] == [1, 1, 1, 1]

    def test_the_request_exports_follow_the_endpoint_table(self) -> None:
        """Each endpoint is exported once: operator-only ones to OPS alone, or to OPS and CHASSIS where a chassis
        may send some fields (`chassis_fields`), the others to COORD and OPS; each account imports exactly what it
        was exported, and the governor subscribes to every one."""
        blocks = nats_conf_blocks()
        exported = dict(re.findall(r'\{ service: "governor\.(\w+)",\s+accounts: \[([A-Z, ]+)\] \}', blocks["GOVERNOR"]))
        assert exported == {e.name: exported_to(e) for e in ENDPOINTS}
        for account in ("COORD", "OPS", "CHASSIS"):
            imported = re.findall(r'subject: "governor\.(\w+)" \}', blocks[account])
            expected = sorted(name for name, to in exported.items() if account in to.split(", "))
            assert sorted(imported) == expected, account
        subscribed = re.findall(r'"governor\.(\w+)"', blocks["GOVERNOR"].split("publish:")[0])
        assert sorted(subscribed) == sorted(e.name for e in ENDPOINTS)

    def test_the_chassis_sends_its_one_subject_and_reads_only_its_replies(self) -> None:
        """The CHASSIS account imports `governor.update` alone (no discovery, no events), its user may publish
        there only and subscribe only to its inboxes."""
        chassis = nats_conf_blocks()["CHASSIS"]
        assert re.findall(r"\{ (service|stream): \{ account: GOVERNOR, subject: \"([^\"]+)\" \}", chassis) == [
            ("service", "governor.update")
        ]
        permissions = [line.split("#")[0].strip() for line in settings(chassis)]
        assert [line for line in permissions if line.startswith(("publish:", "subscribe:"))] == [
            'publish: { allow: ["governor.update"] }',
            'subscribe: { allow: ["_INBOX.>"] }',
        ]

    def test_every_service_import_shares_the_requesters_identity(self) -> None:
        """Every service import has `share: true`, so the governor gets the server-stamped `Nats-Request-Info`."""
        text = (DEPLOY / "nats-server.conf").read_text(encoding="utf-8")
        imports = [line for line in text.splitlines() if line.strip().startswith("{ service: { account:")]
        # COORD: 7 requests and 9 discovery subjects; OPS: 7 more requests; CHASSIS: `governor.update`; WITNESS and
        # ALERTS: their audit consumer's next messages and acknowledgements
        assert len(imports) == 16 + 23 + 1 + 4
        assert [line for line in imports if not line.rstrip().endswith("share: true }")] == []


class TestAlertRules:
    def test_rules_and_prometheusrule_agree(self) -> None:
        """rules.yml and the PrometheusRule hold the same alerts with the same expressions."""
        rules = alerts(load(PROMETHEUS / "rules.yml")["groups"])
        operator = alerts(load(K8S / "prometheusrule.yaml")["spec"]["groups"])
        assert operator == rules

    def test_alerts_and_severities(self) -> None:
        """The design doc's four alerts exist with the severities it gives them, the budget groups' four (issue 15)
        with theirs, and the task lifecycle's expiry alert."""
        [group] = load(PROMETHEUS / "rules.yml")["groups"]
        severities = {rule["alert"]: rule["labels"]["severity"] for rule in group["rules"]}
        assert group["name"] == "if_governor"
        assert severities == {
            "CircuitBreakerTripped": "high",
            "AllBudgetsExhausted": "high",
            "NoQualifiedSwarmRateHigh": "medium",
            "BudgetRunningLow": "warning",
            "GroupBudgetExhausted": "high",
            "GroupBudgetForecastExhaustion": "medium",
            "GroupBudgetLow": "medium",
            "TaskOverBudget": "medium",
            "TasksExpiring": "medium",
        }

    def test_every_alert_has_promtool_tests(self) -> None:
        """rules_test.yml loads rules.yml and checks every alert both quiet and firing; each alert it expects
        carries the rule's severity and exactly the rule's annotations (promtool compares them whole)."""
        tests = load(PROMETHEUS / "rules_test.yml")
        assert tests["rule_files"] == ["rules.yml"]
        [group] = load(PROMETHEUS / "rules.yml")["groups"]
        rules = {rule["alert"]: rule for rule in group["rules"]}
        quiet: set[str] = set()
        firing: set[str] = set()
        for test in tests["tests"]:
            assert test["input_series"], test
            for case in test["alert_rule_test"]:
                name = case["alertname"]
                assert name in rules, name
                (firing if case["exp_alerts"] else quiet).add(name)
                for alert in case["exp_alerts"]:
                    assert alert["exp_labels"]["severity"] == rules[name]["labels"]["severity"], name
                    assert set(alert["exp_annotations"]) == set(rules[name]["annotations"]), name
                    assert not any("{{" in text for text in alert["exp_annotations"].values()), name
        assert (quiet, firing) == (set(rules), set(rules))

    def test_rules_name_only_exported_metrics(self) -> None:
        """Every alert expression names only metrics the worker exports."""
        for name, expr in alerts(load(PROMETHEUS / "rules.yml")["groups"]).items():
            assert unknown_metrics(expr) == set(), name

    def test_promtool_check_rules(self, tmp_path: Path) -> None:
        """promtool accepts rules.yml and the PrometheusRule's groups."""
        operator = tmp_path / "prometheusrule-groups.yml"
        operator.write_text(yaml.safe_dump(load(K8S / "prometheusrule.yaml")["spec"]), encoding="utf-8")
        result = promtool("check", "rules", str(PROMETHEUS / "rules.yml"), str(operator))
        assert result.returncode == 0, result.stdout + result.stderr

    def test_promtool_test_rules(self) -> None:
        """Every alert fires, and stays quiet, exactly when rules_test.yml says it should."""
        result = promtool("test", "rules", str(PROMETHEUS / "rules_test.yml"))
        assert result.returncode == 0, result.stdout + result.stderr

    def test_promtool_check_config(self) -> None:
        """promtool accepts prometheus.yml together with the rule files it loads."""
        result = promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
        assert result.returncode == 0, result.stdout + result.stderr

    def test_prometheus_scrapes_the_governor(self) -> None:
        """prometheus.yml scrapes job if-governor at localhost:9090 and loads rules.yml beside it."""
        config = load(PROMETHEUS / "prometheus.yml")
        [job] = config["scrape_configs"]
        assert job["job_name"] == "if-governor"
        assert job["static_configs"] == [{"targets": ["localhost:9090"]}]
        assert config["rule_files"] == ["rules.yml"]
        assert (PROMETHEUS / "rules.yml").is_file()


class TestDashboard:
    def dashboard(self) -> dict[str, Any]:
        dashboard: dict[str, Any] = json.loads((DEPLOY / "grafana" / "governor.json").read_text(encoding="utf-8"))
        return dashboard

    def queried(self) -> list[dict[str, Any]]:
        """The panels that query Prometheus: all but the rows, which only head the panels below them."""
        return [panel for panel in self.dashboard()["panels"] if panel["type"] != "row"]

    def exprs(self) -> list[str]:
        return [t["expr"] for panel in self.queried() for t in panel["targets"]]

    def test_is_importable_json(self) -> None:
        """The dashboard is JSON with schemaVersion 39, requires the panel plugins it uses, and has a DS_PROMETHEUS
        datasource input used by every panel that queries (a row queries nothing)."""
        dashboard = self.dashboard()
        assert dashboard["schemaVersion"] == 39
        assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
        panel_plugins = {r["id"] for r in dashboard["__requires"] if r["type"] == "panel"}
        assert panel_plugins == {p["type"] for p in self.queried()}
        for panel in self.queried():
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            assert all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in panel["targets"]), panel["title"]

    def test_has_the_design_docs_panels(self) -> None:
        """The dashboard has the gauge, stat, time series, pie chart and heatmap panels the design doc lists."""
        types = {panel["type"] for panel in self.dashboard()["panels"]}
        assert {"gauge", "stat", "timeseries", "piechart", "heatmap"} <= types

    def test_names_only_exported_metrics(self) -> None:
        """Every PromQL expression in the dashboard names only metrics the worker exports."""
        exprs = self.exprs()
        assert exprs
        assert {token for expr in exprs for token in unknown_metrics(expr)} == set()

    def test_panels_have_unique_ids_and_do_not_overlap(self) -> None:
        """Every panel has an id of its own and a place on the 24-column grid that no other panel covers."""
        panels = self.dashboard()["panels"]
        assert len({p["id"] for p in panels}) == len(panels)
        cells: dict[tuple[int, int], str] = {}
        for panel in panels:
            g = panel["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24, panel["title"]
            for cell in ((x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])):
                assert cell not in cells, (panel["title"], cells.get(cell))
                cells[cell] = panel["title"]

    def sections(self) -> list[tuple[str, list[dict[str, Any]]]]:
        """The dashboard cut at its rows, top to bottom: ("", the panels above the first row), then each row's
        title and the panels between it and the next row. Fails unless each section lies wholly below the one
        before it."""
        panels = self.dashboard()["panels"]
        rows = sorted((p for p in panels if p["type"] == "row"), key=lambda p: p["gridPos"]["y"])
        tops = [row["gridPos"]["y"] for row in rows]
        sections: list[tuple[str, list[dict[str, Any]]]] = [("", [])] + [(row["title"], []) for row in rows]
        for panel in panels:
            if panel["type"] == "row":
                assert (panel["collapsed"], panel["gridPos"]["w"], panel["gridPos"]["h"]) == (False, 24, 1)
                assert (panel["panels"], "targets" in panel) == ([], False)  # open: its panels follow it in `panels`
                continue
            y = panel["gridPos"]["y"]
            assert y not in tops, panel["title"]
            section = sum(1 for top in tops if top < y)
            if section < len(tops):  # it ends before the next row begins
                assert y + panel["gridPos"]["h"] <= tops[section], panel["title"]
            sections[section][1].append(panel)
        return sections

    @staticmethod
    def named(panels: list[dict[str, Any]]) -> set[str]:
        """The `if_governor_*` names the panels' queries read (a histogram's `_bucket` as such)."""
        return {name for p in panels for t in p["targets"] for name in METRIC_TOKEN.findall(t["expr"])}

    def test_rows_head_the_budget_group_and_task_panels(self) -> None:
        """Below the design doc's panels, a "Budget groups" row heads the panels that query the budget groups'
        metrics and the budget event counters, and under it a "Tasks" row the panels that query the task
        lifecycle's; no section queries another's metrics."""
        sections = self.sections()
        assert [title for title, _ in sections] == ["", "Budget groups", "Tasks"]
        (_, top), (_, groups), (_, tasks) = sections
        assert top and groups and tasks
        assert self.named(groups) == BUDGET_GROUP_METRICS
        assert {HISTOGRAM_SUFFIX.sub("", name) for name in self.named(tasks)} == TASK_METRICS
        assert not self.named(top) & (BUDGET_GROUP_METRICS | TASK_METRICS)
        assert {p["type"] for p in groups} == {"timeseries", "stat", "table"}

    def test_tasks_row_shows_in_flight_completions_durations_and_expiries(self) -> None:
        """The "Tasks" row's time series: tasks in flight per swarm, completions per outcome (a rate), the task
        duration's median and 95th percentile from the histogram's buckets, and the expiries TasksExpiring counts."""
        [(_, tasks)] = [section for section in self.sections() if section[0] == "Tasks"]
        assert {p["type"] for p in tasks} == {"timeseries"}
        exprs = {p["title"]: [t["expr"] for t in p["targets"]] for p in tasks}
        assert exprs == {
            "Tasks in flight per swarm": ["sum by (swarm_id) (if_governor_tasks_in_flight)"],
            "Task completions by outcome": [
                "sum by (outcome) (rate(if_governor_task_completions_total[5m])) * 60",
            ],
            "Task duration p50 / p95": [
                "histogram_quantile(0.5, sum by (le) (rate(if_governor_task_duration_seconds_bucket[1h])))",
                "histogram_quantile(0.95, sum by (le) (rate(if_governor_task_duration_seconds_bucket[1h])))",
            ],
            "Tasks expired": ["sum(increase(if_governor_tasks_expired_total[15m]))"],
        }
        alert = alerts(load(PROMETHEUS / "rules.yml")["groups"])["TasksExpiring"]
        assert alert.startswith(exprs["Tasks expired"][0].removeprefix("sum(").removesuffix(")"))

    def test_latency_heatmap_uses_the_histogram_buckets(self) -> None:
        """The heatmap reads the latency histogram's buckets."""
        [heatmap] = [p for p in self.dashboard()["panels"] if p["type"] == "heatmap"]
        assert "if_governor_assignment_latency_ms_bucket" in heatmap["targets"][0]["expr"]


class TestContainer:
    def copy_sources(self) -> list[str]:
        """The build-context paths that the Dockerfile's COPY instructions read."""
        text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
        sources = []
        for line in text.splitlines():
            words = line.split()
            if not words or words[0].upper() != "COPY" or any(w.startswith("--from") for w in words):
                continue
            sources += [w for w in words[1:-1] if not w.startswith("--")]
        return sources

    def test_dockerfile_copies_existing_files(self) -> None:
        """Every file the Dockerfile copies exists in the build context (the repository root)."""
        sources = self.copy_sources()
        assert "deploy/governor.yaml" in sources
        assert [s for s in sources if not (ROOT / s).exists()] == []

    def test_dockerfile_runs_the_governor_as_non_root(self) -> None:
        """The image is pinned, runs as uid 10001 and starts `governor run` with the shipped config."""
        text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
        assert "FROM python:3.11.7-slim-bookworm\n" in text
        assert "USER 10001:10001\n" in text
        assert 'ENTRYPOINT ["governor"]\n' in text
        assert 'CMD ["run", "--config", "/etc/infrafabric/governor.yaml"]\n' in text

    def test_compose_references_existing_files(self) -> None:
        """The compose file's build context, Dockerfile and mounted files and directories exist."""
        compose = load(DEPLOY / "compose.yaml")
        for name in ("governor-a", "governor-b"):
            build = compose["services"][name]["build"]
            context = (DEPLOY / build["context"]).resolve()
            assert context == ROOT
            assert (context / build["dockerfile"]).is_file()
        for service in compose["services"].values():
            for volume in service.get("volumes", []):
                source = volume.split(":")[0]
                if source.startswith("."):  # a path, not a named volume
                    assert (DEPLOY / source).exists(), volume

    def test_compose_prometheus_loads_the_rules(self) -> None:
        """The compose Prometheus loads deploy/prometheus/rules.yml and scrapes the governor service."""
        compose = load(DEPLOY / "compose.yaml")
        prometheus = compose["services"]["prometheus"]
        [volume] = prometheus["volumes"]
        host, mount = volume.split(":")[:2]
        [config] = prometheus["configs"]
        settings = yaml.safe_load(compose["configs"][config["source"]]["content"])
        config_dir = Path(config["target"]).parent
        for rule_file in settings["rule_files"]:
            in_container = (config_dir / rule_file).as_posix()
            assert in_container.startswith(mount + "/"), rule_file
            assert (DEPLOY / host / in_container.removeprefix(mount + "/")).is_file(), rule_file
        assert settings["scrape_configs"][0]["static_configs"] == [{"targets": ["governor-a:9090", "governor-b:9090"]}]
        assert "9091:9090" in prometheus["ports"]


# -- the clusters: Kubernetes and compose ---------------------------------------------------------------------------

NATS_K8S_CONF = "nats-server.conf"
"""The key of the NATS ConfigMap (kubernetes/nats-configmap.yaml) that holds the nodes' nats-server config."""
CLUSTER_ONLY = ("server_name: $POD_NAME", "pid_file: ", "lame_duck_grace_period: ", "lame_duck_duration: ")
"""The top-level settings the Kubernetes cluster's config has and deploy/nats-server.conf has not (besides the
`cluster` block)."""
ENV_REFERENCE = re.compile(r":\s*\$([A-Z_]+)\s*$", flags=re.MULTILINE)
K8S_VARIABLE = re.compile(r"\$\(([A-Z_]+)\)")


def settings(conf: str) -> list[str]:
    """A nats-server config's lines as the server reads them: stripped, without comment lines and blank lines."""
    return [line.strip() for line in conf.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def block(conf: str, name: str) -> str:
    """The top-level `name { ... }` block of a nats-server config (to its closing brace at column 0)."""
    match = re.search(rf"^{name} \{{\n(.*?)^\}}\n", conf, flags=re.MULTILINE | re.DOTALL)
    assert match is not None, f"no `{name}` block"
    return match.group(1)


def kustomized() -> dict[tuple[str, str], dict[str, Any]]:
    """`kubectl kustomize deploy/kubernetes` (offline), each resource by (kind, name); skipped without kubectl."""
    exe = shutil.which("kubectl")
    if exe is None:
        pytest.skip("kubectl not installed")
    result = subprocess.run([exe, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in yaml.safe_load_all(result.stdout) if doc}


def nats_k8s_conf() -> str:
    """The Kubernetes NATS nodes' nats-server config (kubernetes/nats-configmap.yaml)."""
    text: str = load(K8S / "nats-configmap.yaml")["data"][NATS_K8S_CONF]
    return text


def only_container(workload: dict[str, Any]) -> dict[str, Any]:
    """The one container of a workload's pods."""
    containers: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    [container] = containers
    return container


def selects(labels: dict[str, str], workload: dict[str, Any]) -> bool:
    """True when the labels a selector matches pick the workload's pods."""
    return bool(labels.items() <= workload["spec"]["template"]["metadata"]["labels"].items())


class TestKubernetesCluster:
    def test_renders_every_resource(self) -> None:
        """`kubectl kustomize` renders NATS (config, StatefulSet, two Services, PDB) and the governor (config,
        Deployment, PDB, metrics Service, alert rules)."""
        assert set(kustomized()) == {
            ("ConfigMap", "nats-config"),
            ("StatefulSet", "nats"),
            ("Service", "nats-headless"),
            ("Service", "nats"),
            ("PodDisruptionBudget", "nats"),
            ("ConfigMap", "governor-config"),
            ("Deployment", "if-governor"),
            ("PodDisruptionBudget", "if-governor"),
            ("Service", "if-governor-metrics"),
            ("PrometheusRule", "if-governor"),
        }

    def test_nats_is_a_three_node_statefulset_behind_a_headless_service(self) -> None:
        """Three NATS pods started together, named through a headless Service that publishes them before they are
        ready (so starting nodes find each other), each with a JetStream volume of its own at the store's parent."""
        resources = kustomized()
        nats = resources["StatefulSet", "nats"]
        headless = resources["Service", nats["spec"]["serviceName"]]
        assert (nats["spec"]["replicas"], nats["spec"]["podManagementPolicy"]) == (3, "Parallel")
        assert (headless["spec"]["clusterIP"], headless["spec"]["publishNotReadyAddresses"]) == ("None", True)
        assert selects(headless["spec"]["selector"], nats)
        [claim] = nats["spec"]["volumeClaimTemplates"]
        mount = next(m for m in only_container(nats)["volumeMounts"] if m["name"] == claim["metadata"]["name"])
        assert "store_dir: /data/jetstream" in block(nats_k8s_conf(), "jetstream")
        assert mount["mountPath"] == "/data"

    def test_nats_routes_to_every_pod_with_the_route_password(self) -> None:
        """The config has a `cluster` block that admits only the `route` user with ROUTE_PASSWORD, and each node
        routes to every pod of the StatefulSet by its DNS name, logging in as that user."""
        resources = kustomized()
        nats = resources["StatefulSet", "nats"]
        cluster = block(nats_k8s_conf(), "cluster")
        assert settings(cluster) == [
            "name: if-governor",
            "listen: 0.0.0.0:6222",
            "no_advertise: true",
            "authorization {",
            "user: route",
            "password: $ROUTE_PASSWORD",
            "}",
        ]
        args = only_container(nats)["args"]
        routes = args[args.index("--routes") + 1].split(",")
        service = nats["spec"]["serviceName"]
        assert routes == [f"nats://route:$(ROUTE_PASSWORD)@nats-{i}.{service}:6222" for i in range(3)]

    def test_nats_probes_its_monitoring_port(self) -> None:
        """NATS is alive while its JetStream is enabled, ready while its server runs, started once JetStream is
        current: all on the monitoring port, which the config serves at 8222."""
        container = only_container(kustomized()["StatefulSet", "nats"])
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"client": 4222, "cluster": 6222, "monitor": 8222}
        probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
        assert probes == {
            "startupProbe": {"path": "/healthz", "port": "monitor"},
            "livenessProbe": {"path": "/healthz?js-enabled-only=true", "port": "monitor"},
            "readinessProbe": {"path": "/healthz?js-server-only=true", "port": "monitor"},
        }
        assert "http: 0.0.0.0:8222" in settings(nats_k8s_conf())

    def test_nats_config_is_the_shipped_one_with_a_cluster_block(self) -> None:
        """Outside its `cluster` block, the name from the pod and lame duck mode, the NATS ConfigMap's config is
        deploy/nats-server.conf line for line: the same accounts, permissions, JetStream and timeouts."""
        shipped = (DEPLOY / "nats-server.conf").read_text(encoding="utf-8")
        conf = nats_k8s_conf()
        without_cluster = conf.replace("cluster {\n" + block(conf, "cluster") + "}\n", "")
        assert [line for line in settings(without_cluster) if not line.startswith(CLUSTER_ONLY)] == [
            line for line in settings(shipped) if not line.startswith("server_name:")
        ]
        assert [line for line in settings(conf) if line.startswith(CLUSTER_ONLY)] == [
            "server_name: $POD_NAME",
            "pid_file: /var/run/nats/nats.pid",
            'lame_duck_grace_period: "10s"',
            'lame_duck_duration: "30s"',
        ]

    def test_nats_pods_get_every_variable_the_config_reads(self) -> None:
        """The NATS pods' environment holds exactly the variables the config reads: the pod's name and the seven
        passwords, each from the Secret `nats-passwords` under its own name (the route password too, which the
        routes on the command line expand)."""
        container = only_container(kustomized()["StatefulSet", "nats"])
        env = {e["name"]: e["valueFrom"] for e in container["env"]}
        assert set(env) == set(ENV_REFERENCE.findall(nats_k8s_conf()))
        assert env.pop("POD_NAME") == {"fieldRef": {"fieldPath": "metadata.name"}}
        assert env == {name: {"secretKeyRef": {"name": "nats-passwords", "key": name}} for name in env}
        assert set(env) == {*ROLE_PASSWORDS, "ROUTE_PASSWORD"}
        assert set(K8S_VARIABLE.findall(" ".join(container["args"]))) == {"ROUTE_PASSWORD"}

    def test_nats_server_accepts_the_clusters_config(self, tmp_path: Path) -> None:
        """`nats-server -t` accepts the NATS ConfigMap's config with the StatefulSet's arguments (its routes) and
        the environment the pod gets."""
        nats = kustomized()["StatefulSet", "nats"]
        container = only_container(nats)
        conf = tmp_path / NATS_K8S_CONF
        conf.write_text(nats_k8s_conf(), encoding="utf-8")
        env = {**os.environ, "POD_NAME": "nats-0", **{e["name"]: f"p{e['name'].lower()}" for e in container["env"]}}
        mounted = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "config")
        args = [
            str(conf) if arg == f"{mounted}/{NATS_K8S_CONF}" else K8S_VARIABLE.sub(lambda m: env[m.group(1)], arg)
            for arg in container["args"]
        ]
        assert str(conf) in args
        result = subprocess.run(
            [nats_server_binary(), *args, "-t"], capture_output=True, text=True, timeout=60, check=False, env=env
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def test_governor_runs_two_replicas_rolling_one_at_a_time(self) -> None:
        """Two governor replicas (one serves, one stands by), rolled one new pod at a time with none taken down
        before its successor is ready, a standby counting as ready."""
        deployment = kustomized()["Deployment", "if-governor"]
        assert deployment["spec"]["replicas"] == 2
        assert deployment["spec"]["strategy"] == {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        }
        probe = only_container(deployment)["readinessProbe"]["httpGet"]
        assert probe == {"path": "/readyz?standbyok=true", "port": 9090}

    def test_disruption_budgets_keep_one_governor_and_a_nats_quorum(self) -> None:
        """The governor's PodDisruptionBudget selects its pods (and no NATS pod) and lets one go at a time, unready
        ones always; the NATS one lets one of the three nodes go at a time."""
        resources = kustomized()
        governor, nats = resources["Deployment", "if-governor"], resources["StatefulSet", "nats"]
        budget = resources["PodDisruptionBudget", "if-governor"]["spec"]
        labels = budget["selector"]["matchLabels"]
        assert (selects(labels, governor), selects(labels, nats)) == (True, False)
        assert (budget["maxUnavailable"], budget["unhealthyPodEvictionPolicy"]) == (1, "AlwaysAllow")
        assert "minAvailable" not in budget
        budget = resources["PodDisruptionBudget", "nats"]["spec"]
        labels = budget["selector"]["matchLabels"]
        assert (selects(labels, nats), selects(labels, governor)) == (True, False)
        assert budget["maxUnavailable"] == 1

    def test_governor_config_names_the_three_nodes_and_r3(self, tmp_path: Path) -> None:
        """The governor's config, as the worker loads it, lists every NATS pod's client URL and keeps its streams
        on three replicas."""
        resources = kustomized()
        nats = resources["StatefulSet", "nats"]
        path = tmp_path / "governor.yaml"
        path.write_text(resources["ConfigMap", "governor-config"]["data"]["governor.yaml"], encoding="utf-8")
        config = load_config(path, env={})
        service = nats["spec"]["serviceName"]
        assert config.nats.servers == [f"nats://nats-{i}.{service}:4222" for i in range(nats["spec"]["replicas"])]
        assert config.ledger.replicas == 3

    def test_governor_and_nats_share_the_password_secret(self) -> None:
        """The governor logs in with the GOVERNOR_PASSWORD that the NATS pods read from the same Secret."""
        resources = kustomized()
        governor = {e["name"]: e for e in only_container(resources["Deployment", "if-governor"])["env"]}
        nats = {e["name"]: e for e in only_container(resources["StatefulSet", "nats"])["env"]}
        assert governor["IF_GOVERNOR_NATS_PASSWORD"]["valueFrom"] == nats["GOVERNOR_PASSWORD"]["valueFrom"]


COMPOSE_NATS = ("nats-1", "nats-2", "nats-3")
COMPOSE_GOVERNORS = ("governor-a", "governor-b")


class TestComposeCluster:
    def compose(self) -> dict[str, Any]:
        compose: dict[str, Any] = load(DEPLOY / "compose.yaml")
        return compose

    def test_three_nats_nodes_each_with_its_name_and_volume(self) -> None:
        """Three NATS services run the same mounted config, each under its own server name with its own JetStream
        volume and host ports."""
        services = self.compose()["services"]
        assert [services[n]["environment"] for n in COMPOSE_NATS] == [{"NATS_SERVER_NAME": n} for n in COMPOSE_NATS]
        volumes = [sorted(services[n]["volumes"]) for n in COMPOSE_NATS]
        assert volumes == [["./compose/nats.conf:/etc/nats/nats.conf:ro", f"{n}-data:/data"] for n in COMPOSE_NATS]
        assert set(self.compose()["volumes"]) == {f"{n}-data" for n in COMPOSE_NATS}
        command = ["nats-server", "--config", "/etc/nats/nats.conf"]
        assert [services[n]["command"] for n in COMPOSE_NATS] == [command] * 3
        ports = [port.split(":")[0] for n in COMPOSE_NATS for port in services[n]["ports"]]
        assert len(set(ports)) == len(ports) == 6

    def test_nats_nodes_form_one_jetstream_cluster(self) -> None:
        """The nodes' config routes to all three services, stores JetStream under the volume and syncs every write."""
        conf = (DEPLOY / "compose" / "nats.conf").read_text(encoding="utf-8")
        assert re.findall(r"nats://([\w-]+):6222", block(conf, "cluster")) == list(COMPOSE_NATS)
        assert settings(block(conf, "jetstream")) == ["store_dir: /data/jetstream", "sync_interval: always"]

    def test_nats_server_accepts_the_nodes_config(self) -> None:
        """`nats-server -t` accepts compose's node config with a node's name set."""
        result = subprocess.run(
            [nats_server_binary(), "-c", str(DEPLOY / "compose" / "nats.conf"), "-t"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "NATS_SERVER_NAME": "nats-1"},
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def test_same_nats_image_as_kubernetes(self) -> None:
        """Compose's NATS nodes run the image the Kubernetes StatefulSet runs."""
        services = self.compose()["services"]
        images = {services[n]["image"] for n in COMPOSE_NATS}
        assert images == {only_container(load(K8S / "nats-statefulset.yaml"))["image"]}

    def test_two_governors_on_every_node_with_r3(self) -> None:
        """Two governor services, on their own host ports, each given every node's URL and the R3 config mounted
        where the image reads its config; the worker's loader turns that into three servers and three replicas."""
        services = self.compose()["services"]
        urls = ",".join(f"nats://{n}:4222" for n in COMPOSE_NATS)
        for name in COMPOSE_GOVERNORS:
            service = services[name]
            assert service["environment"] == {"IF_GOVERNOR_NATS_URL": urls}, name
            assert service["volumes"] == ["./compose/governor.yaml:/etc/infrafabric/governor.yaml:ro"], name
            assert set(service["depends_on"]) == set(COMPOSE_NATS), name
        assert [services[n]["ports"] for n in COMPOSE_GOVERNORS] == [["9090:9090"], ["9092:9090"]]
        config = load_config(DEPLOY / "compose" / "governor.yaml", env={"IF_GOVERNOR_NATS_URL": urls})
        assert (config.nats.servers, config.ledger.replicas) == (urls.split(","), 3)

    def test_governor_config_is_the_example_with_r3(self) -> None:
        """compose/governor.yaml is deploy/governor.yaml plus `ledger.replicas: 3`, nothing else."""
        compose_config = load(DEPLOY / "compose" / "governor.yaml")
        assert compose_config.pop("ledger") == {"replicas": 3}
        assert compose_config == load(DEPLOY / "governor.yaml")
