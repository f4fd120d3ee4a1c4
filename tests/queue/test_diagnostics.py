"""GetDiagnostics: the seed's monitoring figures and alerts, over a real queue."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from google.protobuf import duration_pb2

from gmbsync.queue.v1 import queue_service_pb2 as pb
from queue_service.settings import QueueSettings
from service_runtime.config import ConfigError, Env
from sync_service.tables import error_logs
from tests.conftest import WORKER_METADATA
from tests.queue.conftest import queue_settings, start_queue, stop_queue

SERVICE = "mybusinessbusinessinformation.googleapis.com"
ACTIVATION_URL = f"https://console.developers.google.com/apis/api/{SERVICE}/overview?project=42"


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
        assert {a.severity for a in report.alerts} == {pb.ALERT_SEVERITY_WARNING}
        assert names["queue_backlog"].value == 3 and names["queue_backlog"].threshold == 2
        assert [j.id for j in report.stale_jobs] == [stuck.id]
    finally:
        await stop_queue(running)


async def log_error(
    running,
    account_id: uuid.UUID | None,
    *,
    error_type: str = "api_disabled",
    ago: timedelta = timedelta(0),
    **details: str,
) -> None:
    """An error_logs row as SyncService writes it (tests seed SyncService's table directly)."""
    async with running.app.engine.begin() as conn:
        await conn.execute(
            sa.insert(error_logs).values(
                id=uuid.uuid4(),
                account_id=account_id,
                source="sync_service",
                error_type=error_type,
                message="Google: SERVICE_DISABLED",
                details=details,
                created_at=datetime.now(UTC) - ago,
            )
        )


async def test_a_disabled_google_api_is_a_critical_alert_naming_the_service(queue):
    a, b, c = [await queue.add_account() for _ in range(3)]
    for account, minutes in ((a, 1), (a, 2), (b, 14)):
        await log_error(
            queue,
            account,
            ago=timedelta(minutes=minutes),
            service=SERVICE,
            activation_url=ACTIVATION_URL,
        )
    # Not counted: too old, or another kind of error.
    await log_error(queue, c, ago=timedelta(minutes=16), service="old.googleapis.com")
    await log_error(queue, c, error_type="rate_limited", service="other.googleapis.com")

    report = await diagnostics(queue)

    [alert] = report.alerts
    assert alert.name == "google_api_disabled"
    assert alert.severity == pb.ALERT_SEVERITY_CRITICAL
    assert alert.value == 2  # accounts, not rows
    assert SERVICE in alert.message and "2 accounts" in alert.message
    assert ACTIVATION_URL in alert.message
    assert "old.googleapis.com" not in alert.message
    assert "other.googleapis.com" not in alert.message


async def test_each_disabled_service_is_named_even_without_details(queue):
    a, b = [await queue.add_account() for _ in range(2)]
    await log_error(queue, a, service=SERVICE)
    await log_error(queue, b)  # no service recorded

    [alert] = (await diagnostics(queue)).alerts

    assert f"{SERVICE} (1 account hit it)" in alert.message
    assert "a Google API (1 account hit it)" in alert.message
    assert alert.value == 2


async def test_the_api_disabled_alert_ends_with_its_window(any_db_url, auth_settings):
    running = await start_queue(
        queue_settings(any_db_url, auth_settings, alert_api_disabled_window=timedelta(hours=1))
    )
    try:
        await log_error(running, await running.add_account(), service=SERVICE)
        running.advance_clock(timedelta(minutes=59))
        assert [a.name for a in (await diagnostics(running)).alerts] == ["google_api_disabled"]
        running.advance_clock(timedelta(minutes=2))
        assert list((await diagnostics(running)).alerts) == []
    finally:
        await stop_queue(running)


def test_the_api_disabled_window_is_read_from_the_environment():
    assert QueueSettings.from_env(Env({})).alert_api_disabled_window == timedelta(minutes=15)
    settings = QueueSettings.from_env(Env({"ALERT_API_DISABLED_WINDOW": "1h"}))
    assert settings.alert_api_disabled_window == timedelta(hours=1)
    with pytest.raises(ConfigError, match="ALERT_API_DISABLED_WINDOW"):
        QueueSettings.from_env(Env({"ALERT_API_DISABLED_WINDOW": "10s"}))
