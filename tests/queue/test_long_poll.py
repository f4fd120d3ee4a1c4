"""PickJobs long-polls: a waiting picker gets a new job as soon as it is enqueued.

The servers here re-check only every 30 s on their own, and each test gives up long before
that, so a pass proves the wake-up came from the notification, not from polling.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2

from gmbsync.queue.v1 import queue_service_pb2 as pb
from queue_service import servicer
from tests.conftest import WORKER_METADATA
from tests.queue.conftest import queue_settings, start_queue, stop_queue

NO_POLLING = {"pick_fallback_interval": timedelta(seconds=30)}


def wait(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(timedelta(seconds=seconds))
    return duration


async def _wait_until_waiting(running, count: int = 1) -> None:
    """Returns once `count` pickers wait on the replica's signal: an enqueue made earlier would
    be found by the picker's first look, and the test would not prove the wake-up."""
    await _until(lambda: running.app.signal.waiting >= count, f"{count} picker(s) waiting")


async def test_a_waiting_picker_is_woken_by_an_enqueue(any_db_url, auth_settings):
    running = await start_queue(queue_settings(any_db_url, auth_settings, **NO_POLLING))
    try:
        account = await running.add_account()
        picker = asyncio.ensure_future(
            running.stub.PickJobs(
                pb.PickJobsRequest(worker_id="waiter", wait=wait(25)), metadata=WORKER_METADATA
            )
        )
        await _wait_until_waiting(running)
        job = await running.enqueue(account)

        response = await asyncio.wait_for(picker, timeout=10)

        assert [j.id for j in response.jobs] == [job.id]
    finally:
        await stop_queue(running)


async def test_a_job_enqueued_on_one_replica_wakes_a_picker_on_another(pg_url, auth_settings):
    replica_a = await start_queue(queue_settings(pg_url, auth_settings, **NO_POLLING))
    replica_b = await start_queue(queue_settings(pg_url, auth_settings, **NO_POLLING))
    try:
        account = await replica_b.add_account()
        picker = asyncio.ensure_future(
            replica_a.stub.PickJobs(
                pb.PickJobsRequest(worker_id="waiter-on-a", wait=wait(25)),
                metadata=WORKER_METADATA,
            )
        )
        await _wait_until_waiting(replica_a)
        job = await replica_b.enqueue(account)

        response = await asyncio.wait_for(picker, timeout=10)

        assert [j.id for j in response.jobs] == [job.id]
    finally:
        await stop_queue(replica_a)
        await stop_queue(replica_b)


async def test_a_wait_with_nothing_to_do_returns_empty(queue):
    response = await queue.stub.PickJobs(
        pb.PickJobsRequest(worker_id="idle", wait=wait(0.2)), metadata=WORKER_METADATA
    )
    assert list(response.jobs) == []


async def test_a_picker_never_waits_past_its_deadline(queue, monkeypatch):
    # wait=30s but a 3 s deadline: the server answers (empty) before the deadline, rather than
    # leasing a job to a caller that is gone. A 2.5 s margin (the server waits 0.5 s) so that a
    # loaded machine cannot make the answer itself late; a server that ignored the deadline
    # would still wait 30 s and the call would end DEADLINE_EXCEEDED.
    monkeypatch.setattr(servicer, "PICK_DEADLINE_MARGIN", timedelta(seconds=2.5))
    response = await queue.stub.PickJobs(
        pb.PickJobsRequest(worker_id="hurried", wait=wait(30)),
        metadata=WORKER_METADATA,
        timeout=3.0,
    )
    assert list(response.jobs) == []


async def test_shutdown_releases_waiting_pickers_at_once(any_db_url, auth_settings):
    running = await start_queue(queue_settings(any_db_url, auth_settings, **NO_POLLING))
    picker = asyncio.ensure_future(
        running.stub.PickJobs(
            pb.PickJobsRequest(worker_id="waiter", wait=wait(25)), metadata=WORKER_METADATA
        )
    )
    await _wait_until_waiting(running)

    # A 20 s grace period: the picker must be answered long before it, not cut off after.
    stopping = asyncio.ensure_future(running.app.stop(grace=20))
    response = await asyncio.wait_for(picker, timeout=10)
    await asyncio.wait_for(stopping, timeout=10)
    await running.channel.close()

    assert list(response.jobs) == []


