"""Bad input is INVALID_ARGUMENT with a google.rpc.BadRequest naming the field, and writes nothing.

Unknown ids are NOT_FOUND. No refusal is ever UNKNOWN or carries a traceback.
"""

from __future__ import annotations

import base64
import json
import math
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from gmbsync.queue.v1 import queue_service_pb2 as pb
from queue_service.tables import sync_worker_runs
from service_runtime.errors import field_violations
from tests.conftest import WORKER_METADATA
from tests.queue.helpers import (
    assert_clean_error,
    count_rows,
    invalid_fields,
    job_row,
    rpc_error,
    worker_run_row,
)


def seconds(value: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(timedelta(seconds=value))
    return duration


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def big_metadata() -> struct_pb2.Struct:
    metadata = struct_pb2.Struct()
    metadata.update({"blob": "x" * (16 * 1024 + 1)})
    return metadata


async def outcome_of(call):
    """The response of a call, or its error (checked never to be UNKNOWN or a traceback)."""
    try:
        return await call
    except grpc.aio.AioRpcError as err:
        assert_clean_error(err)
        return err


async def listed_jobs(queue) -> list[pb.Job]:
    response = await queue.stub.ListJobs(pb.ListJobsRequest(), metadata=WORKER_METADATA)
    return list(response.jobs)


# -- EnqueueSync ------------------------------------------------------------------------------


def _bad_enqueue_fields() -> list[tuple[str, dict[str, object], str]]:
    now = datetime.now(UTC)
    return [
        ("malformed account_id", {"account_id": "not-a-uuid"}, "account_id"),
        ("missing account_id", {"account_id": ""}, "account_id"),
        ("unspecified sync_type", {"sync_type": pb.SYNC_TYPE_UNSPECIFIED}, "sync_type"),
        ("unknown sync_type number", {"sync_type": 99}, "sync_type"),
        ("priority above 100", {"priority": 101}, "priority"),
        ("priority below -100", {"priority": -101}, "priority"),
        ("max_attempts above 25", {"max_attempts": 26}, "max_attempts"),
        ("negative max_attempts", {"max_attempts": -1}, "max_attempts"),
        ("metadata over 16 KiB", {"metadata": big_metadata()}, "metadata"),
        (
            "scheduled_at over a day ago",
            {"scheduled_at": timestamp(now - timedelta(days=2))},
            "scheduled_at",
        ),
        (
            "scheduled_at over a year ahead",
            {"scheduled_at": timestamp(now + timedelta(days=400))},
            "scheduled_at",
        ),
    ]


BAD_ENQUEUE_CASES = [case[0] for case in _bad_enqueue_fields()]


@pytest.mark.parametrize("case", BAD_ENQUEUE_CASES)
async def test_enqueue_with_a_bad_field_is_invalid_argument_naming_it_and_writes_nothing(
    pg_queue, case
):
    account = await pg_queue.add_account()
    [(_, fields, field)] = [c for c in _bad_enqueue_fields() if c[0] == case]
    values: dict[str, object] = {"account_id": str(account), "sync_type": pb.SYNC_TYPE_FULL}
    values.update(fields)

    reported = await invalid_fields(
        pg_queue.stub.EnqueueSync(pb.EnqueueSyncRequest(**values), metadata=WORKER_METADATA)
    )

    assert reported == [field]
    assert await count_rows(pg_queue.app.engine) == 0
    assert await listed_jobs(pg_queue) == []


async def test_enqueue_with_nan_in_metadata_is_invalid_argument_naming_metadata(queue):
    """JSON has no NaN: such metadata cannot be kept, so it is the caller's error."""
    account = await queue.add_account()
    metadata = struct_pb2.Struct()
    metadata.update({"ratio": math.nan})

    reported = await invalid_fields(
        queue.stub.EnqueueSync(
            pb.EnqueueSyncRequest(
                account_id=str(account), sync_type=pb.SYNC_TYPE_FULL, metadata=metadata
            ),
            metadata=WORKER_METADATA,
        )
    )

    assert reported == ["metadata"]
    assert await count_rows(queue.app.engine) == 0


async def test_enqueue_with_a_nul_character_in_metadata_is_invalid_argument(pg_queue):
    """PostgreSQL cannot store U+0000 in text or JSONB: refuse it rather than fail INTERNAL."""
    account = await pg_queue.add_account()
    metadata = struct_pb2.Struct()
    metadata.update({"note": "a\x00b"})

    reported = await invalid_fields(
        pg_queue.stub.EnqueueSync(
            pb.EnqueueSyncRequest(
                account_id=str(account), sync_type=pb.SYNC_TYPE_FULL, metadata=metadata
            ),
            metadata=WORKER_METADATA,
        )
    )

    assert reported == ["metadata"]
    assert await count_rows(pg_queue.app.engine) == 0


async def test_enqueue_reports_every_bad_field_at_once(pg_queue):
    reported = await invalid_fields(
        pg_queue.stub.EnqueueSync(
            pb.EnqueueSyncRequest(account_id="nope", priority=500, max_attempts=99),
            metadata=WORKER_METADATA,
        )
    )

    assert sorted(reported) == ["account_id", "max_attempts", "priority", "sync_type"]


async def test_enqueue_at_the_limits_is_accepted(pg_queue):
    """The bounds above are the real ones: the values just inside them are fine."""
    account = await pg_queue.add_account()
    job = await pg_queue.enqueue(
        account,
        priority=100,
        max_attempts=25,
        scheduled_at=timestamp(datetime.now(UTC) + timedelta(days=300)),
    )

    assert job.priority == 100
    assert job.max_attempts == 25
    assert await count_rows(pg_queue.app.engine) == 1


# -- EnqueueSyncBatch -------------------------------------------------------------------------


async def test_batch_with_one_bad_item_names_its_index_and_writes_none_of_the_batch(queue):
    accounts = [await queue.add_account() for _ in range(3)]
    items = [
        pb.EnqueueSyncRequest(account_id=str(a), sync_type=pb.SYNC_TYPE_FULL) for a in accounts
    ]
    items[1].priority = 101

    reported = await invalid_fields(
        queue.stub.EnqueueSyncBatch(
            pb.EnqueueSyncBatchRequest(items=items), metadata=WORKER_METADATA
        )
    )

    assert reported == ["items[1].priority"]
    assert await count_rows(queue.app.engine) == 0
    assert await listed_jobs(queue) == []


async def test_batch_reports_the_bad_fields_of_every_item(queue):
    account = await queue.add_account()
    items = [
        pb.EnqueueSyncRequest(account_id="bad", sync_type=pb.SYNC_TYPE_FULL),
        pb.EnqueueSyncRequest(account_id=str(account), sync_type=pb.SYNC_TYPE_FULL),
        pb.EnqueueSyncRequest(account_id=str(account), max_attempts=26),
    ]

    reported = await invalid_fields(
        queue.stub.EnqueueSyncBatch(
            pb.EnqueueSyncBatchRequest(items=items), metadata=WORKER_METADATA
        )
    )

    assert sorted(reported) == [
        "items[0].account_id",
        "items[2].max_attempts",
        "items[2].sync_type",
    ]
    assert await count_rows(queue.app.engine) == 0


async def test_batch_naming_an_unknown_account_writes_none_of_the_batch(queue):
    """All-or-nothing holds in storage too: the items before the unknown account roll back."""
    known = await queue.add_account()
    other = await queue.add_account()
    items = [
        pb.EnqueueSyncRequest(account_id=str(known), sync_type=pb.SYNC_TYPE_FULL),
        pb.EnqueueSyncRequest(account_id=str(uuid.uuid4()), sync_type=pb.SYNC_TYPE_FULL),
        pb.EnqueueSyncRequest(account_id=str(other), sync_type=pb.SYNC_TYPE_FULL),
    ]

    err = await rpc_error(
        queue.stub.EnqueueSyncBatch(
            pb.EnqueueSyncBatchRequest(items=items), metadata=WORKER_METADATA
        )
    )

    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "items[1]" in err.details()
    assert await count_rows(queue.app.engine) == 0


@pytest.mark.parametrize("view", [pb.JOB_VIEW_WORKER, 99], ids=["worker view", "no such view"])
async def test_a_batch_asking_for_a_view_it_cannot_have_is_invalid_and_writes_nothing(
    pg_queue, view
):
    account = await pg_queue.add_account()
    items = [pb.EnqueueSyncRequest(account_id=str(account), sync_type=pb.SYNC_TYPE_FULL)]

    reported = await invalid_fields(
        pg_queue.stub.EnqueueSyncBatch(
            pb.EnqueueSyncBatchRequest(items=items, view=view), metadata=WORKER_METADATA
        )
    )

    assert reported == ["view"]
    assert await count_rows(pg_queue.app.engine) == 0


async def test_empty_batch_is_invalid_argument_naming_items(pg_queue):
    reported = await invalid_fields(
        pg_queue.stub.EnqueueSyncBatch(pb.EnqueueSyncBatchRequest(), metadata=WORKER_METADATA)
    )

    assert reported == ["items"]


# -- ListJobs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [501, -1])
async def test_list_jobs_page_size_out_of_range_is_invalid_argument(pg_queue, size):
    reported = await invalid_fields(
        pg_queue.stub.ListJobs(pb.ListJobsRequest(page_size=size), metadata=WORKER_METADATA)
    )

    assert reported == ["page_size"]


@pytest.mark.parametrize("token", ["garbage!!", "eyJub3QiOiAiYSB0b2tlbiJ9", "%%%"])
async def test_list_jobs_garbage_page_token_is_invalid_argument(pg_queue, token):
    reported = await invalid_fields(
        pg_queue.stub.ListJobs(pb.ListJobsRequest(page_token=token), metadata=WORKER_METADATA)
    )

    assert reported == ["page_token"]


def _token(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


FORGED_TOKENS = {
    "job id not a string": _token({"c": "2024-01-01T00:00:00+00:00", "i": 5, "f": "||"}),
    "time without a zone": _token(
        {"c": "2024-01-01T00:00:00", "i": "00000000-0000-4000-8000-000000000001", "f": "||"}
    ),
    "not an object": _token([1, 2]),
}


@pytest.mark.parametrize("case", list(FORGED_TOKENS))
async def test_list_jobs_forged_page_token_is_invalid_argument(queue, case):
    await queue.enqueue(await queue.add_account())

    reported = await invalid_fields(
        queue.stub.ListJobs(
            pb.ListJobsRequest(page_token=FORGED_TOKENS[case]), metadata=WORKER_METADATA
        )
    )

    assert reported == ["page_token"]


async def test_list_jobs_page_token_reused_with_other_filters_is_invalid_argument(queue):
    for _ in range(3):
        await queue.enqueue(await queue.add_account())
    first = await queue.stub.ListJobs(pb.ListJobsRequest(page_size=1), metadata=WORKER_METADATA)
    assert first.next_page_token
    # The token is good for the listing it came from...
    second = await queue.stub.ListJobs(
        pb.ListJobsRequest(page_size=1, page_token=first.next_page_token),
        metadata=WORKER_METADATA,
    )
    assert [j.id for j in second.jobs] != [j.id for j in first.jobs]

    # ...and refused for a listing with another filter.
    reported = await invalid_fields(
        queue.stub.ListJobs(
            pb.ListJobsRequest(
                page_size=1, page_token=first.next_page_token, status=pb.JOB_STATUS_PENDING
            ),
            metadata=WORKER_METADATA,
        )
    )

    assert reported == ["page_token"]


async def test_list_jobs_malformed_account_id_is_invalid_argument(pg_queue):
    reported = await invalid_fields(
        pg_queue.stub.ListJobs(pb.ListJobsRequest(account_id="x"), metadata=WORKER_METADATA)
    )

    assert reported == ["account_id"]


# -- PickJobs ---------------------------------------------------------------------------------

BAD_PICKS = {
    "max_jobs above 100": ({"max_jobs": 101}, "max_jobs"),
    "wait above 60 s": ({"wait": seconds(61)}, "wait"),
    "lease_duration below 5 s": ({"lease_duration": seconds(1)}, "lease_duration"),
    "missing worker_id": ({"worker_id": ""}, "worker_id"),
    "malformed worker_run_id": ({"worker_run_id": "run-1"}, "worker_run_id"),
    "the id view, without the lease token": ({"view": pb.JOB_VIEW_ID}, "view"),
    "a view that does not exist": ({"view": 99}, "view"),
}


@pytest.mark.parametrize("case", list(BAD_PICKS))
async def test_pick_with_a_bad_field_is_invalid_argument_and_leases_nothing(pg_queue, case):
    fields, field = BAD_PICKS[case]
    job = await pg_queue.enqueue(await pg_queue.add_account())
    values: dict[str, object] = {"worker_id": "w1", "max_jobs": 1}
    values.update(fields)

    reported = await invalid_fields(
        pg_queue.stub.PickJobs(pb.PickJobsRequest(**values), metadata=WORKER_METADATA)
    )

    assert reported == [field]
    row = await job_row(pg_queue.app.engine, job.id)
    assert row["status"] == "pending"
    assert row["attempts"] == 0
    assert row["lease_token"] is None


async def test_pick_with_a_nul_character_in_worker_id_is_invalid_and_leases_nothing(pg_queue):
    job = await pg_queue.enqueue(await pg_queue.add_account())

    reported = await invalid_fields(
        pg_queue.stub.PickJobs(pb.PickJobsRequest(worker_id="w\x001"), metadata=WORKER_METADATA)
    )

    assert reported == ["worker_id"]
    assert (await job_row(pg_queue.app.engine, job.id))["status"] == "pending"


# -- CompleteJob / FailJob / ReportResults ----------------------------------------------------


async def _leased_job(queue) -> pb.Job:
    await queue.enqueue(await queue.add_account())
    [job] = await queue.pick()
    return job


async def test_fail_without_an_error_is_invalid_argument_and_keeps_the_lease(pg_queue):
    job = await _leased_job(pg_queue)

    reported = await invalid_fields(
        pg_queue.stub.FailJob(
            pb.FailJobRequest(job_id=job.id, lease_token=job.lease_token, error="  "),
            metadata=WORKER_METADATA,
        )
    )

    assert reported == ["error"]
    row = await job_row(pg_queue.app.engine, job.id)
    assert row["status"] == "processing"
    assert row["errors"] == []


async def test_fail_without_a_lease_token_is_invalid_argument_and_keeps_the_lease(pg_queue):
    job = await _leased_job(pg_queue)

    reported = await invalid_fields(
        pg_queue.stub.FailJob(
            pb.FailJobRequest(job_id=job.id, error="boom"), metadata=WORKER_METADATA
        )
    )

    assert reported == ["lease_token"]
    row = await job_row(pg_queue.app.engine, job.id)
    assert row["status"] == "processing"
    assert str(row["lease_token"]) == job.lease_token


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"delay": seconds(24 * 3600 + 1)}, "delay"),
        ({"delay": duration_pb2.Duration(seconds=-5)}, "delay"),
        ({"reason": "x" * (64 * 1024 + 1)}, "reason"),
    ],
)
async def test_release_with_an_absurd_delay_or_reason_is_invalid_and_keeps_the_lease(
    pg_queue, fields, field
):
    job = await _leased_job(pg_queue)

    reported = await invalid_fields(
        pg_queue.stub.ReleaseJob(
            pb.ReleaseJobRequest(job_id=job.id, lease_token=job.lease_token, **fields),
            metadata=WORKER_METADATA,
        )
    )

    assert reported == [field]
    row = await job_row(pg_queue.app.engine, job.id)
    assert row["status"] == "processing"
    assert row["attempts"] == 1
    assert str(row["lease_token"]) == job.lease_token


