"""Retention: a pruning round (`queue_service.retention.prune`) deletes every finished job and
worker run past its retention, batch after batch, and nothing else."""

from __future__ import annotations

import uuid
from datetime import timedelta

import sqlalchemy as sa

from queue_service.models import WorkerRunStatus
from queue_service.retention import Pruned, RetentionPolicy, prune
from queue_service.tables import sync_worker_runs
from tests.queue.driver.conftest import T0, DriverUnderTest, moment

RETENTION = timedelta(days=30)
NOW = T0 + RETENTION + timedelta(days=1)
OLD = T0  # older than the retention at NOW
RECENT = NOW - timedelta(days=1)


class CountingDriver:
    """The driver under test, counting the DELETE batches a round issues."""

    def __init__(self, db: DriverUnderTest) -> None:
        self._driver = db.driver
        self.batches = 0

    async def job_delete_finished(self, **kwargs):
        self.batches += 1
        return await self._driver.job_delete_finished(**kwargs)

    async def worker_run_delete_finished(self, **kwargs):
        self.batches += 1
        return await self._driver.worker_run_delete_finished(**kwargs)


async def finished_jobs(db: DriverUnderTest, count: int, *, at, status="succeeded"):
    """`count` jobs of one account, each finished (`status`) at `at`."""
    account = await db.add_account()
    ids = []
    for _ in range(count):
        job = await db.insert(account)
        await db.set_row(job.id, status=status, completed_at=at)
        ids.append(job.id)
    return ids


async def finished_run(db: DriverUnderTest, *, at) -> uuid.UUID:
    run = await db.driver.worker_run_insert("w", {}, moment=moment(at - timedelta(hours=1)))
    await db.driver.worker_run_finish(
        run.id, WorkerRunStatus.COMPLETED, None, {}, moment=moment(at)
    )
    return run.id


async def run_ids(db: DriverUnderTest) -> set[uuid.UUID]:
    async with db.engine.connect() as conn:
        return set((await conn.execute(sa.select(sync_worker_runs.c.id))).scalars())


async def test_one_round_deletes_more_than_one_batch_of_old_finished_jobs(db: DriverUnderTest):
    old = await finished_jobs(db, 5, at=OLD)
    old += await finished_jobs(db, 1, at=OLD, status="failed")
    old += await finished_jobs(db, 1, at=OLD, status="cancelled")
    counting = CountingDriver(db)
    policy = RetentionPolicy(jobs=RETENTION, worker_runs=None, batch_size=3)

    pruned = await prune(counting, policy, now=NOW)  # type: ignore[arg-type]

    assert pruned == Pruned(jobs=7, worker_runs=0)
    assert counting.batches == 3  # 3 + 3 + 1: the short batch ends the round
    assert await db.count_jobs() == 0


async def test_a_round_keeps_recent_finished_jobs_and_active_jobs_however_old(
    db: DriverUnderTest,
):
    await finished_jobs(db, 4, at=OLD)
    recent = await finished_jobs(db, 2, at=RECENT)
    processing = await db.leased()
    pending = await db.insert(await db.add_account(), at=OLD)
    policy = RetentionPolicy(jobs=RETENTION, worker_runs=RETENTION, batch_size=2)

    pruned = await prune(db.driver, policy, now=NOW)

    assert pruned.jobs == 4
    assert await db.count_jobs() == 4
    for job_id in recent:
        assert (await db.row(job_id))["status"] == "succeeded"
    assert (await db.row(pending.id))["status"] == "pending"
    assert (await db.row(processing.id))["status"] == "processing"


async def test_a_round_deletes_old_finished_worker_runs_and_keeps_running_and_recent_ones(
    db: DriverUnderTest,
):
    for _ in range(5):
        await finished_run(db, at=OLD)
    recent = await finished_run(db, at=RECENT)
    running = (await db.driver.worker_run_insert("long-lived", {}, moment=moment(OLD))).id
    policy = RetentionPolicy(jobs=None, worker_runs=RETENTION, batch_size=2)

    pruned = await prune(db.driver, policy, now=NOW)

    assert pruned == Pruned(jobs=0, worker_runs=5)
    assert await run_ids(db) == {recent, running}


async def test_no_retention_keeps_everything(db: DriverUnderTest):
    await finished_jobs(db, 2, at=OLD)
    await finished_run(db, at=OLD)

    pruned = await prune(db.driver, RetentionPolicy(jobs=None, worker_runs=None), now=NOW)

    assert pruned == Pruned()
    assert await db.count_jobs() == 2 and len(await run_ids(db)) == 1
