"""Prometheus metrics: the HTTP endpoint each process serves them on, and the RPC interceptor.

Every process (QueueService, SyncService, the worker) keeps its metrics in prometheus-client's
default registry and serves them on `<SERVICE>_METRICS_ADDR` (`host:port`; empty, the default,
serves none). The endpoint runs in prometheus-client's own thread, so a scrape never waits for
the event loop and the event loop never waits for a scrape.

Copies of one service under a supervisor (QUEUE_PROCESSES) cannot share one HTTP port: copy
`i` serves on the configured port plus `i`, so each copy is scraped on its own.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import grpc
from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from service_runtime.logs import BurstLog
from service_runtime.processes import PROCESS_INDEX_VAR

log = logging.getLogger(__name__)

# Latency buckets (seconds) for RPCs: from a fast unary call (well under a millisecond) to a
# long-polling PickJobs (up to 60 s).
RPC_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
)


class LoopCounter(Collector):
    """A counter for the hot path: kept as plain numbers, added to by the event loop's thread
    with no lock, read by the scrape's thread under the GIL.

    prometheus-client's own metrics take a lock per update, several microseconds each on a
    busy machine: a pick of 100 jobs would pay it 100 times. This costs a list addition.
    `labels(...)` returns a child to keep (look it up once, add to it often).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: tuple[str, ...] = (),
        *,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self._children: dict[tuple[str, ...], LoopCounter.Child] = {}
        if not labelnames:  # exported as 0 from the start, so rate() sees the first increment
            self.labels()
        registry.register(self)

    class Child:
        __slots__ = ("value",)

        def __init__(self) -> None:
            self.value = 0.0

        def inc(self, amount: float = 1.0) -> None:
            self.value += amount

    def labels(self, *values: str) -> LoopCounter.Child:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = LoopCounter.Child()
        return child

    def inc(self, amount: float = 1.0) -> None:
        self.labels().inc(amount)

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            self.name.removesuffix("_total"), self.documentation, labels=list(self.labelnames)
        )
        for values, child in list(self._children.items()):
            family.add_metric(list(values), child.value)
        yield family


class LoopHistogram(Collector):
    """A histogram for the hot path, kept like LoopCounter: an observation is a bisection and
    two additions."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: tuple[str, ...] = (),
        *,
        buckets: tuple[float, ...],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self.bounds = tuple(sorted(buckets))
        self._children: dict[tuple[str, ...], LoopHistogram.Child] = {}
        if not labelnames:
            self.labels()
        registry.register(self)

    class Child:
        __slots__ = ("bounds", "counts", "sum")

        def __init__(self, bounds: tuple[float, ...]) -> None:
            self.bounds = bounds
            self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; last: +Inf
            self.sum = 0.0

        def observe(self, amount: float) -> None:
            self.counts[bisect.bisect_left(self.bounds, amount)] += 1
            self.sum += amount

    def labels(self, *values: str) -> LoopHistogram.Child:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = LoopHistogram.Child(self.bounds)
        return child

    def observe(self, amount: float) -> None:
        self.labels().observe(amount)

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=list(self.labelnames))
        upper = [*(floatToGoString(b) for b in self.bounds), "+Inf"]
        for values, child in list(self._children.items()):
            counts, running, cumulative = list(child.counts), 0, []
            for bound, count in zip(upper, counts, strict=True):
                running += count
                cumulative.append((bound, running))
            family.add_metric(list(values), cumulative, child.sum)
        yield family


RPC_HANDLED = LoopCounter(
    "grpc_server_handled_total",
    "RPCs answered by this server, by method and status code.",
    ("grpc_service", "grpc_method", "grpc_code"),
)
RPC_SECONDS = LoopHistogram(
    "grpc_server_handling_seconds",
    "Time from the call's arrival at the interceptors to its answer, by method.",
    ("grpc_service", "grpc_method"),
    buckets=RPC_BUCKETS,
)


class MetricsServer:
    """The metrics endpoint of one process, at `address` (None: none); `start()` binds it
    (a supervised copy adds its process index to a fixed port) and returns the bound port."""

    def __init__(self, address: tuple[str, int] | None) -> None:
        self.address = address
        self.port: int | None = None
        self._server: Any = None

    def start(self) -> int | None:
        if self.address is None or self._server is not None:
            return self.port
        host, port = self.address
        index = os.environ.get(PROCESS_INDEX_VAR)
        if port and index is not None and index.isdigit():
            port += int(index)
        self._server, _thread = start_http_server(port, addr=host)
        self.port = int(self._server.server_port)
        log.info("metrics on http://%s:%d/metrics", host, self.port)
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def start_metrics_server(address: tuple[str, int] | None) -> MetricsServer:
    """Starts serving metrics at `address` (nothing for None) until the process ends."""
    server = MetricsServer(address)
    server.start()
    return server


# Looked up once: an enum member's attribute access costs a few hundred nanoseconds.
_clock = time.perf_counter
_OK, _UNKNOWN = grpc.StatusCode.OK, grpc.StatusCode.UNKNOWN
_INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT


def _split_method(method: str) -> tuple[str, str]:
    """`/pkg.Service/Method` -> (`pkg.Service`, `Method`)."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every unary RPC by status code and times it, and logs rejected input.

    It sits outermost (after tracing), so it sees what the caller sees, refusals by the auth
    interceptor included. Per call it costs two clock reads and a few additions to numbers
    looked up once per method and code (LoopCounter, LoopHistogram); the wrapped handler is built once per
    method and reused, like ErrorBoundaryInterceptor's. Streams (health watch, reflection)
    pass through untouched.

    INVALID_ARGUMENT answers are logged at INFO with the RPC, the peer and the message (which
    names the field, never a credential), once per burst of the same RPC and message: a client
    sending bad requests is worth seeing in the log, and a client's mistake is not a server
    warning.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        # One line per RPC and message every 10 s at most: a client looping on a bad request
        # shows up, without a line per call.
        self._refusals = BurstLog(log)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(handler, method)
        # Handlers of refused calls are made per call (auth): keep only the servicer's.
        if known is None:
            self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        behavior = handler.unary_unary
        if behavior is None:
            return handler
        service, name = _split_method(method)
        observe = RPC_SECONDS.labels(service, name).observe
        handled: dict[grpc.StatusCode, LoopCounter.Child] = {}

        def record(seconds: float, code: grpc.StatusCode) -> None:
            observe(seconds)
            child = handled.get(code)
            if child is None:
                child = handled[code] = RPC_HANDLED.labels(service, name, code.name)
            child.value += 1

        async def observed(request: Any, context: Any) -> Any:
            started = _clock()
            try:
                response = await behavior(request, context)
            except grpc.aio.AbortError:
                code = context.code() or _UNKNOWN
                record(_clock() - started, code)
                if code is _INVALID_ARGUMENT:
                    details = context.details()
                    self._refusals.log(
                        logging.INFO,
                        f"{name} {details}",
                        "%s from %s refused: INVALID_ARGUMENT: %s",
                        name,
                        context.peer(),
                        details,
                    )
                raise
            except BaseException as exc:
                record(_clock() - started, _code_of(exc))
                raise
            record(_clock() - started, context.code() or _OK)
            return response

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _code_of(exc: BaseException) -> grpc.StatusCode:
    """The code of a call whose handler raised past the error boundary (seldom: cancelled)."""
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return _UNKNOWN