async def test_release_at_the_longest_delay_is_accepted(pg_queue):
    job = await _leased_job(pg_queue)

    released = await pg_queue.stub.ReleaseJob(
        pb.ReleaseJobRequest(
            job_id=job.id, lease_token=job.lease_token, delay=seconds(24 * 3600), reason="a\x00b"
        ),
        metadata=WORKER_METADATA,
    )

    assert released.job.status == pb.JOB_STATUS_PENDING
    delay = released.job.scheduled_at.ToDatetime() - released.job.updated_at.ToDatetime()
    assert delay == timedelta(days=1)
    assert released.job.last_error == "a\ufffdb"  # PostgreSQL cannot store U+0000


async def test_a_failure_whose_error_holds_a_nul_character_is_never_an_internal_error(pg_queue):
    """Error text comes from upstream responses; a worker must always be able to report it.

    The server may keep the text (cleaned) or refuse it naming `error`, but never fail INTERNAL,
    which would leave the job processing until its lease runs out.
    """
    job = await _leased_job(pg_queue)
    request = pb.FailJobRequest(job_id=job.id, lease_token=job.lease_token, error="bad\x00reply")

    outcome = await outcome_of(pg_queue.stub.FailJob(request, metadata=WORKER_METADATA))

    if isinstance(outcome, grpc.aio.AioRpcError):
        assert outcome.code() == grpc.StatusCode.INVALID_ARGUMENT, (
            outcome.code(),
            outcome.details(),
        )
        assert [v.field for v in field_violations(outcome)] == ["error"]
        assert (await job_row(pg_queue.app.engine, job.id))["status"] == "processing"
    else:
        assert outcome.job.status == pb.JOB_STATUS_PENDING
        assert outcome.will_retry


