"""Serving a gRPC service: health, reflection, interceptors, background tasks, graceful stop.

Both services start the same way: `GrpcServer(...).start()` in tests (port 0), and
`run_until_signal()` in `python -m ...`, where SIGTERM or SIGINT drains in-flight RPCs for a
grace period, stops background tasks and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

from service_runtime.collector import collector_mode, settle_collector
from service_runtime.config import ConfigError
from service_runtime.database import database_trouble
from service_runtime.errors import SERVICE_ERROR_DOMAIN, rich_status
from service_runtime.eventloop import loop_factory
from service_runtime.eventloop import run as run_on_loop
from service_runtime.logs import BurstLog, configure_logging
from service_runtime.metrics import RpcMetricsInterceptor
from service_runtime.processes import is_supervised, supervise
from service_runtime.reflection import enable_reflection
from service_runtime.telemetry import configure_tracing, shutdown_tracing, tracing_enabled
from service_runtime.tls import ServerTls

log = logging.getLogger(__name__)

# How long a supervisor waits past the copies' grace period before it kills them.
_SUPERVISOR_KILL_MARGIN = 5.0

SERVER_OPTIONS: list[tuple[str, Any]] = [
    # SO_REUSEPORT: several processes may listen on one address and the kernel spreads new
    # connections over them. gRPC's default on Linux, spelled out because QUEUE_PROCESSES
    # relies on it. (So a second server started on a busy port shares it instead of failing.)
    ("grpc.so_reuseport", 1),
    # Let clients keep idle channels alive with pings every 10 s or more without GOAWAY.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
]


# Which RPCs get a server span: not the health service and not reflection. Both are plumbing
# that probes and grpcurl call all the time, and both are streams (Health.Watch, and the
# bidirectional ServerReflectionInfo), which OpenTelemetry's aio server interceptor does not
# handle: it wraps a stream in an async generator that attaches the trace context, so
# - a stream whose client went away while a response was being written leaves that generator
#   suspended; the garbage collector later closes it from another task, where detaching the
#   context fails and OpenTelemetry logs "Failed to detach context" at ERROR, traceback and all;
# - Health.Watch answers through context.write(), not as a generator, and the wrapper fails
#   it with a TypeError.
# Every RPC of QueueService and SyncService is unary, and traced.
TRACED_RPCS = filters.negate(
    filters.any_of(filters.health_check(), filters.service_prefix("grpc.reflection."))
)


@dataclass(frozen=True)
class ServiceRegistration:
    """One gRPC service to serve: its full name and the generated `add_..._to_server` call."""

    name: str
    add_to_server: Callable[[grpc.aio.Server], None]


class ListenError(OSError):
    """The server's listen address could not be bound."""

    def __init__(self, address: str) -> None:
        super().__init__(
            f"cannot listen on {address}: the port is taken or the address is not one of "
            "this host's"
        )


BackgroundTask = Callable[[], Coroutine[Any, Any, None]]
HealthProbe = Callable[[], Awaitable[bool]]


class ErrorBoundaryInterceptor(grpc.aio.ServerInterceptor):
    """Turns an unexpected exception into INTERNAL, and the database's passing trouble into
    UNAVAILABLE with a RetryInfo delay and an ErrorInfo reason (domain `gmbsync.service.v1`):
    DATABASE_UNAVAILABLE (unreachable, connection lost) or DATABASE_BUSY (no pooled
    connection free in time). Clients retry those after the delay; a worker does not count them
    against the service's health, since the service itself answered.

    For INTERNAL the client gets a short message with an incident id and the traceback goes to
    the log; database trouble is logged once per burst, at WARNING, without a traceback.
    It sits next to the servicer, so each method's guarded handler is built at its first call
    and reused: gRPC finds the same handler object for a method on every call.
    """

    def __init__(self) -> None:
        self._burst = BurstLog(log)
        self._guarded: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or (handler.request_streaming and not handler.response_streaming):
            return handler  # (no client-streaming RPC is served)
        method = handler_call_details.method
        known = self._guarded.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        if handler.unary_unary is not None:
            guarded = self._guard(handler, method)
        elif handler.unary_stream is not None:
            guarded = _guard_stream(handler)
        else:
            guarded = _guard_bidirectional(handler)
        self._guarded[method] = (handler, guarded)
        return guarded

    def _guard(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        # grpc's stubs describe the synchronous server's handlers; under grpc.aio a unary
        # behaviour is a coroutine function of the request and an aio context.
        behavior = cast(
            Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]],
            handler.unary_unary,
        )

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await _refuse_undecodable(request, context)
            try:
                return await behavior(request, context)
            except (grpc.aio.AbortError, asyncio.CancelledError):
                raise
            except Exception as exc:
                trouble = database_trouble(exc)
                if trouble is None:
                    incident = uuid.uuid4().hex[:12]
                    log.exception("%s failed (incident %s)", method, incident)
                    await context.abort(
                        grpc.StatusCode.INTERNAL, f"internal error (incident {incident})"
                    )
                else:
                    self._burst.warning(
                        trouble.reason,
                        "%s: %s, answering UNAVAILABLE with a %.1f s retry delay: %s",
                        method,
                        trouble.reason,
                        trouble.retry_after,
                        trouble.detail,
                    )
                    await context.abort_with_status(
                        rich_status(
                            grpc.StatusCode.UNAVAILABLE,
                            trouble.message,
                            retry_delay_seconds=trouble.retry_after,
                            reason=trouble.reason,
                            domain=SERVICE_ERROR_DOMAIN,
                        )
                    )

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )


def _guard_stream(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A server-streaming handler whose undecodable request is INVALID_ARGUMENT too."""
    behavior = cast(Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any], handler.unary_stream)

    async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await _refuse_undecodable(request, context)
        return request

    return grpc.unary_stream_rpc_method_handler(
        _in_the_shape_of(behavior, checked),
        request_deserializer=_tolerant(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


def _guard_bidirectional(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A bidirectional stream (server reflection, grpcurl's) whose undecodable request, at any
    point of the stream, is INVALID_ARGUMENT rather than UNKNOWN."""
    behavior = cast(Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any], handler.stream_stream)

    async def decoded(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        async for request in requests:
            await _refuse_undecodable(request, context)
            yield request

    async def checked(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        return decoded(requests, context)

    return grpc.stream_stream_rpc_method_handler(
        _in_the_shape_of(behavior, checked),
        request_deserializer=_tolerant(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


async def _refuse_undecodable(request: Any, context: grpc.aio.ServicerContext) -> None:
    if isinstance(request, UndecodableRequest):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)


def _in_the_shape_of(
    behavior: Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any],
    checked: Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]],
) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any]:
    """A streaming `behavior` that is given what `checked` makes of its request (or request
    stream), in the behaviour's own shape.

    Under grpc.aio a streaming behaviour is either an async generator or a coroutine that
    writes with `context.write()` (the health service's Watch); the guard yields what the
    first yields and awaits the second. A generator must stay a generator: OpenTelemetry's
    server interceptor iterates a traced stream with `async for`.
    """

    async def guarded_generator(argument: Any, context: grpc.aio.ServicerContext) -> Any:
        async for response in behavior(await checked(argument, context), context):
            yield response

    async def guarded_writer(argument: Any, context: grpc.aio.ServicerContext) -> None:
        await behavior(await checked(argument, context), context)

    generator = inspect.isasyncgenfunction(inspect.unwrap(behavior))
    return guarded_generator if generator else guarded_writer


@dataclass(frozen=True)
class UndecodableRequest:
    """Stands in for a request whose bytes are not the message the RPC takes.

    gRPC decodes a request before any handler code runs, and a decoding error there becomes
    UNKNOWN with the Python exception's class in the text. Decoding through `_tolerant` hands
    the handler this instead, and the guarded handler answers INVALID_ARGUMENT.
    """

    message: str


def _tolerant(
    deserializer: Callable[[bytes], Any] | None,
) -> Callable[[bytes], Any] | None:
    """`deserializer`, answering UndecodableRequest instead of raising DecodeError."""
    if deserializer is None:
        return None
    message_type = getattr(deserializer, "__self__", None)
    descriptor = getattr(message_type, "DESCRIPTOR", None)
    name = descriptor.full_name if descriptor is not None else "request"
    refusal = f"the request is not a valid {name} message (its bytes do not decode)"

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except DecodeError:
            return UndecodableRequest(refusal)

    return deserialize


