"""Enqueue -> worker -> SyncService -> emulator -> succeeded, and what failures do to a job."""

from __future__ import annotations

from clients.queue import JobStatus
from tests.e2e.conftest import System

SUCCEEDED = JobStatus.Value("JOB_STATUS_SUCCEEDED")
FAILED = JobStatus.Value("JOB_STATUS_FAILED")
PENDING = JobStatus.Value("JOB_STATUS_PENDING")


async def test_an_enqueued_sync_runs_to_success_with_data_in_the_tables(system: System) -> None:
    account_id = await system.connect_account(1)
    job = await system.enqueue(account_id, priority=10)
    system.start_worker()

    done = await system.wait_for_status(job.id, SUCCEEDED)

    assert done.attempts == 1
    assert done.result["locations_synced"] == 2
    assert done.result["reviews_added"] == 10
    assert (
        await system.scalar(
            "SELECT count(*) FROM gmb_locations WHERE account_id = :a", a=account_id
        )
        == 2
    )
    assert (
        await system.scalar("SELECT count(*) FROM gmb_reviews WHERE account_id = :a", a=account_id)
        == 10
    )
    assert await system.scalar(
        "SELECT last_sync_at IS NOT NULL FROM sync_status WHERE account_id = :a", a=account_id
    )
    (summary,) = await system.stop_workers()
    run = summary.run
    assert (run.jobs_picked, run.jobs_processed, run.jobs_succeeded, run.jobs_failed) == (
        1,
        1,
        1,
        0,
    )
    assert (
        await system.scalar("SELECT status FROM sync_worker_runs WHERE id = :r", r=run.id)
        == "completed"
    )


async def test_a_retryable_failure_is_retried_after_backoff_and_then_succeeds(
    system: System,
) -> None:
    account_id = await system.connect_account(1)
    # Google answers 503 once: SyncService says UNAVAILABLE, the queue backs off (200 ms here).
    system.emulator.state.inject("unavailable", count=1, endpoint="locations")
    job = await system.enqueue(account_id)
    system.start_worker()

    done = await system.wait_for_status(job.id, SUCCEEDED)

    assert done.attempts == 2
    (error,) = done.errors
    assert error.attempt == 1
    assert not error.permanent
    assert "UNAVAILABLE" in error.error
    gap = done.started_at.ToDatetime() - error.failed_at.ToDatetime()
    assert gap.total_seconds() >= 0.2 * 0.9  # RETRY_DELAY_BASE minus the most jitter


async def test_a_rate_limit_delay_from_google_is_honoured_without_spending_an_attempt(
    system: System,
) -> None:
    account_id = await system.connect_account(1)
    system.emulator.state.inject("rate_limit", count=1, endpoint="locations", retry_after=2.0)
    job = await system.enqueue(account_id, max_attempts=1)
    system.start_worker()

    done = await system.wait_for_status(job.id, SUCCEEDED)

    # Quota is no failure of the job: it was handed back for Google's delay, its attempt
    # given back, so even a job with a single attempt succeeds.
    assert done.errors == [] and done.attempts == 1
    gap = done.started_at.ToDatetime() - done.created_at.ToDatetime()
    assert gap.total_seconds() >= 1.9  # the server's delay, far above the 200 ms backoff


async def test_a_permanent_failure_fails_the_job_at_once(system: System) -> None:
    account_id = await system.connect_account(2)
    # The user revoked the app's access: every retry would fail the same way.
    system.emulator.state.revoke_refresh_token("emulator-refresh-token-2")
    job = await system.enqueue(account_id, max_attempts=3)
    system.start_worker()

    failed = await system.wait_for_status(job.id, FAILED)

    assert failed.attempts == 1
    (error,) = failed.errors
    assert error.permanent
    assert "FAILED_PRECONDITION" in error.error
    (summary,) = await system.stop_workers()
    assert (summary.run.jobs_processed, summary.run.jobs_failed) == (1, 1)
