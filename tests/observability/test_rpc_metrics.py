"""Every RPC is counted by status code and timed; refused calls are logged without secrets."""

from __future__ import annotations

import logging
import uuid

import grpc
import pytest
from prometheus_client import REGISTRY

from gmbsync.queue.v1 import queue_service_pb2 as pb
from service_runtime.auth import issue_token
from tests.conftest import TEST_JWT_SECRET, WORKER_METADATA
from tests.queue.conftest import queue_settings, start_queue, stop_queue
from tests.runtime.echo import BOOM, SERVICE, WHO_AM_I, call, echo_server


def handled(method: str, code: str) -> float:
    value = REGISTRY.get_sample_value(
        "grpc_server_handled_total",
        {"grpc_service": SERVICE, "grpc_method": method, "grpc_code": code},
    )
    return value or 0.0


def timed(method: str) -> float:
    value = REGISTRY.get_sample_value(
        "grpc_server_handling_seconds_count", {"grpc_service": SERVICE, "grpc_method": method}
    )
    return value or 0.0


async def test_calls_are_counted_by_code_and_timed(auth_settings) -> None:  # type: ignore[no-untyped-def]
    token = issue_token(TEST_JWT_SECRET, user_id=uuid.uuid4(), role="authenticated")
    user = (("authorization", f"Bearer {token}"),)
    before = {
        code: handled("WhoAmI", code) for code in ("OK", "UNAUTHENTICATED", "PERMISSION_DENIED")
    }
    boom_before, timed_before = handled("Boom", "INTERNAL"), timed("WhoAmI")

    async with echo_server(auth_settings) as (_echo, channel, _auth):
        for _ in range(3):
            await call(channel, WHO_AM_I, user)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(channel, WHO_AM_I)
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call(channel, BOOM, user)
        assert failed.value.code() is grpc.StatusCode.INTERNAL

    assert handled("WhoAmI", "OK") - before["OK"] == 3
    assert handled("WhoAmI", "UNAUTHENTICATED") - before["UNAUTHENTICATED"] == 1
    assert handled("WhoAmI", "PERMISSION_DENIED") - before["PERMISSION_DENIED"] == 0
    assert handled("Boom", "INTERNAL") - boom_before == 1
    assert timed("WhoAmI") - timed_before == 4


async def test_a_server_without_rpc_metrics_counts_nothing(auth_settings) -> None:  # type: ignore[no-untyped-def]
    token = issue_token(TEST_JWT_SECRET, user_id=uuid.uuid4(), role="authenticated")
    before = handled("WhoAmI", "OK")
    async with echo_server(auth_settings, rpc_metrics=False) as (_echo, channel, _auth):
        await call(channel, WHO_AM_I, (("authorization", f"Bearer {token}"),))
    assert handled("WhoAmI", "OK") == before


async def test_refused_credentials_are_logged_without_the_secret(
    auth_settings,  # type: ignore[no-untyped-def]
    caplog: pytest.LogCaptureFixture,
) -> None:
    forged = issue_token(
        "another-secret-that-is-long-enough-for-hs256", user_id=uuid.uuid4(), role="authenticated"
    )
    wrong_secret = "wrong-trigger-secret-4f1c9a"
    garbage = "not-a-jwt-9d2e7b"
    attempts = [
        (("authorization", f"Bearer {forged}"),),
        (("x-trigger-secret", wrong_secret),),
        (("authorization", f"Bearer {garbage}"),),
        (),
    ]
    with caplog.at_level(logging.INFO):
        async with echo_server(auth_settings) as (_echo, channel, _auth):
            for metadata in attempts:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call(channel, WHO_AM_I, metadata)
                assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED

    refusals = [r for r in caplog.records if "refused WhoAmI" in r.getMessage()]
    assert len(refusals) == len(attempts)  # four different reasons: none held back
    for record in refusals:
        assert record.levelno == logging.WARNING
        message = record.getMessage()
        assert "UNAUTHENTICATED" in message
        assert "127.0.0.1" in message  # the peer
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (forged, wrong_secret, garbage, TEST_JWT_SECRET, "test-trigger-secret"):
        assert secret not in logged


async def test_the_same_refusal_repeated_is_logged_once_per_burst(
    auth_settings,  # type: ignore[no-untyped-def]
    caplog: pytest.LogCaptureFixture,
) -> None:
    metadata = (("x-trigger-secret", "a-secret-that-is-wrong-but-different-7c1"),)
    with caplog.at_level(logging.INFO):
        async with echo_server(auth_settings) as (_echo, channel, _auth):
            for _ in range(20):
                with pytest.raises(grpc.aio.AioRpcError):
                    await call(channel, BOOM, metadata)
    refusals = [r for r in caplog.records if "refused Boom" in r.getMessage()]
    assert len(refusals) == 1


async def test_invalid_arguments_are_logged_with_the_field(
    pg_url: str,
    auth_settings,  # type: ignore[no-untyped-def]
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = await start_queue(queue_settings(pg_url, auth_settings))
    try:
        with caplog.at_level(logging.INFO), pytest.raises(grpc.aio.AioRpcError) as refused:
            await queue.stub.EnqueueSync(
                pb.EnqueueSyncRequest(account_id="nope", sync_type=pb.SYNC_TYPE_FULL),
                metadata=WORKER_METADATA,
            )
    finally:
        await stop_queue(queue)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    [record] = [r for r in caplog.records if "EnqueueSync from" in r.getMessage()]
    assert record.levelno == logging.INFO
    assert "INVALID_ARGUMENT" in record.getMessage()
    assert "account_id" in record.getMessage()
