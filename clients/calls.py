"""How one RPC is made by the typed clients: credentials, a deadline, retries, error translation.

Only calls that are safe to repeat are retried (reads, and writes whose repetition has the same
effect); each client method says which. Retries back off exponentially with full jitter, and
wait at least as long as a server's `google.rpc.RetryInfo` asks.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

import grpc
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from clients.channel import Credentials, create_channel
from clients.errors import ClientError, Unavailable, translate
from service_runtime.tls import ClientTls

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

Response = TypeVar("Response")
# The number type of one protobuf enum (mypy-protobuf's `Enum.ValueType`; an int at run time).
EnumValue = TypeVar("EnumValue", bound=int)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries of idempotent calls: `attempts` tries in all, exponential backoff with jitter."""

    attempts: int = 4
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0

    def backoff(self, retry: int, error: ClientError) -> float:
        """Seconds to wait before retry number `retry` (1-based)."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        delay = random.uniform(0, ceiling)  # full jitter: retrying clients do not stampede
        if error.retry_delay is not None:
            delay = max(delay, error.retry_delay)
        return delay


NO_RETRY = RetryPolicy(attempts=1)


class ServiceClient:
    """Shared plumbing of QueueClient and SyncClient: one channel, credentials, call helper."""

    service_name = ""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        credentials: Credentials,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy = RetryPolicy(),
        owns_channel: bool = False,
    ) -> None:
        self._channel = channel
        self._credentials = credentials
        self._timeout = timeout
        self._retry = retry
        self._owns_channel = owns_channel

    @classmethod
    def connect(
        cls,
        target: str,
        credentials: Credentials,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy = RetryPolicy(),
        tracing: bool | None = None,
        trace_filter: Callable[[Any], bool] | None = None,
        tls: ClientTls | None = None,
    ) -> Self:
        """A client on a channel of its own to `host:port` (TLS with `tls`), closed by
        `close()`; its calls are traced when this process records spans, unless `tracing` says
        otherwise."""
        channel = create_channel(target, tracing=tracing, trace_filter=trace_filter, tls=tls)
        return cls(channel, credentials, timeout=timeout, retry=retry, owns_channel=True)

    @property
    def channel(self) -> grpc.aio.Channel:
        return self._channel

    async def close(self) -> None:
        """Closes the channel if this client opened it."""
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def wait_ready(self, timeout: float) -> None:
        """Waits until the channel is connected; Unavailable if it is not within `timeout` s."""
        # Connected already (the usual case on a busy worker): no task and timer for nothing.
        if self._channel.get_state(try_to_connect=False) is grpc.ChannelConnectivity.READY:
            return
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except TimeoutError:
            raise Unavailable(
                f"could not connect within {timeout:g} s",
                code=grpc.StatusCode.UNAVAILABLE,
                method=self.service_name,
            ) from None

    async def _unary(
        self,
        method: str,
        rpc: Callable[..., Awaitable[Response]],
        request: Any,
        *,
        timeout: float | None = None,
        idempotent: bool = False,
        lease: bool = False,
    ) -> Response:
        """Calls `rpc` with credentials and a deadline, retrying retryable errors if idempotent."""
        policy = self._retry if idempotent else NO_RETRY
        deadline = self._timeout if timeout is None else timeout
        attempt = 0
        while True:
            attempt += 1
            try:
                return await rpc(request, timeout=deadline, metadata=self._credentials.metadata)
            except grpc.aio.AioRpcError as exc:
                error = translate(exc, method=f"{self.service_name}.{method}", lease=lease)
            if not error.retryable or attempt >= policy.attempts:
                raise error
            delay = policy.backoff(attempt, error)
            log.debug("%s failed (%s); retry %d in %.2f s", method, error.code.name, attempt, delay)
            await asyncio.sleep(delay)

    async def _stream(
        self,
        method: str,
        rpc: Callable[..., Any],
        request: Any,
        *,
        timeout: float | None,
    ) -> AsyncIterator[Any]:
        """The messages of a server-streaming `rpc`, with credentials and an optional deadline
        (None: the stream may last as long as the server sends). Never retried here: what a
        repeat should resume from is the caller's to say."""
        call = rpc(request, timeout=timeout, metadata=self._credentials.metadata)
        try:
            async for message in call:
                yield message
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, method=f"{self.service_name}.{method}") from None
        finally:
            call.cancel()  # the caller stopped reading early: hang up rather than leak it


def to_duration(value: float | timedelta | None) -> duration_pb2.Duration | None:
    """A Duration from seconds or a timedelta; None stays unset."""
    if value is None:
        return None
    duration = duration_pb2.Duration()
    if isinstance(value, timedelta):
        duration.FromTimedelta(value)
    else:
        duration.FromNanoseconds(int(value * 1e9))
    return duration


def to_timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A Timestamp from an aware datetime; None stays unset."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def to_struct(value: Mapping[str, Any] | None) -> struct_pb2.Struct | None:
    """A Struct from a JSON-like mapping; None stays unset."""
    if value is None:
        return None
    struct = struct_pb2.Struct()
    struct.update(dict(value))
    return struct


def sync_type_value(enum: _EnumTypeWrapper[EnumValue], value: int | str) -> EnumValue:
    """The number of a SyncType of `enum`: SYNC_TYPE_FULL, 'full' and 'SYNC_TYPE_FULL' all
    name the same type. Both services declare SyncType alike, each in its own package."""
    if isinstance(value, str):
        name = value.upper()
        return enum.Value(name if name.startswith("SYNC_TYPE_") else f"SYNC_TYPE_{name}")
    # A number goes as it is: the server, not the client, judges an unknown one.
    return cast(EnumValue, value)
