"""WatchJob streams a job's changes until it is finished; results carry typed counts."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import grpc
import pytest
from sqlalchemy import event

from clients import Credentials, QueueClient, RetryPolicy
from clients import errors as client_errors
from gmbsync.queue.v1 import queue_service_pb2 as pb
from service_runtime.auth import Role
from tests.cli.conftest import token_for
from tests.conftest import WORKER_METADATA, bearer
from tests.queue.conftest import RunningQueue, queue_settings, start_queue, stop_queue

WORKER_RESULT = {
    "locations_synced": 3,
    "locations_removed": 1,
    "reviews_added": 12,
    "reviews_updated": 2,
    "reviews_removed": 0,
    "api_calls": 9,
    "duration_seconds": 1.25,
    "locations_skipped": 1,
    "skipped_locations": [{"location_id": "locations/7", "reason": "PERMISSION_DENIED"}],
    "locations_deletions_deferred": 0,
    "resumed": True,
}


async def next_message(stream: grpc.aio.UnaryStreamCall) -> pb.WatchJobResponse:
    return await asyncio.wait_for(stream.read(), 30)


async def test_watch_sends_each_change_and_ends_after_the_job_finishes(queue: RunningQueue):
    account = await queue.add_account()
    job = await queue.enqueue(account)
    stream = queue.stub.WatchJob(pb.WatchJobRequest(job_id=job.id), metadata=WORKER_METADATA)

    first = await next_message(stream)
    assert first.job.status == pb.JOB_STATUS_PENDING and not first.finished
    [leased] = await queue.pick()
    second = await next_message(stream)
    assert second.job.status == pb.JOB_STATUS_PROCESSING and not second.finished
    await queue.complete(leased)
    last = await next_message(stream)
    assert last.job.status == pb.JOB_STATUS_SUCCEEDED and last.finished
    assert await stream.read() is grpc.aio.EOF
    assert await stream.code() == grpc.StatusCode.OK


async def test_watch_of_a_finished_job_sends_it_once(pg_queue: RunningQueue):
    account = await pg_queue.add_account()
    job = await pg_queue.enqueue(account)
    await pg_queue.stub.CancelJob(pb.CancelJobRequest(job_id=job.id), metadata=WORKER_METADATA)
    stream = pg_queue.stub.WatchJob(pb.WatchJobRequest(job_id=job.id), metadata=WORKER_METADATA)
    messages = [m async for m in stream]
    assert [(m.job.status, m.finished) for m in messages] == [(pb.JOB_STATUS_CANCELLED, True)]


async def test_watch_names_a_bad_job_id(pg_queue: RunningQueue):
    stream = pg_queue.stub.WatchJob(pb.WatchJobRequest(job_id="nope"), metadata=WORKER_METADATA)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "job_id" in caught.value.details()


async def test_watch_of_another_users_job_is_not_found(pg_queue: RunningQueue):
    account = await pg_queue.add_account(uuid.uuid4())
    job = await pg_queue.enqueue(account)
    stream = pg_queue.stub.WatchJob(
        pb.WatchJobRequest(job_id=job.id), metadata=bearer(uuid.uuid4())
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.read()
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_watch_needs_credentials(pg_queue: RunningQueue):
    stream = pg_queue.stub.WatchJob(pb.WatchJobRequest(job_id=str(uuid.uuid4())))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.read()
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_shutdown_ends_open_watches_as_unavailable(pg_url, auth_settings):
    running = await start_queue(queue_settings(pg_url, auth_settings))
    try:
        account = await running.add_account()
        job = await running.enqueue(account)
        stream = running.stub.WatchJob(pb.WatchJobRequest(job_id=job.id), metadata=WORKER_METADATA)
        await next_message(stream)
        # A long grace: the stream must end because of the shutdown, not the grace running out.
        stopping = asyncio.create_task(running.app.stop(grace=30))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await next_message(stream)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        await asyncio.wait_for(stopping, 30)
    finally:
        await running.channel.close()


async def test_a_finished_job_carries_its_result_with_integer_counts(queue: RunningQueue):
    account = await queue.add_account()
    await queue.enqueue(account)
    [leased] = await queue.pick()
    request = pb.CompleteJobRequest(job_id=leased.id, lease_token=leased.lease_token)
    request.result.update(WORKER_RESULT)
    await queue.stub.CompleteJob(request, metadata=WORKER_METADATA)

    job = await queue.get(leased.id)
    typed = job.sync_result
    assert job.HasField("sync_result")
    assert (typed.locations_synced, typed.reviews_added, typed.api_calls) == (3, 12, 9)
    assert isinstance(typed.reviews_added, int)
    assert typed.duration.ToMilliseconds() == 1250
    assert typed.resumed is True
    assert [(s.location_id, s.reason) for s in typed.skipped_locations] == [
        ("locations/7", "PERMISSION_DENIED")
    ]
    # The Struct stays, for callers that read it: there every count is a float.
    assert job.result["reviews_added"] == 12.0


async def test_a_result_of_unknown_shape_has_no_typed_result(pg_queue: RunningQueue):
    account = await pg_queue.add_account()
    await pg_queue.enqueue(account)
    [leased] = await pg_queue.pick()
    request = pb.CompleteJobRequest(job_id=leased.id, lease_token=leased.lease_token)
    request.result.update({"note": "made by hand", "reviews_added": "many", "api_calls": 2.5})
    await pg_queue.stub.CompleteJob(request, metadata=WORKER_METADATA)
    job = await pg_queue.get(leased.id)
    assert not job.HasField("sync_result")
    assert job.result["note"] == "made by hand"


async def test_wait_for_job_returns_the_finished_job(pg_queue: RunningQueue):
    account = await pg_queue.add_account()
    job = await pg_queue.enqueue(account)
    client = QueueClient.connect(
        pg_queue.address, Credentials.bearer(token_for(uuid.uuid4(), Role.ADMIN))
    )
    try:
        waiting = asyncio.create_task(client.wait_for_job(job.id, timeout=30))
        [leased] = await pg_queue.pick()
        await pg_queue.fail(leased, "boom", permanent=True)
        finished = await waiting
        assert finished.status == pb.JOB_STATUS_FAILED
        assert finished.errors[0].error == "boom"
    finally:
        await client.close()


async def test_wait_for_job_times_out_with_the_last_state_seen(pg_queue: RunningQueue):
    account = await pg_queue.add_account()
    job = await pg_queue.enqueue(account)
    client = QueueClient.connect(
        pg_queue.address, Credentials.bearer(token_for(uuid.uuid4(), Role.ADMIN))
    )
    try:
        with pytest.raises(client_errors.JobWaitTimeout) as caught:
            await client.wait_for_job(job.id, timeout=0.5)
        assert caught.value.job is not None
        assert caught.value.job.status == pb.JOB_STATUS_PENDING
        assert isinstance(caught.value, client_errors.DeadlineExceeded)
    finally:
        await client.close()


async def test_wait_for_job_raises_not_found_at_once(pg_queue: RunningQueue):
    client = QueueClient.connect(
        pg_queue.address, Credentials.bearer(token_for(uuid.uuid4(), Role.ADMIN))
    )
    try:
        with pytest.raises(client_errors.NotFound):
            await client.wait_for_job(str(uuid.uuid4()), timeout=30)
    finally:
        await client.close()


async def test_wait_for_job_watches_again_after_the_server_restarts(pg_url, auth_settings):
    first = await start_queue(queue_settings(pg_url, auth_settings))
    port = first.address.rsplit(":", 1)[1]
    account = await first.add_account()
    job = await first.enqueue(account)
    client = QueueClient.connect(
        first.address, Credentials.bearer(token_for(uuid.uuid4(), Role.ADMIN))
    )
    watching = asyncio.Event()
    watch_job = client.watch_job

    async def observed_watch(job_id, **kwargs):  # type: ignore[no-untyped-def]
        async for seen in watch_job(job_id, **kwargs):
            watching.set()
            yield seen

    client.watch_job = observed_watch  # type: ignore[method-assign]
    second = None
    first_running = True
    try:
        waiting = asyncio.create_task(client.wait_for_job(job.id, timeout=60))
        # Stop the server only once the watch is open, so that it is the stream that breaks.
        await asyncio.wait_for(watching.wait(), 30)
        first_running = False
        await first.app.stop(grace=5)
        await first.channel.close()
        second = await start_queue(
            queue_settings(pg_url, auth_settings, listen_addr=f"127.0.0.1:{port}")
        )
        [leased] = await second.pick()
        await second.complete(leased)
        finished = await asyncio.wait_for(waiting, 60)
        assert finished.status == pb.JOB_STATUS_SUCCEEDED
    finally:
        await client.close()
        # A server left running would lead the reaper and the scheduler for later tests.
        if first_running:
            await stop_queue(first)
        if second is not None:
            await stop_queue(second)


async def test_wait_for_job_watches_again_when_a_stream_ends_early():
    # No server: what the watch streams is made up, as a proxy cutting an idle stream would.
    client = QueueClient.connect(
        "127.0.0.1:1",
        Credentials.none(),
        retry=RetryPolicy(attempts=3, initial_backoff=0.001, max_backoff=0.001),
    )
    pending = pb.Job(id="j", status=pb.JOB_STATUS_PENDING)
    done = pb.Job(id="j", status=pb.JOB_STATUS_SUCCEEDED)
    streams = [[pending], [pending, done]]

    async def watch(job_id, **_kwargs):  # type: ignore[no-untyped-def]
        for job in streams.pop(0):
            yield job

    client.watch_job = watch  # type: ignore[method-assign]
    try:
        assert (await client.wait_for_job("j", timeout=30)).status == pb.JOB_STATUS_SUCCEEDED
        streams.extend([[pending]] * 3)
        with pytest.raises(client_errors.Unavailable, match="watch ended before the job finished"):
            await client.wait_for_job("j", timeout=30)
    finally:
        await client.close()


async def test_open_watches_share_one_read_a_tick(any_db_url, auth_settings):
    # Every open watch used to read its own job each interval: 40 watches were 40 reads a
    # tick. The process's watches now share one statement a tick, whatever their number.
    interval = timedelta(milliseconds=50)
    running = await start_queue(
        queue_settings(any_db_url, auth_settings, watch_poll_interval=interval)
    )
    reads_of_jobs: list[str] = []

    def count(_conn, _cursor, statement, _params, _context, _many):
        if statement.lstrip().upper().startswith("SELECT") and "sync_queue" in statement:
            reads_of_jobs.append(statement)

    event.listen(running.app.engine.sync_engine, "before_cursor_execute", count)
    streams = []
    try:
        jobs = [await running.enqueue(await running.add_account()) for _ in range(40)]
        for job in jobs:
            stream = running.stub.WatchJob(
                pb.WatchJobRequest(job_id=job.id), metadata=WORKER_METADATA
            )
            assert (await next_message(stream)).job.status == pb.JOB_STATUS_PENDING
            streams.append(stream)

        reads_of_jobs.clear()
        await asyncio.sleep(20 * interval.total_seconds())
        ticks = len(reads_of_jobs)

        assert 0 < ticks <= 30, f"{ticks} reads of jobs in 20 intervals by 40 watches"
        # Each watch still sees its job change.
        [leased] = await running.pick()
        watched = streams[[j.id for j in jobs].index(leased.id)]
        assert (await next_message(watched)).job.status == pb.JOB_STATUS_PROCESSING
    finally:
        event.remove(running.app.engine.sync_engine, "before_cursor_execute", count)
        for stream in streams:
            stream.cancel()
        await stop_queue(running)