@dataclass
class GrpcServer:
    """A grpc.aio server with health, reflection and the project's interceptors."""

    listen_addr: str
    services: Sequence[ServiceRegistration]
    interceptors: Sequence[grpc.aio.ServerInterceptor] = ()
    health_probe: HealthProbe | None = None
    health_probe_interval: float = 5.0
    background: Sequence[BackgroundTask] = ()
    # Called when shutdown begins, before draining: e.g. release long-polling RPCs at once.
    on_shutdown: Sequence[Callable[[], None]] = ()
    # A server span per call (continuing the caller's trace)? None: when this process records
    # spans at start() (`tracing_enabled()`); off, no tracing code runs per call at all.
    tracing: bool | None = None
    # Count and time every RPC (service_runtime.metrics), and log rejected input.
    rpc_metrics: bool = True
    # TLS (mutual TLS when it has a client CA); None serves plain text.
    tls: ServerTls | None = None
    _server: grpc.aio.Server | None = field(default=None, init=False)
    _health: HealthServicer | None = field(default=None, init=False)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, init=False)
    _error_boundary: ErrorBoundaryInterceptor = field(
        default_factory=ErrorBoundaryInterceptor, init=False
    )
    port: int = field(default=0, init=False)

    async def start(self) -> int:
        """Binds, starts serving and returns the bound port."""
        interceptors = [*self.interceptors, self._error_boundary]
        if self.rpc_metrics:
            interceptors.insert(0, RpcMetricsInterceptor())
        if tracing_enabled() if self.tracing is None else self.tracing:
            interceptors.insert(0, aio_server_interceptor(filter_=TRACED_RPCS))
        server = grpc.aio.server(interceptors=interceptors, options=SERVER_OPTIONS)
        for service in self.services:
            service.add_to_server(server)
        self._health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        enable_reflection([s.name for s in self.services] + ["grpc.health.v1.Health"], server)
        try:
            if self.tls is None:
                self.port = server.add_insecure_port(self.listen_addr)
            else:
                self.port = server.add_secure_port(self.listen_addr, self.tls.server_credentials())
        except RuntimeError as exc:  # grpc's "Failed to bind to address ..."
            raise ListenError(self.listen_addr) from exc
        if self.port == 0:
            raise ListenError(self.listen_addr)
        await server.start()
        self._server = server
        await self._set_health(serving=True)
        if self.health_probe is not None:
            self._tasks.append(asyncio.create_task(self._probe_health(), name="health-probe"))
        for task in self.background:
            self._tasks.append(asyncio.create_task(task(), name=getattr(task, "__name__", "bg")))
        return self.port

    async def _set_health(self, *, serving: bool) -> None:
        assert self._health is not None
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *(s.name for s in self.services)]:
            await self._health.set(name, status)

    async def _probe_health(self) -> None:
        assert self.health_probe is not None
        healthy = True
        while True:
            await asyncio.sleep(self.health_probe_interval)
            try:
                ok = await asyncio.wait_for(self.health_probe(), self.health_probe_interval)
            except Exception as exc:  # a probe that raises means unhealthy, never a dead task
                log.warning("health probe failed: %s", exc)
                ok = False
            if ok != healthy:
                log.warning("health: %s", "SERVING" if ok else "NOT_SERVING")
                healthy = ok
                await self._set_health(serving=ok)

    async def stop(self, grace: float = 10.0) -> None:
        """Reports NOT_SERVING, drains in-flight RPCs for `grace` seconds, stops background work."""
        if self._server is None:
            return
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        for hook in self.on_shutdown:
            hook()
        await self._server.stop(grace)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._server = None

    async def run_until_signal(self, grace: float = 10.0) -> None:
        """Serves until SIGTERM or SIGINT, then stops gracefully."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        log.info("serving %s on port %d", ", ".join(s.name for s in self.services), self.port)
        await stop.wait()
        log.info("shutting down: draining in-flight RPCs for up to %.0f s", grace)
        await self.stop(grace)
        log.info("stopped")


class _Settings(Protocol):
    @property
    def log_level(self) -> str: ...


SettingsT = TypeVar("SettingsT", bound=_Settings)


class _App(Protocol):
    async def run_until_signal(self) -> None: ...


def service_main(
    program: str,
    tracing_name: str,
    load_settings: Callable[[], SettingsT],
    make_app: Callable[[SettingsT], _App],
    *,
    processes: Callable[[SettingsT], int] | None = None,
    grace: Callable[[SettingsT], float] | None = None,
) -> int:
    """The body of `python -m <service>`: settings, logging, tracing, serve, exit code.

    A bad setting ends the process with exit code 2 and one line naming it, before anything
    starts; a listen address that cannot be bound ends it with exit code 1 and one line; a
    served process that was stopped by a signal exits 0. When `processes(settings)`
    is more than 1, this process supervises that many copies of `python -m <program>` on the
    same address instead of serving (service_runtime.processes); `grace(settings)` is how long
    each copy drains after SIGTERM.
    """
    try:
        settings = load_settings()
        copies = processes(settings) if processes is not None and not is_supervised() else 1
        configure_logging(settings.log_level)
        if copies > 1:
            drain = grace(settings) if grace is not None else 10.0
            return supervise(program, copies, kill_after=drain + _SUPERVISOR_KILL_MARGIN)
        configure_tracing(tracing_name)
        event_loop = loop_factory()
        collector = collector_mode()
    except ConfigError as exc:
        print(f"{program}: configuration error: {exc}", file=sys.stderr)
        return 2
    settle_collector(collector)
    try:
        run_on_loop(make_app(settings).run_until_signal(), event_loop)
    except ListenError as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        return 1
    finally:
        shutdown_tracing()
    return 0
