"""Channels to the gmbsync services: keepalive, fast reconnects, tracing, TLS and credentials.

Every client of the project dials through `create_channel`, so they all behave the same when a
server restarts (the channel reconnects by itself within a couple of seconds), keep idle
connections alive through NATs and load balancers, carry W3C trace context on every call, and
speak TLS (presenting a client certificate for mutual TLS) when given a `ClientTls`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from service_runtime.telemetry import tracing_enabled
from service_runtime.tls import ClientTls

# Keepalive: ping every 20 s even when idle, so a dead peer or a silently dropped connection is
# noticed within ~30 s. The servers permit pings down to 10 s (service_runtime/serving.py).
# Reconnect backoff: gRPC's defaults grow to 120 s, far too slow for a worker that should pick
# again within seconds of QueueService coming back; cap it at 2 s.
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    # Retries are the typed clients' job, where idempotency is known; not the channel's.
    ("grpc.enable_retries", 0),
]


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a client sends to be let in: a bearer JWT, or the workers' trigger secret."""

    metadata: tuple[tuple[str, str], ...]

    @classmethod
    def bearer(cls, token: str) -> Credentials:
        """A user's, admin's or service's JWT (`authorization: Bearer <token>`)."""
        return cls((("authorization", f"Bearer {token}"),))

    @classmethod
    def trigger_secret(cls, secret: str) -> Credentials:
        """The workers' shared secret (`x-trigger-secret`), which counts as `service_role`."""
        return cls((("x-trigger-secret", secret),))

    @classmethod
    def none(cls) -> Credentials:
        """No credentials (health checks and reflection only)."""
        return cls(())

    def __repr__(self) -> str:
        # Never show the secret itself, not even in a traceback or a debug log.
        kinds = ", ".join(key for key, _ in self.metadata) or "none"
        return f"Credentials({kinds})"


TraceFilter = Callable[[Any], bool]


def create_channel(
    target: str,
    *,
    tracing: bool | None = None,
    trace_filter: TraceFilter | None = None,
    options: Sequence[tuple[str, Any]] = (),
    tls: ClientTls | None = None,
) -> grpc.aio.Channel:
    """An aio channel to `host:port` with the project's options and interceptors.

    `tracing` None (the default) traces the channel's calls when this process records spans
    (`tracing_enabled()` when the channel is made): with tracing off, OpenTelemetry's client
    interceptor would still run on every call, for spans nobody records.

    `trace_filter` (from opentelemetry.instrumentation.grpc.filters) selects the calls that get
    a client span; the others still carry no span of their own. With `tls` the channel speaks
    TLS (see `ClientTls.from_env` for the settings); without it, plain text.
    """
    if tracing is None:
        tracing = tracing_enabled()
    interceptors = aio_client_interceptors(filter_=trace_filter) if tracing else None
    merged = dict(CHANNEL_OPTIONS)
    if tls is not None:
        merged.update(dict(tls.channel_options()))
    merged.update(dict(options))
    if tls is None:
        return grpc.aio.insecure_channel(
            target, options=list(merged.items()), interceptors=interceptors
        )
    return grpc.aio.secure_channel(
        target, tls.channel_credentials(), options=list(merged.items()), interceptors=interceptors
    )
