"""A CA made per test, with a server certificate for 127.0.0.1/localhost and a client one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from scripts.dev_certs import Authority, Issued
from service_runtime.tls import ClientTls, ServerTls


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
