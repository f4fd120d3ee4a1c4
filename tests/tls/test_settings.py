"""TLS settings: plain text by default; a bad file stops a process with one line and exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clients.worker.config import load_config
from queue_service.settings import QueueSettings
from service_runtime.config import ConfigError, Env
from service_runtime.tls import ClientTls, ServerTls
from sync_service.settings import SyncSettings
from tests.tls.conftest import Pki

ROOT = Path(__file__).resolve().parents[2]


def test_both_services_serve_plain_text_when_no_tls_setting_is_set() -> None:
    assert QueueSettings.from_env(Env({})).tls is None
    assert SyncSettings.from_env(Env({})).tls is None
    assert ClientTls.from_env(Env({})) is None


def test_a_certificate_and_key_turn_tls_on_and_a_client_ca_makes_it_mutual(pki: Pki) -> None:
    env = {
        "SYNC_TLS_CERT_FILE": str(pki.server.cert_file),
        "SYNC_TLS_KEY_FILE": str(pki.server.key_file),
    }
    tls = SyncSettings.from_env(Env(env)).tls
    assert tls is not None and not tls.mutual
    env["SYNC_TLS_CLIENT_CA_FILE"] = str(pki.ca.cert_file)
    tls = SyncSettings.from_env(Env(env)).tls
    assert tls is not None and tls.mutual


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"QUEUE_TLS_CERT_FILE": "server"}, "QUEUE_TLS_KEY_FILE is not"),
        ({"QUEUE_TLS_KEY_FILE": "server_key"}, "QUEUE_TLS_CERT_FILE is not"),
        ({"QUEUE_TLS_CLIENT_CA_FILE": "ca"}, "QUEUE_TLS_CERT_FILE is not"),
    ],
)
def test_half_a_server_configuration_is_refused(
    pki: Pki, given: dict[str, str], named: str
) -> None:
    files = {
        "server": pki.server.cert_file,
        "server_key": pki.server.key_file,
        "ca": pki.ca.cert_file,
    }
    env = {name: str(files[which]) for name, which in given.items()}
    with pytest.raises(ConfigError, match=named):
        QueueSettings.from_env(Env(env))


def test_a_missing_file_is_named_by_its_setting(pki: Pki, tmp_path: Path) -> None:
    env = {
        "QUEUE_TLS_CERT_FILE": str(tmp_path / "nowhere.pem"),
        "QUEUE_TLS_KEY_FILE": str(pki.server.key_file),
    }
    with pytest.raises(ConfigError, match=r"QUEUE_TLS_CERT_FILE='.*nowhere.pem' cannot be read"):
        QueueSettings.from_env(Env(env))


def test_an_unreadable_file_is_named_by_its_setting(pki: Pki, tmp_path: Path) -> None:
    # A directory: unreadable as a file even for root, who reads files of any mode.
    env = {
        "SYNC_TLS_CERT_FILE": str(pki.server.cert_file),
        "SYNC_TLS_KEY_FILE": str(tmp_path),
    }
    with pytest.raises(ConfigError, match=r"SYNC_TLS_KEY_FILE=.* cannot be read: Is a directory"):
        SyncSettings.from_env(Env(env))


def test_a_file_that_is_no_certificate_is_refused(pki: Pki) -> None:
    env = {
        "QUEUE_TLS_CERT_FILE": str(pki.server.key_file),
        "QUEUE_TLS_KEY_FILE": str(pki.server.key_file),
    }
    with pytest.raises(ConfigError, match=r"QUEUE_TLS_CERT_FILE=.* holds no PEM certificate"):
        QueueSettings.from_env(Env(env))


def test_a_key_of_another_certificate_is_refused_without_showing_it(pki: Pki) -> None:
    env = {
        "QUEUE_TLS_CERT_FILE": str(pki.server.cert_file),
        "QUEUE_TLS_KEY_FILE": str(pki.client.key_file),
    }
    with pytest.raises(ConfigError) as raised:
        QueueSettings.from_env(Env(env))
    message = str(raised.value)
    assert "is not the key of the certificate in QUEUE_TLS_CERT_FILE" in message
    assert "PRIVATE KEY" not in message


def test_a_certificate_as_a_key_is_refused(pki: Pki) -> None:
    env = {
        "QUEUE_TLS_CERT_FILE": str(pki.server.cert_file),
        "QUEUE_TLS_KEY_FILE": str(pki.server.cert_file),
    }
    with pytest.raises(ConfigError, match=r"QUEUE_TLS_KEY_FILE=.* holds no unencrypted PEM"):
        QueueSettings.from_env(Env(env))


def test_client_tls_settings(pki: Pki) -> None:
    assert ClientTls.from_env(Env({"GRPC_TLS": "true"})) == ClientTls()  # the system's roots
    with_ca = ClientTls.from_env(Env({"GRPC_TLS_CA_FILE": str(pki.ca.cert_file)}))
    assert with_ca is not None and with_ca.ca == pki.ca.cert_file.read_bytes()
    with pytest.raises(ConfigError, match="GRPC_TLS=false but GRPC_TLS_CA_FILE"):
        ClientTls.from_env(Env({"GRPC_TLS": "false", "GRPC_TLS_CA_FILE": str(pki.ca.cert_file)}))
    with pytest.raises(ConfigError, match="GRPC_TLS_KEY_FILE is not"):
        ClientTls.from_env(Env({"GRPC_TLS_CERT_FILE": str(pki.client.cert_file)}))
    with pytest.raises(ConfigError, match=r"GRPC_TLS_CA_FILE=.* holds no PEM certificate"):
        ClientTls.from_env(Env({"GRPC_TLS_CA_FILE": str(pki.client.key_file)}))


def test_the_workers_tls_comes_from_the_client_settings(pki: Pki) -> None:
    environ = {
        "TRIGGER_SECRET": "s",
        "GRPC_TLS_CA_FILE": str(pki.ca.cert_file),
        "GRPC_TLS_CERT_FILE": str(pki.client.cert_file),
        "GRPC_TLS_KEY_FILE": str(pki.client.key_file),
    }
    config = load_config([], environ)
    assert config.tls is not None
    assert config.tls.cert_chain == pki.client.cert_file.read_bytes()
    assert "PRIVATE" not in repr(config)
    assert load_config([], {"TRIGGER_SECRET": "s"}).tls is None


@pytest.mark.parametrize(
    ("program", "setting"),
    [
        ("queue_service", "QUEUE_TLS_CERT_FILE"),
        ("sync_service", "SYNC_TLS_CERT_FILE"),
        ("clients.worker", "GRPC_TLS_CA_FILE"),
        ("clients.healthcheck", "GRPC_TLS_CA_FILE"),
    ],
)
def test_a_process_with_a_missing_tls_file_exits_2_with_one_line(
    pki: Pki, tmp_path: Path, program: str, setting: str
) -> None:
    missing = str(tmp_path / "missing.pem")
    environ = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite",
        "TRIGGER_SECRET": "s",
        "QUEUE_TLS_KEY_FILE" if program == "queue_service" else "UNUSED": str(pki.server.key_file),
        "SYNC_TLS_KEY_FILE" if program == "sync_service" else "UNUSED": str(pki.server.key_file),
        setting: missing,
        "OTEL_TRACES_EXPORTER": "none",
    }
    argv = [sys.executable, "-m", program]
    if program == "clients.healthcheck":
        argv.append("127.0.0.1:1")
    run = subprocess.run(
        argv, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert f"{setting}={missing!r} cannot be read" in lines[0]


def test_server_tls_can_be_built_directly_and_checks_its_files(pki: Pki) -> None:
    tls = ServerTls(str(pki.server.cert_file), str(pki.client.key_file), prefix="SYNC")
    with pytest.raises(ConfigError, match="SYNC_TLS_KEY_FILE"):
        tls.loaded()
