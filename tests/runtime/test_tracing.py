"""Tracing: off costs no tracing code per call; on, calls are sampled and traces cross services.

OpenTelemetry's global tracer provider can be set once per process: in-process tests share one
SDK provider with an in-memory exporter (as tests/e2e do); what `python -m` does with the
variables is checked on providers built from a given environment, and in a child process.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import SpanKind

from service_runtime.auth import issue_token
from service_runtime.config import ConfigError
from service_runtime.telemetry import sampler_from_env, tracer_provider_from_env
from tests.conftest import TEST_JWT_SECRET
from tests.runtime.echo import WHO_AM_I, call, echo_server

ROOT = Path(__file__).resolve().parents[2]
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: "runtime-tests"}))
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def traced_call_metadata() -> tuple[tuple[str, str], ...]:
    token = issue_token(TEST_JWT_SECRET, user_id=uuid.uuid4(), role="authenticated")
    return (
        ("authorization", f"Bearer {token}"),
        ("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),
    )


def server_spans(spans: InMemorySpanExporter) -> list:
    return [
        s for s in spans.get_finished_spans() if s.name == WHO_AM_I and s.kind is SpanKind.SERVER
    ]


async def test_a_traced_server_continues_the_callers_trace(auth_settings, spans):
    spans.clear()
    async with echo_server(auth_settings, tracing=True) as (_echo, channel, _auth):
        await call(channel, WHO_AM_I, traced_call_metadata())

    (span,) = server_spans(spans)
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == PARENT_ID


async def test_a_server_without_tracing_records_nothing_even_for_a_traced_call(
    auth_settings, spans
):
    spans.clear()
    async with echo_server(auth_settings, tracing=False) as (_echo, channel, _auth):
        await call(channel, WHO_AM_I, traced_call_metadata())

    assert server_spans(spans) == []


def test_with_no_exporter_configured_no_sdk_provider_is_made():
    for environ in ({}, {"OTEL_TRACES_EXPORTER": "none"}, {"OTEL_EXPORTER_OTLP_ENDPOINT": ""}):
        assert tracer_provider_from_env("svc", environ) is None


def test_python_m_with_tracing_off_leaves_every_tracer_a_no_op():
    script = (
        "from opentelemetry import trace\n"
        "from service_runtime.telemetry import configure_tracing, tracing_enabled\n"
        "assert configure_tracing('svc') is None\n"
        "assert not tracing_enabled()\n"
        "span = trace.get_tracer('t').start_span('s')\n"
        "assert span is trace.INVALID_SPAN and not span.is_recording()\n"
        "print('no-op')\n"
    )
    environ = {"PATH": "/usr/bin:/bin", "OTEL_TRACES_EXPORTER": "none"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=environ, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == "no-op"


def test_with_an_exporter_the_provider_samples_parent_based_a_tenth_by_default():
    provider = tracer_provider_from_env(
        "queue-service", {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "q1"}
    )
    assert provider is not None
    try:
        assert provider.resource.attributes[SERVICE_NAME] == "q1"
        assert provider.sampler.get_description().startswith(
            "ParentBased{root:TraceIdRatioBased{0.1},"
        )
    finally:
        provider.shutdown()


@pytest.mark.parametrize(
    ("environ", "description"),
    [
        ({}, "ParentBased{root:TraceIdRatioBased{0.1},"),
        ({"OTEL_TRACES_SAMPLER_ARG": "0.25"}, "ParentBased{root:TraceIdRatioBased{0.25},"),
        ({"OTEL_TRACES_SAMPLER": "always_on"}, "AlwaysOnSampler"),
        ({"OTEL_TRACES_SAMPLER": "always_off"}, "AlwaysOffSampler"),
        ({"OTEL_TRACES_SAMPLER": "parentbased_always_on"}, "ParentBased{root:AlwaysOnSampler,"),
        ({"OTEL_TRACES_SAMPLER": "parentbased_always_off"}, "ParentBased{root:AlwaysOffSampler,"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio"}, "TraceIdRatioBased{1.0}"),
        (
            {"OTEL_TRACES_SAMPLER": "TraceIdRatio", "OTEL_TRACES_SAMPLER_ARG": "0.5"},
            "TraceIdRatioBased{0.5}",
        ),
        (
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"},
            "ParentBased{root:TraceIdRatioBased{0.0},",
        ),
    ],
)
def test_the_sampler_follows_the_standard_variables(environ, description):
    assert sampler_from_env(environ).get_description().startswith(description)


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
        ({"OTEL_TRACES_SAMPLER_ARG": "half"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_TRACES_SAMPLER_ARG": "1.5"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_TRACES_SAMPLER_ARG": "-0.1"}, "OTEL_TRACES_SAMPLER_ARG"),
    ],
)
def test_bad_sampler_settings_are_config_errors_naming_the_variable(environ, named):
    with pytest.raises(ConfigError, match=named):
        sampler_from_env(environ)


def test_a_bad_exporter_name_is_a_config_error():
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER"):
        tracer_provider_from_env("svc", {"OTEL_TRACES_EXPORTER": "zipkin"})


def test_a_sampled_caller_is_followed_even_when_no_root_trace_would_be_sampled():
    sampler = sampler_from_env({"OTEL_TRACES_SAMPLER_ARG": "0"})
    trace_id = int(TRACE_ID, 16)
    sampled = trace.set_span_in_context(
        trace.NonRecordingSpan(
            trace.SpanContext(
                trace_id,
                int(PARENT_ID, 16),
                is_remote=True,
                trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
            )
        ),
        otel_context.Context(),
    )

    assert sampler.should_sample(sampled, trace_id, "call").decision is Decision.RECORD_AND_SAMPLE
    assert sampler.should_sample(None, trace_id, "call").decision is Decision.DROP


def test_python_m_refuses_a_bad_sampler_with_exit_code_2(tmp_path):
    environ = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'q.db'}",
        "QUEUE_LISTEN_ADDR": "127.0.0.1:0",
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_TRACES_SAMPLER": "sometimes",
    }
    done = subprocess.run(
        [sys.executable, "-m", "queue_service"],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "OTEL_TRACES_SAMPLER" in done.stderr.decode()
