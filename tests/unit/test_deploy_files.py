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

from schemas.endpoints import ENDPOINTS
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
HISTOGRAMS = {"if_governor_assignment_latency_ms"}
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


def alerts(groups: list[dict[str, Any]]) -> dict[str, str]:
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool not installed: apt-get install prometheus")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)


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
            "kubernetes/kustomization.yaml",
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
        """Each swarm has exactly the keys of a swarm profile in config."""
        keys = {"swarm_id", "capabilities", "cost_per_hour", "reputation_score", "initial_budget", "model"}
        assert [set(s) for s in load(DEPLOY / "governor.yaml")["swarms"]] == [keys, keys]

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
        assert (security.trust_request_info, security.operator_accounts, security.require_authenticated_approver) == (
            False,
            [],
            False,
        )


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
        """The Deployment's container has an image, liveness on /healthz and readiness on /readyz at 9090."""
        deployment = load(K8S / "deployment.yaml")
        assert deployment["kind"] == "Deployment"
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 9090}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 9090}

    def test_deployment_runs_locked_down(self) -> None:
        """The pod runs as non-root on a read-only root filesystem, with the config mounted from the ConfigMap."""
        pod = load(K8S / "deployment.yaml")["spec"]["template"]["spec"]
        [container] = pod["containers"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert {"name": "IF_GOVERNOR_NATS_URL", "value": "nats://nats:4222"} in container["env"]
        config = next(v for v in pod["volumes"] if v["name"] == "config")
        assert config["configMap"]["name"] == load(K8S / "configmap.yaml")["metadata"]["name"]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
        assert mount["mountPath"] == "/etc/infrafabric"

    def test_configmap_holds_governor_yaml(self) -> None:
        """The ConfigMap's governor.yaml parses to the same value as deploy/governor.yaml but for `security`."""
        embedded = yaml.safe_load(load(K8S / "configmap.yaml")["data"]["governor.yaml"])
        example = load(DEPLOY / "governor.yaml")
        assert set(embedded) == set(example)
        assert {k: v for k, v in embedded.items() if k != "security"} == {
            k: v for k, v in example.items() if k != "security"
        }

    def test_configmap_trusts_the_shipped_server_config(self, tmp_path: Path) -> None:
        """The ConfigMap's config, which runs against deploy/nats-server.conf, loads with the worker's loader and
        believes the server-stamped identity, lets only the OPS account operate and requires the approver to be
        the authenticated user; OPS is the account of nats-server.conf that imports the operator-only subjects."""
        path = tmp_path / "governor.yaml"
        path.write_text(load(K8S / "configmap.yaml")["data"]["governor.yaml"], encoding="utf-8")
        security = load_config(path, env={}).security
        assert (
            security.trust_request_info,
            security.operator_accounts,
            security.require_authenticated_approver,
            security.reply_prefixes,
        ) == (True, ["OPS"], True, [])
        conf = nats_conf_blocks()
        assert set(conf) == {"GOVERNOR", "COORD", "OPS", "WITNESS", "ALERTS"}
        assert [name for name, block in conf.items() if '"governor.reset" }' in block] == ["OPS"]

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


ROLE_PASSWORDS = (
    "GOVERNOR_PASSWORD",
    "COORDINATOR_PASSWORD",
    "OPERATOR_PASSWORD",
    "WITNESS_PASSWORD",
    "ALERTING_PASSWORD",
)


class TestNatsServerConf:
    def test_nats_server_accepts_it(self) -> None:
        """`nats-server -c deploy/nats-server.conf -t` accepts the file with the five passwords set."""
        env = {**os.environ, **{name: f"p{name.lower()}" for name in ROLE_PASSWORDS}}
        result = subprocess.run(
            [nats_server_binary(), "-c", str(DEPLOY / "nats-server.conf"), "-t"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=env,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def test_each_role_has_its_own_account_with_its_user_and_password(self) -> None:
        """Five accounts, each with one of the five users and that user's password variable, read once."""
        text = (DEPLOY / "nats-server.conf").read_text(encoding="utf-8")
        users = {
            name: re.findall(r"user: (\w+)\s+password: \$([A-Z_]+)", block)
            for name, block in nats_conf_blocks().items()
        }
        assert users == {
            "GOVERNOR": [("governor", "GOVERNOR_PASSWORD")],
            "COORD": [("coordinator", "COORDINATOR_PASSWORD")],
            "OPS": [("operator", "OPERATOR_PASSWORD")],
            "WITNESS": [("witness", "WITNESS_PASSWORD")],
            "ALERTS": [("alerting", "ALERTING_PASSWORD")],
        }
        assert [text.count(f"${name}") for name in ROLE_PASSWORDS] == [1] * 5
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
        """Each endpoint is exported once: operator-only ones to OPS alone, the others to COORD and OPS; and each
        account imports exactly what it was exported."""
        blocks = nats_conf_blocks()
        exported = dict(re.findall(r'\{ service: "governor\.(\w+)",\s+accounts: \[([A-Z, ]+)\] \}', blocks["GOVERNOR"]))
        assert exported == {e.name: "OPS" if e.operator_only else "COORD, OPS" for e in ENDPOINTS}
        for account in ("COORD", "OPS"):
            imported = re.findall(r'subject: "governor\.(\w+)" \}', blocks[account])
            assert sorted(imported) == sorted(name for name, to in exported.items() if account in to), account

    def test_every_service_import_shares_the_requesters_identity(self) -> None:
        """Every service import has `share: true`, so the governor gets the server-stamped `Nats-Request-Info`."""
        text = (DEPLOY / "nats-server.conf").read_text(encoding="utf-8")
        imports = [line for line in text.splitlines() if line.strip().startswith("{ service: { account:")]
        # COORD: 6 requests and 9 discovery subjects; OPS: 5 more requests; WITNESS and ALERTS: their audit
        # consumer's next messages and acknowledgements
        assert len(imports) == 15 + 20 + 4
        assert [line for line in imports if not line.rstrip().endswith("share: true }")] == []


class TestAlertRules:
    def test_rules_and_prometheusrule_agree(self) -> None:
        """rules.yml and the PrometheusRule hold the same alerts with the same expressions."""
        rules = alerts(load(PROMETHEUS / "rules.yml")["groups"])
        operator = alerts(load(K8S / "prometheusrule.yaml")["spec"]["groups"])
        assert operator == rules

    def test_alerts_and_severities(self) -> None:
        """The four alerts exist with the severities the design doc gives them."""
        [group] = load(PROMETHEUS / "rules.yml")["groups"]
        severities = {rule["alert"]: rule["labels"]["severity"] for rule in group["rules"]}
        assert group["name"] == "if_governor"
        assert severities == {
            "CircuitBreakerTripped": "high",
            "AllBudgetsExhausted": "high",
            "NoQualifiedSwarmRateHigh": "medium",
            "BudgetRunningLow": "warning",
        }

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

    def exprs(self) -> list[str]:
        return [t["expr"] for panel in self.dashboard()["panels"] for t in panel["targets"]]

    def test_is_importable_json(self) -> None:
        """The dashboard is JSON with schemaVersion 39 and a DS_PROMETHEUS datasource input used everywhere."""
        dashboard = self.dashboard()
        assert dashboard["schemaVersion"] == 39
        assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
        for panel in dashboard["panels"]:
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
        """The compose file's build context, Dockerfile and mounted directories exist."""
        compose = load(DEPLOY / "compose.yaml")
        build = compose["services"]["governor"]["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert context == ROOT
        assert (context / build["dockerfile"]).is_file()
        for volume in compose["services"]["prometheus"]["volumes"]:
            assert (DEPLOY / volume.split(":")[0]).is_dir(), volume

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
        assert settings["scrape_configs"][0]["static_configs"] == [{"targets": ["governor:9090"]}]
        assert "9091:9090" in prometheus["ports"]
