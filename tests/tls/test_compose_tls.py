"""docker-compose.tls.yml, checked without Docker: merged over docker-compose.yml the way
`docker compose -f docker-compose.yml -f docker-compose.tls.yml` merges it (mappings merge,
override values win), every server serves mutual TLS and every client presents a certificate,
from files the `certs` step writes."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts.dev_certs import DEFAULT_HOSTS
from tests.test_compose import condition, env_of

ROOT = Path(__file__).resolve().parents[2]


def _merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    return override


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    base = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    tls = yaml.safe_load((ROOT / "docker-compose.tls.yml").read_text())
    unknown = set(tls["services"]) - set(base["services"]) - {"certs"}
    assert not unknown, f"the TLS file configures services the base file lacks: {unknown}"
    return _merge(base, tls)["services"]


def _mounted(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> volume, of a service's volumes."""
    return {entry.split(":")[1]: entry.split(":")[0] for entry in service.get("volumes", [])}


def _files(env: dict[str, str], *names: str) -> list[str]:
    return [env[name] for name in names]


def test_the_certs_step_writes_the_mounted_files_before_the_servers_start(
    services: dict[str, Any],
) -> None:
    certs = services["certs"]
    module = certs["command"][2]
    assert certs["command"][:2] == ["python", "-m"]
    assert importlib.util.find_spec(module) is not None
    assert certs["command"][3] == "/tls"
    assert _mounted(certs)["/tls"] == "tls"
    assert certs["restart"] == "no"
    for name in ("queue", "sync"):
        assert condition(services[name], "certs") == "service_completed_successfully"
    assert {"queue", "sync"} <= set(DEFAULT_HOSTS)  # the names the clients dial


@pytest.mark.parametrize("prefix", ["QUEUE", "SYNC"])
def test_both_servers_serve_mutual_tls_from_the_mounted_files(
    services: dict[str, Any], prefix: str
) -> None:
    service = services[prefix.lower()]
    env = env_of(service)
    assert _files(env, *(f"{prefix}_TLS_{n}_FILE" for n in ("CERT", "KEY", "CLIENT_CA"))) == [
        "/tls/server.pem",
        "/tls/server-key.pem",
        "/tls/ca.pem",
    ]
    assert _mounted(service)["/tls"] == "tls"
    assert "ro" in next(v for v in service["volumes"] if v.startswith("tls:")).split(":")[2]
    # The health check dials the server like any client: it needs the client's files too.
    assert "clients.healthcheck" in service["healthcheck"]["test"]
    assert env["GRPC_TLS_CERT_FILE"] == "/tls/client.pem"


@pytest.mark.parametrize("name", ["worker", "demo"])
def test_clients_present_the_client_certificate(services: dict[str, Any], name: str) -> None:
    env = env_of(services[name])
    assert _files(env, "GRPC_TLS_CA_FILE", "GRPC_TLS_CERT_FILE", "GRPC_TLS_KEY_FILE") == [
        "/tls/ca.pem",
        "/tls/client.pem",
        "/tls/client-key.pem",
    ]
    assert _mounted(services[name])["/tls"] == "tls"
    # Merged, not replaced: the base file's settings are still there.
    assert env["QUEUE_ADDR"] == "queue:50051"
    assert services[name].get("env_file")  # the secrets, as in the base file
