"""GetDiagnostics' worker-run figures: per run status over the last 24 hours, the average jobs
processed and succeeded and the average run duration (PostgreSQL and SQLite)."""

from __future__ import annotations

from datetime import timedelta

from gmbsync.queue.v1 import queue_service_pb2 as pb
from tests.conftest import WORKER_METADATA
from tests.queue.conftest import RunningQueue, queue_settings, start_queue, stop_queue


async def start_run(queue: RunningQueue) -> pb.WorkerRun:
    response = await queue.stub.StartWorkerRun(
        pb.StartWorkerRunRequest(worker_id="w"), metadata=WORKER_METADATA
    )
    return response.run


async def finish_run(queue: RunningQueue, run: pb.WorkerRun, status: int) -> None:
    await queue.stub.FinishWorkerRun(
        pb.FinishWorkerRunRequest(run_id=run.id, status=status), metadata=WORKER_METADATA
    )


async def test_worker_run_figures_by_status_over_the_last_day(any_db_url, auth_settings) -> None:  # type: ignore[no-untyped-def]
    queue = await start_queue(queue_settings(any_db_url, auth_settings))
    try:
        # A run of yesterday: outside the last 24 hours.
        old = await start_run(queue)
        await finish_run(queue, old, pb.WORKER_RUN_STATUS_FAILED)
        queue.advance_clock(timedelta(hours=25))

        accounts = [await queue.add_account() for _ in range(3)]
        for account in accounts:
            await queue.enqueue(account, max_attempts=1)
        first, second = await start_run(queue), await start_run(queue)
        crashed, running = await start_run(queue), await start_run(queue)
        two = await queue.pick(max_jobs=2, worker_run_id=first.id)
        one = await queue.pick(max_jobs=1, worker_run_id=second.id)
        for job in two:
            await queue.complete(job)
        await queue.fail(one[0], error="no")
        queue.advance_clock(timedelta(seconds=60))
        await finish_run(queue, first, pb.WORKER_RUN_STATUS_COMPLETED)
        await finish_run(queue, crashed, pb.WORKER_RUN_STATUS_FAILED)
        queue.advance_clock(timedelta(seconds=60))
        await finish_run(queue, second, pb.WORKER_RUN_STATUS_COMPLETED)

        report = await queue.stub.GetDiagnostics(
            pb.GetDiagnosticsRequest(), metadata=WORKER_METADATA
        )
    finally:
        await stop_queue(queue)

    figures = {f.status: f for f in report.worker_run_figures_24h}
    assert set(figures) == {
        pb.WORKER_RUN_STATUS_RUNNING,
        pb.WORKER_RUN_STATUS_COMPLETED,
        pb.WORKER_RUN_STATUS_FAILED,
    }
    completed = figures[pb.WORKER_RUN_STATUS_COMPLETED]
    assert (completed.runs, completed.avg_jobs_processed, completed.avg_jobs_succeeded) == (
        2,
        1.5,
        1.0,
    )
    # 60 s and 120 s (the clock moved; the calls themselves add a little).
    assert 90 <= completed.avg_duration.ToTimedelta().total_seconds() < 95
    failed = figures[pb.WORKER_RUN_STATUS_FAILED]
    assert (failed.runs, failed.avg_jobs_processed, failed.avg_jobs_succeeded) == (1, 0.0, 0.0)
    assert 60 <= failed.avg_duration.ToTimedelta().total_seconds() < 65
    still = figures[pb.WORKER_RUN_STATUS_RUNNING]
    assert (still.runs, still.avg_duration.ToTimedelta()) == (1, timedelta(0))
    assert running.id  # started, never finished: counted as running


async def test_no_runs_no_figures(any_db_url, auth_settings) -> None:  # type: ignore[no-untyped-def]
    queue = await start_queue(queue_settings(any_db_url, auth_settings))
    try:
        report = await queue.stub.GetDiagnostics(
            pb.GetDiagnosticsRequest(), metadata=WORKER_METADATA
        )
    finally:
        await stop_queue(queue)
    assert list(report.worker_run_figures_24h) == []
