"""Leased jobs: `job_lease_extend`, `job_report_many` (completions and failures, one or many)
and `job_release`, each only under the lease it names."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest

from queue_service.errors import JobNotFound, LeaseExpired, LeaseLost
from queue_service.models import Completion, Failure, JobStatus, Release
from tests.queue.driver.conftest import BASE_DELAY, LEASE, T0, DriverUnderTest, moment

AT = T0 + timedelta(seconds=10)  # while the lease granted at T0 holds
EXPIRED = T0 + LEASE + timedelta(seconds=1)


def close_to(value: datetime | None, expected: datetime) -> bool:
    return value is not None and abs(value - expected) <= timedelta(milliseconds=1)


# -- leases ------------------------------------------------------------------------------------


async def test_a_held_lease_is_moved_to_its_new_end(db: DriverUnderTest):
    job = await db.leased()

    expires = await db.driver.job_lease_extend(
        job.id, job.lease_token, timedelta(minutes=5), moment=moment(AT)
    )

    assert expires == AT + timedelta(minutes=5)
    assert (await db.row(job.id))["lease_expires_at"] == expires


@pytest.mark.parametrize(
    ("case", "error"),
    [("wrong token", LeaseLost), ("expired", LeaseExpired), ("no such job", JobNotFound)],
)
async def test_a_lease_not_held_cannot_be_extended(db: DriverUnderTest, case: str, error: type):
    job = await db.leased()
    job_id, token, at = job.id, job.lease_token, AT
    if case == "wrong token":
        token = uuid.uuid4()
    elif case == "expired":
        at = EXPIRED
    else:
        job_id = uuid.uuid4()

    with pytest.raises(error):
        await db.driver.job_lease_extend(job_id, token, LEASE, moment=moment(at))

    assert (await db.row(job.id))["lease_expires_at"] == T0 + LEASE


# -- completions -------------------------------------------------------------------------------


async def test_a_completion_makes_the_job_succeeded_and_counts_it(db: DriverUnderTest):
    run = await db.driver.worker_run_insert("w1", {}, moment=moment(T0))
    job = await db.leased(run_id=run.id)

    [ack] = await db.driver.job_report_many(
        [Completion(job.id, job.lease_token, {"locations": 3})], moment=moment(AT)
    )

    assert ack.error is None and ack.job is not None and not ack.will_retry
    assert ack.job.status is JobStatus.SUCCEEDED and ack.job.result == {"locations": 3}
    assert ack.job.account_name == "Acme"
    stored = await db.row(job.id)
    assert (stored["status"], stored["completed_at"], stored["result"]) == (
        "succeeded",
        AT,
        {"locations": 3},
    )
    assert stored["lease_token"] is None and stored["lease_expires_at"] is None
    assert await db.run_counts(run.id) == {
        "jobs_picked": 1,
        "jobs_processed": 1,
        "jobs_succeeded": 1,
    }


@pytest.mark.parametrize(
    ("case", "error"),
    [("wrong token", LeaseLost), ("expired", LeaseExpired), ("no such job", JobNotFound)],
)
async def test_a_result_without_the_lease_is_refused_and_changes_nothing(
    db: DriverUnderTest, case: str, error: type
):
    run = await db.driver.worker_run_insert("w1", {}, moment=moment(T0))
    job = await db.leased(run_id=run.id)
    job_id, token, at = job.id, job.lease_token, AT
    if case == "wrong token":
        token = uuid.uuid4()
    elif case == "expired":
        at = EXPIRED
    else:
        job_id = uuid.uuid4()

    acks = await db.driver.job_report_many([Completion(job_id, token)], moment=moment(at))
    fail_acks = await db.driver.job_report_many([Failure(job_id, token, "boom")], moment=moment(at))

    for [ack] in (acks, fail_acks):
        assert ack.job_id == job_id and ack.job is None
        assert type(ack.error) is error
    stored = await db.row(job.id)
    assert stored["status"] == "processing" and stored["lease_token"] == job.lease_token
    assert stored["errors"] == []
    assert await db.run_counts(run.id) == {"jobs_picked": 1}


# -- failures ----------------------------------------------------------------------------------


async def test_a_failure_with_attempts_left_is_retried_after_the_backoff(db: DriverUnderTest):
    run = await db.driver.worker_run_insert("w1", {}, moment=moment(T0))
    job = await db.leased(run_id=run.id, max_attempts=3)

    [ack] = await db.driver.job_report_many(
        [Failure(job.id, job.lease_token, "Google said 500")], moment=moment(AT)
    )

    assert ack.error is None and ack.will_retry
    assert ack.job is not None and ack.job.status is JobStatus.PENDING
    stored = await db.row(job.id)
    # The policy's random is 0.5: no jitter, the first retry waits the base delay exactly.
    assert close_to(stored["scheduled_at"], AT + BASE_DELAY)
    assert stored["completed_at"] is None and stored["lease_token"] is None
    assert stored["last_error"] == "Google said 500"
    assert stored["errors"] == [
        {
            "attempt": 1,
            "error": "Google said 500",
            "failed_at": AT.isoformat(),
            "worker_id": "w1",
            "permanent": False,
        }
    ]
    assert await db.run_counts(run.id) == {
        "jobs_picked": 1,
        "jobs_processed": 1,
        "jobs_failed": 1,
    }


async def test_the_backoff_doubles_with_each_attempt_within_the_jitter(db: DriverUnderTest):
    account = await db.add_account()
    job = await db.leased(account, max_attempts=5)
    await db.driver.job_report_many([Failure(job.id, job.lease_token, "one")], moment=moment(AT))
    second_at = AT + BASE_DELAY
    [again] = await db.pick(at=second_at)
    db.random.values = [1.0]  # the most jitter one way: +10 %
    later = second_at + timedelta(seconds=1)

    [ack] = await db.driver.job_report_many(
        [Failure(again.id, again.lease_token, "two")], moment=moment(later)
    )

    assert ack.will_retry
    assert close_to((await db.row(job.id))["scheduled_at"], later + 2 * BASE_DELAY * 1.1)


async def test_the_least_jitter_shortens_the_delay_by_the_jitter_share(db: DriverUnderTest):
    job = await db.leased(max_attempts=3)
    db.random.values = [0.0]

    await db.driver.job_report_many([Failure(job.id, job.lease_token, "x")], moment=moment(AT))

    assert close_to((await db.row(job.id))["scheduled_at"], AT + BASE_DELAY * 0.9)


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        (timedelta(minutes=10), timedelta(minutes=10)),  # longer than the backoff: it wins
        (timedelta(seconds=5), BASE_DELAY),  # shorter: the backoff stands
        (timedelta(days=3), timedelta(hours=24)),  # never past a day
    ],
)
async def test_a_retry_after_longer_than_the_backoff_wins(
    db: DriverUnderTest, retry_after: timedelta, expected: timedelta
):
    job = await db.leased(max_attempts=3)

    [ack] = await db.driver.job_report_many(
        [Failure(job.id, job.lease_token, "429", retry_after=retry_after)], moment=moment(AT)
    )

    assert ack.will_retry
    assert close_to((await db.row(job.id))["scheduled_at"], AT + expected)


async def test_a_permanent_failure_fails_the_job_at_once(db: DriverUnderTest):
    job = await db.leased(max_attempts=3)

    [ack] = await db.driver.job_report_many(
        [Failure(job.id, job.lease_token, "grant revoked", permanent=True)], moment=moment(AT)
    )

    assert ack.error is None and not ack.will_retry
    assert ack.job is not None and ack.job.status is JobStatus.FAILED
    stored = await db.row(job.id)
    assert (stored["status"], stored["completed_at"]) == ("failed", AT)
    assert stored["scheduled_at"] is None
    assert stored["errors"][0]["permanent"] is True


async def test_a_failure_of_the_last_attempt_fails_the_job(db: DriverUnderTest):
    job = await db.leased(max_attempts=1)

    [ack] = await db.driver.job_report_many(
        [Failure(job.id, job.lease_token, "still broken")], moment=moment(AT)
    )

    assert not ack.will_retry
    stored = await db.row(job.id)
    assert (stored["status"], stored["completed_at"]) == ("failed", AT)


async def test_an_error_text_is_kept_to_its_bound(db: DriverUnderTest):
    job = await db.leased()

    await db.driver.job_report_many(
        [Failure(job.id, job.lease_token, "é" * 5000)], moment=moment(AT)
    )

    stored = await db.row(job.id)
    assert stored["last_error"] == "é" * 4000
    assert stored["errors"][0]["error"] == "é" * 4000


# -- many at once ------------------------------------------------------------------------------


async def test_a_report_applies_every_result_it_may_and_answers_each_in_order(
    db: DriverUnderTest,
):
    run_a = await db.driver.worker_run_insert("a", {}, moment=moment(T0))
    run_b = await db.driver.worker_run_insert("b", {}, moment=moment(T0))
    for i in range(5):
        await db.insert(await db.add_account(), at=T0 + timedelta(seconds=i))
    jobs = await db.pick(max_jobs=3, run_id=run_a.id)
    jobs += await db.pick(max_jobs=2, run_id=run_b.id, worker_id="w2")
    done, retried, failed, stranger, lost = jobs

    acks = await db.driver.job_report_many(
        [
            Failure(retried.id, retried.lease_token, "later"),
            Completion(done.id, done.lease_token, {"n": 1}),
            Completion(lost.id, uuid.uuid4()),
            Failure(failed.id, failed.lease_token, "no", permanent=True),
            Completion(stranger.id, stranger.lease_token),
        ],
        moment=moment(AT),
    )

    assert [a.job_id for a in acks] == [retried.id, done.id, lost.id, failed.id, stranger.id]
    assert [a.error is None for a in acks] == [True, True, False, True, True]
    assert isinstance(acks[2].error, LeaseLost)
    assert [a.will_retry for a in acks] == [True, False, False, False, False]
    assert [a.job.status if a.job else None for a in acks] == [
        JobStatus.PENDING,
        JobStatus.SUCCEEDED,
        None,
        JobStatus.FAILED,
        JobStatus.SUCCEEDED,
    ]
    assert (await db.row(lost.id))["status"] == "processing"
    assert await db.run_counts(run_a.id) == {
        "jobs_picked": 3,
        "jobs_processed": 3,
        "jobs_succeeded": 1,
        "jobs_failed": 2,
    }
    assert await db.run_counts(run_b.id) == {
        "jobs_picked": 2,
        "jobs_processed": 1,
        "jobs_succeeded": 1,
    }


async def test_each_failure_of_a_report_gets_its_own_backoff_and_jitter(db: DriverUnderTest):
    veteran = await db.leased(await db.add_account(), max_attempts=5)
    await db.driver.job_report_many(
        [Failure(veteran.id, veteran.lease_token, "first")], moment=moment(AT)
    )
    again_at = AT + BASE_DELAY
    [veteran] = await db.pick(at=again_at)
    newcomer = await db.insert(await db.add_account(), at=again_at)
    [newcomer] = await db.pick(at=again_at)
    db.random.values = [0.0, 1.0]  # -10 % for the first failure, +10 % for the second
    at = again_at + timedelta(seconds=1)

    acks = await db.driver.job_report_many(
        [
            Failure(veteran.id, veteran.lease_token, "second"),
            Failure(newcomer.id, newcomer.lease_token, "first"),
        ],
        moment=moment(at),
    )

    assert [a.will_retry for a in acks] == [True, True]
    assert close_to((await db.row(veteran.id))["scheduled_at"], at + 2 * BASE_DELAY * 0.9)
    assert close_to((await db.row(newcomer.id))["scheduled_at"], at + BASE_DELAY * 1.1)
    assert [e["attempt"] for e in (await db.row(veteran.id))["errors"]] == [1, 2]


async def test_acks_without_jobs_say_what_was_accepted(db: DriverUnderTest):
    first = await db.leased(await db.add_account())
    second = await db.leased(await db.add_account())

    acks = await db.driver.job_report_many(
        [
            Completion(first.id, first.lease_token),
            Failure(second.id, second.lease_token, "x"),
            Completion(uuid.uuid4(), uuid.uuid4()),
        ],
        moment=moment(AT),
        with_jobs=False,
    )

    assert [(a.job, a.will_retry) for a in acks] == [(None, False), (None, True), (None, False)]
    assert [a.error is None for a in acks] == [True, True, False]
    assert isinstance(acks[2].error, JobNotFound)
    assert (await db.row(first.id))["status"] == "succeeded"
    assert (await db.row(second.id))["status"] == "pending"


# -- release -----------------------------------------------------------------------------------


async def test_a_release_gives_the_attempt_back_and_keeps_the_reason(db: DriverUnderTest):
    run = await db.driver.worker_run_insert("w1", {}, moment=moment(T0))
    job = await db.leased(run_id=run.id)

    released = await db.driver.job_release(
        Release(job.id, job.lease_token, reason="quota", delay=timedelta(minutes=2)),
        moment=moment(AT),
    )

    assert released.status is JobStatus.PENDING and released.attempts == 0
    assert released.scheduled_at == AT + timedelta(minutes=2)
    assert released.last_error == "quota" and released.errors == []
    assert released.lease_token is None
    assert await db.run_counts(run.id) == {"jobs_picked": 1, "jobs_released": 1}


async def test_a_release_without_delay_or_reason_is_due_at_once(db: DriverUnderTest):
    job = await db.leased()

    released = await db.driver.job_release(Release(job.id, job.lease_token), moment=moment(AT))

    assert released.scheduled_at is None and released.last_error is None
    assert [j.id for j in await db.pick(at=AT)] == [job.id]


@pytest.mark.parametrize(
    ("case", "error"),
    [("wrong token", LeaseLost), ("expired", LeaseExpired), ("no such job", JobNotFound)],
)
async def test_a_release_needs_the_lease(db: DriverUnderTest, case: str, error: type):
    job = await db.leased()
    job_id, token, at = job.id, job.lease_token, AT
    if case == "wrong token":
        token = uuid.uuid4()
    elif case == "expired":
        at = EXPIRED
    else:
        job_id = uuid.uuid4()

    with pytest.raises(error):
        await db.driver.job_release(Release(job_id, token), moment=moment(at))

    assert (await db.row(job.id))["status"] == "processing"