async def test_report_with_an_item_setting_neither_outcome_is_invalid_and_records_none(queue):
    job = await _leased_job(queue)
    results = [
        pb.JobResult(complete=pb.CompleteJobRequest(job_id=job.id, lease_token=job.lease_token)),
        pb.JobResult(),
    ]

    reported = await invalid_fields(
        queue.stub.ReportResults(pb.ReportResultsRequest(results=results), metadata=WORKER_METADATA)
    )

    assert reported == ["results[1]"]
    assert (await job_row(queue.app.engine, job.id))["status"] == "processing"


async def test_report_naming_one_job_twice_is_invalid_and_records_none(queue):
    job = await _leased_job(queue)
    results = [
        pb.JobResult(complete=pb.CompleteJobRequest(job_id=job.id, lease_token=job.lease_token)),
        pb.JobResult(
            fail=pb.FailJobRequest(job_id=job.id, lease_token=job.lease_token, error="boom")
        ),
    ]

    reported = await invalid_fields(
        queue.stub.ReportResults(pb.ReportResultsRequest(results=results), metadata=WORKER_METADATA)
    )

    assert reported == ["results[1].fail.job_id"]
    row = await job_row(queue.app.engine, job.id)
    assert row["status"] == "processing"
    assert row["errors"] == []


