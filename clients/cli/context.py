"""Where `gmbsync` connects and as whom: flags first, then the environment, then defaults.

Credentials, first found wins:
1. `--token` or GMBSYNC_TOKEN: a JWT, sent as it is.
2. JWT_SECRET (environment, else `var/dev-secrets.env` of the current directory, as `make run`
   writes it): a five-minute token is minted for `--role` (default admin) and `--user`
   (default the demo user of `make run`).
3. TRIGGER_SECRET: the workers' shared secret (role service_role).
Otherwise calls go without credentials, and the server answers UNAUTHENTICATED.

TLS, as the worker dials: GRPC_TLS, GRPC_TLS_CA_FILE, GRPC_TLS_CERT_FILE, GRPC_TLS_KEY_FILE and
GRPC_TLS_SERVER_NAME (service_runtime.tls.ClientTls); plain text when none is set.
"""

from __future__ import annotations

import argparse
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from clients.blocking import BlockingQueueClient, BlockingSyncClient
from clients.channel import Credentials
from clients.cli.output import Output
from service_runtime.auth import Role
from service_runtime.config import ConfigError, Env
from service_runtime.dev_tokens import DEMO_USER_ID, find_jwt_secret, mint_dev_token
from service_runtime.tls import ClientTls

DEFAULT_QUEUE_ADDR = "127.0.0.1:50051"
DEFAULT_SYNC_ADDR = "127.0.0.1:50052"
DEFAULT_TIMEOUT = 10.0
# A token the CLI mints for itself lives only as long as one command may reasonably take.
SELF_MINTED_TTL_SECONDS = 300


class UsageError(Exception):
    """The command line or a setting is wrong (exit 2)."""


# How a command group adds the connection options to each of its parsers: `add_connection_options`.
AddCommon = Callable[[argparse.ArgumentParser], None]


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """Options every command accepts, before or after its name. Their defaults are applied by
    `Context` (SUPPRESS here), so that a subcommand's copy does not hide the main one's."""
    group = parser.add_argument_group("connection and output")
    suppress = argparse.SUPPRESS
    group.add_argument("--json", action="store_true", default=suppress, help="print JSON")
    group.add_argument(
        "--queue-addr",
        metavar="HOST:PORT",
        default=suppress,
        help=f"QueueService address (env QUEUE_ADDR, default {DEFAULT_QUEUE_ADDR})",
    )
    group.add_argument(
        "--sync-addr",
        metavar="HOST:PORT",
        default=suppress,
        help=f"SyncService address (env SYNC_ADDR, default {DEFAULT_SYNC_ADDR})",
    )
    group.add_argument("--token", default=suppress, help="a JWT to send (env GMBSYNC_TOKEN)")
    group.add_argument(
        "--role",
        choices=[r.value for r in Role],
        default=suppress,
        help="role of the token minted from JWT_SECRET when no token is given (default admin)",
    )
    group.add_argument(
        "--as-user",
        metavar="UUID",
        default=suppress,
        help="user (sub) of the token minted from JWT_SECRET (default the demo user)",
    )
    group.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        default=suppress,
        help=f"deadline of each call (default {DEFAULT_TIMEOUT:g})",
    )


@dataclass
class Context:
    """One command's settings, output and (lazily connected) clients."""

    args: argparse.Namespace
    out: Output
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    _queue: BlockingQueueClient | None = None
    _sync: BlockingSyncClient | None = None

    def option(self, name: str, env: str | None = None, default: object = None) -> object:
        value = getattr(self.args, name, None)
        if value is None and env is not None:
            value = self.environ.get(env, "").strip() or None
        return default if value is None else value

    @property
    def queue_addr(self) -> str:
        return str(self.option("queue_addr", "QUEUE_ADDR", DEFAULT_QUEUE_ADDR))

    @property
    def sync_addr(self) -> str:
        return str(self.option("sync_addr", "SYNC_ADDR", DEFAULT_SYNC_ADDR))

    @property
    def timeout(self) -> float:
        value = float(self.option("timeout", default=DEFAULT_TIMEOUT))  # type: ignore[arg-type]
        if value <= 0:
            raise UsageError(f"--timeout must be positive, got {value:g}")
        return value

    def tls(self) -> ClientTls | None:
        """The GRPC_TLS_* settings, or None for plain text; a bad one is a usage error."""
        try:
            return ClientTls.from_env(Env(self.environ))
        except ConfigError as exc:
            raise UsageError(str(exc)) from None

    def credentials(self) -> Credentials:
        token = self.option("token", "GMBSYNC_TOKEN")
        if token:
            return Credentials.bearer(str(token))
        secret = find_jwt_secret(self.environ)
        if secret:
            role = str(self.option("role", default=Role.ADMIN.value))
            user = str(self.option("as_user", default=DEMO_USER_ID))
            try:
                user_id = uuid.UUID(user)
            except ValueError:
                raise UsageError(f"--as-user: {user!r} is not a UUID") from None
            minted, _ = mint_dev_token(
                secret, user_id=user_id, role=role, ttl_seconds=SELF_MINTED_TTL_SECONDS
            )
            return Credentials.bearer(minted)
        trigger = self.environ.get("TRIGGER_SECRET", "").strip()
        if trigger:
            return Credentials.trigger_secret(trigger)
        return Credentials.none()

    def queue(self) -> BlockingQueueClient:
        if self._queue is None:
            self._queue = BlockingQueueClient.connect(
                self.queue_addr,
                self.credentials(),
                timeout=self.timeout,
                tracing=False,
                tls=self.tls(),
            )
        return self._queue

    def sync(self) -> BlockingSyncClient:
        if self._sync is None:
            self._sync = BlockingSyncClient.connect(
                self.sync_addr,
                self.credentials(),
                timeout=self.timeout,
                tracing=False,
                tls=self.tls(),
            )
        return self._sync

    def close(self) -> None:
        for client in (self._queue, self._sync):
            if client is not None:
                client.close()
        self._queue = self._sync = None
