"""docker-compose.yml and the Dockerfile, checked without Docker (which cannot run here).

The compose file must describe the whole system: PostgreSQL, a migration step that runs first,
both services, the emulator, scalable workers, a demo step and Jaeger receiving OTLP; every
command must name a module that exists, and every address must point at a service's port.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.fernet import Fernet

from scripts import compose_env

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


def test_services_listen_in_their_containers_at_the_ports_published_on_loopback(
    services: dict[str, Any],
) -> None:
    for name, variable, port in (("queue", "QUEUE_LISTEN_ADDR", "50051"),
                                 ("sync", "SYNC_LISTEN_ADDR", "50052")):  # fmt: skip
        addr = env_of(services[name])[variable]
        assert addr == f"0.0.0.0:{port}"  # inside the container, for the compose network
        assert f"127.0.0.1:{port}:{port}" in services[name]["ports"]
        assert "clients.healthcheck" in services[name]["healthcheck"]["test"]


def test_every_published_port_is_on_this_host_only(services: dict[str, Any]) -> None:
    published = [(name, str(p)) for name, s in services.items() for p in s.get("ports", [])]
    assert published
    for name, port in published:
        assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


SECRETS = ("JWT_SECRET", "TRIGGER_SECRET", "TOKEN_ENCRYPTION_KEY")


def test_no_secret_is_written_in_the_compose_file(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for name in SECRETS:
        assert f"{name}:" not in text, f"{name} is set in docker-compose.yml"
    for name in ("queue", "sync", "worker", "demo"):
        assert services[name]["env_file"] == "compose.env", name
        assert not set(SECRETS) & set(env_of(services[name]))  # environment would override it
    for name in ("migrate", "emulator", "postgres", "jaeger"):
        assert "env_file" not in services[name], f"{name} needs no secrets"


def test_the_env_file_is_ignored_by_git_and_its_example_is_committed() -> None:
    example = (ROOT / "compose.env.example").read_text()
    for name in SECRETS:
        assert re.search(rf"^{name}=$", example, re.MULTILINE), f"{name} missing or filled in"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "compose.env"], cwd=ROOT, check=False
    ).returncode
    assert ignored == 0, "compose.env is not in .gitignore"


def test_compose_env_writes_fresh_private_secrets_and_keeps_existing_ones(tmp_path: Path) -> None:
    path = tmp_path / "compose.env"
    shutil.copy(ROOT / "compose.env.example", path)

    compose_env.main(["--path", str(path)])
    first = path.read_text()
    path.write_text(first.replace("TRIGGER_SECRET=", "TRIGGER_SECRET=mine-") + "EXTRA=1\n")
    compose_env.main(["--path", str(path)])
    second = path.read_text()

    assert path.stat().st_mode & 0o777 == 0o600
    values = dict(
        line.split("=", 1) for line in second.splitlines() if "=" in line and line[0] != "#"
    )
    assert set(SECRETS) <= set(values) and all(values[name] for name in SECRETS)
    assert [line for line in second.splitlines() if line.startswith("JWT_SECRET=")] == [
        line for line in first.splitlines() if line.startswith("JWT_SECRET=")
    ]
    assert values["TRIGGER_SECRET"].startswith("mine-") and values["EXTRA"] == "1"
    Fernet(values["TOKEN_ENCRYPTION_KEY"])  # a valid key


def test_jaeger_is_healthy_before_the_services_that_export_to_it_start(
    services: dict[str, Any],
) -> None:
    assert "14269" in " ".join(services["jaeger"]["healthcheck"]["test"])
    for name in ("queue", "sync", "worker"):
        assert condition(services[name], "jaeger") == "service_healthy", name


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)", duration)
    assert match, duration
    return int(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[match.group(2)]


def test_python_healthchecks_run_rarely_once_a_service_is_up(services: dict[str, Any]) -> None:
    # Each probe starts a Python process: every 5 s that cost ~8 % of a core per service.
    for name in ("queue", "sync", "emulator"):
        check = services[name]["healthcheck"]
        assert "python" in check["test"]
        assert _seconds(check["interval"]) >= 30, name
        assert _seconds(check["start_interval"]) <= 5, name  # still prompt while starting


def test_sync_service_calls_the_emulator(services: dict[str, Any]) -> None:
    root = env_of(services["sync"])["GBP_API_ROOT"]
    emulator_port = services["emulator"]["command"][-1]
    assert root == f"http://emulator:{emulator_port}"
    assert condition(services["sync"], "emulator") == "service_healthy"
    assert "/__control/state" in " ".join(services["emulator"]["healthcheck"]["test"])


def test_workers_dial_both_services_and_can_be_scaled(services: dict[str, Any]) -> None:
    worker = services["worker"]
    env = env_of(worker)
    assert env["QUEUE_ADDR"] == "queue:" + _port_of(env_of(services["queue"])["QUEUE_LISTEN_ADDR"])
    assert env["SYNC_ADDR"] == "sync:" + _port_of(env_of(services["sync"])["SYNC_LISTEN_ADDR"])
    assert worker["env_file"] == services["queue"]["env_file"]  # one TRIGGER_SECRET
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
    assert "127.0.0.1:16686:16686" in jaeger["ports"]
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
    assert {"QUEUE_ADDR", "SYNC_ADDR"} <= set(env)
    assert demo["env_file"] == "compose.env"  # JWT_SECRET and TRIGGER_SECRET


def test_dockerfile_runs_unprivileged_from_the_source_tree() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", dockerfile, re.MULTILINE)
    assert re.search(r"^USER (?!root)\S+", dockerfile, re.MULTILINE)
    assert "WORKDIR /app" in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "var"} <= set(ignored)
