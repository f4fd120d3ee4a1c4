"""`job_pick`: order, due time, attempts, the lease it grants, and leases that ran out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from queue_service.drivers import Moment, PickParams
from queue_service.errors import LeaseExpired
from queue_service.models import JobStatus, LeasedJob
from tests.queue.driver.conftest import LEASE, T0, DriverUnderTest, moment


async def test_jobs_come_out_by_priority_then_age_up_to_max_jobs(db: DriverUnderTest):
    accounts = [await db.add_account() for _ in range(5)]
    old_low = await db.insert(accounts[0], priority=0, at=T0)
    new_high = await db.insert(accounts[1], priority=5, at=T0 + timedelta(seconds=2))
    old_high = await db.insert(accounts[2], priority=5, at=T0 + timedelta(seconds=1))
    newest_low = await db.insert(accounts[3], priority=0, at=T0 + timedelta(seconds=3))
    negative = await db.insert(accounts[4], priority=-3, at=T0)
    now = T0 + timedelta(seconds=10)

    first = await db.pick(max_jobs=3, at=now)
    rest = await db.pick(max_jobs=10, at=now)

    assert [j.id for j in first] == [old_high.id, new_high.id, old_low.id]
    assert [j.id for j in rest] == [newest_low.id, negative.id]
    assert await db.pick(at=now) == []


async def test_a_job_scheduled_later_waits_until_it_is_due(db: DriverUnderTest):
    account = await db.add_account()
    due = T0 + timedelta(minutes=5)
    job = await db.insert(account, scheduled_at=due)

    assert await db.pick(at=due - timedelta(seconds=1)) == []
    assert [j.id for j in await db.pick(at=due)] == [job.id]


async def test_a_pick_leases_the_job_to_the_worker_and_counts_it_on_the_run(db: DriverUnderTest):
    run = await db.driver.worker_run_insert("w1", {}, moment=moment(T0))
    accounts = [await db.add_account() for _ in range(2)]
    for account in accounts:
        await db.insert(account)

    jobs = await db.pick(max_jobs=2, run_id=run.id, worker_id="worker-7")

    assert len(jobs) == 2
    for job in jobs:
        assert job.status is JobStatus.PROCESSING and job.attempts == 1
        assert (job.worker_id, job.worker_run_id) == ("worker-7", run.id)
        assert (job.started_at, job.lease_expires_at) == (T0, T0 + LEASE)
        assert job.account_name == "Acme"
        stored = await db.row(job.id)
        assert stored["lease_token"] == job.lease_token and stored["status"] == "processing"
    assert jobs[0].lease_token != jobs[1].lease_token
    assert await db.run_counts(run.id) == {"jobs_picked": 2}


async def test_a_job_whose_attempts_are_used_up_is_not_picked(db: DriverUnderTest):
    account = await db.add_account()
    job = await db.insert(account, max_attempts=2)
    await db.set_row(job.id, attempts=2)

    assert await db.pick() == []


async def test_a_job_whose_lease_ran_out_is_taken_over_and_its_lost_attempt_recorded(
    db: DriverUnderTest,
):
    lost_run = await db.driver.worker_run_insert("slow", {}, moment=moment(T0))
    new_run = await db.driver.worker_run_insert("fast", {}, moment=moment(T0))
    first = await db.leased(run_id=lost_run.id, max_attempts=3)
    after = T0 + LEASE + timedelta(seconds=1)

    [again] = await db.pick(at=after, run_id=new_run.id, worker_id="w2")

    assert again.id == first.id
    assert again.attempts == 2 and again.worker_id == "w2"
    assert again.lease_token != first.lease_token
    assert again.lease_expires_at == after + LEASE
    assert again.last_error is not None and again.last_error.startswith(
        "worker lost: lease expired at "
    )
    [entry] = again.errors
    assert entry["attempt"] == 1 and entry["worker_id"] == "w1" and not entry["permanent"]
    assert entry["error"] == again.last_error
    assert await db.run_counts(lost_run.id) == {
        "jobs_picked": 1,
        "jobs_processed": 1,
        "jobs_failed": 1,
    }
    assert await db.run_counts(new_run.id) == {"jobs_picked": 1}


async def test_a_lease_is_not_taken_over_before_it_runs_out(db: DriverUnderTest):
    await db.leased()

    assert await db.pick(at=T0 + LEASE - timedelta(milliseconds=1)) == []


async def test_an_expired_job_with_no_attempt_left_fails_instead_of_being_leased(
    db: DriverUnderTest,
):
    run = await db.driver.worker_run_insert("doomed", {}, moment=moment(T0))
    job = await db.leased(run_id=run.id, max_attempts=1)
    after = T0 + LEASE + timedelta(seconds=1)

    assert await db.pick(at=after) == []

    stored = await db.row(job.id)
    assert stored["status"] == "failed" and stored["completed_at"] == after
    assert stored["lease_token"] is None and stored["last_error"].startswith("worker lost")
    assert len(stored["errors"]) == 1
    assert await db.run_counts(run.id) == {
        "jobs_picked": 1,
        "jobs_processed": 1,
        "jobs_failed": 1,
    }


async def test_expired_jobs_go_before_ready_ones_within_max_jobs(db: DriverUnderTest):
    expired = await db.leased()
    ready = [
        await db.insert(await db.add_account(), priority=10, at=T0 + timedelta(seconds=i))
        for i in range(2)
    ]
    after = T0 + LEASE + timedelta(seconds=1)

    picked = await db.pick(max_jobs=2, at=after)

    assert {j.id for j in picked} == {expired.id, ready[0].id}


async def test_without_an_injected_clock_leases_follow_the_databases_clock(db: DriverUnderTest):
    long_ago = datetime(2020, 1, 1, tzinfo=UTC)
    await db.insert(await db.add_account(), at=long_ago)
    await db.insert(await db.add_account(), at=long_ago + timedelta(seconds=1))
    now = Moment(now=datetime.now(UTC))  # no lease_now: the database's clock judges leases
    # One job leased now by the database's clock, then one long ago by an injected clock.
    [new] = await db.driver.job_pick(
        PickParams(max_jobs=1, lease=LEASE, worker_id="w1"), moment=now
    )
    [old] = await db.driver.job_pick(
        PickParams(max_jobs=1, lease=LEASE, worker_id="w2"),
        moment=Moment(now=long_ago + timedelta(seconds=5), lease_now=long_ago),
    )
    database_now = await db.driver.lease_clock_now()

    assert new.started_at is not None and new.lease_expires_at == new.started_at + LEASE
    assert abs(new.started_at - database_now) < timedelta(seconds=5)
    await db.driver.job_lease_extend(new.id, new.lease_token, LEASE, moment=now)
    with pytest.raises(LeaseExpired):
        await db.driver.job_lease_extend(old.id, old.lease_token, LEASE, moment=now)
    [taken] = await db.driver.job_pick(
        PickParams(max_jobs=5, lease=LEASE, worker_id="w3"), moment=now
    )
    assert taken.id == old.id and taken.attempts == 2


async def _pick_leased(
    db: DriverUnderTest, at: datetime, *, worker_id: str = "w1", run_id=None
) -> list[LeasedJob]:
    return await db.driver.job_pick_leased(
        PickParams(max_jobs=10, lease=LEASE, worker_id=worker_id, worker_run_id=run_id),
        moment=Moment(now=at, lease_now=at),
    )


async def test_a_workers_pick_leases_as_the_full_pick_does_and_answers_the_leased_fields(
    db: DriverUnderTest,
):
    run = await db.driver.worker_run_insert("w1", {}, moment=moment(T0))
    late = await db.insert(
        await db.add_account(), priority=0, scheduled_at=T0 + timedelta(seconds=1)
    )
    urgent = await db.insert(
        await db.add_account(),
        priority=5,
        at=T0 + timedelta(seconds=2),
        trace_context={"traceparent": "00-abc-def-01"},
        metadata={"requested_by": "ops"},
        max_attempts=7,
    )
    now = T0 + timedelta(seconds=10)

    picked = await _pick_leased(db, now, worker_id="worker-7", run_id=run.id)

    assert [j.id for j in picked] == [urgent.id, late.id]
    for job, enqueued in zip(picked, (urgent, late), strict=True):
        stored = await db.row(job.id)
        assert isinstance(job, LeasedJob)
        assert job.status is JobStatus.PROCESSING and job.attempts == 1
        assert job.lease_token is not None and job.lease_token == stored["lease_token"]
        assert (job.started_at, job.lease_expires_at) == (now, now + LEASE)
        assert stored["worker_id"] == "worker-7" and stored["worker_run_id"] == run.id
        assert job.account_name == "Acme" and job.account_id == enqueued.account_id
        assert (job.sync_type, job.priority, job.max_attempts) == (
            enqueued.sync_type,
            enqueued.priority,
            enqueued.max_attempts,
        )
        assert (job.created_at, job.scheduled_at) == (enqueued.created_at, enqueued.scheduled_at)
        assert job.trace_context == enqueued.trace_context
        assert job.fair_key == stored["fair_key"]
    assert await db.run_counts(run.id) == {"jobs_picked": 2}


async def test_a_workers_pick_takes_over_a_lease_that_ran_out_and_records_the_lost_attempt(
    db: DriverUnderTest,
):
    lost_run = await db.driver.worker_run_insert("slow", {}, moment=moment(T0))
    first = await db.leased(run_id=lost_run.id, max_attempts=3)
    after = T0 + LEASE + timedelta(seconds=1)

    [again] = await _pick_leased(db, after, worker_id="w2")

    assert again.id == first.id and again.attempts == 2
    assert again.lease_token != first.lease_token
    assert again.lease_expires_at == after + LEASE
    stored = await db.row(first.id)
    assert stored["worker_id"] == "w2" and stored["last_error"].startswith("worker lost")
    assert len(stored["errors"]) == 1
    assert await db.run_counts(lost_run.id) == {
        "jobs_picked": 1,
        "jobs_processed": 1,
        "jobs_failed": 1,
    }
