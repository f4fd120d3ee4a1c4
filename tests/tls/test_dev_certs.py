"""`python -m scripts.dev_certs`: the development PKI that docker-compose.tls.yml mounts."""

from __future__ import annotations

from pathlib import Path

from grpc_health.v1 import health_pb2

from queue_service.app import QueueApp
from scripts.dev_certs import main
from service_runtime.config import Env
from service_runtime.tls import ClientTls, ServerTls
from tests.queue.conftest import queue_settings
from tests.tls.test_handshakes import _health


def test_it_writes_a_ca_and_a_server_and_client_pair_and_keeps_them_on_rerun(
    tmp_path: Path,
) -> None:
    assert main([str(tmp_path / "tls")]) == 0
    names = {p.name for p in (tmp_path / "tls").iterdir()}
    assert names == {"ca.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem"}
    assert (tmp_path / "tls" / "server-key.pem").stat().st_mode & 0o077 == 0
    before = (tmp_path / "tls" / "ca.pem").read_bytes()
    assert main([str(tmp_path / "tls")]) == 0
    assert (tmp_path / "tls" / "ca.pem").read_bytes() == before
    assert main([str(tmp_path / "tls"), "--force"]) == 0
    assert (tmp_path / "tls" / "ca.pem").read_bytes() != before


async def test_its_certificates_serve_mutual_tls_under_a_compose_host_name(
    tmp_path: Path, sqlite_url: str, auth_settings: object
) -> None:
    directory = tmp_path / "tls"
    main([str(directory)])
    server = ServerTls.from_env(
        Env(
            {
                "QUEUE_TLS_CERT_FILE": str(directory / "server.pem"),
                "QUEUE_TLS_KEY_FILE": str(directory / "server-key.pem"),
                "QUEUE_TLS_CLIENT_CA_FILE": str(directory / "ca.pem"),
            }
        ),
        "QUEUE",
    )
    app = QueueApp(queue_settings(sqlite_url, auth_settings, tls=server))
    address = f"127.0.0.1:{await app.start()}"
    client_env = {
        "GRPC_TLS_CA_FILE": str(directory / "ca.pem"),
        "GRPC_TLS_CERT_FILE": str(directory / "client.pem"),
        "GRPC_TLS_KEY_FILE": str(directory / "client-key.pem"),
    }
    try:
        # Dialled by address, checked as `queue`, the name the workers use in compose.
        as_queue = ClientTls.from_env(Env({**client_env, "GRPC_TLS_SERVER_NAME": "queue"}))
        assert await _health(address, as_queue) == health_pb2.HealthCheckResponse.SERVING
        as_other = ClientTls.from_env(Env({**client_env, "GRPC_TLS_SERVER_NAME": "elsewhere"}))
        assert await _health(address, as_other) != health_pb2.HealthCheckResponse.SERVING
    finally:
        await app.stop(grace=0.5)
