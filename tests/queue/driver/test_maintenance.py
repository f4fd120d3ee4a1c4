"""The leader's work and the rest of the seam: `job_rescue_stuck` (the reaper),
`job_delete_finished` (the pruner), `leader_session`, worker runs and the lease clock."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from queue_service.drivers.base import statistics_stale
from queue_service.errors import IllegalTransition, WorkerRunNotFound
from queue_service.models import Completion, WorkerRunStatus
from tests.queue.driver.conftest import BASE_DELAY, LEASE, T0, DriverUnderTest, moment

EXPIRED = T0 + LEASE + timedelta(seconds=1)


# -- the reaper --------------------------------------------------------------------------------


async def test_an_expired_lease_is_rescued_to_pending_after_backoff(db: DriverUnderTest):
    run = await db.driver.worker_run_insert("lost", {}, moment=moment(T0))
    job = await db.leased(run_id=run.id, max_attempts=3)

    recovered = await db.driver.job_rescue_stuck(moment=moment(EXPIRED))

    assert (recovered.requeued, recovered.failed) == ([job.id], [])
    stored = await db.row(job.id)
    assert stored["status"] == "pending" and stored["lease_token"] is None
    assert stored["scheduled_at"] == EXPIRED + BASE_DELAY
    assert stored["last_error"].startswith("worker lost: lease expired at ")
    assert stored["errors"][0]["attempt"] == 1
    assert await db.run_counts(run.id) == {
        "jobs_picked": 1,
        "jobs_processed": 1,
        "jobs_failed": 1,
    }


async def test_an_expired_lease_on_the_last_attempt_fails_the_job(db: DriverUnderTest):
    job = await db.leased(max_attempts=1)

    recovered = await db.driver.job_rescue_stuck(moment=moment(EXPIRED))

    assert (recovered.requeued, recovered.failed) == ([], [job.id])
    stored = await db.row(job.id)
    assert (stored["status"], stored["completed_at"]) == ("failed", EXPIRED)


async def test_a_live_lease_is_left_alone_unless_it_started_before_the_threshold(
    db: DriverUnderTest,
):
    job = await db.leased()
    during = T0 + timedelta(seconds=30)

    assert (await db.driver.job_rescue_stuck(moment=moment(during))).requeued == []
    stale = await db.driver.job_rescue_stuck(
        moment=moment(during), started_before=T0 + timedelta(seconds=1)
    )

    assert stale.requeued == [job.id]
    assert "past the stale threshold" in (await db.row(job.id))["last_error"]


# -- the pruner --------------------------------------------------------------------------------


async def test_finished_jobs_older_than_the_cut_are_deleted_a_batch_at_a_time(
    db: DriverUnderTest,
):
    accounts = [await db.add_account() for _ in range(4)]
    old = [await db.insert(a) for a in accounts[:3]]
    for job, status in zip(old, ("succeeded", "failed", "cancelled"), strict=True):
        await db.set_row(job.id, status=status, completed_at=T0)
    recent = await db.insert(accounts[0], at=T0)
    await db.set_row(recent.id, status="succeeded", completed_at=T0 + timedelta(days=2))
    pending = await db.insert(accounts[3])
    cut = T0 + timedelta(days=1)

    assert await db.driver.job_delete_finished(finished_before=cut, limit=2) == 2
    assert await db.driver.job_delete_finished(finished_before=cut, limit=2) == 1
    assert await db.driver.job_delete_finished(finished_before=cut, limit=2) == 0

    assert await db.count_jobs() == 2
    assert (await db.row(pending.id))["status"] == "pending"
    assert (await db.row(recent.id))["status"] == "succeeded"


# -- leadership --------------------------------------------------------------------------------


async def test_one_session_leads_until_it_ends(db: DriverUnderTest):
    async with db.driver.leader_session() as first:
        assert await first.attempt_elect()
        assert await first.attempt_elect()  # still the leader
        await first.confirm()
        async with db.driver.leader_session() as second:
            assert not await second.attempt_elect()
    async with db.driver.leader_session() as third:
        assert await third.attempt_elect()


# -- worker runs -------------------------------------------------------------------------------


async def test_a_worker_run_starts_running_and_finishes_once(db: DriverUnderTest):
    run = await db.driver.worker_run_insert("w1", {"host": "a"}, moment=moment(T0))

    assert (run.status, run.worker_id, run.started_at) == (WorkerRunStatus.RUNNING, "w1", T0)
    assert (run.jobs_picked, run.jobs_processed, run.finished_at) == (0, 0, None)

    job = await db.leased(run_id=run.id)
    await db.driver.job_report_many([Completion(job.id, job.lease_token)], moment=moment(T0))
    finished = await db.driver.worker_run_finish(
        run.id, WorkerRunStatus.COMPLETED, "drained", {"version": "2"}, moment=moment(EXPIRED)
    )

    assert (finished.status, finished.notes, finished.finished_at) == (
        WorkerRunStatus.COMPLETED,
        "drained",
        EXPIRED,
    )
    assert finished.metadata == {"host": "a", "version": "2"}
    assert (finished.jobs_picked, finished.jobs_processed, finished.jobs_succeeded) == (1, 1, 1)
    with pytest.raises(IllegalTransition, match="already finished"):
        await db.driver.worker_run_finish(
            run.id, WorkerRunStatus.FAILED, None, {}, moment=moment(EXPIRED)
        )


async def test_finishing_an_unknown_run_is_not_found(db: DriverUnderTest):
    with pytest.raises(WorkerRunNotFound):
        await db.driver.worker_run_finish(
            uuid.uuid4(), WorkerRunStatus.COMPLETED, None, {}, moment=moment(T0)
        )


# -- clock and connections ---------------------------------------------------------------------


async def test_the_lease_clock_is_the_databases_now(db: DriverUnderTest):
    before = datetime.now(UTC)
    now = await db.driver.lease_clock_now()
    after = datetime.now(UTC)

    # PostgreSQL's clock and this host's are the same machine's here.
    assert before - timedelta(seconds=5) <= now <= after + timedelta(seconds=5)
    await db.driver.ping()


# -- the planner's statistics ------------------------------------------------------------------


async def _change_rows(db: DriverUnderTest, count: int) -> None:
    """`count` finished jobs inserted by one transaction, whose counters PostgreSQL has
    published by the time it returns (they are otherwise sent up to a second later)."""
    account = await db.add_account()
    async with db.engine.begin() as conn:
        await conn.exec_driver_sql(
            "INSERT INTO sync_queue (id, user_id, account_id, sync_type, status, priority,"
            " attempts, max_attempts, metadata, created_at, updated_at, trace_context, errors,"
            " completed_at) SELECT gen_random_uuid(), gen_random_uuid(), %(account)s, 'full',"
            " 'succeeded', 0, 1, 3, '{}', %(at)s, %(at)s, '{}', '[]', %(at)s"
            " FROM generate_series(1, %(count)s)",
            {"account": account, "at": T0, "count": count},
        )
        await conn.exec_driver_sql("SELECT pg_stat_force_next_flush()")


async def _changed_since_analyze(db: DriverUnderTest) -> int:
    async with db.engine.connect() as conn:
        row = await conn.exec_driver_sql(
            "SELECT n_mod_since_analyze FROM pg_stat_user_tables"
            " WHERE relid = 'sync_queue'::regclass"
        )
        return int(row.scalar_one())


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
async def test_statistics_that_lag_the_queue_are_refreshed_once(db: DriverUnderTest):
    await _change_rows(db, 5_000)
    # Later than any ANALYZE an earlier test made: past the grace left to autovacuum.
    later = moment(datetime.now(UTC) + timedelta(hours=1))

    analyzed = await db.driver.queue_analyze_if_stale(moment=later)

    # (Had a running autovacuum analyzed the table first, there would be nothing left to do.)
    assert analyzed or await _changed_since_analyze(db) < 1_000
    assert await _changed_since_analyze(db) < 1_000
    assert not await db.driver.queue_analyze_if_stale(moment=later)


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
async def test_statistics_a_few_changes_behind_are_left_alone(db: DriverUnderTest):
    later = moment(datetime.now(UTC) + timedelta(hours=1))
    await db.driver.queue_analyze_if_stale(moment=later)  # whatever earlier tests left
    await _change_rows(db, 50)

    assert not await db.driver.queue_analyze_if_stale(moment=later)
    assert await _changed_since_analyze(db) >= 50


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
async def test_sqlite_keeps_no_statistics_to_refresh(db: DriverUnderTest):
    await db.insert(await db.add_account())

    assert not await db.driver.queue_analyze_if_stale(moment=moment(T0 + timedelta(days=1)))


def test_statistics_are_stale_past_autovacuums_threshold_and_grace():
    now = datetime(2030, 1, 1, tzinfo=UTC)
    long_ago = now - timedelta(minutes=5)

    # 1,000 rows plus 2 % of the table, as migration 0006 tells autovacuum.
    assert not statistics_stale(1_000, 0, long_ago, now=now)
    assert statistics_stale(1_001, 0, long_ago, now=now)
    assert not statistics_stale(3_000, 100_000, long_ago, now=now)
    assert statistics_stale(3_001, 100_000, long_ago, now=now)
    # Autovacuum goes first: a recent ANALYZE is left a minute to be repeated by it.
    assert not statistics_stale(50_000, 0, now - timedelta(seconds=30), now=now)
    assert statistics_stale(50_000, 0, None, now=now)
