"""The worker's span for one job: a messaging `process` span linked to the enqueue request.

The job stores the W3C context of the request that enqueued it. The worker's span *links* to
that context rather than continuing its trace, as OpenTelemetry's messaging conventions advise
for work that may run minutes or hours after it was produced; the SyncAccount call made inside
the span carries the worker's own trace on to SyncService and from there to Google.

The results of many jobs go to QueueService in one ReportResults call, which belongs to no single
job's trace: it runs in a `settle sync_queue` span of its own that links to the span of every
job whose result it carries (the conventions' way to trace a batch).

A worker that records no spans (tracing off, the default; decided once when the worker is
made) passes `recording=False`: both then give the invalid span at once, since building a span's
attributes and links for a no-op tracer costs a busy worker more than anything else per job.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.util.types import AttributeValue

from clients.queue import Job

TRACER_NAME = "gmbsync.worker"
QUEUE_NAME = "sync_queue"
SPAN_NAME = f"process {QUEUE_NAME}"

_tracer = trace.get_tracer(TRACER_NAME)


def producer_link(trace_context: Mapping[str, str]) -> trace.Link | None:
    """A link to the span whose context was stored with the job, if a valid one was stored."""
    if not trace_context:
        return None
    extracted = propagate.extract(dict(trace_context))
    span_context = trace.get_current_span(extracted).get_span_context()
    if not span_context.is_valid:
        return None
    return trace.Link(span_context, attributes={"messaging.operation.type": "publish"})


@contextmanager
def job_span(job: Job, worker_id: str, *, recording: bool = True) -> Iterator[trace.Span]:
    """A CONSUMER span for running `job`, the root of a trace of its own, linked to its producer."""
    if not recording:
        yield trace.INVALID_SPAN
        return
    link = producer_link(job.trace_context)
    attributes: dict[str, AttributeValue] = {
        "messaging.system": "gmbsync",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.operation": "process",  # the older semconv name, still read by many backends
        "messaging.destination.name": QUEUE_NAME,
        "messaging.message.id": job.id,
        "messaging.consumer.group.name": "gmbsync-workers",
        "gmbsync.job.attempt": job.attempts,
        "gmbsync.job.max_attempts": job.max_attempts,
        "gmbsync.account.id": job.account_id,
        "gmbsync.worker.id": worker_id,
    }
    # An empty parent context: the span starts a new trace even if the caller had a span open.
    with _tracer.start_as_current_span(
        SPAN_NAME,
        context=otel_context.Context(),
        kind=trace.SpanKind.CONSUMER,
        links=[link] if link is not None else [],
        attributes=attributes,
    ) as span:
        yield span


@contextmanager
def settle_span(
    jobs: Iterable[trace.SpanContext], *, recording: bool = True
) -> Iterator[trace.Span]:
    """A CLIENT span for one ReportResults call, linked to the spans of the jobs it reports."""
    if not recording:
        yield trace.INVALID_SPAN
        return
    links = [trace.Link(context) for context in jobs if context.is_valid]
    with _tracer.start_as_current_span(
        f"settle {QUEUE_NAME}",
        context=otel_context.Context(),
        kind=trace.SpanKind.CLIENT,
        links=links,
        attributes={
            "messaging.system": "gmbsync",
            "messaging.operation.type": "settle",
            "messaging.operation.name": "report",
            "messaging.destination.name": QUEUE_NAME,
            "messaging.batch.message_count": len(links),
        },
    ) as span:
        yield span
