"""Metrics after a known workload: 4 jobs run by a worker (3 succeed, 1 fails for good on a
revoked grant) and 2 more left pending, read from the services' real metrics endpoints."""

from __future__ import annotations

import dataclasses

from clients.queue import JobStatus
from gmbsync.queue.v1 import queue_service_pb2 as pb
from queue_service.app import QueueApp
from sync_service.app import SyncApp
from tests.e2e.conftest import System
from tests.observability.conftest import scrape, total, value


async def _with_metrics_endpoints(system: System) -> tuple[int, int]:
    """Restarts both services with metrics on a free port each; returns the two ports."""
    await system.queue_app.stop(grace=0.5)
    system.queue_app = QueueApp(
        dataclasses.replace(
            system.queue_app.settings,
            listen_addr=system.queue_addr,
            metrics_addr=("127.0.0.1", 0),
        )
    )
    await system.queue_app.start()
    await system.stop_sync()
    system.sync_settings = dataclasses.replace(system.sync_settings, metrics_addr=("127.0.0.1", 0))
    system.sync_app = SyncApp(system.sync_settings)
    await system.sync_app.start()
    for client in (system.queue, system.user_queue):
        await client.wait_ready(10.0)
    assert system.queue_app.metrics.port and system.sync_app.metrics.port
    return system.queue_app.metrics.port, system.sync_app.metrics.port


async def test_metrics_count_a_known_workload(system: System) -> None:
    queue_port, sync_port = await _with_metrics_endpoints(system)
    accounts = [await system.connect_account(n) for n in range(1, 7)]
    system.emulator.state.revoke_refresh_token("emulator-refresh-token-4")
    before = await scrape(queue_port)

    jobs = [await system.enqueue(account) for account in accounts[:4]]
    worker = system.start_worker()
    for job in jobs[:3]:
        await system.wait_for_status(job.id, JobStatus.Value("JOB_STATUS_SUCCEEDED"))
    await system.wait_for_status(jobs[3].id, JobStatus.Value("JOB_STATUS_FAILED"))
    await system.stop_workers()
    assert worker.stopping
    # Left pending: one at the default priority, one high.
    await system.enqueue(accounts[4])
    await system.enqueue(accounts[5], priority=10)
    await system.queue_app.gauges.refresh()

    after = await scrape(queue_port)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("gmbsync_queue_jobs_enqueued_total", source="rpc") == 6
    assert delta("gmbsync_queue_jobs_enqueued_total", source="scheduler") == 0
    assert delta("gmbsync_queue_jobs_picked_total") == 4
    assert delta("gmbsync_queue_jobs_succeeded_total") == 3
    assert delta("gmbsync_queue_jobs_failed_total") == 1
    assert delta("gmbsync_queue_jobs_retried_total") == 0
    assert delta("gmbsync_queue_enqueue_to_start_seconds_count") == 4
    assert delta("gmbsync_worker_jobs_total", outcome="succeeded") == 3
    assert delta("gmbsync_worker_jobs_total", outcome="failed") == 1
    assert delta("gmbsync_worker_job_duration_seconds_count", outcome="succeeded") == 3
    enqueued_ok = {"grpc_service": "gmbsync.queue.v1.QueueService", "grpc_method": "EnqueueSync"}
    assert delta("grpc_server_handled_total", **enqueued_ok, grpc_code="OK") == 6
    assert delta("grpc_server_handling_seconds_count", **enqueued_ok) == 6

    # The queue's state, as the leader read it after the workload.
    assert value(after, "gmbsync_queue_jobs", status="pending", band="default") == 1
    assert value(after, "gmbsync_queue_jobs", status="pending", band="high") == 1
    assert value(after, "gmbsync_queue_jobs", status="pending", band="low") == 0
    assert total(after, "gmbsync_queue_jobs", status="processing") == 0
    assert value(after, "gmbsync_queue_oldest_pending_age_seconds") >= 0
    assert value(after, "gmbsync_queue_longest_processing_seconds") == 0
    assert value(after, "gmbsync_worker_runs_24h", status="completed") == 1
    assert value(after, "gmbsync_worker_run_avg_jobs_processed_24h", status="completed") == 4
    assert value(after, "gmbsync_worker_run_avg_jobs_succeeded_24h", status="completed") == 3
    assert value(after, "gmbsync_worker_run_avg_duration_seconds_24h", status="completed") > 0

    # SyncService's endpoint: Google calls by API and answer (the same process's registry, so
    # only lower bounds: other tests of this session called the emulator too).
    google = await scrape(sync_port)
    assert value(google, "gmbsync_google_requests_total", api="oauth", status="200") >= 3
    assert value(google, "gmbsync_google_requests_total", api="oauth", status="400") >= 1
    assert value(google, "gmbsync_google_requests_total", api="reviews", status="200") >= 3
    assert total(google, "gmbsync_quota_wait_seconds_count") >= 3

    # GetDiagnostics gives the same worker-run figures.
    diagnostics = await system.queue.get_diagnostics()
    [figures] = diagnostics.worker_run_figures_24h
    assert figures.status == pb.WORKER_RUN_STATUS_COMPLETED
    assert (figures.runs, figures.avg_jobs_processed, figures.avg_jobs_succeeded) == (1, 4.0, 3.0)
    assert figures.avg_duration.ToTimedelta().total_seconds() > 0
