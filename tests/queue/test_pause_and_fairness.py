"""PauseQueue / ResumeQueue and fair picking, over a real QueueService on both databases."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import duration_pb2

from clients import Credentials, QueueClient
from clients import errors as client_errors
from gmbsync.queue.v1 import queue_service_pb2 as pb
from service_runtime.auth import Role
from service_runtime.errors import field_violations
from tests.conftest import ADMIN_USER, TEST_TRIGGER_SECRET, WORKER_METADATA, bearer
from tests.queue.conftest import queue_settings, start_queue, stop_queue
from tests.queue.helpers import insert_accounts, rpc_error

USER_A = uuid.UUID("00000000-0000-4000-8000-0000000000a1")
USER_B = uuid.UUID("00000000-0000-4000-8000-0000000000b2")
ADMIN = bearer(ADMIN_USER, Role.ADMIN)


async def pause(queue, user_id: uuid.UUID | None = None, reason: str = "", metadata=ADMIN):  # type: ignore[no-untyped-def]
    return await queue.stub.PauseQueue(
        pb.PauseQueueRequest(user_id=str(user_id) if user_id else "", reason=reason),
        metadata=metadata,
    )


async def resume(queue, user_id: uuid.UUID | None = None, metadata=ADMIN):  # type: ignore[no-untyped-def]
    return await queue.stub.ResumeQueue(
        pb.ResumeQueueRequest(user_id=str(user_id) if user_id else ""), metadata=metadata
    )


async def test_a_paused_users_jobs_wait_while_others_run_and_run_after_resume(queue):
    job_a = await queue.enqueue(await queue.add_account(USER_A))
    job_b = await queue.enqueue(await queue.add_account(USER_B))

    paused = await pause(queue, USER_A, "billing dispute")
    while_paused = await queue.pick(max_jobs=10)
    resumed = await resume(queue, USER_A)
    after = await queue.pick(max_jobs=10)

    assert paused.pause.user_id == str(USER_A) and paused.pause.reason == "billing dispute"
    assert paused.pause.paused_by == str(ADMIN_USER)
    assert [p.user_id for p in paused.active_pauses] == [str(USER_A)]
    assert [j.id for j in while_paused] == [job_b.id]
    assert resumed.resumed and list(resumed.active_pauses) == []
    assert [j.id for j in after] == [job_a.id]


async def test_a_paused_queue_takes_jobs_hands_out_none_and_shows_the_pause(queue):
    await pause(queue, reason="migrating the database", metadata=WORKER_METADATA)

    enqueued = await queue.stub.EnqueueSync(
        pb.EnqueueSyncRequest(
            account_id=str(await queue.add_account(USER_A)), sync_type=pb.SYNC_TYPE_FULL
        ),
        metadata=bearer(USER_A),
    )
    while_paused = await queue.pick(max_jobs=10)
    status = await queue.stub.GetQueueStatus(pb.GetQueueStatusRequest(), metadata=bearer(USER_A))
    diagnostics = await queue.stub.GetDiagnostics(pb.GetDiagnosticsRequest(), metadata=ADMIN)
    resumed = await resume(queue)
    after = await queue.pick(max_jobs=10)

    assert enqueued.job.status == pb.JOB_STATUS_PENDING
    assert while_paused == []
    for shown in (status.pauses, diagnostics.pauses):
        [only] = shown
        assert (only.user_id, only.reason, only.paused_by) == (
            "",
            "migrating the database",
            "service_role",
        )
        assert only.paused_at.ToDatetime(UTC) <= datetime.now(UTC)
    assert resumed.resumed
    assert [j.id for j in after] == [enqueued.job.id]


async def test_a_user_sees_the_whole_queues_pause_and_their_own_not_other_users(queue):
    await pause(queue, USER_A, "a")
    await pause(queue, USER_B, "b")
    await pause(queue, None, "all")

    seen_by_a = await queue.stub.GetQueueStatus(pb.GetQueueStatusRequest(), metadata=bearer(USER_A))
    seen_by_admin = await queue.stub.GetQueueStatus(pb.GetQueueStatusRequest(), metadata=ADMIN)

    assert sorted(p.reason for p in seen_by_a.pauses) == ["a", "all"]
    assert sorted(p.reason for p in seen_by_admin.pauses) == ["a", "all", "b"]


async def test_resuming_what_is_not_paused_answers_resumed_false(queue):
    await pause(queue, USER_B, "stays")

    response = await resume(queue, USER_A)

    assert not response.resumed
    assert [p.user_id for p in response.active_pauses] == [str(USER_B)]


@pytest.mark.parametrize("rpc", ["PauseQueue", "ResumeQueue"])
async def test_only_admins_and_services_may_pause_or_resume(queue, rpc):
    request = getattr(pb, f"{rpc}Request")()
    call = getattr(queue.stub, rpc)

    denied = await rpc_error(call(request, metadata=bearer(USER_A)))
    anonymous = await rpc_error(call(request))

    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert anonymous.code() == grpc.StatusCode.UNAUTHENTICATED
    status = await queue.stub.GetQueueStatus(pb.GetQueueStatusRequest(), metadata=ADMIN)
    assert list(status.pauses) == []


@pytest.mark.parametrize("rpc", ["PauseQueue", "ResumeQueue"])
@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"user_id": "not-a-uuid"}, "user_id", "UUID"),
        ({"user_id": str(uuid.UUID(int=0))}, "user_id", "nil UUID"),
        ({"reason": "x" * 501}, "reason", "at most 500"),
        ({"reason": "line\x07bell"}, "reason", "printable"),
    ],
)
async def test_a_bad_pause_request_is_invalid_argument_naming_the_field(
    pg_queue, rpc, fields, field, words
):
    call = getattr(pg_queue.stub, rpc)

    err = await rpc_error(call(getattr(pb, f"{rpc}Request")(**fields), metadata=ADMIN))

    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    [violation] = field_violations(err)
    assert violation.field == field and words in violation.description
    status = await pg_queue.stub.GetQueueStatus(pb.GetQueueStatusRequest(), metadata=ADMIN)
    assert list(status.pauses) == []


async def test_a_waiting_worker_is_woken_by_resume(pg_url, auth_settings):
    # Pickers re-check on their own only every 10 minutes here: only the resume can wake them.
    running = await start_queue(
        queue_settings(pg_url, auth_settings, pick_fallback_interval=timedelta(minutes=10))
    )
    try:
        await pause(running, USER_A)
        job = await running.enqueue(await running.add_account(USER_A))
        wait = duration_pb2.Duration()
        wait.FromTimedelta(timedelta(seconds=60))
        picking = asyncio.create_task(running.pick(max_jobs=1, wait=wait))
        signal = running.app.signal
        for _ in range(500):  # until the picker waits (polling with a deadline, not a sleep)
            if signal.waiting:
                break
            await asyncio.sleep(0.01)
        assert signal.waiting == 1 and not picking.done()

        await resume(running, USER_A)
        picked = await asyncio.wait_for(picking, 30)

        assert [j.id for j in picked] == [job.id]
    finally:
        await stop_queue(running)


async def _accounts_of(running, user_id: uuid.UUID, count: int) -> list[uuid.UUID]:  # type: ignore[no-untyped-def]
    return await insert_accounts(running.app.engine, user_id, count, datetime.now(UTC))


async def test_another_users_job_is_picked_within_two_picks_behind_a_full_batch(queue):
    backlog = await _accounts_of(queue, USER_A, 1000)
    await queue.stub.EnqueueSyncBatch(
        pb.EnqueueSyncBatchRequest(
            items=[
                pb.EnqueueSyncRequest(account_id=str(a), sync_type=pb.SYNC_TYPE_INCREMENTAL)
                for a in backlog
            ]
        ),
        # An internal service enqueues A's backlog: a user's own batches are rate limited.
        metadata=bearer(USER_A, Role.SERVICE),
    )
    lone = await queue.stub.EnqueueSync(
        pb.EnqueueSyncRequest(
            account_id=str(await queue.add_account(USER_B)), sync_type=pb.SYNC_TYPE_INCREMENTAL
        ),
        metadata=bearer(USER_B),
    )

    picked = [*(await queue.pick(max_jobs=1)), *(await queue.pick(max_jobs=1))]

    assert lone.job.id in [j.id for j in picked]


async def test_the_typed_client_pauses_and_resumes(pg_queue):
    client = QueueClient.connect(pg_queue.address, Credentials.trigger_secret(TEST_TRIGGER_SECRET))
    async with client:
        paused = await client.pause_queue(str(USER_A), reason="noisy neighbour")
        whole = await client.pause_queue(reason="maintenance")
        resumed = await client.resume_queue(str(USER_A))
        again = await client.resume_queue(str(USER_A))
        with pytest.raises(client_errors.InvalidArgument) as bad:
            await client.pause_queue("nope")

    assert paused.pause.user_id == str(USER_A) and paused.pause.paused_by == "service_role"
    assert [p.reason for p in whole.active_pauses] == ["noisy neighbour", "maintenance"]
    assert resumed.resumed and [p.reason for p in resumed.active_pauses] == ["maintenance"]
    assert not again.resumed
    assert [v.field for v in bad.value.violations] == ["user_id"]
