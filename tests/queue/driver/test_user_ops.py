"""`job_cancel` and `job_retry`: what a user may do to a job, and only to their own."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from queue_service.drivers import Moment
from queue_service.errors import ActiveJobExists, IllegalTransition, JobNotFound
from queue_service.models import Caller, Completion, Failure, JobStatus
from tests.queue.driver.conftest import T0, DriverUnderTest, moment

LATER = T0 + timedelta(minutes=1)
HELD = T0 + timedelta(seconds=10)  # while a lease granted at T0 holds


async def test_a_pending_job_is_cancelled(db: DriverUnderTest):
    owner = uuid.uuid4()
    job = await db.insert(await db.add_account(user_id=owner))

    cancelled = await db.driver.job_cancel(job.id, Caller.user(owner), moment=Moment(LATER))

    assert cancelled.status is JobStatus.CANCELLED and cancelled.completed_at == LATER
    assert (await db.row(job.id))["status"] == "cancelled"


async def test_only_a_pending_job_can_be_cancelled(db: DriverUnderTest):
    job = await db.leased()

    with pytest.raises(IllegalTransition, match="processing"):
        await db.driver.job_cancel(job.id, Caller.everyone(), moment=Moment(LATER))

    assert (await db.row(job.id))["status"] == "processing"


async def test_someone_elses_job_is_not_found_and_stays(db: DriverUnderTest):
    job = await db.insert(await db.add_account())
    stranger = Caller.user(uuid.uuid4())

    with pytest.raises(JobNotFound):
        await db.driver.job_cancel(job.id, stranger, moment=Moment(LATER))
    with pytest.raises(JobNotFound):
        await db.driver.job_retry(job.id, stranger, moment=Moment(LATER))
    assert (await db.row(job.id))["status"] == "pending"


async def test_a_failed_job_is_retried_from_scratch(db: DriverUnderTest):
    job = await db.leased(max_attempts=1)
    await db.driver.job_report_many([Failure(job.id, job.lease_token, "x")], moment=moment(HELD))

    retried = await db.driver.job_retry(job.id, Caller.everyone(), moment=Moment(LATER))

    assert retried.status is JobStatus.PENDING and retried.attempts == 0
    assert retried.scheduled_at is None and retried.completed_at is None
    assert retried.worker_id is None and retried.worker_run_id is None
    assert [j.id for j in await db.pick(at=LATER)] == [job.id]


async def test_a_cancelled_job_can_be_retried(db: DriverUnderTest):
    job = await db.insert(await db.add_account())
    await db.driver.job_cancel(job.id, Caller.everyone(), moment=Moment(LATER))

    retried = await db.driver.job_retry(job.id, Caller.everyone(), moment=Moment(LATER))

    assert retried.status is JobStatus.PENDING


async def test_a_succeeded_job_cannot_be_retried(db: DriverUnderTest):
    job = await db.leased()
    await db.driver.job_report_many([Completion(job.id, job.lease_token)], moment=moment(HELD))

    with pytest.raises(IllegalTransition, match="succeeded"):
        await db.driver.job_retry(job.id, Caller.everyone(), moment=Moment(LATER))


async def test_a_retry_is_refused_while_the_account_has_an_active_job(db: DriverUnderTest):
    account = await db.add_account()
    old = await db.insert(account)
    await db.driver.job_cancel(old.id, Caller.everyone(), moment=Moment(LATER))
    await db.insert(account, at=LATER)

    with pytest.raises(ActiveJobExists):
        await db.driver.job_retry(old.id, Caller.everyone(), moment=Moment(LATER))

    assert (await db.row(old.id))["status"] == "cancelled"
