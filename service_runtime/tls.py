"""TLS and mutual TLS for the gRPC servers and their clients, configured by settings.

Plain text stays the default (a laptop, a test, a mesh that terminates TLS in front of the
services). A server serves TLS when its certificate and key are set; it also demands client
certificates signed by a CA when that CA is set (mutual TLS). A client dials with TLS when a CA
bundle is set (or `GRPC_TLS=true`, trusting the system's roots), and presents a certificate of
its own when one is set.

Every file is read and checked when the settings are loaded, so a missing, unreadable or
mismatched file stops the process at start with one line naming the setting (exit 2), not at
the first handshake. A server re-reads its certificate, key and client CA when one of the files
changes on disk (a renewed certificate needs no restart); a changed set that does not load is
logged and the previous one is kept.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from service_runtime.config import ConfigError, Env

log = logging.getLogger(__name__)


def _read(name: str, path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise ConfigError(f"{name}={path!r} cannot be read: {exc.strerror}") from None


def _certificates(name: str, path: str) -> tuple[bytes, list[x509.Certificate]]:
    """The PEM bytes of a certificate file (one or a chain) and the certificates in it."""
    data = _read(name, path)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(f"{name}={path!r} holds no PEM certificate") from None
    return data, certificates


def _private_key(name: str, path: str, certificate: x509.Certificate, cert_name: str) -> bytes:
    """The PEM bytes of an unencrypted private key that belongs to `certificate`."""
    data = _read(name, path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        # The key's content is a secret: never part of the message.
        raise ConfigError(f"{name}={path!r} holds no unencrypted PEM private key") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != certificate.public_key().public_bytes(der, spki):
        raise ConfigError(f"{name}={path!r} is not the key of the certificate in {cert_name}")
    return data


def _path(env: Env, name: str) -> str:
    """A TLS file setting: a path ("" when unset); its content is checked when it is loaded."""
    return env.parsed(name, "", kind="tls_file", parse=lambda raw: raw)


def _pair(env: Env, cert_name: str, key_name: str) -> tuple[str, str] | None:
    """Both paths of a certificate and its key, or None when neither is set."""
    cert, key = _path(env, cert_name), _path(env, key_name)
    if bool(cert) != bool(key):
        given, missing = (cert_name, key_name) if cert else (key_name, cert_name)
        raise ConfigError(f"{given} is set but {missing} is not: both are needed")
    return (cert, key) if cert else None


@dataclass(frozen=True)
class _ServerMaterial:
    """One loaded, checked set of a server's TLS files."""

    chain: bytes
    key: bytes = field(repr=False)
    client_ca: bytes | None

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.key, self.chain)], root_certificates=self.client_ca
        )


@dataclass(frozen=True)
class ServerTls:
    """A server's certificate and key, and the CA its clients' certificates must chain to.

    Settings `<PREFIX>_TLS_CERT_FILE`, `<PREFIX>_TLS_KEY_FILE` and `<PREFIX>_TLS_CLIENT_CA_FILE`
    (PREFIX is QUEUE or SYNC). With a client CA, a client without a certificate signed by it is
    refused during the handshake (mutual TLS).
    """

    cert_file: str
    key_file: str
    client_ca_file: str | None = None
    # The setting names, for error messages when the files are re-read.
    prefix: str = "SERVER"
    _material: _ServerMaterial | None = field(default=None, repr=False, compare=False)

    @property
    def mutual(self) -> bool:
        return self.client_ca_file is not None

    @classmethod
    def from_env(cls, env: Env, prefix: str) -> ServerTls | None:
        """The server's TLS settings, files read and checked; None (plain text) when unset."""
        names = _server_names(prefix)
        pair = _pair(env, names[0], names[1])
        client_ca = _path(env, names[2]) or None
        if pair is None:
            if client_ca:
                raise ConfigError(
                    f"{names[2]} is set but {names[0]} is not: mutual TLS needs the server's "
                    "own certificate and key too"
                )
            return None
        return cls(pair[0], pair[1], client_ca, prefix=prefix).loaded()

    def loaded(self) -> ServerTls:
        """This, with its files read and checked now (ConfigError naming a bad one)."""
        return ServerTls(
            self.cert_file, self.key_file, self.client_ca_file, self.prefix, self._load()
        )

    def _load(self) -> _ServerMaterial:
        cert_name, key_name, ca_name = _server_names(self.prefix)
        chain, certificates = _certificates(cert_name, self.cert_file)
        key = _private_key(key_name, self.key_file, certificates[0], cert_name)
        client_ca = None
        if self.client_ca_file is not None:
            client_ca, _ = _certificates(ca_name, self.client_ca_file)
        return _ServerMaterial(chain, key, client_ca)

    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials that pick up changed files at the next handshake after the change."""
        reloader = _Reloader(self)
        # gRPC documents a fetcher's None as "no change"; its type stubs leave None out.
        fetch = cast(Callable[[], grpc.ServerCertificateConfiguration], reloader.fetch)
        return grpc.dynamic_ssl_server_credentials(
            reloader.initial(),
            fetch,
            require_client_authentication=self.mutual,
        )


def _server_names(prefix: str) -> tuple[str, str, str]:
    return (
        f"{prefix}_TLS_CERT_FILE",
        f"{prefix}_TLS_KEY_FILE",
        f"{prefix}_TLS_CLIENT_CA_FILE",
    )


class _Reloader:
    """gRPC asks it for the server's certificate configuration before each handshake; it
    answers a new one only when a file's modification time or size changed since the last."""

    def __init__(self, tls: ServerTls) -> None:
        self._tls = tls
        self._lock = threading.Lock()  # gRPC may call from its own threads
        self._stamp = self._stat()
        self._material = tls._material or tls._load()

    def _paths(self) -> list[str]:
        paths = [self._tls.cert_file, self._tls.key_file]
        if self._tls.client_ca_file is not None:
            paths.append(self._tls.client_ca_file)
        return paths

    def _stat(self) -> tuple[tuple[int, int], ...] | None:
        try:
            return tuple((info.st_mtime_ns, info.st_size) for info in map(os.stat, self._paths()))
        except OSError:
            return None

    def initial(self) -> grpc.ServerCertificateConfiguration:
        return self._material.configuration()

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            stamp = self._stat()
            if stamp is None or stamp == self._stamp:
                return None
            self._stamp = stamp
            try:
                material = self._tls._load()
            except ConfigError as exc:
                # Half-written files during a renewal, most likely: keep serving the old set.
                log.warning("TLS files changed but do not load, keeping the previous ones: %s", exc)
                return None
            if material == self._material:
                return None
            self._material = material
            log.info("TLS certificate reloaded from %s", self._tls.cert_file)
            return material.configuration()


