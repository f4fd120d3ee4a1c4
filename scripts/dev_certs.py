"""`python -m scripts.dev_certs DIR`: a development PKI for TLS and mutual TLS, as PEM files.

Writes into DIR a CA (`ca.pem`), a server certificate for the given host names and addresses
(`server.pem`, `server-key.pem`; by default localhost, 127.0.0.1, queue and sync, the names of
docker-compose.yml) and a client certificate (`client.pem`, `client-key.pem`), all signed by the
CA and valid for DAYS days. The CA's key is not kept: to issue more, make a new set. A DIR that
already holds `ca.pem` is left as it is (so a restart keeps the certificates clients trust)
unless --force. For development and tests only: production certificates come from your CA.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, written as PEM files."""

    cert_file: Path
    key_file: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class Authority:
    """A certificate authority that issues server and client certificates into `directory`."""

    def __init__(self, directory: Path, name: str, *, days: int = 1) -> None:
        self.directory = directory
        self.name = name
        self.days = days
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=self.days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.cert_file = directory / f"{name}.pem"
        self.cert_file.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        common_name: str,
        *,
        hosts: tuple[str, ...] = (),
        usage: x509.ObjectIdentifier = ExtendedKeyUsageOID.SERVER_AUTH,
        stem: str | None = None,
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=self.days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if hosts:
            names: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.sign(self._key, hashes.SHA256())
        stem = stem or f"{self.name}-{common_name}"
        issued = Issued(self.directory / f"{stem}.pem", self.directory / f"{stem}-key.pem")
        issued.cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        issued.key_file.write_bytes(_key_pem(key))
        issued.key_file.chmod(0o600)
        return issued

    def server(
        self,
        common_name: str = "server",
        hosts: Sequence[str] = ("127.0.0.1", "localhost"),
        *,
        stem: str | None = None,
    ) -> Issued:
        """A server certificate for `hosts` (names or IP addresses)."""
        return self.issue(common_name, hosts=tuple(hosts), stem=stem)

    def client(self, common_name: str = "worker", *, stem: str | None = None) -> Issued:
        """A client certificate, for servers that demand one (mutual TLS)."""
        return self.issue(common_name, usage=ExtendedKeyUsageOID.CLIENT_AUTH, stem=stem)


DEFAULT_HOSTS = ("localhost", "127.0.0.1", "queue", "sync")


def write_dev_pki(
    directory: Path, hosts: Sequence[str] = DEFAULT_HOSTS, *, days: int = 365
) -> list[Path]:
    """ca.pem, server.pem, server-key.pem, client.pem, client-key.pem in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    authority = Authority(directory, "ca", days=days)
    server = authority.server("gmbsync-server", hosts, stem="server")
    client = authority.client("gmbsync-client", stem="client")
    return [authority.cert_file, server.cert_file, server.key_file, client.cert_file,
            client.key_file]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.dev_certs", description=__doc__)
    parser.add_argument("directory", type=Path, help="where to write the PEM files")
    parser.add_argument(
        "--host",
        action="append",
        dest="hosts",
        help=f"a name or address of the servers (repeatable; default {' '.join(DEFAULT_HOSTS)})",
    )
    parser.add_argument("--days", type=int, default=365, help="validity (default 365)")
    parser.add_argument("--force", action="store_true", help="replace an existing set")
    parser.add_argument(
        "--owner", type=int, default=None, help="uid to own the files (when run as root)"
    )
    args = parser.parse_args(argv)
    if (args.directory / "ca.pem").exists() and not args.force:
        print(f"{args.directory}/ca.pem exists: keeping the certificates there")
        return 0
    written = write_dev_pki(args.directory, args.hosts or DEFAULT_HOSTS, days=args.days)
    for path in written:
        if args.owner is not None:
            os.chown(path, args.owner, -1)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
