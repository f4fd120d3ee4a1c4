"""A CA made per test, with a server certificate for 127.0.0.1/localhost and a client one;
QueueService serving TLS and mutual TLS with them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from queue_service.app import QueueApp
from scripts.dev_certs import Authority, Issued
from service_runtime.tls import ClientTls, ServerTls
from tests.queue.conftest import queue_settings


@dataclass(frozen=True)
class Pki:
    ca: Authority
    server: Issued
    client: Issued
    # Another CA, which the servers do not trust, and a client certificate it signed.
    stranger_ca: Authority
    stranger_client: Issued

    def server_tls(self, *, mutual: bool = False, prefix: str = "QUEUE") -> ServerTls:
        client_ca = str(self.ca.cert_file) if mutual else None
        return ServerTls(
            str(self.server.cert_file), str(self.server.key_file), client_ca, prefix=prefix
        ).loaded()

    def client_tls(self, *, certificate: Issued | None = None) -> ClientTls:
        return ClientTls.from_files(
            str(self.ca.cert_file),
            str(certificate.cert_file) if certificate else None,
            str(certificate.key_file) if certificate else None,
        )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = Authority(tmp_path, "test-ca")
    stranger = Authority(tmp_path, "stranger-ca")
    return Pki(
        ca=ca,
        server=ca.server(),
        client=ca.client(),
        stranger_ca=stranger,
        stranger_client=stranger.client(),
    )


async def _serve(pki: Pki, url: str, auth_settings: object, *, mutual: bool) -> QueueApp:
    app = QueueApp(queue_settings(url, auth_settings, tls=pki.server_tls(mutual=mutual)))
    await app.start()
    return app


@pytest.fixture
async def tls_queue(pki: Pki, sqlite_url: str, auth_settings: object) -> AsyncIterator[str]:
    """QueueService serving TLS (no client certificate needed); yields its address."""
    app = await _serve(pki, sqlite_url, auth_settings, mutual=False)
    yield f"127.0.0.1:{app.server.port}"
    await app.stop(grace=0.5)


@pytest.fixture
async def mtls_queue(pki: Pki, sqlite_url: str, auth_settings: object) -> AsyncIterator[str]:
    """QueueService demanding a client certificate signed by the test CA."""
    app = await _serve(pki, sqlite_url, auth_settings, mutual=True)
    yield f"127.0.0.1:{app.server.port}"
    await app.stop(grace=0.5)
