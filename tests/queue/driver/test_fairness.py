"""Fairness within a priority: users take turns, each user's jobs come out oldest first, and
priority still comes before everything (`fair_key`, assigned at enqueue)."""

from __future__ import annotations

import uuid
from datetime import timedelta

from queue_service.drivers import Moment
from queue_service.models import Caller, EnqueueRequest, Failure, JobStatus, SyncType
from tests.queue.driver.conftest import T0, DriverUnderTest, moment
from tests.queue.helpers import insert_accounts

BACKLOG = 10_000


async def _accounts_of(db: DriverUnderTest, user_id: uuid.UUID, count: int) -> list[uuid.UUID]:
    return await insert_accounts(db.engine, user_id, count, T0)


async def _enqueue_many(
    db: DriverUnderTest, accounts: list[uuid.UUID], *, at=T0, priority: int = 0
) -> list[uuid.UUID]:
    results = await db.driver.job_insert_many(
        [
            EnqueueRequest(account_id=a, sync_type=SyncType.INCREMENTAL, priority=priority)
            for a in accounts
        ],
        caller=Caller.everyone(),
        moment=Moment(now=at),
    )
    assert not any(r.duplicate for r in results)
    return [r.job.id for r in results]


async def test_a_users_one_job_is_picked_within_two_picks_behind_another_users_backlog(
    db: DriverUnderTest,
):
    busy, newcomer = uuid.uuid4(), uuid.uuid4()
    await _enqueue_many(db, await _accounts_of(db, busy, BACKLOG))
    [lone_account] = await _accounts_of(db, newcomer, 1)
    lone = await db.insert(
        lone_account, sync_type=SyncType.INCREMENTAL, at=T0 + timedelta(seconds=1)
    )
    now = T0 + timedelta(minutes=1)

    picked = [job for _ in range(2) for job in await db.pick(max_jobs=1, at=now)]

    assert lone.id in [job.id for job in picked]
    assert sum(job.user_id == busy for job in picked) <= 1


async def test_users_take_turns_and_each_users_jobs_come_out_oldest_first(db: DriverUnderTest):
    first_user, second_user = uuid.uuid4(), uuid.uuid4()
    first = await _enqueue_many(db, await _accounts_of(db, first_user, 3), at=T0)
    second = []
    for n, account in enumerate(await _accounts_of(db, second_user, 3)):
        job = await db.insert(account, at=T0 + timedelta(seconds=1 + n))
        second.append(job.id)
    now = T0 + timedelta(minutes=1)

    order = [job.id for _ in range(6) for job in await db.pick(max_jobs=1, at=now)]

    assert order == [first[0], second[0], first[1], second[1], first[2], second[2]]


async def test_a_pick_of_many_hands_out_the_turns_in_pick_order(db: DriverUnderTest):
    first_user, second_user = uuid.uuid4(), uuid.uuid4()
    first = await _enqueue_many(db, await _accounts_of(db, first_user, 3), at=T0)
    second = await _enqueue_many(
        db, await _accounts_of(db, second_user, 2), at=T0 + timedelta(seconds=1)
    )

    picked = await db.pick(max_jobs=4, at=T0 + timedelta(minutes=1))

    assert [j.id for j in picked] == [first[0], second[0], first[1], second[1]]


async def test_priority_comes_before_fairness(db: DriverUnderTest):
    busy, other = uuid.uuid4(), uuid.uuid4()
    urgent = await _enqueue_many(db, await _accounts_of(db, busy, 5), priority=5)
    [low_account, high_account] = await _accounts_of(db, other, 2)
    low = await db.insert(low_account, priority=0, at=T0 + timedelta(seconds=1))
    high = await db.insert(high_account, priority=9, at=T0 + timedelta(seconds=2))
    now = T0 + timedelta(minutes=1)

    order = [job.id for job in await db.pick(max_jobs=10, at=now)]

    assert order == [high.id, *urgent, low.id]


async def test_a_job_retried_after_a_failure_keeps_its_place_ahead_of_the_users_younger_jobs(
    db: DriverUnderTest,
):
    user = uuid.uuid4()
    accounts = await _accounts_of(db, user, 3)
    oldest = await db.insert(accounts[0], at=T0)
    [leased] = await db.pick(max_jobs=1, at=T0)
    younger = [
        await db.insert(a, at=T0 + timedelta(seconds=1 + n)) for n, a in enumerate(accounts[1:])
    ]
    [ack] = await db.driver.job_report_many(
        [Failure(job_id=leased.id, lease_token=leased.lease_token, error="flaky")],
        moment=moment(T0 + timedelta(seconds=5)),
    )
    assert ack.will_retry
    due = ack.job.scheduled_at

    order = [job.id for job in await db.pick(max_jobs=10, at=due)]

    assert order == [oldest.id, *(j.id for j in younger)]


async def test_a_job_put_back_by_retry_job_queues_behind_the_users_waiting_jobs(
    db: DriverUnderTest,
):
    user, other = uuid.uuid4(), uuid.uuid4()
    accounts = await _accounts_of(db, user, 3)
    failed = await db.insert(accounts[0], at=T0)
    await db.set_row(failed.id, status="failed", completed_at=T0)
    waiting = await _enqueue_many(db, accounts[1:], at=T0 + timedelta(seconds=1))
    [stranger_account] = await _accounts_of(db, other, 1)
    stranger = await db.insert(stranger_account, at=T0 + timedelta(seconds=2))

    again = await db.driver.job_retry(
        failed.id, Caller.everyone(), moment=Moment(T0 + timedelta(seconds=3))
    )
    order = [job.id for job in await db.pick(max_jobs=10, at=T0 + timedelta(minutes=1))]

    assert again.status is JobStatus.PENDING
    assert order == [waiting[0], stranger.id, waiting[1], failed.id]


async def test_a_job_upgraded_to_a_higher_priority_queues_behind_the_users_jobs_there(
    db: DriverUnderTest,
):
    user = uuid.uuid4()
    accounts = await _accounts_of(db, user, 3)
    upgraded = await db.insert(accounts[0], priority=0, at=T0)
    urgent = await _enqueue_many(db, accounts[1:], at=T0 + timedelta(seconds=1), priority=5)

    [result] = await db.driver.job_insert_many(
        [EnqueueRequest(account_id=accounts[0], sync_type=SyncType.FULL, priority=5)],
        caller=Caller.everyone(),
        moment=Moment(now=T0 + timedelta(seconds=2)),
    )
    order = [job.id for job in await db.pick(max_jobs=10, at=T0 + timedelta(minutes=1))]

    assert result.duplicate and result.job.priority == 5
    assert order == [*urgent, upgraded.id]


async def test_a_job_that_comes_due_later_keeps_the_place_it_was_given(db: DriverUnderTest):
    busy, planner = uuid.uuid4(), uuid.uuid4()
    [planned_account] = await _accounts_of(db, planner, 1)
    due = T0 + timedelta(minutes=30)
    planned = await db.insert(planned_account, scheduled_at=due, at=T0)
    backlog = await _enqueue_many(db, await _accounts_of(db, busy, 4), at=T0 + timedelta(seconds=1))

    before = [job.id for job in await db.pick(max_jobs=1, at=due - timedelta(seconds=1))]
    after = [job.id for job in await db.pick(max_jobs=1, at=due)]

    assert before == [backlog[0]]
    assert after == [planned.id]
