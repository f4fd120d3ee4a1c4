"""docker-compose.yml and the Dockerfile, checked without Docker (which cannot run here).

The compose file must describe the whole system: PostgreSQL, a migration step that runs first,
both services, the emulator, scalable workers, a demo step and Jaeger receiving OTLP; every
command must name a module that exists, and every address must point at a service's port.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
APP_SERVICES = {"migrate", "emulator", "queue", "sync", "worker", "demo"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        return dict(item.split("=", 1) for item in environment)
    return {key: str(value) for key, value in environment.items()}


def condition(service: dict[str, Any], dependency: str) -> str:
    depends = service.get("depends_on", {})
    assert dependency in depends, f"depends_on lacks {dependency}"
    return depends[dependency]["condition"]


def test_every_part_of_the_system_is_a_service(services: dict[str, Any]) -> None:
    assert {"postgres", "jaeger", *APP_SERVICES} <= set(services)


def test_app_services_are_built_from_the_dockerfile(services: dict[str, Any]) -> None:
    assert (ROOT / "Dockerfile").is_file()
    for name in APP_SERVICES:
        assert services[name]["build"] == ".", name


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("migrate", "migrations"),
        ("emulator", "sync_service.emulator"),
        ("queue", "queue_service"),
        ("sync", "sync_service"),
        ("worker", "clients.worker"),
        ("demo", "scripts.run_local"),
    ],
)
def test_commands_run_existing_modules(services: dict[str, Any], name: str, module: str) -> None:
    command = services[name]["command"]
    assert command[:3] == ["python", "-m", module]
    assert importlib.util.find_spec(module) is not None, f"{module} does not exist"


def test_the_schema_is_migrated_before_the_services_start(services: dict[str, Any]) -> None:
    assert condition(services["migrate"], "postgres") == "service_healthy"
    assert services["migrate"]["restart"] == "no"
    for name in ("queue", "sync"):
        assert condition(services[name], "migrate") == "service_completed_successfully"


def test_databases_point_at_the_compose_postgres(services: dict[str, Any]) -> None:
    postgres_env = env_of(services["postgres"])
    for name in ("migrate", "queue", "sync"):
        url = env_of(services[name])["DATABASE_URL"]
        assert url.startswith("postgresql+psycopg://")
        assert "@postgres:5432/" in url
        assert url.endswith("/" + postgres_env["POSTGRES_DB"])
    assert "DATABASE_URL" not in env_of(services["worker"])  # workers never touch the database
    assert "healthcheck" in services["postgres"]


def _port_of(addr: str) -> str:
    return addr.rsplit(":", 1)[1]


def test_services_listen_on_all_interfaces_at_their_published_ports(
    services: dict[str, Any],
) -> None:
    for name, variable, port in (("queue", "QUEUE_LISTEN_ADDR", "50051"),
                                 ("sync", "SYNC_LISTEN_ADDR", "50052")):  # fmt: skip
        addr = env_of(services[name])[variable]
        assert addr == f"0.0.0.0:{port}"
        assert f"{port}:{port}" in services[name]["ports"]
        assert "clients.healthcheck" in services[name]["healthcheck"]["test"]


def test_sync_service_calls_the_emulator(services: dict[str, Any]) -> None:
    root = env_of(services["sync"])["GBP_API_ROOT"]
    emulator_port = services["emulator"]["command"][-1]
    assert root == f"http://emulator:{emulator_port}"
    assert condition(services["sync"], "emulator") == "service_healthy"
    assert "/__control/state" in " ".join(services["emulator"]["healthcheck"]["test"])
    assert env_of(services["sync"])["TOKEN_ENCRYPTION_KEY"]


def test_workers_dial_both_services_and_can_be_scaled(services: dict[str, Any]) -> None:
    worker = services["worker"]
    env = env_of(worker)
    assert env["QUEUE_ADDR"] == "queue:" + _port_of(env_of(services["queue"])["QUEUE_LISTEN_ADDR"])
    assert env["SYNC_ADDR"] == "sync:" + _port_of(env_of(services["sync"])["SYNC_LISTEN_ADDR"])
    assert env["TRIGGER_SECRET"] == env_of(services["queue"])["TRIGGER_SECRET"]
    # --scale worker=N needs no fixed container name and no published host port.
    assert "container_name" not in worker
    assert "ports" not in worker
    assert condition(worker, "queue") == "service_healthy"
    assert condition(worker, "sync") == "service_healthy"
    grace = int(re.fullmatch(r"(\d+)s", env["SHUTDOWN_GRACE"]).group(1))  # type: ignore[union-attr]
    stop = int(re.fullmatch(r"(\d+)s", worker["stop_grace_period"]).group(1))  # type: ignore[union-attr]
    assert stop > grace, "docker must not SIGKILL workers before their grace period ends"


def test_every_process_exports_traces_to_jaeger(services: dict[str, Any]) -> None:
    jaeger = services["jaeger"]
    assert jaeger["image"].startswith("jaegertracing/")
    assert env_of(jaeger).get("COLLECTOR_OTLP_ENABLED") == "true"
    assert any(str(p).startswith("16686:") for p in jaeger["ports"])
    names = set()
    for name in ("queue", "sync", "worker"):
        env = env_of(services[name])
        assert env["OTEL_TRACES_EXPORTER"] == "otlp"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"
        names.add(env["OTEL_SERVICE_NAME"])
    assert len(names) == 3


def test_the_demo_step_connects_accounts_once_the_services_are_healthy(
    services: dict[str, Any],
) -> None:
    demo = services["demo"]
    assert "--connect-only" in demo["command"]
    assert demo["restart"] == "no"
    assert condition(demo, "sync") == "service_healthy"
    env = env_of(demo)
    assert {"JWT_SECRET", "TRIGGER_SECRET", "QUEUE_ADDR", "SYNC_ADDR"} <= set(env)


def test_dockerfile_runs_unprivileged_from_the_source_tree() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", dockerfile, re.MULTILINE)
    assert re.search(r"^USER (?!root)\S+", dockerfile, re.MULTILINE)
    assert "WORKDIR /app" in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "var"} <= set(ignored)
