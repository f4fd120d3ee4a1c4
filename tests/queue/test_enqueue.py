"""Enqueueing: defaults, duplicate detection with upgrades, batches, account checks."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import struct_pb2, timestamp_pb2

from gmbsync.queue.v1 import queue_service_pb2 as pb
from tests.conftest import WORKER_METADATA, bearer


async def test_enqueue_returns_the_new_job_with_defaults(queue):
    owner = uuid.uuid4()
    account = await queue.add_account(owner, name="Acme Coffee")
    metadata = struct_pb2.Struct()
    metadata.update({"source": "user", "ticket": 42})

    response = await queue.stub.EnqueueSync(
        pb.EnqueueSyncRequest(
            account_id=str(account), sync_type=pb.SYNC_TYPE_INCREMENTAL, metadata=metadata
        ),
        metadata=bearer(owner),
    )

    assert not response.duplicate
    assert response.message == "Sync job enqueued successfully"
    job = response.job
    assert (job.status, job.sync_type, job.priority, job.attempts, job.max_attempts) == (
        pb.JOB_STATUS_PENDING,
        pb.SYNC_TYPE_INCREMENTAL,
        0,
        0,
        3,
    )
    assert job.user_id == str(owner) and job.account_name == "Acme Coffee"
    assert dict(job.metadata) == {"source": "user", "ticket": 42.0}
    assert not job.HasField("scheduled_at")


async def test_a_duplicate_returns_the_queued_job(queue):
    account = await queue.add_account()
    first = await queue.enqueue(account, sync_type=pb.SYNC_TYPE_FULL, priority=5)

    again = await queue.stub.EnqueueSync(
        pb.EnqueueSyncRequest(
            account_id=str(account), sync_type=pb.SYNC_TYPE_INCREMENTAL, priority=1
        ),
        metadata=WORKER_METADATA,
    )

    assert again.duplicate
    assert again.message == "Sync job already queued for this account"
    assert again.job.id == first.id
    assert (again.job.sync_type, again.job.priority) == (pb.SYNC_TYPE_FULL, 5)


async def test_a_full_or_higher_priority_request_upgrades_a_pending_duplicate(queue):
    account = await queue.add_account()
    first = await queue.enqueue(account, sync_type=pb.SYNC_TYPE_INCREMENTAL, priority=0)

    upgraded = await queue.stub.EnqueueSync(
        pb.EnqueueSyncRequest(account_id=str(account), sync_type=pb.SYNC_TYPE_FULL, priority=20),
        metadata=WORKER_METADATA,
    )

    assert upgraded.duplicate and upgraded.job.id == first.id
    assert (upgraded.job.sync_type, upgraded.job.priority) == (pb.SYNC_TYPE_FULL, 20)


async def test_enqueueing_now_brings_a_pending_duplicate_scheduled_later_forward(queue):
    account = await queue.add_account()
    in_an_hour = timestamp_pb2.Timestamp()
    in_an_hour.FromDatetime(datetime.now(UTC) + timedelta(hours=1))
    delayed = await queue.enqueue(account, scheduled_at=in_an_hour)
    assert await queue.pick() == []

    now = await queue.stub.EnqueueSync(
        pb.EnqueueSyncRequest(account_id=str(account), sync_type=pb.SYNC_TYPE_FULL),
        metadata=WORKER_METADATA,
    )

    assert now.duplicate and now.job.id == delayed.id
    assert not now.job.HasField("scheduled_at")
    assert [job.id for job in await queue.pick()] == [delayed.id]


async def test_a_batch_item_asking_for_now_brings_a_pending_duplicate_forward(queue):
    a, b = await queue.add_account(), await queue.add_account()
    in_an_hour = timestamp_pb2.Timestamp()
    in_an_hour.FromDatetime(datetime.now(UTC) + timedelta(hours=1))
    delayed = await queue.enqueue(a, scheduled_at=in_an_hour)

    response = await queue.stub.EnqueueSyncBatch(
        pb.EnqueueSyncBatchRequest(
            items=[
                pb.EnqueueSyncRequest(account_id=str(b), sync_type=pb.SYNC_TYPE_FULL),
                pb.EnqueueSyncRequest(account_id=str(a), sync_type=pb.SYNC_TYPE_FULL),
            ]
        ),
        metadata=WORKER_METADATA,
    )

    assert [r.duplicate for r in response.results] == [False, True]
    assert response.results[1].job.id == delayed.id
    assert not response.results[1].job.HasField("scheduled_at")
    assert len(await queue.pick(max_jobs=5)) == 2


async def test_a_processing_duplicate_is_returned_unchanged(queue):
    account = await queue.add_account()
    await queue.enqueue(account, sync_type=pb.SYNC_TYPE_INCREMENTAL)
    [picked] = await queue.pick()

    again = await queue.stub.EnqueueSync(
        pb.EnqueueSyncRequest(account_id=str(account), sync_type=pb.SYNC_TYPE_FULL, priority=50),
        metadata=WORKER_METADATA,
    )

    assert again.duplicate and again.job.id == picked.id
    assert again.job.status == pb.JOB_STATUS_PROCESSING
    assert (again.job.sync_type, again.job.priority) == (pb.SYNC_TYPE_INCREMENTAL, 0)


async def test_after_a_job_finishes_the_account_can_be_enqueued_again(queue):
    account = await queue.add_account()
    first = await queue.enqueue(account)
    [picked] = await queue.pick()
    await queue.complete(picked)

    second = await queue.enqueue(account)

    assert second.id != first.id and second.status == pb.JOB_STATUS_PENDING


async def test_batch_enqueue_answers_each_item_in_order(queue):
    a, b = await queue.add_account(), await queue.add_account()
    items = [
        pb.EnqueueSyncRequest(account_id=str(a), sync_type=pb.SYNC_TYPE_FULL),
        pb.EnqueueSyncRequest(account_id=str(b), sync_type=pb.SYNC_TYPE_INCREMENTAL),
        pb.EnqueueSyncRequest(account_id=str(a), sync_type=pb.SYNC_TYPE_INCREMENTAL),
    ]

    response = await queue.stub.EnqueueSyncBatch(
        pb.EnqueueSyncBatchRequest(items=items), metadata=WORKER_METADATA
    )

    assert [r.duplicate for r in response.results] == [False, False, True]
    assert response.results[2].job.id == response.results[0].job.id
    assert [r.job.account_id for r in response.results] == [str(a), str(b), str(a)]


async def test_a_batch_in_the_id_view_answers_each_job_by_id_account_and_status(queue):
    a, b = await queue.add_account(), await queue.add_account()
    items = [
        pb.EnqueueSyncRequest(account_id=str(a), sync_type=pb.SYNC_TYPE_FULL, priority=5),
        pb.EnqueueSyncRequest(account_id=str(b), sync_type=pb.SYNC_TYPE_INCREMENTAL),
        pb.EnqueueSyncRequest(account_id=str(a), sync_type=pb.SYNC_TYPE_INCREMENTAL),
    ]

    response = await queue.stub.EnqueueSyncBatch(
        pb.EnqueueSyncBatchRequest(items=items, view=pb.JOB_VIEW_ID), metadata=WORKER_METADATA
    )

    jobs = [r.job for r in response.results]
    assert [r.duplicate for r in response.results] == [False, False, True]
    assert jobs[2].id == jobs[0].id
    for job, account in zip(jobs, (a, b, a), strict=True):
        assert job == pb.Job(id=job.id, account_id=str(account), status=pb.JOB_STATUS_PENDING)
    stored = await queue.stub.GetJob(pb.GetJobRequest(job_id=jobs[0].id), metadata=WORKER_METADATA)
    assert (stored.job.sync_type, stored.job.priority) == (pb.SYNC_TYPE_FULL, 5)


async def test_a_batch_with_an_unknown_account_writes_nothing(queue):
    a = await queue.add_account()
    items = [
        pb.EnqueueSyncRequest(account_id=str(a), sync_type=pb.SYNC_TYPE_FULL),
        pb.EnqueueSyncRequest(account_id=str(uuid.uuid4()), sync_type=pb.SYNC_TYPE_FULL),
    ]

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await queue.stub.EnqueueSyncBatch(
            pb.EnqueueSyncBatchRequest(items=items), metadata=WORKER_METADATA
        )

    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details().startswith("items[1]")
    status = await queue.stub.GetQueueStatus(pb.GetQueueStatusRequest(), metadata=WORKER_METADATA)
    assert status.stats.total == 0


async def test_an_unknown_account_is_not_found(queue):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await queue.enqueue(uuid.uuid4())
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_deactivated_account_is_a_failed_precondition(queue):
    account = await queue.add_account(active=False)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await queue.enqueue(account)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "reconnect" in err.value.details()


async def test_list_jobs_pages_newest_first_without_gaps_or_repeats(queue):
    owner = uuid.uuid4()
    accounts = [await queue.add_account(owner) for _ in range(7)]
    created = [(await queue.enqueue(a)).id for a in accounts]

    seen: list[str] = []
    token = ""
    while True:
        page = await queue.stub.ListJobs(
            pb.ListJobsRequest(page_size=3, page_token=token), metadata=bearer(owner)
        )
        seen.extend(j.id for j in page.jobs)
        token = page.next_page_token
        if not token:
            break

    assert seen == list(reversed(created))


async def test_list_jobs_filters_by_status_and_account(queue):
    a, b = await queue.add_account(), await queue.add_account()
    job_a = await queue.enqueue(a, priority=10)
    job_b = await queue.enqueue(b)
    await queue.pick()  # takes job_a (higher priority)

    pending = await queue.stub.ListJobs(
        pb.ListJobsRequest(status=pb.JOB_STATUS_PENDING), metadata=WORKER_METADATA
    )
    of_a = await queue.stub.ListJobs(
        pb.ListJobsRequest(account_id=str(a)), metadata=WORKER_METADATA
    )

    assert [j.id for j in pending.jobs] == [job_b.id]
    assert [j.id for j in of_a.jobs] == [job_a.id]


async def test_queue_status_counts_the_callers_jobs_by_status(queue):
    owner, stranger = uuid.uuid4(), uuid.uuid4()
    mine = [await queue.add_account(owner) for _ in range(3)]
    theirs = await queue.add_account(stranger)
    for account in [*mine, theirs]:
        await queue.enqueue(account)
    first, second = await queue.pick(max_jobs=2)
    await queue.complete(first)
    await queue.fail(second, permanent=True)

    own = await queue.stub.GetQueueStatus(pb.GetQueueStatusRequest(), metadata=bearer(owner))
    everyone = await queue.stub.GetQueueStatus(pb.GetQueueStatusRequest(), metadata=WORKER_METADATA)

    assert everyone.stats.total == 4
    assert (everyone.stats.pending, everyone.stats.succeeded, everyone.stats.failed) == (2, 1, 1)
    assert own.stats.total == 3
    assert {j.user_id for j in own.jobs} == {str(owner)}
