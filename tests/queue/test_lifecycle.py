"""A job's life: pick order, leases, retries with backoff, permanent failures, recovery."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from gmbsync.queue.v1 import queue_service_pb2 as pb
from tests.conftest import WORKER_METADATA
from tests.queue.helpers import run_counts_of

MINUTE = timedelta(minutes=1)


def seconds(value: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(timedelta(seconds=value))
    return duration


async def test_jobs_are_picked_by_priority_then_age(queue):
    accounts = [await queue.add_account() for _ in range(4)]
    low_old = await queue.enqueue(accounts[0], priority=0)
    high = await queue.enqueue(accounts[1], priority=10)
    low_new = await queue.enqueue(accounts[2], priority=0)
    negative = await queue.enqueue(accounts[3], priority=-5)

    picked = await queue.pick(max_jobs=4)

    assert [j.id for j in picked] == [high.id, low_old.id, low_new.id, negative.id]


async def test_pick_leases_the_job_and_counts_the_attempt(queue):
    account = await queue.add_account(name="Acme Bakery")
    job = await queue.enqueue(account, metadata=struct_pb2.Struct(fields={}))

    [picked] = await queue.pick(worker_id="worker-7", lease_duration=seconds(30))

    assert picked.status == pb.JOB_STATUS_PROCESSING
    assert picked.attempts == 1
    assert picked.worker_id == "worker-7"
    assert picked.account_name == "Acme Bakery"
    assert picked.lease_token
    lease = picked.lease_expires_at.ToDatetime() - picked.started_at.ToDatetime()
    assert lease == timedelta(seconds=30)
    # The token is a capability of the worker that holds the lease: nobody else is shown it.
    assert (await queue.get(job.id)).lease_token == ""
    assert await queue.pick() == []


async def test_a_job_scheduled_later_is_not_picked_before_its_time(queue):
    account = await queue.add_account()
    later = timestamp_pb2.Timestamp()
    later.FromDatetime(datetime.now(UTC) + timedelta(minutes=10))
    job = await queue.enqueue(account, scheduled_at=later)

    assert await queue.pick() == []
    queue.advance_clock(timedelta(minutes=11))
    [picked] = await queue.pick()
    assert picked.id == job.id


async def test_complete_records_success_and_result(queue):
    account = await queue.add_account()
    await queue.enqueue(account)
    [picked] = await queue.pick()
    result = struct_pb2.Struct()
    result.update({"locations_synced": 3, "reviews_added": 12})

    done = await queue.complete(picked, result=result)

    assert done.status == pb.JOB_STATUS_SUCCEEDED
    assert done.completed_at.seconds > 0
    assert dict(done.result) == {"locations_synced": 3.0, "reviews_added": 12.0}
    assert not done.HasField("lease_expires_at")


async def test_failures_retry_after_1_2_4_minute_backoff_then_fail(queue):
    account = await queue.add_account()
    await queue.enqueue(account, max_attempts=3)
    expected = [1, 2]
    for attempt, minutes in enumerate(expected, start=1):
        [picked] = await queue.pick()
        assert picked.attempts == attempt
        response = await queue.fail(picked, error=f"google 503 on attempt {attempt}")
        assert response.will_retry
        job = response.job
        assert job.status == pb.JOB_STATUS_PENDING
        delay = job.scheduled_at.ToDatetime() - job.updated_at.ToDatetime()
        # 1, 2 minutes with at most 10% jitter either way.
        assert minutes * MINUTE * 0.9 <= delay <= minutes * MINUTE * 1.1
        assert await queue.pick() == []  # not before the backoff ends
        queue.advance_clock(minutes * MINUTE * 1.1 + timedelta(seconds=1))

    [picked] = await queue.pick()
    response = await queue.fail(picked, error="google 503 on attempt 3")

    assert not response.will_retry
    assert response.job.status == pb.JOB_STATUS_FAILED
    assert response.job.last_error == "google 503 on attempt 3"
    assert [(e.attempt, e.error) for e in response.job.errors] == [
        (1, "google 503 on attempt 1"),
        (2, "google 503 on attempt 2"),
        (3, "google 503 on attempt 3"),
    ]


async def test_a_permanent_error_fails_at_once_without_burning_retries(queue):
    account = await queue.add_account()
    await queue.enqueue(account, max_attempts=5)
    [picked] = await queue.pick()

    response = await queue.fail(picked, error="invalid_grant: reconnect", permanent=True)

    assert not response.will_retry
    assert response.job.status == pb.JOB_STATUS_FAILED
    assert response.job.attempts == 1
    assert response.job.errors[0].permanent


async def test_a_longer_server_retry_after_wins_over_backoff(queue):
    account = await queue.add_account()
    await queue.enqueue(account)
    [picked] = await queue.pick()

    response = await queue.fail(picked, error="429 quota", retry_after=seconds(600))

    delay = response.job.scheduled_at.ToDatetime() - response.job.updated_at.ToDatetime()
    assert delay == timedelta(seconds=600)


async def test_release_returns_the_job_without_spending_its_attempt(queue):
    account = await queue.add_account()
    await queue.enqueue(account, max_attempts=1)
    [picked] = await queue.pick()

    released = await queue.stub.ReleaseJob(
        pb.ReleaseJobRequest(job_id=picked.id, lease_token=picked.lease_token, reason="shutdown"),
        metadata=WORKER_METADATA,
    )

    assert released.job.status == pb.JOB_STATUS_PENDING
    assert released.job.attempts == 0
    [again] = await queue.pick()  # max_attempts=1, and still pickable
    assert again.id == picked.id


async def test_release_with_a_delay_holds_the_job_back_and_records_why(queue):
    account = await queue.add_account()
    await queue.enqueue(account, max_attempts=1)
    [picked] = await queue.pick()
    failed_before = picked.attempts - 1

    released = await queue.stub.ReleaseJob(
        pb.ReleaseJobRequest(
            job_id=picked.id,
            lease_token=picked.lease_token,
            reason="deferred 90 s by SyncService: RESOURCE_EXHAUSTED GOOGLE_QUOTA",
            delay=seconds(90),
        ),
        metadata=WORKER_METADATA,
    )

    job = released.job
    assert job.status == pb.JOB_STATUS_PENDING
    assert job.attempts == failed_before  # given back
    assert job.scheduled_at.ToDatetime() - job.updated_at.ToDatetime() == timedelta(seconds=90)
    assert job.last_error == "deferred 90 s by SyncService: RESOURCE_EXHAUSTED GOOGLE_QUOTA"
    assert list(job.errors) == []  # a release is not a failed attempt
    assert not job.lease_token
    assert await queue.pick() == []  # held back ...
    queue.advance_clock(timedelta(seconds=91))
    [again] = await queue.pick()  # ... until the delay is over, with its attempt intact
    assert again.id == picked.id
    assert again.attempts == 1


async def test_release_without_a_reason_keeps_the_last_error(queue):
    account = await queue.add_account()
    await queue.enqueue(account, max_attempts=3)
    [first] = await queue.pick()
    await queue.fail(first, error="google 503")
    queue.advance_clock(timedelta(hours=1))
    [second] = await queue.pick()

    released = await queue.stub.ReleaseJob(
        pb.ReleaseJobRequest(job_id=second.id, lease_token=second.lease_token),
        metadata=WORKER_METADATA,
    )

    assert released.job.last_error == "google 503"
    assert released.job.attempts == 1
    assert not released.job.HasField("scheduled_at")  # no delay: runnable at once


async def test_a_completed_job_clears_a_release_reason(queue):
    account = await queue.add_account()
    await queue.enqueue(account)
    [picked] = await queue.pick()
    await queue.stub.ReleaseJob(
        pb.ReleaseJobRequest(
            job_id=picked.id, lease_token=picked.lease_token, reason="worker shutting down"
        ),
        metadata=WORKER_METADATA,
    )
    [again] = await queue.pick()

    done = await queue.complete(again)

    assert done.last_error == ""


async def test_extend_lease_moves_the_expiry(queue):
    account = await queue.add_account()
    await queue.enqueue(account)
    [picked] = await queue.pick(lease_duration=seconds(10))

    response = await queue.stub.ExtendLease(
        pb.ExtendLeaseRequest(
            job_id=picked.id, lease_token=picked.lease_token, lease_duration=seconds(300)
        ),
        metadata=WORKER_METADATA,
    )

    assert response.lease_expires_at.ToDatetime() > picked.lease_expires_at.ToDatetime()
    queue.advance_clock(timedelta(seconds=60))
    recovered = await queue.app.store.jobs_recover()
    assert recovered.requeued == [] and recovered.failed == []


async def test_a_worker_that_lost_its_lease_cannot_complete_fail_or_extend(queue):
    account = await queue.add_account()
    await queue.enqueue(account, max_attempts=3)
    [first] = await queue.pick(worker_id="slow-worker", lease_duration=seconds(10))
    queue.advance_clock(timedelta(seconds=11))
    recovered = await queue.app.store.jobs_recover()
    assert [str(i) for i in recovered.requeued] == [first.id]
    queue.advance_clock(timedelta(minutes=2))
    [second] = await queue.pick(worker_id="fast-worker")
    assert second.id == first.id and second.lease_token != first.lease_token

    for call in (
        queue.complete(first),
        queue.fail(first),
        queue.stub.ExtendLease(
            pb.ExtendLeaseRequest(job_id=first.id, lease_token=first.lease_token),
            metadata=WORKER_METADATA,
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no longer held" in err.value.details()

    done = await queue.complete(second)
    assert done.status == pb.JOB_STATUS_SUCCEEDED
    assert done.worker_id == "fast-worker"


async def test_an_expired_lease_on_the_last_attempt_fails_the_job_saying_the_worker_was_lost(queue):
    account = await queue.add_account()
    await queue.enqueue(account, max_attempts=1)
    [picked] = await queue.pick(worker_id="doomed", lease_duration=seconds(5))
    queue.advance_clock(timedelta(seconds=6))

    recovered = await queue.app.store.jobs_recover()

    assert [str(i) for i in recovered.failed] == [picked.id]
    job = await queue.get(picked.id)
    assert job.status == pb.JOB_STATUS_FAILED
    assert "worker lost" in job.last_error and "doomed" in job.last_error


async def test_the_reaper_recovers_expired_leases_by_itself(any_db_url, auth_settings):
    from tests.queue.conftest import queue_settings, start_queue, stop_queue

    running = await start_queue(
        queue_settings(any_db_url, auth_settings, reaper_interval=timedelta(milliseconds=50))
    )
    try:
        account = await running.add_account()
        await running.enqueue(account)
        [picked] = await running.pick(lease_duration=seconds(5))
        running.advance_clock(timedelta(seconds=6))
        for _ in range(200):
            job = await running.get(picked.id)
            if job.status == pb.JOB_STATUS_PENDING:
                break
            await asyncio.sleep(0.05)
        assert job.status == pb.JOB_STATUS_PENDING
        assert "lease expired" in job.last_error
    finally:
        await stop_queue(running)


async def test_mark_stale_jobs_recovers_jobs_processing_past_the_threshold(queue):
    account = await queue.add_account()
    await queue.enqueue(account)
    [picked] = await queue.pick(lease_duration=seconds(3600))
    queue.advance_clock(timedelta(minutes=11))

    response = await queue.stub.MarkStaleJobs(
        pb.MarkStaleJobsRequest(threshold=seconds(600)), metadata=WORKER_METADATA
    )

    assert response.requeued == 1 and list(response.job_ids) == [picked.id]
    job = await queue.get(picked.id)
    assert job.status == pb.JOB_STATUS_PENDING
    assert "stale threshold" in job.last_error


async def test_cancel_only_a_pending_job(queue):
    first, second = await queue.add_account(), await queue.add_account()
    pending = await queue.enqueue(first, priority=0)
    await queue.enqueue(second, priority=10)
    [processing] = await queue.pick(max_jobs=1)
    await queue.stub.CancelJob(pb.CancelJobRequest(job_id=pending.id), metadata=WORKER_METADATA)

    cancelled = await queue.get(pending.id)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await queue.stub.CancelJob(
            pb.CancelJobRequest(job_id=processing.id), metadata=WORKER_METADATA
        )

    assert cancelled.status == pb.JOB_STATUS_CANCELLED
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "processing" in err.value.details()


async def test_retry_puts_a_failed_job_back_with_fresh_attempts(queue):
    account = await queue.add_account()
    await queue.enqueue(account, max_attempts=1)
    [picked] = await queue.pick()
    await queue.fail(picked)

    response = await queue.stub.RetryJob(
        pb.RetryJobRequest(job_id=picked.id), metadata=WORKER_METADATA
    )

    assert response.job.status == pb.JOB_STATUS_PENDING
    assert response.job.attempts == 0
    assert len(response.job.errors) == 1  # history is kept
    [again] = await queue.pick()
    assert again.id == picked.id


async def test_retry_is_refused_while_the_account_has_another_active_job(queue):
    account = await queue.add_account()
    first = await queue.enqueue(account)
    await queue.stub.CancelJob(pb.CancelJobRequest(job_id=first.id), metadata=WORKER_METADATA)
    await queue.enqueue(account)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await queue.stub.RetryJob(pb.RetryJobRequest(job_id=first.id), metadata=WORKER_METADATA)

    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already has a pending or processing job" in err.value.details()


async def test_retry_of_a_pending_job_is_an_illegal_transition(queue):
    account = await queue.add_account()
    job = await queue.enqueue(account)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await queue.stub.RetryJob(pb.RetryJobRequest(job_id=job.id), metadata=WORKER_METADATA)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_report_results_applies_each_result_and_refuses_only_lost_leases(queue):
    accounts = [await queue.add_account() for _ in range(3)]
    for account in accounts:
        await queue.enqueue(account)
    ok, failing, lost = await queue.pick(max_jobs=3)
    counts = struct_pb2.Struct()
    counts.update({"reviews_added": 7, "note": "café ✓"})
    request = pb.ReportResultsRequest(
        results=[
            pb.JobResult(
                complete=pb.CompleteJobRequest(
                    job_id=ok.id, lease_token=ok.lease_token, result=counts
                )
            ),
            pb.JobResult(
                fail=pb.FailJobRequest(
                    job_id=failing.id, lease_token=failing.lease_token, error="503"
                )
            ),
            pb.JobResult(
                complete=pb.CompleteJobRequest(
                    job_id=lost.id, lease_token="00000000-0000-4000-8000-000000000000"
                )
            ),
        ]
    )

    response = await queue.stub.ReportResults(request, metadata=WORKER_METADATA)

    codes = [grpc.StatusCode.OK.value[0], grpc.StatusCode.OK.value[0]]
    assert [a.code for a in response.acks[:2]] == codes
    assert response.acks[0].job.status == pb.JOB_STATUS_SUCCEEDED
    assert dict((await queue.get(ok.id)).result) == {"reviews_added": 7.0, "note": "café ✓"}
    assert response.acks[1].job.status == pb.JOB_STATUS_PENDING
    assert response.acks[2].code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "no longer held" in response.acks[2].message
    assert (await queue.get(lost.id)).status == pb.JOB_STATUS_PROCESSING


async def test_worker_run_counts_are_kept_by_the_server(queue):
    run = (
        await queue.stub.StartWorkerRun(
            pb.StartWorkerRunRequest(worker_id="w1"), metadata=WORKER_METADATA
        )
    ).run
    accounts = [await queue.add_account() for _ in range(4)]
    for account in accounts:
        await queue.enqueue(account, max_attempts=2)
    a, b, c, d = await queue.pick(max_jobs=4, worker_run_id=run.id)
    await queue.complete(a)
    await queue.fail(b)  # retried later: one failed attempt
    await queue.fail(c, permanent=True)
    await queue.stub.ReleaseJob(
        pb.ReleaseJobRequest(job_id=d.id, lease_token=d.lease_token), metadata=WORKER_METADATA
    )

    finished = (
        await queue.stub.FinishWorkerRun(
            pb.FinishWorkerRunRequest(
                run_id=run.id, status=pb.WORKER_RUN_STATUS_COMPLETED, notes="done"
            ),
            metadata=WORKER_METADATA,
        )
    ).run

    assert run_counts_of(finished) == (4, 3, 1, 2, 1)
    assert finished.status == pb.WORKER_RUN_STATUS_COMPLETED
    assert finished.HasField("finished_at")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await queue.stub.FinishWorkerRun(
            pb.FinishWorkerRunRequest(run_id=run.id, status=pb.WORKER_RUN_STATUS_FAILED),
            metadata=WORKER_METADATA,
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_report_results_counts_each_result_for_its_worker_run(queue):
    run = (
        await queue.stub.StartWorkerRun(
            pb.StartWorkerRunRequest(worker_id="batcher"), metadata=WORKER_METADATA
        )
    ).run
    for _ in range(3):
        await queue.enqueue(await queue.add_account(), max_attempts=3)
    first, second, third = await queue.pick(max_jobs=3, worker_run_id=run.id)

    await queue.stub.ReportResults(
        pb.ReportResultsRequest(
            results=[
                pb.JobResult(complete=pb.CompleteJobRequest(job_id=j.id, lease_token=j.lease_token))
                for j in (first, second)
            ]
            + [
                pb.JobResult(
                    fail=pb.FailJobRequest(
                        job_id=third.id, lease_token=third.lease_token, error="503"
                    )
                )
            ]
        ),
        metadata=WORKER_METADATA,
    )
    finished = (
        await queue.stub.FinishWorkerRun(
            pb.FinishWorkerRunRequest(run_id=run.id, status=pb.WORKER_RUN_STATUS_COMPLETED),
            metadata=WORKER_METADATA,
        )
    ).run

    counts = (
        finished.jobs_picked,
        finished.jobs_processed,
        finished.jobs_succeeded,
        finished.jobs_failed,
    )
    assert counts == (3, 3, 2, 1)


async def test_report_results_answers_an_unknown_job_with_not_found(queue):
    await queue.enqueue(await queue.add_account())
    [picked] = await queue.pick()
    unknown = "00000000-0000-4000-8000-0000000000ff"

    response = await queue.stub.ReportResults(
        pb.ReportResultsRequest(
            results=[
                pb.JobResult(complete=pb.CompleteJobRequest(job_id=unknown, lease_token=unknown)),
                pb.JobResult(
                    complete=pb.CompleteJobRequest(job_id=picked.id, lease_token=picked.lease_token)
                ),
            ]
        ),
        metadata=WORKER_METADATA,
    )

    assert [a.code for a in response.acks] == [
        grpc.StatusCode.NOT_FOUND.value[0],
        grpc.StatusCode.OK.value[0],
    ]
    assert "not found" in response.acks[0].message
    assert response.acks[1].job.status == pb.JOB_STATUS_SUCCEEDED