async def test_report_names_the_bad_field_inside_an_item(pg_queue):
    job = await _leased_job(pg_queue)
    results = [
        pb.JobResult(complete=pb.CompleteJobRequest(job_id=job.id, lease_token=job.lease_token)),
        pb.JobResult(fail=pb.FailJobRequest(job_id=str(uuid.uuid4()), lease_token="x", error="e")),
    ]

    reported = await invalid_fields(
        pg_queue.stub.ReportResults(
            pb.ReportResultsRequest(results=results), metadata=WORKER_METADATA
        )
    )

    assert reported == ["results[1].fail.lease_token"]
    assert (await job_row(pg_queue.app.engine, job.id))["status"] == "processing"


async def test_empty_report_is_invalid_argument_naming_results(pg_queue):
    reported = await invalid_fields(
        pg_queue.stub.ReportResults(pb.ReportResultsRequest(), metadata=WORKER_METADATA)
    )

    assert reported == ["results"]


# -- MarkStaleJobs / worker runs --------------------------------------------------------------


async def test_mark_stale_with_a_threshold_under_a_minute_is_invalid_and_recovers_nothing(
    pg_queue,
):
    job = await _leased_job(pg_queue)

    reported = await invalid_fields(
        pg_queue.stub.MarkStaleJobs(
            pb.MarkStaleJobsRequest(threshold=seconds(10)), metadata=WORKER_METADATA
        )
    )

    assert reported == ["threshold"]
    assert (await job_row(pg_queue.app.engine, job.id))["status"] == "processing"


