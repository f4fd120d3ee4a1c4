"""The monitoring set-up: Prometheus and Grafana in docker-compose.yml, the scrape targets, the
alert rules and the dashboard, checked without Docker against what the processes export.

(`make check-alerts` runs promtool on the rules, their unit tests and the dashboard's queries.)
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import clients.worker.metrics
import service_runtime.metrics
import sync_service.metrics
from queue_service import metrics as queue_metrics
from queue_service.models import QueueGauges, WorkerRunFigures, WorkerRunStatus
from service_runtime.config import parse_metrics_addr

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# Metric names in PromQL: ours and gRPC's (label names and functions never start so).
METRIC_NAME = re.compile(r"\b(?:gmbsync|grpc_server)_[a-z0-9_]+\b")
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
}

assert clients.worker.metrics and service_runtime.metrics and sync_service.metrics  # imported


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """Every sample name the three processes can export."""
    saved = queue_metrics.QUEUE_STATE.latest
    figures = WorkerRunFigures(WorkerRunStatus.COMPLETED, 1, 1.0, 1.0, timedelta(seconds=1))
    queue_metrics.QUEUE_STATE.latest = (
        QueueGauges({("pending", 0): 1}, timedelta(0), timedelta(0), [figures]),
        datetime.now(UTC),
    )
    try:
        names = set()
        for family in REGISTRY.collect():
            for suffix in SUFFIXES.get(family.type, ("",)):
                names.add(family.name + suffix)
        return names
    finally:
        queue_metrics.QUEUE_STATE.latest = saved


def names_in(expression: str) -> set[str]:
    return set(METRIC_NAME.findall(expression))


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/gmbsync.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_the_alerts_cover_the_diagnostics_alerts() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert {
        "GmbSyncHighFailureRate",
        "GmbSyncJobProcessingTooLong",
        "GmbSyncPendingBacklog",
        "GmbSyncFailedWorkerRuns",
    } <= names


def test_alerts_and_dashboard_use_only_exported_metrics(exported: set[str]) -> None:
    expressions = [rule["expr"] for rule in alert_rules()] + dashboard_expressions()
    assert len(dashboard_expressions()) >= 15
    used = set().union(*(names_in(e) for e in expressions))
    assert used, "no metric found in the expressions"
    assert used - exported == set()


def test_prometheus_scrapes_the_ports_the_services_serve_metrics_on(compose) -> None:  # type: ignore[no-untyped-def]
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for job, service, variable in (
        ("queue-service", "queue", "QUEUE_METRICS_ADDR"),
        ("sync-service", "sync", "SYNC_METRICS_ADDR"),
    ):
        address = parse_metrics_addr(variable, compose[service]["environment"][variable])
        assert address is not None
        assert jobs[job]["static_configs"][0]["targets"] == [f"{service}:{address[1]}"]
    worker = parse_metrics_addr(
        "WORKER_METRICS_ADDR", compose["worker"]["environment"]["WORKER_METRICS_ADDR"]
    )
    assert worker is not None
    [discovery] = jobs["worker"]["dns_sd_configs"]
    assert discovery["names"] == ["worker"] and discovery["port"] == worker[1]


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path of a service's bind mounts."""
    pairs = (volume.split(":")[:2] for volume in service.get("volumes", []))
    return {container: host for host, container in pairs if host.startswith("./")}


def test_prometheus_and_grafana_mount_the_files_of_deploy(compose) -> None:  # type: ignore[no-untyped-def]
    prometheus, grafana = mounts(compose["prometheus"]), mounts(compose["grafana"])
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    for rule_file in config["rule_files"]:
        assert (ROOT / prometheus[rule_file]).is_file()
    assert (ROOT / prometheus["/etc/prometheus/prometheus.yml"]).is_file()
    provisioning = ROOT / grafana["/etc/grafana/provisioning"]
    providers = yaml.safe_load((provisioning / "dashboards/gmbsync.yml").read_text())["providers"]
    [provider] = providers
    dashboards = ROOT / grafana[provider["options"]["path"]]
    assert (dashboards / "gmbsync.json").is_file()
    datasources = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())
    [source] = datasources["datasources"]
    assert source["url"] == "http://prometheus:9090"
    home = compose["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/gmbsync.json"


def test_monitoring_ports_are_published_on_this_machine_only(compose) -> None:  # type: ignore[no-untyped-def]
    for name in ("prometheus", "grafana"):
        for port in compose[name]["ports"]:
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_every_dashboard_query_names_the_provisioned_data_source() -> None:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/gmbsync.json").read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "prometheus"}