# The client settings, for help texts: all unset means plain text.
CLIENT_TLS_VARIABLES = (
    "GRPC_TLS",
    "GRPC_TLS_CA_FILE",
    "GRPC_TLS_CERT_FILE",
    "GRPC_TLS_KEY_FILE",
    "GRPC_TLS_SERVER_NAME",
)


@dataclass(frozen=True)
class ClientTls:
    """How a client dials with TLS: the CA bundle it trusts and the certificate it presents.

    Settings `GRPC_TLS` (true/false; on by default when any file below is set),
    `GRPC_TLS_CA_FILE` (trusted roots; unset: the system's), `GRPC_TLS_CERT_FILE` and
    `GRPC_TLS_KEY_FILE` (the client's certificate, for servers that require one), and
    `GRPC_TLS_SERVER_NAME` (the name to expect in the server's certificate when the address
    dialled is not in it).
    """

    ca: bytes | None = None
    cert_chain: bytes | None = None
    key: bytes | None = field(default=None, repr=False)
    server_name: str | None = None

    @classmethod
    def from_files(
        cls,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        *,
        server_name: str | None = None,
    ) -> ClientTls:
        """TLS from file paths (ConfigError naming a bad one, by its setting)."""
        ca = _certificates("GRPC_TLS_CA_FILE", ca_file)[0] if ca_file else None
        chain = key = None
        if bool(cert_file) != bool(key_file):
            raise ConfigError(
                "GRPC_TLS_CERT_FILE and GRPC_TLS_KEY_FILE go together: set both or neither"
            )
        if cert_file and key_file:
            chain, certificates = _certificates("GRPC_TLS_CERT_FILE", cert_file)
            key = _private_key("GRPC_TLS_KEY_FILE", key_file, certificates[0], "GRPC_TLS_CERT_FILE")
        return cls(ca, chain, key, server_name or None)

    @classmethod
    def from_env(cls, env: Env | None = None) -> ClientTls | None:
        """The client's TLS settings, files read and checked; None (plain text) when unset."""
        env = env or Env()
        pair = _pair(env, "GRPC_TLS_CERT_FILE", "GRPC_TLS_KEY_FILE")
        ca_file = _path(env, "GRPC_TLS_CA_FILE") or None
        server_name = env.str("GRPC_TLS_SERVER_NAME", "") or None
        configured = ca_file is not None or pair is not None
        if not env.bool("GRPC_TLS", configured):
            if configured:
                raise ConfigError(
                    "GRPC_TLS=false but GRPC_TLS_CA_FILE or GRPC_TLS_CERT_FILE is set: "
                    "unset them or drop GRPC_TLS"
                )
            return None
        cert_file, key_file = pair if pair is not None else (None, None)
        return cls.from_files(ca_file, cert_file, key_file, server_name=server_name)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert_chain
        )

    def channel_options(self) -> list[tuple[str, str]]:
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]