async def test_start_worker_run_with_a_nul_character_in_worker_id_is_invalid(pg_queue):
    reported = await invalid_fields(
        pg_queue.stub.StartWorkerRun(
            pb.StartWorkerRunRequest(worker_id="w\x001"), metadata=WORKER_METADATA
        )
    )

    assert reported == ["worker_id"]
    assert await count_rows(pg_queue.app.engine, sync_worker_runs) == 0


async def test_finish_worker_run_with_status_running_is_invalid_and_keeps_the_run_open(pg_queue):
    started = await pg_queue.stub.StartWorkerRun(
        pb.StartWorkerRunRequest(worker_id="w1"), metadata=WORKER_METADATA
    )

    reported = await invalid_fields(
        pg_queue.stub.FinishWorkerRun(
            pb.FinishWorkerRunRequest(run_id=started.run.id, status=pb.WORKER_RUN_STATUS_RUNNING),
            metadata=WORKER_METADATA,
        )
    )

    assert reported == ["status"]
    row = await worker_run_row(pg_queue.app.engine, started.run.id)
    assert row["status"] == "running"
    assert row["finished_at"] is None


async def test_start_worker_run_without_a_worker_id_is_invalid_and_writes_nothing(pg_queue):
    reported = await invalid_fields(
        pg_queue.stub.StartWorkerRun(pb.StartWorkerRunRequest(), metadata=WORKER_METADATA)
    )

    assert reported == ["worker_id"]
    assert await count_rows(pg_queue.app.engine, sync_worker_runs) == 0