async def _until(condition, what: str, timeout: float = 10.0) -> None:
    """Polls `condition` until it holds; fails after `timeout` seconds (a deadline, not a wait)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"never: {what}")
        await asyncio.sleep(0.01)


async def test_new_jobs_wake_as_many_waiting_pickers_as_there_are_jobs(any_db_url, auth_settings):
    running = await start_queue(queue_settings(any_db_url, auth_settings, **NO_POLLING))
    store = running.app.store
    picks = 0
    pick = store.job_pick

    async def counted_pick(**kwargs):
        nonlocal picks
        picks += 1
        return await pick(**kwargs)

    store.job_pick = counted_pick  # type: ignore[method-assign]
    try:
        accounts = [await running.add_account() for _ in range(2)]
        pickers = [
            asyncio.ensure_future(
                running.stub.PickJobs(
                    pb.PickJobsRequest(worker_id=f"waiter-{i}", wait=wait(25)),
                    metadata=WORKER_METADATA,
                )
            )
            for i in range(3)
        ]
        await _until(lambda: running.app.signal.waiting == 3, "three pickers waiting")
        picks = 0

        await running.stub.EnqueueSyncBatch(
            pb.EnqueueSyncBatchRequest(
                items=[
                    pb.EnqueueSyncRequest(account_id=str(a), sync_type=pb.SYNC_TYPE_FULL)
                    for a in accounts
                ]
            ),
            metadata=WORKER_METADATA,
        )
        done, pending = await asyncio.wait(pickers, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        while len(done) < 2 and pending:
            more, pending = await asyncio.wait(
                pending, timeout=10, return_when=asyncio.FIRST_COMPLETED
            )
            assert more, "a woken picker never answered"
            done |= more

        assert sorted(len(p.result().jobs) for p in done) == [1, 1]
        assert running.app.signal.waiting == 1
        # Two jobs: two pickers ran a pick, the third went on waiting without one.
        assert picks == 2
    finally:
        await stop_queue(running)


async def test_waiting_pickers_share_one_fallback_check_per_interval(any_db_url, auth_settings):
    # Idle cost: eight workers waiting on an empty queue must not each poll the database.
    interval = 0.05
    running = await start_queue(
        queue_settings(
            any_db_url, auth_settings, pick_fallback_interval=timedelta(seconds=interval)
        )
    )
    store = running.app.store
    picks = 0
    pick = store.job_pick

    async def counted_pick(**kwargs):  # type: ignore[no-untyped-def]
        nonlocal picks
        picks += 1
        return await pick(**kwargs)

    store.job_pick = counted_pick  # type: ignore[method-assign]
    pickers = [
        asyncio.ensure_future(
            running.stub.PickJobs(
                pb.PickJobsRequest(worker_id=f"idle-{i}", wait=wait(25)), metadata=WORKER_METADATA
            )
        )
        for i in range(8)
    ]
    try:
        await _until(lambda: running.app.signal.waiting == 8, "eight pickers waiting")
        picks = 0
        loop = asyncio.get_running_loop()
        started = loop.time()
        # Twenty fallback intervals of waiting (the figure measured, not a synchronisation).
        await asyncio.sleep(20 * interval)
        elapsed = loop.time() - started

        # One check per interval for the whole process (and none lost to a late timer), where
        # each picker on its own timer would make eight.
        assert picks <= elapsed / interval + 2
        assert picks >= 1
        assert not any(p.done() for p in pickers)
    finally:
        await stop_queue(running)
        await asyncio.gather(*pickers, return_exceptions=True)


async def test_a_fallback_check_that_finds_jobs_passes_on_to_the_next_picker(
    any_db_url, auth_settings
):
    # Jobs that become due with no notification (delayed, retried) are found by the shared
    # fallback check; a burst of them must reach as many waiting pickers as it needs.
    running = await start_queue(
        queue_settings(any_db_url, auth_settings, pick_fallback_interval=timedelta(seconds=0.2))
    )
    try:
        accounts = [await running.add_account() for _ in range(3)]
        pickers = [
            asyncio.ensure_future(
                running.stub.PickJobs(
                    pb.PickJobsRequest(worker_id=f"due-{i}", wait=wait(20)),
                    metadata=WORKER_METADATA,
                )
            )
            for i in range(3)
        ]
        await _until(lambda: running.app.signal.waiting == 3, "three pickers waiting")
        checks = running.app.signal.fallback_checks
        # Delayed jobs: nothing is announced when they come due.
        due = timestamp_pb2.Timestamp()
        due.FromDatetime(datetime.now(UTC) + timedelta(seconds=0.5))
        await running.stub.EnqueueSyncBatch(
            pb.EnqueueSyncBatchRequest(
                items=[
                    pb.EnqueueSyncRequest(
                        account_id=str(a), sync_type=pb.SYNC_TYPE_FULL, scheduled_at=due
                    )
                    for a in accounts
                ]
            ),
            metadata=WORKER_METADATA,
        )

        done, _ = await asyncio.wait(pickers, timeout=15)

        assert sorted(len(p.result().jobs) for p in done) == [1, 1, 1]
        assert running.app.signal.fallback_checks >= checks + 1
    finally:
        await stop_queue(running)


async def test_a_long_poll_that_hears_nothing_picks_once(any_db_url, auth_settings):
    running = await start_queue(queue_settings(any_db_url, auth_settings, **NO_POLLING))
    store = running.app.store
    picks = 0
    pick = store.job_pick

    async def counted_pick(**kwargs):  # type: ignore[no-untyped-def]
        nonlocal picks
        picks += 1
        return await pick(**kwargs)

    store.job_pick = counted_pick  # type: ignore[method-assign]
    try:
        response = await running.stub.PickJobs(
            pb.PickJobsRequest(worker_id="quiet", wait=wait(0.3)), metadata=WORKER_METADATA
        )

        assert list(response.jobs) == []
        # The pick when it arrived; none when its wait ran out (its next call starts with one).
        assert picks == 1
    finally:
        await stop_queue(running)
