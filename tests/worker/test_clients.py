"""The typed clients against a real gRPC server: error translation, retries, credentials."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import grpc
import pytest

from clients import Credentials, QueueClient, RetryPolicy, SyncClient
from clients import errors as client_errors
from clients.channel import create_channel
from gmbsync.queue.v1 import queue_service_pb2 as pb
from gmbsync.queue.v1 import queue_service_pb2_grpc as pb_grpc
from service_runtime.errors import (
    SYNC_ERROR_DOMAIN,
    ErrorReason,
    FieldViolation,
    abort,
    rich_status,
)

FAST_RETRY = RetryPolicy(attempts=3, initial_backoff=0.01, max_backoff=0.02)


class ScriptedQueue(pb_grpc.QueueServiceServicer):
    """Answers each RPC from a script of failures, then succeeds; records what it was sent."""

    def __init__(self) -> None:
        self.failures: dict[str, list[tuple[grpc.StatusCode, str, dict[str, object]]]] = {}
        self.calls: dict[str, int] = {}
        self.metadata: list[dict[str, str]] = []

    async def _maybe_fail(self, name: str, context: grpc.aio.ServicerContext) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        self.metadata.append(dict(context.invocation_metadata() or ()))
        script = self.failures.get(name)
        if script:
            code, message, extra = script.pop(0)
            await abort(context, code, message, **extra)  # type: ignore[arg-type]

    async def GetJob(self, request, context):
        await self._maybe_fail("GetJob", context)
        return pb.GetJobResponse(job=pb.Job(id=request.job_id))

    async def EnqueueSync(self, request, context):
        await self._maybe_fail("EnqueueSync", context)
        return pb.EnqueueSyncResponse(job=pb.Job(account_id=request.account_id))

    async def CompleteJob(self, request, context):
        await self._maybe_fail("CompleteJob", context)
        return pb.CompleteJobResponse(job=pb.Job(id=request.job_id))

    async def ExtendLease(self, request, context):
        await self._maybe_fail("ExtendLease", context)
        return pb.ExtendLeaseResponse()


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[ScriptedQueue, QueueClient]]:
    servicer = ScriptedQueue()
    server = grpc.aio.server()
    pb_grpc.add_QueueServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = QueueClient.connect(
        f"127.0.0.1:{port}", Credentials.trigger_secret("the-secret"), retry=FAST_RETRY
    )
    yield servicer, client
    await client.close()
    await server.stop(0)


async def test_field_violations_arrive_as_invalid_argument(scripted) -> None:
    servicer, client = scripted
    servicer.failures["EnqueueSync"] = [
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            "account_id: not a UUID",
            {"violations": [FieldViolation("account_id", "not a UUID")]},
        )
    ]
    with pytest.raises(client_errors.InvalidArgument) as caught:
        await client.enqueue_sync("nope", "full")
    assert caught.value.violations == [FieldViolation("account_id", "not a UUID")]
    assert caught.value.server_details
    assert not caught.value.retryable
    assert "QueueService.EnqueueSync" in str(caught.value)


async def test_lost_lease_is_lease_lost(scripted) -> None:
    servicer, client = scripted
    servicer.failures["CompleteJob"] = [(grpc.StatusCode.FAILED_PRECONDITION, "lease lost", {})]
    with pytest.raises(client_errors.LeaseLost):
        await client.complete_job("job-1", "token", {"reviews_added": 1})


async def test_reads_are_retried_and_honour_the_servers_delay(scripted) -> None:
    servicer, client = scripted
    servicer.failures["GetJob"] = [
        (grpc.StatusCode.UNAVAILABLE, "restarting", {"retry_delay_seconds": 0.05}),
        (grpc.StatusCode.UNAVAILABLE, "restarting", {}),
    ]
    job = await client.get_job("job-7")
    assert job.id == "job-7"
    assert servicer.calls["GetJob"] == 3


async def test_non_idempotent_writes_are_not_retried(scripted) -> None:
    servicer, client = scripted
    servicer.failures["EnqueueSync"] = [
        (grpc.StatusCode.UNAVAILABLE, "busy", {"retry_delay_seconds": 2.5})
    ]
    with pytest.raises(client_errors.Unavailable) as caught:
        await client.enqueue_sync("acct", "incremental")
    assert servicer.calls["EnqueueSync"] == 1
    assert caught.value.retry_delay == pytest.approx(2.5)
    assert caught.value.retryable
    assert not caught.value.infrastructure  # the service itself answered, with RetryInfo


async def test_retries_give_up_after_the_policys_attempts(scripted) -> None:
    servicer, client = scripted
    servicer.failures["ExtendLease"] = [(grpc.StatusCode.UNAVAILABLE, "down", {})] * 5
    with pytest.raises(client_errors.Unavailable):
        await client.extend_lease("job", "token", 30)
    assert servicer.calls["ExtendLease"] == FAST_RETRY.attempts


async def test_credentials_go_with_every_call_and_stay_out_of_repr(scripted) -> None:
    servicer, client = scripted
    await client.get_job("job-1")
    assert servicer.metadata[-1]["x-trigger-secret"] == "the-secret"
    assert "the-secret" not in repr(Credentials.trigger_secret("the-secret"))
    assert "token" not in repr(Credentials.bearer("token"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_a_dead_server_is_an_infrastructure_unavailable() -> None:
    client = SyncClient.connect(f"127.0.0.1:{_free_port()}", Credentials.none(), retry=FAST_RETRY)
    try:
        with pytest.raises(client_errors.Unavailable) as caught:
            await client.sync_account("acct", "full", timeout=5)
        assert caught.value.infrastructure
        with pytest.raises(client_errors.Unavailable):
            await client.wait_ready(0.2)
    finally:
        await client.close()


async def test_an_error_info_arrives_as_reason_domain_and_metadata(scripted) -> None:
    servicer, client = scripted
    servicer.failures["EnqueueSync"] = [
        (
            grpc.StatusCode.ABORTED,
            "ran out of time after 120 of 300 locations",
            {
                "retry_delay_seconds": 1.0,
                "reason": ErrorReason.SYNC_INCOMPLETE,
                "error_metadata": {"locations_done": 120, "locations_total": "300"},
            },
        )
    ]
    with pytest.raises(client_errors.Aborted) as caught:
        await client.enqueue_sync("acct", "full")
    error = caught.value
    assert error.reason == "SYNC_INCOMPLETE"
    assert error.error_domain == SYNC_ERROR_DOMAIN
    # ErrorInfo's metadata is string to string: numbers arrive as their text.
    assert error.error_metadata == {"locations_done": "120", "locations_total": "300"}
    assert error.retry_delay == pytest.approx(1.0)
    assert error.server_details


async def test_without_an_error_info_the_reason_is_none(scripted) -> None:
    servicer, client = scripted
    servicer.failures["EnqueueSync"] = [
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", {"retry_delay_seconds": 3.0})
    ]
    with pytest.raises(client_errors.ResourceExhausted) as caught:
        await client.enqueue_sync("acct", "full")
    assert caught.value.reason is None
    assert caught.value.error_domain is None
    assert caught.value.error_metadata == {}
    assert caught.value.retry_delay == pytest.approx(3.0)


def test_error_metadata_without_a_reason_is_refused() -> None:
    # ErrorInfo is only sent with a reason; metadata alone would be silently lost.
    with pytest.raises(ValueError, match="reason"):
        rich_status(grpc.StatusCode.UNAVAILABLE, "down", error_metadata={"service": "x"})


@pytest.mark.parametrize("recording", [False, True])
async def test_a_channel_is_traced_only_when_this_process_records_spans(
    monkeypatch: pytest.MonkeyPatch, recording: bool
) -> None:
    # With tracing off, OpenTelemetry's client interceptor would run on every call for spans
    # nobody records: a busy worker's costliest per-call step.
    monkeypatch.setattr("clients.channel.tracing_enabled", lambda: recording)
    channel = create_channel("127.0.0.1:1")
    try:
        assert bool(channel._unary_unary_interceptors) is recording
    finally:
        await channel.close()


async def test_a_channel_can_be_traced_or_not_whatever_the_process_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("clients.channel.tracing_enabled", lambda: False)
    traced = create_channel("127.0.0.1:1", tracing=True)
    try:
        assert traced._unary_unary_interceptors
    finally:
        await traced.close()
