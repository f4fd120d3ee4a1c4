"""Hostile input that once reached UNKNOWN or INTERNAL: each must be INVALID_ARGUMENT, naming
the field, and change nothing."""

from __future__ import annotations

import base64
import json
import uuid

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from gmbsync.queue.v1 import queue_service_pb2 as qpb
from gmbsync.sync.v1 import sync_service_pb2 as spb
from service_runtime.errors import field_violations
from tests.conftest import WORKER_METADATA
from tests.fuzz.conftest import QUEUE_SERVICE, ROLES, SYNC_SERVICE, Services

ALL_RPCS = [(QUEUE_SERVICE, m.name) for m in QUEUE_SERVICE.methods] + [
    (SYNC_SERVICE, m.name) for m in SYNC_SERVICE.methods
]
# Not a protobuf message: field 1 as a varint whose bytes never end, then garbage.
UNDECODABLE = [b"\xff\xff\xff\xff", b"\x0a\xff\x01abc", b"\x08" + b"\x80" * 11]


@pytest.mark.parametrize(("service", "method"), ALL_RPCS, ids=lambda x: getattr(x, "name", x))
async def test_undecodable_bytes_are_invalid_argument_without_a_class_name(
    services: Services, service, method: str
) -> None:
    for payload in UNDECODABLE:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await services.call_raw(service, method, payload)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
        details = caught.value.details() or ""
        assert "class" not in details and "DecodeError" not in details, details
        assert "not a valid" in details


async def test_undecodable_bytes_from_an_anonymous_caller_are_still_unauthenticated(
    services: Services,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await services.call_raw(QUEUE_SERVICE, "GetJob", UNDECODABLE[0], ROLES["none"])
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


HUGE_DURATIONS = [
    duration_pb2.Duration(seconds=10**14),
    duration_pb2.Duration(seconds=2**62),
    duration_pb2.Duration(seconds=-(2**62)),
    duration_pb2.Duration(seconds=-5),
    duration_pb2.Duration(seconds=5, nanos=-1),
    duration_pb2.Duration(seconds=5, nanos=10**9),
    duration_pb2.Duration(seconds=-1, nanos=5),
]


def _expect_field(error: grpc.aio.AioRpcError, field: str) -> None:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    fields = [v.field for v in field_violations(error)]
    assert field in fields, (fields, error.details())
    assert field in (error.details() or "")


JOB = str(uuid.uuid4())
TOKEN = str(uuid.uuid4())


def _duration_requests(value: duration_pb2.Duration) -> list[tuple[str, object, str]]:
    fail = qpb.FailJobRequest(job_id=JOB, lease_token=TOKEN, error="x", retry_after=value)
    release = qpb.ReleaseJobRequest(job_id=JOB, lease_token=TOKEN, delay=value)
    return [
        ("PickJobs", qpb.PickJobsRequest(worker_id="w", wait=value), "wait"),
        ("PickJobs", qpb.PickJobsRequest(worker_id="w", lease_duration=value), "lease_duration"),
        (
            "ExtendLease",
            qpb.ExtendLeaseRequest(job_id=JOB, lease_token=TOKEN, lease_duration=value),
            "lease_duration",
        ),
        ("FailJob", fail, "retry_after"),
        ("ReleaseJob", release, "delay"),
        (
            "ReportResults",
            qpb.ReportResultsRequest(results=[qpb.JobResult(fail=fail)]),
            "results[0].fail.retry_after",
        ),
        (
            "ReportResults",
            qpb.ReportResultsRequest(results=[qpb.JobResult(release=release)]),
            "results[0].release.delay",
        ),
        ("MarkStaleJobs", qpb.MarkStaleJobsRequest(threshold=value), "threshold"),
    ]


@pytest.mark.parametrize("value", HUGE_DURATIONS, ids=str)
async def test_out_of_range_durations_name_their_field(
    services: Services, value: duration_pb2.Duration
) -> None:
    for method, request, field in _duration_requests(value):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await services.call_raw(QUEUE_SERVICE, method, request.SerializeToString())
        _expect_field(caught.value, field)


def _forged_token(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


FORGED_TIMES = [
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00-14:00",
    "9999-12-31T23:59:59-14:00",
    "9999-12-31T23:59:59+14:00",
]
DEEP_JSON = base64.urlsafe_b64encode(b"[" * 100_000).decode().rstrip("=")


def _job_tokens() -> list[str]:
    forged = [_forged_token({"c": t, "i": str(uuid.uuid4()), "f": "||"}) for t in FORGED_TIMES]
    return [*forged, DEEP_JSON]


def _account_tokens() -> list[str]:
    forged = [_forged_token([t, str(uuid.uuid4())]) for t in FORGED_TIMES]
    return [*forged, DEEP_JSON]


async def test_forged_list_jobs_page_tokens_are_invalid_argument(services: Services) -> None:
    for token in _job_tokens():
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await services.queue.stub.ListJobs(
                qpb.ListJobsRequest(page_token=token), metadata=WORKER_METADATA
            )
        _expect_field(caught.value, "page_token")


async def test_forged_list_accounts_page_tokens_are_invalid_argument(services: Services) -> None:
    for token in _account_tokens():
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await services.sync.stub.ListAccounts(
                spb.ListAccountsRequest(user_id=str(uuid.uuid4()), page_token=token),
                metadata=WORKER_METADATA,
            )
        _expect_field(caught.value, "page_token")


BAD_TIMESTAMPS = [
    timestamp_pb2.Timestamp(seconds=2**60),
    timestamp_pb2.Timestamp(seconds=-62135596801),
    timestamp_pb2.Timestamp(seconds=1_800_000_000, nanos=-1),
    timestamp_pb2.Timestamp(seconds=1_800_000_000, nanos=10**9),
]


@pytest.mark.parametrize("value", BAD_TIMESTAMPS, ids=str)
async def test_connect_account_with_an_impossible_expiry_names_the_field(
    services: Services, value: timestamp_pb2.Timestamp
) -> None:
    request = spb.ConnectAccountRequest(
        user_id=str(uuid.uuid4()),
        account_name="Acme",
        google_account_id="accounts/1",
        refresh_token="emulator-refresh-token-1",
        access_token="ya29.token",
        access_token_expires_at=value,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await services.sync.stub.ConnectAccount(request, metadata=WORKER_METADATA)
    _expect_field(caught.value, "access_token_expires_at")


@pytest.mark.parametrize("value", BAD_TIMESTAMPS, ids=str)
async def test_enqueue_with_an_impossible_schedule_names_the_field(
    services: Services, value: timestamp_pb2.Timestamp
) -> None:
    request = qpb.EnqueueSyncRequest(
        account_id=str(uuid.uuid4()), sync_type=qpb.SYNC_TYPE_FULL, scheduled_at=value
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await services.queue.stub.EnqueueSync(request, metadata=WORKER_METADATA)
    _expect_field(caught.value, "scheduled_at")


async def test_undecodable_bytes_to_server_reflection_are_invalid_argument(
    services: Services,
) -> None:
    """grpcurl's own stream: a bidirectional one, guarded like the services' RPCs."""
    method = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    call = services.channel_for(QUEUE_SERVICE).stream_stream(method)(timeout=30)
    await call.write(UNDECODABLE[0])
    await call.done_writing()

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
    assert "not a valid" in (caught.value.details() or "")
