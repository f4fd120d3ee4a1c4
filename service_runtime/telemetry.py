"""OpenTelemetry set-up from the standard `OTEL_*` variables, once per process.

`OTEL_TRACES_EXPORTER` picks exporters (`otlp`, `console`, `none`, or a comma list). Unlike the
SDK's own default (`otlp`), nothing is exported unless an exporter or an OTLP endpoint is
configured, so a laptop without a collector does not log export errors every few seconds.
`OTEL_SERVICE_NAME` names the service; the OTLP exporter reads `OTEL_EXPORTER_OTLP_*` itself.

Tracing off (no exporter) costs nothing: no SDK tracer provider is installed, so every tracer
is OpenTelemetry's no-op one, and servers leave out the tracing interceptor altogether
(`tracing_enabled()`). Tracing on samples with `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`,
the standard names and values; unset, `parentbased_traceidratio` at 0.1: a tenth of the traces
that start here are recorded, and a call that arrives with a trace context follows the caller's
decision, so a sampled trace stays whole across services.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

from service_runtime.config import ConfigError
from service_runtime.log_throttle import throttle_exporter_logs

log = logging.getLogger(__name__)

DEFAULT_SAMPLER = "parentbased_traceidratio"
DEFAULT_SAMPLER_RATIO = 0.1
# The specification's ratio for a ratio sampler named without OTEL_TRACES_SAMPLER_ARG.
_SPEC_RATIO = 1.0


_EXPORTER_NAMES = ("otlp", "console", "none")
# The W3C trace context headers a call may carry.
_TRACE_HEADERS = frozenset({"traceparent", "tracestate"})


def check_tracing_settings(environ: Mapping[str, str] | None = None) -> None:
    """Raises ConfigError for a bad OTEL_* variable, whether or not tracing ends up on: a typo
    must stop the process at start, not wait for the day an exporter is configured."""
    environ = os.environ if environ is None else environ
    for name in environ.get("OTEL_TRACES_EXPORTER", "").lower().split(","):
        if name.strip() and name.strip() not in _EXPORTER_NAMES:
            raise ConfigError(f"OTEL_TRACES_EXPORTER={name.strip()!r}: use otlp, console or none")
    sampler_from_env(environ)
    _ratio(environ, DEFAULT_SAMPLER_RATIO)  # checked even for a sampler that takes no ratio


def _exporters(environ: Mapping[str, str]) -> list[SpanExporter]:
    names = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not names:
        names = "otlp" if environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() else "none"
    exporters: list[SpanExporter] = []
    for name in (n.strip() for n in names.split(",")):
        if name in ("", "none"):
            continue
        if name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
        else:
            raise ConfigError(f"OTEL_TRACES_EXPORTER={name!r}: use otlp, console or none")
    return exporters


def _ratio(environ: Mapping[str, str], default: float) -> float:
    raw = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if not raw:
        return default
    try:
        ratio = float(raw)
    except ValueError:
        raise ConfigError(f"OTEL_TRACES_SAMPLER_ARG={raw!r} is not a number") from None
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"OTEL_TRACES_SAMPLER_ARG={raw} is out of range (0..1)")
    return ratio


def sampler_from_env(environ: Mapping[str, str] | None = None) -> Sampler:
    """The sampler OTEL_TRACES_SAMPLER (and its ARG) name; unset: parentbased_traceidratio 0.1."""
    environ = os.environ if environ is None else environ
    name = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    fixed = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
    }
    if name in fixed:
        return fixed[name]
    if not name:
        return ParentBased(TraceIdRatioBased(_ratio(environ, DEFAULT_SAMPLER_RATIO)))
    if name == "traceidratio":
        return TraceIdRatioBased(_ratio(environ, _SPEC_RATIO))
    if name == "parentbased_traceidratio":
        return ParentBased(TraceIdRatioBased(_ratio(environ, _SPEC_RATIO)))
    known = ", ".join([*fixed, "traceidratio", "parentbased_traceidratio"])
    raise ConfigError(f"OTEL_TRACES_SAMPLER={name!r}: use one of {known}")


def tracer_provider_from_env(
    default_service_name: str, environ: Mapping[str, str] | None = None
) -> TracerProvider | None:
    """The SDK tracer provider the variables ask for, or None when nothing would be exported."""
    environ = os.environ if environ is None else environ
    exporters = _exporters(environ)
    if not exporters:
        return None
    service_name = environ.get("OTEL_SERVICE_NAME", "").strip() or default_service_name
    provider = TracerProvider(
        sampler=sampler_from_env(environ),
        resource=Resource.create({SERVICE_NAME: service_name}),
    )
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def configure_tracing(default_service_name: str) -> TracerProvider | None:
    """Installs the global tracer provider unless one is installed (tests install their own).

    With no exporter configured nothing is installed: tracing stays off. A bad variable raises
    ConfigError.
    """
    check_tracing_settings()
    if tracing_enabled():
        return None
    provider = tracer_provider_from_env(default_service_name)
    if provider is None:
        log.info("tracing off: no OTEL_TRACES_EXPORTER or OTEL_EXPORTER_OTLP_ENDPOINT")
        return None
    trace.set_tracer_provider(provider)
    throttle_exporter_logs()  # a collector that is down: one line now and then, not a flood
    log.info(
        "tracing on for %s, sampled by %s",
        provider.resource.attributes.get(SERVICE_NAME),
        provider.sampler.get_description(),
    )
    return provider


def tracing_enabled() -> bool:
    """Whether spans are recorded in this process: an SDK tracer provider is installed."""
    return isinstance(trace.get_tracer_provider(), TracerProvider)


def shutdown_tracing() -> None:
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()


def current_trace_context(
    incoming: Iterable[tuple[str, str | bytes]] | None = None,
) -> dict[str, str]:
    """The W3C trace context of the current span, as headers (`traceparent`, `tracestate`).

    With tracing off no server span exists, but a caller's trace must still reach the job:
    a worker or SyncService that records spans continues it. So, when there is no current
    span, the context comes from the call's `incoming` metadata (propagated, not recorded).
    """
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if carrier or not incoming:
        return carrier
    headers = {k: v for k, v in incoming if k in _TRACE_HEADERS and isinstance(v, str)}
    if headers:
        propagate.inject(carrier, context=propagate.extract(headers))
    return carrier
