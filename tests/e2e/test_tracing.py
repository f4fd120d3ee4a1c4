"""One job's traces: enqueue span -> linked worker span -> SyncService server span -> Google."""

from __future__ import annotations

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from clients.queue import JobStatus
from tests.e2e.conftest import System

SUCCEEDED = JobStatus.Value("JOB_STATUS_SUCCEEDED")


def _descends_from(
    span: ReadableSpan, ancestor: ReadableSpan, by_id: dict[int, ReadableSpan]
) -> bool:
    current: ReadableSpan | None = span
    while current is not None and current.parent is not None:
        if current.parent.span_id == ancestor.context.span_id:
            return True
        current = by_id.get(current.parent.span_id)
    return False


async def test_the_worker_span_links_to_the_enqueue_and_parents_the_sync_and_google_calls(
    system: System, spans: InMemorySpanExporter
) -> None:
    account_id = await system.connect_account(1)
    spans.clear()
    job = await system.enqueue(account_id)
    system.start_worker()
    await system.wait_for_status(job.id, SUCCEEDED)
    await system.stop_workers()
    finished = spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished}

    (enqueue,) = [
        s
        for s in finished
        if s.name == "/gmbsync.queue.v1.QueueService/EnqueueSync" and s.kind is SpanKind.SERVER
    ]
    (worker,) = [
        s
        for s in finished
        if s.name == "process sync_queue" and s.attributes["messaging.message.id"] == job.id
    ]
    # A consumer span with the messaging conventions, in a trace of its own...
    assert worker.kind is SpanKind.CONSUMER
    assert worker.attributes["messaging.operation.type"] == "process"
    assert worker.attributes["messaging.destination.name"] == "sync_queue"
    assert worker.attributes["gmbsync.job.attempt"] == 1
    assert worker.attributes["gmbsync.job.outcome"] == "succeeded"
    assert worker.parent is None
    assert worker.context.trace_id != enqueue.context.trace_id
    # ...linked to the request that enqueued the job.
    (link,) = worker.links
    assert link.context.trace_id == enqueue.context.trace_id
    assert link.context.span_id == enqueue.context.span_id

    (sync_server,) = [
        s
        for s in finished
        if s.name == "/gmbsync.sync.v1.SyncService/SyncAccount" and s.kind is SpanKind.SERVER
    ]
    assert sync_server.context.trace_id == worker.context.trace_id
    assert _descends_from(sync_server, worker, by_id)

    google_calls = [
        s
        for s in finished
        if s.kind is SpanKind.CLIENT
        and s.context.trace_id == worker.context.trace_id
        and ("http.request.method" in s.attributes or "http.method" in s.attributes)
    ]
    assert len(google_calls) >= 3  # token, locations, reviews
    assert all(_descends_from(call, sync_server, by_id) for call in google_calls)

    # The result went out in a ReportResults call shared with other jobs: its span is the child
    # of a settle span that links to this job's span.
    (settle,) = [
        s
        for s in finished
        if s.name == "settle sync_queue"
        and any(link.context.span_id == worker.context.span_id for link in s.links)
    ]
    assert settle.kind is SpanKind.CLIENT
    assert settle.attributes["messaging.operation.type"] == "settle"
    reports = [
        s
        for s in finished
        if s.name == "/gmbsync.queue.v1.QueueService/ReportResults" and s.kind is SpanKind.CLIENT
    ]
    assert [r.parent.span_id for r in reports if r.parent] == [settle.context.span_id]
    assert not [s for s in finished if s.name.endswith("/CompleteJob")]
