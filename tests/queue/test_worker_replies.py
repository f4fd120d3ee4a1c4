"""What a worker asks to be spared: the worker view of PickJobs, acks without jobs, and
releases reported in a ReportResults batch beside completions and failures."""

from __future__ import annotations

import uuid
from datetime import timedelta

import grpc
from google.protobuf import duration_pb2

from gmbsync.queue.v1 import queue_service_pb2 as pb
from tests.conftest import WORKER_METADATA
from tests.queue.helpers import invalid_fields, job_row, run_counts_of

OK = grpc.StatusCode.OK.value[0]
WORKER_FIELDS = {
    "id",
    "account_id",
    "account_name",
    "sync_type",
    "status",
    "attempts",
    "max_attempts",
    "lease_token",
    "lease_expires_at",
    "trace_context",
}


def _delay(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(timedelta(seconds=seconds))
    return duration


async def _start_run(queue) -> pb.WorkerRun:
    response = await queue.stub.StartWorkerRun(
        pb.StartWorkerRunRequest(worker_id="batcher"), metadata=WORKER_METADATA
    )
    return response.run


async def _finish_run(queue, run_id: str) -> tuple[int, ...]:
    run = (
        await queue.stub.FinishWorkerRun(
            pb.FinishWorkerRunRequest(run_id=run_id, status=pb.WORKER_RUN_STATUS_COMPLETED),
            metadata=WORKER_METADATA,
        )
    ).run
    return run_counts_of(run)


async def test_the_worker_view_of_pick_jobs_carries_only_what_a_worker_reads(queue):
    account = await queue.add_account(name="Worker View Cafe")
    job = await queue.enqueue(
        account, max_attempts=4, metadata={"source": "test"}, sync_type=pb.SYNC_TYPE_INCREMENTAL
    )

    [picked] = await queue.pick(view=pb.JOB_VIEW_WORKER, worker_id="w-view")

    # (trace_context is set only when the enqueue ran under a trace.)
    assert {f.name for f, _ in picked.ListFields()} - {"trace_context"} == WORKER_FIELDS - {
        "trace_context"
    }
    assert picked.id == job.id
    assert picked.account_id == str(account)
    assert picked.account_name == "Worker View Cafe"
    assert picked.sync_type == pb.SYNC_TYPE_INCREMENTAL
    assert picked.status == pb.JOB_STATUS_PROCESSING
    assert (picked.attempts, picked.max_attempts) == (1, 4)
    row = await job_row(queue.app.engine, job.id)
    assert picked.lease_token == str(row["lease_token"])
    assert picked.lease_expires_at.ToDatetime().replace(microsecond=0) == row[
        "lease_expires_at"
    ].replace(tzinfo=None, microsecond=0)
    # Fields a worker never reads stay unset: no metadata, worker id, timestamps or errors.
    assert not picked.HasField("metadata") and not picked.HasField("created_at")
    assert picked.worker_id == "" and picked.user_id == ""


async def test_the_worker_view_carries_the_enqueue_trace_context(queue):
    account = await queue.add_account()
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    await queue.stub.EnqueueSync(
        pb.EnqueueSyncRequest(account_id=str(account), sync_type=pb.SYNC_TYPE_FULL),
        metadata=(*WORKER_METADATA, ("traceparent", traceparent)),
    )

    [picked] = await queue.pick(view=pb.JOB_VIEW_WORKER)

    assert picked.trace_context["traceparent"].split("-")[1] == traceparent.split("-")[1]


async def test_pick_jobs_without_a_view_still_returns_the_full_job(queue):
    account = await queue.add_account()
    await queue.enqueue(account, metadata={"source": "grpcurl"})

    [default] = await queue.pick()

    assert default.HasField("metadata") and dict(default.metadata) == {"source": "grpcurl"}
    assert default.HasField("created_at") and default.HasField("started_at")
    assert default.worker_id == "test-worker" and default.user_id


async def test_pick_jobs_with_an_unknown_view_is_invalid_and_leases_nothing(pg_queue):
    job = await pg_queue.enqueue(await pg_queue.add_account())

    reported = await invalid_fields(
        pg_queue.stub.PickJobs(
            pb.PickJobsRequest(worker_id="w1", view=99), metadata=WORKER_METADATA
        )
    )

    assert reported == ["view"]
    assert (await job_row(pg_queue.app.engine, job.id))["status"] == "pending"


async def test_ack_only_reports_answer_each_job_with_its_code_and_status_only(queue):
    run = await _start_run(queue)
    for _ in range(4):
        await queue.enqueue(await queue.add_account(), max_attempts=2)
    done, retried, released, lost = await queue.pick(max_jobs=4, worker_run_id=run.id)
    request = pb.ReportResultsRequest(
        ack_only=True,
        results=[
            pb.JobResult(
                complete=pb.CompleteJobRequest(job_id=done.id, lease_token=done.lease_token)
            ),
            pb.JobResult(
                fail=pb.FailJobRequest(
                    job_id=retried.id, lease_token=retried.lease_token, error="503"
                )
            ),
            pb.JobResult(
                release=pb.ReleaseJobRequest(
                    job_id=released.id,
                    lease_token=released.lease_token,
                    reason="circuit breaker open",
                    delay=_delay(30),
                )
            ),
            pb.JobResult(
                complete=pb.CompleteJobRequest(job_id=lost.id, lease_token=str(uuid.uuid4()))
            ),
        ],
    )

    response = await queue.stub.ReportResults(request, metadata=WORKER_METADATA)

    assert [a.job_id for a in response.acks] == [done.id, retried.id, released.id, lost.id]
    assert [a.code for a in response.acks] == [
        OK,
        OK,
        OK,
        grpc.StatusCode.FAILED_PRECONDITION.value[0],
    ]
    assert [a.status for a in response.acks[:3]] == [
        pb.JOB_STATUS_SUCCEEDED,
        pb.JOB_STATUS_PENDING,
        pb.JOB_STATUS_PENDING,
    ]
    assert not any(a.HasField("job") for a in response.acks)
    assert "no longer held" in response.acks[3].message
    released_row = await job_row(queue.app.engine, released.id)
    # A release in a batch is ReleaseJob's: attempt given back, the reason kept, held back.
    assert (released_row["status"], released_row["attempts"]) == ("pending", 0)
    assert released_row["last_error"] == "circuit breaker open"
    assert released_row["errors"] == []
    assert released_row["scheduled_at"] - released_row["updated_at"] == timedelta(seconds=30)
    assert (await job_row(queue.app.engine, lost.id))["status"] == "processing"
    # picked, processed, succeeded, failed, released: the lost one is counted by nobody.
    assert await _finish_run(queue, run.id) == (4, 2, 1, 1, 1)


async def test_a_report_without_ack_only_still_returns_each_job(queue):
    await queue.enqueue(await queue.add_account())
    [job] = await queue.pick()

    response = await queue.stub.ReportResults(
        pb.ReportResultsRequest(
            results=[
                pb.JobResult(
                    release=pb.ReleaseJobRequest(job_id=job.id, lease_token=job.lease_token)
                )
            ]
        ),
        metadata=WORKER_METADATA,
    )

    [ack] = response.acks
    assert ack.code == OK and ack.status == pb.JOB_STATUS_PENDING
    assert ack.job.id == job.id and ack.job.status == pb.JOB_STATUS_PENDING
    assert ack.job.attempts == 0 and not ack.job.lease_token


async def test_a_failure_that_ends_the_job_is_acked_failed(queue):
    await queue.enqueue(await queue.add_account(), max_attempts=3)
    [job] = await queue.pick()

    response = await queue.stub.ReportResults(
        pb.ReportResultsRequest(
            ack_only=True,
            results=[
                pb.JobResult(
                    fail=pb.FailJobRequest(
                        job_id=job.id, lease_token=job.lease_token, error="revoked", permanent=True
                    )
                )
            ],
        ),
        metadata=WORKER_METADATA,
    )

    [ack] = response.acks
    assert (ack.code, ack.status) == (OK, pb.JOB_STATUS_FAILED)


async def test_a_release_of_an_unknown_job_is_not_found_for_that_item_only(queue):
    await queue.enqueue(await queue.add_account())
    [job] = await queue.pick()
    unknown = str(uuid.uuid4())

    response = await queue.stub.ReportResults(
        pb.ReportResultsRequest(
            ack_only=True,
            results=[
                pb.JobResult(release=pb.ReleaseJobRequest(job_id=unknown, lease_token=unknown)),
                pb.JobResult(
                    complete=pb.CompleteJobRequest(job_id=job.id, lease_token=job.lease_token)
                ),
            ],
        ),
        metadata=WORKER_METADATA,
    )

    assert [a.code for a in response.acks] == [grpc.StatusCode.NOT_FOUND.value[0], OK]
    assert (await job_row(queue.app.engine, job.id))["status"] == "succeeded"


async def test_a_release_item_with_a_bad_delay_names_its_field_and_records_nothing(pg_queue):
    await pg_queue.enqueue(await pg_queue.add_account())
    await pg_queue.enqueue(await pg_queue.add_account())
    first, second = await pg_queue.pick(max_jobs=2)

    reported = await invalid_fields(
        pg_queue.stub.ReportResults(
            pb.ReportResultsRequest(
                results=[
                    pb.JobResult(
                        complete=pb.CompleteJobRequest(
                            job_id=first.id, lease_token=first.lease_token
                        )
                    ),
                    pb.JobResult(
                        release=pb.ReleaseJobRequest(
                            job_id=second.id, lease_token=second.lease_token, delay=_delay(-1)
                        )
                    ),
                ]
            ),
            metadata=WORKER_METADATA,
        )
    )

    assert reported == ["results[1].release.delay"]
    for job in (first, second):
        assert (await job_row(pg_queue.app.engine, job.id))["status"] == "processing"


def _typed_result(**overrides) -> pb.SyncResult:
    fields = {
        "locations_synced": 2,
        "reviews_added": 7,
        "api_calls": 4,
        "duration": _delay(1.25),
        "skipped_locations": [pb.SkippedLocation(location_id="locations/9", reason="ineligible")],
        "locations_skipped": 1,
        "resumed": True,
    }
    return pb.SyncResult(**{**fields, **overrides})


async def test_a_typed_sync_result_is_stored_as_the_jobs_counts(queue):
    await queue.enqueue(await queue.add_account())
    [picked] = await queue.pick(view=pb.JOB_VIEW_WORKER)

    done = await queue.stub.CompleteJob(
        pb.CompleteJobRequest(
            job_id=picked.id, lease_token=picked.lease_token, sync_result=_typed_result()
        ),
        metadata=WORKER_METADATA,
    )

    stored = (await job_row(queue.app.engine, uuid.UUID(picked.id)))["result"]
    assert stored == {
        "locations_synced": 2,
        "locations_removed": 0,
        "reviews_added": 7,
        "reviews_updated": 0,
        "reviews_removed": 0,
        "api_calls": 4,
        "duration_seconds": 1.25,
        "locations_skipped": 1,
        "skipped_locations": [{"location_id": "locations/9", "reason": "ineligible"}],
        "locations_deletions_deferred": 0,
        "resumed": True,
    }
    assert done.job.sync_result == _typed_result()


async def test_a_result_given_twice_or_impossible_is_invalid_and_records_nothing(pg_queue):
    await pg_queue.enqueue(await pg_queue.add_account())
    [picked] = await pg_queue.pick(view=pb.JOB_VIEW_WORKER)

    def complete(**fields):
        return pg_queue.stub.CompleteJob(
            pb.CompleteJobRequest(job_id=picked.id, lease_token=picked.lease_token, **fields),
            metadata=WORKER_METADATA,
        )

    both = complete(sync_result=_typed_result(), result={"reviews_added": 7})
    assert await invalid_fields(both) == ["sync_result"]
    negative = complete(sync_result=_typed_result(reviews_added=-1))
    assert await invalid_fields(negative) == ["sync_result.reviews_added"]
    backwards = complete(sync_result=_typed_result(duration=_delay(-3)))
    assert await invalid_fields(backwards) == ["sync_result.duration"]
    assert (await job_row(pg_queue.app.engine, uuid.UUID(picked.id)))["status"] == "processing"
