"""GetDiagnostics: the seed's monitoring figures and alerts, over a real queue."""

from __future__ import annotations

from datetime import timedelta

from google.protobuf import duration_pb2

from gmbsync.queue.v1 import queue_service_pb2 as pb
from tests.conftest import WORKER_METADATA
from tests.queue.conftest import queue_settings, start_queue, stop_queue


def seconds(value: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(timedelta(seconds=value))
    return duration


async def diagnostics(running, **fields) -> pb.GetDiagnosticsResponse:
    return await running.stub.GetDiagnostics(
        pb.GetDiagnosticsRequest(**fields), metadata=WORKER_METADATA
    )


async def test_an_empty_queue_has_zero_figures_and_no_alerts(queue):
    report = await diagnostics(queue)
    assert report.stats.total == 0
    assert report.failure_rate_last_hour == 0.0
    assert report.oldest_pending_age.ToTimedelta() == timedelta(0)
    assert list(report.alerts) == []


async def test_figures_follow_the_jobs(queue):
    accounts = [await queue.add_account() for _ in range(6)]
    for account in accounts:
        await queue.enqueue(account, max_attempts=1)
    run = (
        await queue.stub.StartWorkerRun(
            pb.StartWorkerRunRequest(worker_id="w"), metadata=WORKER_METADATA
        )
    ).run
    picked = await queue.pick(max_jobs=4, worker_run_id=run.id)
    queue.advance_clock(timedelta(seconds=30))  # every job takes 30 s
    for job in picked[:3]:
        await queue.complete(job)
    await queue.fail(picked[3], error="google said no")
    queue.advance_clock(timedelta(minutes=5))

    report = await diagnostics(queue)

    assert (report.stats.total, report.stats.pending, report.stats.succeeded) == (6, 2, 3)
    assert report.stats.failed == 1
    assert report.finished_last_hour == 4
    assert report.failure_rate_last_hour == 0.25
    assert report.success_rate_7d == 0.75
    assert timedelta(seconds=29) <= report.avg_duration.ToTimedelta() <= timedelta(seconds=31)
    assert timedelta(seconds=29) <= report.p95_duration.ToTimedelta() <= timedelta(seconds=31)
    assert report.oldest_pending_age.ToTimedelta() >= timedelta(minutes=5)
    assert [j.last_error for j in report.recent_failures] == ["google said no"]
    assert [r.id for r in report.recent_worker_runs] == [run.id]
    # 25% > 20%: the seed's "high failure rate" alert.
    assert [a.name for a in report.alerts] == ["high_failure_rate"]


async def test_alerts_for_stale_jobs_backlog_and_failed_runs(any_db_url, auth_settings):
    running = await start_queue(queue_settings(any_db_url, auth_settings, alert_pending_backlog=2))
    try:
        accounts = [await running.add_account() for _ in range(4)]
        for account in accounts:
            await running.enqueue(account)
        [stuck] = await running.pick(lease_duration=seconds(3600))
        run = (
            await running.stub.StartWorkerRun(
                pb.StartWorkerRunRequest(worker_id="w"), metadata=WORKER_METADATA
            )
        ).run
        await running.stub.FinishWorkerRun(
            pb.FinishWorkerRunRequest(run_id=run.id, status=pb.WORKER_RUN_STATUS_FAILED),
            metadata=WORKER_METADATA,
        )
        running.advance_clock(timedelta(minutes=16))

        report = await diagnostics(running)

        names = {a.name: a for a in report.alerts}
        assert set(names) == {"stale_processing_jobs", "queue_backlog", "failed_worker_runs"}
        assert names["queue_backlog"].value == 3 and names["queue_backlog"].threshold == 2
        assert [j.id for j in report.stale_jobs] == [stuck.id]
    finally:
        await stop_queue(running)