# -- job ids ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rpc", ["GetJob", "CancelJob", "RetryJob"])
@pytest.mark.parametrize("raw", ["", "12345", "not-a-uuid"])
async def test_malformed_job_id_is_invalid_argument_naming_job_id(pg_queue, rpc, raw):
    request = getattr(pb, f"{rpc}Request")(job_id=raw)

    reported = await invalid_fields(getattr(pg_queue.stub, rpc)(request, metadata=WORKER_METADATA))

    assert reported == ["job_id"]


async def test_complete_with_a_malformed_job_id_names_it(pg_queue):
    reported = await invalid_fields(
        pg_queue.stub.CompleteJob(
            pb.CompleteJobRequest(job_id="nope", lease_token=str(uuid.uuid4())),
            metadata=WORKER_METADATA,
        )
    )

    assert reported == ["job_id"]


@pytest.mark.parametrize(
    ("rpc", "request_for"),
    [
        ("GetJob", lambda job_id: pb.GetJobRequest(job_id=job_id)),
        ("CancelJob", lambda job_id: pb.CancelJobRequest(job_id=job_id)),
        ("RetryJob", lambda job_id: pb.RetryJobRequest(job_id=job_id)),
        (
            "CompleteJob",
            lambda job_id: pb.CompleteJobRequest(job_id=job_id, lease_token=str(uuid.uuid4())),
        ),
        (
            "FailJob",
            lambda job_id: pb.FailJobRequest(
                job_id=job_id, lease_token=str(uuid.uuid4()), error="boom"
            ),
        ),
        (
            "ExtendLease",
            lambda job_id: pb.ExtendLeaseRequest(job_id=job_id, lease_token=str(uuid.uuid4())),
        ),
    ],
)
async def test_unknown_job_id_is_not_found(queue, rpc, request_for):
    await queue.enqueue(await queue.add_account())  # a job exists, just not this one

    err = await rpc_error(
        getattr(queue.stub, rpc)(request_for(str(uuid.uuid4())), metadata=WORKER_METADATA)
    )

    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_unknown_worker_run_is_not_found(pg_queue):
    err = await rpc_error(
        pg_queue.stub.FinishWorkerRun(
            pb.FinishWorkerRunRequest(
                run_id=str(uuid.uuid4()), status=pb.WORKER_RUN_STATUS_COMPLETED
            ),
            metadata=WORKER_METADATA,
        )
    )

    assert err.code() == grpc.StatusCode.NOT_FOUND


# -- never UNKNOWN ----------------------------------------------------------------------------

EMPTY_REQUESTS = [
    ("EnqueueSync", pb.EnqueueSyncRequest()),
    ("EnqueueSyncBatch", pb.EnqueueSyncBatchRequest(items=[pb.EnqueueSyncRequest()])),
    ("GetJob", pb.GetJobRequest()),
    ("CancelJob", pb.CancelJobRequest()),
    ("RetryJob", pb.RetryJobRequest()),
    ("PickJobs", pb.PickJobsRequest()),
    ("ExtendLease", pb.ExtendLeaseRequest()),
    ("CompleteJob", pb.CompleteJobRequest()),
    ("FailJob", pb.FailJobRequest()),
    ("ReleaseJob", pb.ReleaseJobRequest()),
    ("ReportResults", pb.ReportResultsRequest(results=[pb.JobResult()])),
    ("StartWorkerRun", pb.StartWorkerRunRequest()),
    ("FinishWorkerRun", pb.FinishWorkerRunRequest()),
    ("ListJobs", pb.ListJobsRequest(status=42)),
    ("GetQueueStatus", pb.GetQueueStatusRequest(recent_limit=-5)),
    ("GetDiagnostics", pb.GetDiagnosticsRequest(recent_limit=1000)),
    ("MarkStaleJobs", pb.MarkStaleJobsRequest(threshold=seconds(-5))),
]


@pytest.mark.parametrize(("rpc", "message"), EMPTY_REQUESTS, ids=[r for r, _ in EMPTY_REQUESTS])
async def test_an_empty_or_nonsense_request_is_invalid_argument_never_unknown(
    pg_queue, rpc, message
):
    err = await rpc_error(getattr(pg_queue.stub, rpc)(message, metadata=WORKER_METADATA))

    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    assert field_violations(err), "INVALID_ARGUMENT without a BadRequest naming the field"
