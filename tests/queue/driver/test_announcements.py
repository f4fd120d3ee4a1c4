"""Ready jobs are announced once per change, with their number, and only once committed."""

from __future__ import annotations

from datetime import timedelta

import pytest

from queue_service.drivers import Moment
from queue_service.models import Caller, EnqueueRequest, Failure, Release, SyncType
from tests.queue.driver.conftest import T0, DriverUnderTest, Heard, moment

AT = T0 + timedelta(seconds=10)


def request(account_id, **fields) -> EnqueueRequest:
    return EnqueueRequest(account_id=account_id, sync_type=SyncType.FULL, **fields)


async def test_a_batch_is_announced_once_with_the_number_of_ready_jobs(
    db: DriverUnderTest, heard: Heard
):
    accounts = [await db.add_account() for _ in range(4)]

    await db.driver.job_insert_many(
        [
            request(accounts[0]),
            request(accounts[1]),
            request(accounts[0]),  # a duplicate: no new job
            request(accounts[2], scheduled_at=T0 - timedelta(seconds=1)),
            request(accounts[3], scheduled_at=T0 + timedelta(hours=1)),  # not ready yet
        ],
        caller=Caller.everyone(),
        moment=Moment(T0),
    )

    assert await heard.settled() == [3]


async def test_one_enqueue_is_announced_once(db: DriverUnderTest, heard: Heard):
    await db.insert(await db.add_account())

    assert await heard.settled() == [1]


async def test_duplicates_and_later_jobs_are_not_announced(db: DriverUnderTest, heard: Heard):
    account = await db.add_account()
    await db.insert(account, scheduled_at=T0 + timedelta(minutes=5))
    # A duplicate that leaves the job waiting (it asks for no earlier time) wakes nobody.
    await db.driver.job_insert_many(
        [request(account, priority=5, scheduled_at=T0 + timedelta(minutes=10))],
        caller=Caller.everyone(),
        moment=Moment(T0),
    )

    assert await heard.settled() == []


async def test_an_enqueue_rolled_back_is_never_announced(db: DriverUnderTest, heard: Heard):
    account = await db.add_account()

    async def insert_then_fail() -> None:
        async with db.driver.transaction() as conn:
            await db.driver.job_insert_many(
                [request(account)], caller=Caller.everyone(), moment=Moment(T0), conn=conn
            )
            raise RuntimeError("the caller's transaction fails")

    with pytest.raises(RuntimeError):
        await insert_then_fail()

    assert await heard.settled() == []


async def test_an_enqueue_in_a_transaction_is_announced_when_it_commits(
    db: DriverUnderTest, heard: Heard
):
    accounts = [await db.add_account() for _ in range(2)]

    async with db.driver.transaction() as conn:
        await db.driver.job_insert_many(
            [request(a) for a in accounts], caller=Caller.everyone(), moment=Moment(T0), conn=conn
        )

    assert await heard.settled() == [2]


async def test_a_release_due_at_once_is_announced_and_a_delayed_one_is_not(
    db: DriverUnderTest, heard: Heard
):
    now_job = await db.leased(await db.add_account())
    later_job = await db.leased(await db.add_account())
    await heard.settled()

    await db.driver.job_release(Release(now_job.id, now_job.lease_token), moment=moment(AT))
    await db.driver.job_release(
        Release(later_job.id, later_job.lease_token, delay=timedelta(minutes=1)),
        moment=moment(AT),
    )

    assert await heard.settled() == [1]


async def test_a_retried_job_is_announced_and_a_failure_with_backoff_is_not(
    db: DriverUnderTest, heard: Heard
):
    job = await db.leased(max_attempts=2)
    await heard.settled()

    await db.driver.job_report_many([Failure(job.id, job.lease_token, "x")], moment=moment(AT))
    assert await heard.settled() == []  # due after the backoff: pickers find it by polling

    [again] = await db.pick(at=AT + timedelta(hours=1))
    await db.driver.job_report_many(
        [Failure(again.id, again.lease_token, "y", permanent=True)],
        moment=moment(AT + timedelta(hours=1)),
    )
    await db.driver.job_retry(job.id, Caller.everyone(), moment=Moment(AT + timedelta(hours=1)))

    assert await heard.settled() == [1]
