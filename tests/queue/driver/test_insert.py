"""`job_insert_many`: new jobs, duplicates and their upgrades, batches, account checks."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from queue_service.drivers import Moment
from queue_service.errors import AccountInactive, AccountNotFound
from queue_service.models import Caller, EnqueueRequest, EnqueueResult, JobRef, JobStatus, SyncType
from tests.queue.driver.conftest import T0, DriverUnderTest

# The enqueue answering full jobs, and answering references (EnqueueSyncBatch, JOB_VIEW_ID):
# the same jobs inserted, upgraded, refused and announced either way.
BOTH_ANSWERS = pytest.mark.parametrize("refs", [False, True], ids=["jobs", "refs"])


def request(account_id: uuid.UUID, sync_type: SyncType = SyncType.FULL, **fields) -> EnqueueRequest:
    return EnqueueRequest(account_id=account_id, sync_type=sync_type, **fields)


async def insert_many(
    db: DriverUnderTest,
    requests: list[EnqueueRequest],
    *,
    refs: bool,
    caller: Caller | None = None,
) -> list[EnqueueResult]:
    caller, moment = caller or Caller.everyone(), Moment(now=T0)
    if refs:
        return await db.driver.job_insert_many_refs(requests, caller=caller, moment=moment)
    return await db.driver.job_insert_many(requests, caller=caller, moment=moment)


async def test_a_new_job_is_pending_with_every_requested_field(db: DriverUnderTest):
    owner = uuid.uuid4()
    account = await db.add_account(user_id=owner, name="Corner Shop")
    later = T0 + timedelta(hours=1)

    [result] = await db.driver.job_insert_many(
        [
            request(
                account,
                SyncType.INCREMENTAL,
                priority=7,
                scheduled_at=later,
                max_attempts=5,
                metadata={"source": "test", "n": 1},
                trace_context={"traceparent": "00-abc-def-01"},
            )
        ],
        caller=Caller.user(owner),
        moment=Moment(now=T0),
    )

    job = result.job
    assert not result.duplicate
    assert (job.status, job.sync_type, job.priority) == (JobStatus.PENDING, SyncType.INCREMENTAL, 7)
    assert (job.attempts, job.max_attempts, job.scheduled_at) == (0, 5, later)
    assert (job.user_id, job.account_id, job.account_name) == (owner, account, "Corner Shop")
    assert job.metadata == {"source": "test", "n": 1}
    assert job.trace_context == {"traceparent": "00-abc-def-01"}
    assert (job.created_at, job.updated_at) == (T0, T0)
    assert job.errors == [] and job.lease_token is None and job.result is None
    stored = await db.row(job.id)
    assert stored["status"] == "pending" and stored["metadata"] == {"source": "test", "n": 1}


async def test_an_account_with_an_active_job_gets_it_back_as_a_duplicate(db: DriverUnderTest):
    account = await db.add_account()
    first = await db.insert(account, sync_type=SyncType.FULL, priority=5)

    [again] = await db.driver.job_insert_many(
        [request(account, SyncType.INCREMENTAL, priority=1)],
        caller=Caller.everyone(),
        moment=Moment(now=T0 + timedelta(seconds=1)),
    )

    assert again.duplicate and again.job.id == first.id
    # Nothing to upgrade: a lower priority and an incremental sync leave the job as it was.
    assert (again.job.sync_type, again.job.priority) == (SyncType.FULL, 5)
    assert await db.count_jobs() == 1


async def test_a_full_or_higher_priority_duplicate_upgrades_a_pending_job(db: DriverUnderTest):
    account = await db.add_account()
    first = await db.insert(account, sync_type=SyncType.INCREMENTAL, priority=1)
    later = T0 + timedelta(seconds=5)

    [upgraded] = await db.driver.job_insert_many(
        [request(account, SyncType.FULL, priority=9)],
        caller=Caller.everyone(),
        moment=Moment(now=later),
    )

    assert upgraded.duplicate and upgraded.job.id == first.id
    assert (upgraded.job.sync_type, upgraded.job.priority) == (SyncType.FULL, 9)
    stored = await db.row(first.id)
    assert (stored["sync_type"], stored["priority"], stored["updated_at"]) == ("full", 9, later)


async def test_a_processing_duplicate_is_returned_unchanged(db: DriverUnderTest):
    account = await db.add_account()
    leased = await db.leased(account, sync_type=SyncType.INCREMENTAL)

    [again] = await db.driver.job_insert_many(
        [request(account, SyncType.FULL, priority=50)],
        caller=Caller.everyone(),
        moment=Moment(now=T0),
    )

    assert again.duplicate and again.job.id == leased.id
    assert again.job.status is JobStatus.PROCESSING
    assert (again.job.sync_type, again.job.priority) == (SyncType.INCREMENTAL, 0)


async def test_a_finished_job_does_not_block_a_new_one(db: DriverUnderTest):
    account = await db.add_account()
    old = await db.insert(account)
    await db.set_row(old.id, status="succeeded", completed_at=T0)

    new = await db.insert(account, at=T0 + timedelta(seconds=1))

    assert new.id != old.id and new.status is JobStatus.PENDING


@BOTH_ANSWERS
async def test_a_batch_answers_in_order_and_repeated_accounts_act_as_consecutive_calls(
    db: DriverUnderTest, refs: bool
):
    a, b = await db.add_account(), await db.add_account()

    results = await insert_many(
        db,
        [
            request(a, SyncType.INCREMENTAL, priority=1),
            request(b, SyncType.INCREMENTAL),
            request(a, SyncType.FULL, priority=3),
            request(a, SyncType.INCREMENTAL, priority=2),
        ],
        refs=refs,
    )

    assert [r.duplicate for r in results] == [False, False, True, True]
    assert [r.job.account_id for r in results] == [a, b, a, a]
    assert results[0].job.id == results[2].job.id == results[3].job.id
    # The one job of `a` carries every upgrade, as if the requests had come one by one.
    stored = await db.row(results[0].job.id)
    assert (stored["sync_type"], stored["priority"]) == ("full", 3)
    assert await db.count_jobs() == 2


@BOTH_ANSWERS
async def test_a_batch_upgrades_an_existing_pending_job_once_with_every_request(
    db: DriverUnderTest, refs: bool
):
    a = await db.add_account()
    existing = await db.insert(a, sync_type=SyncType.INCREMENTAL, priority=0)

    results = await insert_many(
        db,
        [request(a, SyncType.INCREMENTAL, priority=4), request(a, SyncType.FULL, priority=2)],
        refs=refs,
    )

    assert [(r.duplicate, r.job.id) for r in results] == [(True, existing.id)] * 2
    stored = await db.row(existing.id)
    assert (stored["sync_type"], stored["priority"]) == ("full", 4)


@BOTH_ANSWERS
@pytest.mark.parametrize("problem", ["missing", "someone else's", "inactive"])
async def test_one_bad_account_refuses_the_whole_batch_and_writes_nothing(
    db: DriverUnderTest, problem: str, refs: bool
):
    owner = uuid.uuid4()
    good = await db.add_account(user_id=owner)
    existing = await db.add_account(user_id=owner)
    queued = await db.insert(existing, sync_type=SyncType.INCREMENTAL)
    if problem == "missing":
        bad, error = uuid.uuid4(), AccountNotFound
    elif problem == "someone else's":
        bad, error = await db.add_account(), AccountNotFound
    else:
        bad, error = await db.add_account(user_id=owner, active=False), AccountInactive

    with pytest.raises(error, match=str(bad)):
        await insert_many(
            db,
            [request(good), request(existing, SyncType.FULL, priority=9), request(bad)],
            refs=refs,
            caller=Caller.user(owner),
        )

    assert await db.count_jobs() == 1
    stored = await db.row(queued.id)
    assert (stored["sync_type"], stored["priority"]) == ("incremental", 0)


async def test_the_first_bad_account_in_request_order_is_the_one_reported(db: DriverUnderTest):
    inactive = await db.add_account(active=False)
    missing = uuid.uuid4()

    with pytest.raises(AccountNotFound, match=str(missing)):
        await db.driver.job_insert_many(
            [request(missing), request(inactive)], caller=Caller.everyone(), moment=Moment(T0)
        )


async def test_an_insert_inside_a_transaction_is_undone_with_it(db: DriverUnderTest):
    account = await db.add_account()

    async def insert_then_fail() -> None:
        async with db.driver.transaction() as conn:
            await db.driver.job_insert_many(
                [request(account)], caller=Caller.everyone(), moment=Moment(T0), conn=conn
            )
            raise RuntimeError("the caller's transaction fails")

    with pytest.raises(RuntimeError):
        await insert_then_fail()

    assert await db.count_jobs() == 0
    assert db.told == []


async def test_an_empty_request_list_writes_nothing(db: DriverUnderTest):
    assert await db.driver.job_insert_many([], caller=Caller.everyone(), moment=Moment(T0)) == []
    assert await db.count_jobs() == 0


# -- an earlier schedule upgrades a pending duplicate --------------------------------------------

HOUR = timedelta(hours=1)


async def test_enqueueing_now_moves_a_pending_job_scheduled_later_to_now(db: DriverUnderTest):
    account = await db.add_account()
    delayed = await db.insert(account, scheduled_at=T0 + HOUR)

    [now] = await db.driver.job_insert_many(
        [request(account)], caller=Caller.everyone(), moment=Moment(now=T0)
    )

    assert now.duplicate and now.job.id == delayed.id
    assert now.job.scheduled_at is None
    assert (await db.row(delayed.id))["scheduled_at"] is None
    assert [job.id for job in await db.pick(at=T0)] == [delayed.id]


async def test_an_earlier_scheduled_at_moves_a_pending_job_and_a_later_one_does_not(
    db: DriverUnderTest,
):
    account = await db.add_account()
    delayed = await db.insert(account, scheduled_at=T0 + 2 * HOUR)

    [earlier] = await db.driver.job_insert_many(
        [request(account, scheduled_at=T0 + HOUR)], caller=Caller.everyone(), moment=Moment(T0)
    )
    [later] = await db.driver.job_insert_many(
        [request(account, scheduled_at=T0 + 3 * HOUR)], caller=Caller.everyone(), moment=Moment(T0)
    )

    assert earlier.job.scheduled_at == later.job.scheduled_at == T0 + HOUR
    assert (await db.row(delayed.id))["scheduled_at"] == T0 + HOUR


async def test_a_job_already_due_keeps_its_place_when_enqueued_again(db: DriverUnderTest):
    account = await db.add_account()
    due = await db.insert(account)  # scheduled_at unset: as soon as possible

    [again] = await db.driver.job_insert_many(
        [request(account, scheduled_at=T0 + HOUR)], caller=Caller.everyone(), moment=Moment(T0)
    )

    assert again.duplicate and again.job.id == due.id and again.job.scheduled_at is None


async def test_a_batch_moves_a_pending_job_to_the_earliest_schedule_it_asks_for(
    db: DriverUnderTest,
):
    a, b = await db.add_account(), await db.add_account()
    delayed = await db.insert(a, scheduled_at=T0 + 2 * HOUR)

    results = await db.driver.job_insert_many(
        [
            request(a, scheduled_at=T0 + HOUR),
            request(b, scheduled_at=T0 + 3 * HOUR),
            request(b),
            request(a, scheduled_at=T0 + timedelta(minutes=30)),
        ],
        caller=Caller.everyone(),
        moment=Moment(now=T0),
    )

    assert [r.duplicate for r in results] == [True, False, True, True]
    assert (await db.row(delayed.id))["scheduled_at"] == T0 + timedelta(minutes=30)
    # `b`'s second request (now) upgrades the job its first request made, as consecutive calls.
    assert (await db.row(results[1].job.id))["scheduled_at"] is None


@BOTH_ANSWERS
async def test_a_pending_job_moved_to_now_is_announced(db: DriverUnderTest, heard, refs: bool):  # type: ignore[no-untyped-def]
    account = await db.add_account()
    await db.insert(account, scheduled_at=T0 + HOUR)
    await heard.settled()

    await insert_many(db, [request(account)], refs=refs)

    assert await heard.settled() == [1]


async def test_references_name_each_job_as_stored(db: DriverUnderTest):
    new, queued, running = [await db.add_account() for _ in range(3)]
    leased = await db.leased(running)
    pending = await db.insert(queued)

    results = await db.driver.job_insert_many_refs(
        [request(new), request(queued), request(running)],
        caller=Caller.everyone(),
        moment=Moment(now=T0 + timedelta(seconds=1)),
    )

    assert all(isinstance(r.job, JobRef) for r in results)
    assert [r.duplicate for r in results] == [False, True, True]
    assert [r.job.account_id for r in results] == [new, queued, running]
    assert [r.job.id for r in results][1:] == [pending.id, leased.id]
    assert [r.job.status for r in results] == [
        JobStatus.PENDING,
        JobStatus.PENDING,
        JobStatus.PROCESSING,
    ]
    stored = await db.row(results[0].job.id)
    assert stored["account_id"] == new and stored["status"] == "pending"
