"""The limits the contract states are enforced: message size, batch and page sizes, metadata
size and depth, and the per-user enqueue rate limit (RESOURCE_EXHAUSTED with RetryInfo)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import struct_pb2

from gmbsync.queue.v1 import queue_service_pb2 as pb
from queue_service.rate_limit import UserRateLimiter
from queue_service.requests import MAX_BATCH, MAX_METADATA_DEPTH, MAX_PAGE_SIZE, MAX_PICK
from service_runtime.errors import error_info, field_violations, retry_delay
from service_runtime.serving import SERVER_OPTIONS
from tests.conftest import WORKER_METADATA, bearer
from tests.queue.conftest import RunningQueue, queue_settings, start_queue, stop_queue

OWNER = uuid.UUID("00000000-0000-4000-8000-0000000000b7")
MAX_MESSAGE = dict(SERVER_OPTIONS)["grpc.max_receive_message_length"]


@pytest.fixture
async def limited_queue(pg_url: str, auth_settings) -> AsyncIterator[RunningQueue]:  # type: ignore[no-untyped-def]
    """A queue whose users may enqueue 2 syncs at once and then one every 1000 s."""
    settings = queue_settings(
        pg_url, auth_settings, enqueue_rate_per_user=0.001, enqueue_burst_per_user=2
    )
    running = await start_queue(settings)
    yield running
    await stop_queue(running)


def _enqueue(account: uuid.UUID) -> pb.EnqueueSyncRequest:
    return pb.EnqueueSyncRequest(account_id=str(account), sync_type=pb.SYNC_TYPE_FULL)


async def _job_count(queue: RunningQueue) -> int:
    response = await queue.stub.GetQueueStatus(pb.GetQueueStatusRequest(), metadata=WORKER_METADATA)
    return response.stats.pending


async def test_a_user_past_the_enqueue_burst_gets_resource_exhausted_with_retry_info(
    limited_queue: RunningQueue,
) -> None:
    accounts = [await limited_queue.add_account(OWNER) for _ in range(3)]
    for account in accounts[:2]:
        await limited_queue.stub.EnqueueSync(_enqueue(account), metadata=bearer(OWNER))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await limited_queue.stub.EnqueueSync(_enqueue(accounts[2]), metadata=bearer(OWNER))

    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    delay = retry_delay(caught.value)
    assert delay is not None and 900 < delay <= 1000  # one token at 0.001 a second
    info = error_info(caught.value)
    assert info is not None and info.reason == "ENQUEUE_RATE_LIMITED"
    assert await _job_count(limited_queue) == 2  # the refused call made no job


async def test_the_rate_limit_is_per_user_and_spares_workers(limited_queue: RunningQueue) -> None:
    mine = [await limited_queue.add_account(OWNER) for _ in range(2)]
    other_user = uuid.uuid4()
    theirs = [await limited_queue.add_account(other_user) for _ in range(2)]
    for account in mine:
        await limited_queue.stub.EnqueueSync(_enqueue(account), metadata=bearer(OWNER))
    for account in theirs:
        await limited_queue.stub.EnqueueSync(_enqueue(account), metadata=bearer(other_user))
    for _ in range(5):  # service_role is not limited
        account = await limited_queue.add_account(OWNER)
        await limited_queue.stub.EnqueueSync(_enqueue(account), metadata=WORKER_METADATA)
    assert await _job_count(limited_queue) == 9


async def test_a_user_batch_costs_a_token_per_item_and_cannot_exceed_the_burst(
    limited_queue: RunningQueue,
) -> None:
    accounts = [await limited_queue.add_account(OWNER) for _ in range(3)]
    batch = pb.EnqueueSyncBatchRequest(items=[_enqueue(a) for a in accounts])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await limited_queue.stub.EnqueueSyncBatch(batch, metadata=bearer(OWNER))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(caught.value)] == ["items"]

    pair = pb.EnqueueSyncBatchRequest(items=[_enqueue(a) for a in accounts[:2]])
    await limited_queue.stub.EnqueueSyncBatch(pair, metadata=bearer(OWNER))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await limited_queue.stub.EnqueueSync(_enqueue(accounts[2]), metadata=bearer(OWNER))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_bucket_refills_at_the_rate_and_says_how_long_to_wait() -> None:
    now = [0.0]
    limiter = UserRateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    user = uuid.uuid4()
    assert [limiter.take(user) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take(user) == pytest.approx(0.5)
    now[0] = 0.5
    assert limiter.take(user) == 0.0
    assert limiter.take(user, 3) == pytest.approx(1.5)
    now[0] = 100.0
    assert limiter.take(user, 3) == 0.0  # never more than the burst saved up
    assert limiter.take(user) == pytest.approx(0.5)
    assert UserRateLimiter(rate=0, burst=1).take(user, 1) == 0.0  # 0: no limit


def _nested(depth: int) -> struct_pb2.Struct:
    value: object = "leaf"
    for _ in range(depth - 1):
        value = {"k": value}
    struct = struct_pb2.Struct()
    struct.update({"k": value})
    return struct


async def test_metadata_nested_past_the_limit_is_refused(pg_queue: RunningQueue) -> None:
    account = await pg_queue.add_account(OWNER)
    request = _enqueue(account)
    request.metadata.CopyFrom(_nested(MAX_METADATA_DEPTH + 1))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pg_queue.stub.EnqueueSync(request, metadata=WORKER_METADATA)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(caught.value)] == ["metadata"]

    request.metadata.CopyFrom(_nested(MAX_METADATA_DEPTH))
    await pg_queue.stub.EnqueueSync(request, metadata=WORKER_METADATA)


async def test_a_message_over_the_size_limit_is_resource_exhausted(pg_queue: RunningQueue) -> None:
    call = pg_queue.channel.unary_unary("/gmbsync.queue.v1.QueueService/EnqueueSync")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(b"\x00" * (MAX_MESSAGE + 1), metadata=WORKER_METADATA)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    ("method", "request_message", "field"),
    [
        (
            "EnqueueSyncBatch",
            pb.EnqueueSyncBatchRequest(items=[pb.EnqueueSyncRequest()] * (MAX_BATCH + 1)),
            "items",
        ),
        (
            "ReportResults",
            pb.ReportResultsRequest(results=[pb.JobResult()] * (MAX_BATCH + 1)),
            "results",
        ),
        ("PickJobs", pb.PickJobsRequest(worker_id="w", max_jobs=MAX_PICK + 1), "max_jobs"),
        ("ListJobs", pb.ListJobsRequest(page_size=MAX_PAGE_SIZE + 1), "page_size"),
    ],
)
async def test_counts_past_the_stated_limits_name_their_field(
    pg_queue: RunningQueue, method: str, request_message: object, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(pg_queue.stub, method)(request_message, metadata=WORKER_METADATA)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [v.field for v in field_violations(caught.value)]
