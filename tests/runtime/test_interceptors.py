"""The interceptors every service runs: each call sees its own caller, wrappers are built once."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from service_runtime.auth import issue_token
from service_runtime.serving import ErrorBoundaryInterceptor
from tests.conftest import TEST_JWT_SECRET, WORKER_METADATA
from tests.runtime.echo import BOOM, WHO_AM_I, call, echo_server


def bearer_for(user: uuid.UUID) -> tuple[tuple[str, str]]:
    token = issue_token(TEST_JWT_SECRET, user_id=user, role="authenticated")
    return (("authorization", f"Bearer {token}"),)


async def test_concurrent_calls_each_see_their_own_caller(auth_settings):
    users = [uuid.uuid4() for _ in range(20)]
    async with echo_server(auth_settings) as (echo, channel, _auth):
        echo.together = len(users)  # every call is in the handler before any answers

        answers = await asyncio.gather(*(call(channel, WHO_AM_I, bearer_for(u)) for u in users))

    assert [a.decode() for a in answers] == [str(u) for u in users]


async def test_the_trigger_secret_is_seen_as_the_service_role(auth_settings):
    async with echo_server(auth_settings) as (_echo, channel, _auth):
        assert await call(channel, WHO_AM_I, WORKER_METADATA) == b"service_role"


async def test_a_handler_served_without_the_auth_interceptor_fails_closed():
    async with echo_server(None) as (_echo, channel, _auth):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(channel, WHO_AM_I, bearer_for(uuid.uuid4()))

    # No principal was set: the handler never runs as anyone, and says INTERNAL.
    assert refused.value.code() == grpc.StatusCode.INTERNAL
    assert "incident" in (refused.value.details() or "")


async def test_each_method_is_guarded_by_one_wrapper_built_at_its_first_call(
    auth_settings, monkeypatch
):
    built: list[str] = []
    guard = ErrorBoundaryInterceptor._guard

    def counting_guard(self, handler, method):
        built.append(method)
        return guard(self, handler, method)

    monkeypatch.setattr(ErrorBoundaryInterceptor, "_guard", counting_guard)
    user = bearer_for(uuid.uuid4())
    async with echo_server(auth_settings) as (_echo, channel, _auth):
        for _ in range(5):
            assert await call(channel, WHO_AM_I, user)
            # Refused calls in between leave the guarded handler in place.
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(channel, WHO_AM_I, ())
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await call(channel, BOOM, user)
            # The reused wrapper still turns a failure into INTERNAL with an incident id.
            assert failed.value.code() == grpc.StatusCode.INTERNAL
            assert "incident" in (failed.value.details() or "")

    assert sorted(built) == [BOOM, WHO_AM_I]
