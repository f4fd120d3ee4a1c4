"""OpenTelemetry set-up from the standard `OTEL_*` variables, once per process.

`OTEL_TRACES_EXPORTER` picks exporters (`otlp`, `console`, `none`, or a comma list). Unlike the
SDK's own default (`otlp`), nothing is exported unless an exporter or an OTLP endpoint is
configured, so a laptop without a collector does not log export errors every few seconds.
`OTEL_SERVICE_NAME` names the service; the OTLP exporter reads `OTEL_EXPORTER_OTLP_*` itself.
"""

from __future__ import annotations

import logging
import os

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

log = logging.getLogger(__name__)


def _exporters() -> list[SpanExporter]:
    names = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not names:
        names = "otlp" if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") else "none"
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
            raise ValueError(f"OTEL_TRACES_EXPORTER={name!r}: use otlp, console or none")
    return exporters


def configure_tracing(default_service_name: str) -> TracerProvider | None:
    """Installs the global tracer provider unless one is installed (tests install their own)."""
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return None
    service_name = os.environ.get("OTEL_SERVICE_NAME", "").strip() or default_service_name
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    for exporter in _exporters():
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    log.info("tracing configured for %s", service_name)
    return provider


def shutdown_tracing() -> None:
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()


def current_trace_context() -> dict[str, str]:
    """The W3C trace context of the current span, as headers (`traceparent`, `tracestate`)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier
