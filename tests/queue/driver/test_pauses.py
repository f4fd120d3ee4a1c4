"""`queue_pause` and `queue_resume`: picking paused for one user or the whole queue, stored
in the database so that every pick obeys it, while enqueueing goes on."""

from __future__ import annotations

import uuid
from datetime import timedelta

from queue_service.models import JobStatus
from tests.queue.driver.conftest import LEASE, T0, DriverUnderTest, Heard, moment

LATER = T0 + timedelta(minutes=1)


async def test_a_paused_users_jobs_are_skipped_and_picked_again_after_resume(
    db: DriverUnderTest,
):
    paused_user, other_user = uuid.uuid4(), uuid.uuid4()
    paused_job = await db.insert(await db.add_account(user_id=paused_user), at=T0)
    other_job = await db.insert(await db.add_account(user_id=other_user), at=T0)

    pause = await db.driver.queue_pause(paused_user, "abuse review", "ops", moment=moment(T0))
    while_paused = await db.pick(at=LATER)
    resumed = await db.driver.queue_resume(paused_user, moment=moment(LATER))
    after = await db.pick(at=LATER)

    assert (pause.user_id, pause.reason, pause.paused_by, pause.paused_at) == (
        paused_user,
        "abuse review",
        "ops",
        T0,
    )
    assert [j.id for j in while_paused] == [other_job.id]
    assert resumed is True
    assert [j.id for j in after] == [paused_job.id]


async def test_a_paused_queue_hands_out_nothing_but_still_takes_jobs(db: DriverUnderTest):
    first = await db.insert(await db.add_account(), at=T0)

    await db.driver.queue_pause(None, "database maintenance", None, moment=moment(T0))
    second = await db.insert(await db.add_account(), at=T0 + timedelta(seconds=1))
    while_paused = await db.pick(at=LATER)
    await db.driver.queue_resume(None, moment=moment(LATER))
    after = await db.pick(at=LATER)

    assert while_paused == []
    assert second.status is JobStatus.PENDING
    assert [j.id for j in after] == [first.id, second.id]


async def test_a_paused_queue_takes_over_no_expired_lease(db: DriverUnderTest):
    job = await db.leased(max_attempts=3)
    expired = T0 + LEASE + timedelta(seconds=1)

    await db.driver.queue_pause(None, "incident", None, moment=moment(T0))
    while_paused = await db.pick(at=expired)
    await db.driver.queue_resume(None, moment=moment(expired))
    after = await db.pick(at=expired, worker_id="w2")

    assert while_paused == []
    assert (await db.row(job.id))["worker_id"] == "w2"
    assert [j.id for j in after] == [job.id] and after[0].attempts == 2


async def test_pausing_again_keeps_the_start_and_takes_the_new_reason(db: DriverUnderTest):
    user = uuid.uuid4()

    await db.driver.queue_pause(user, "first", "alice", moment=moment(T0))
    again = await db.driver.queue_pause(user, "second", "bob", moment=moment(LATER))

    assert (again.reason, again.paused_by, again.paused_at) == ("second", "bob", T0)


async def test_resuming_what_is_not_paused_says_so(db: DriverUnderTest):
    await db.driver.queue_pause(uuid.uuid4(), "someone else", None, moment=moment(T0))

    assert await db.driver.queue_resume(uuid.uuid4(), moment=moment(T0)) is False
    assert await db.driver.queue_resume(None, moment=moment(T0)) is False


async def test_a_user_pause_leaves_the_whole_queue_running_and_the_other_way_round(
    db: DriverUnderTest,
):
    user = uuid.uuid4()
    job = await db.insert(await db.add_account(user_id=user), at=T0)

    await db.driver.queue_pause(None, "all", None, moment=moment(T0))
    await db.driver.queue_pause(user, "one", None, moment=moment(T0))
    await db.driver.queue_resume(None, moment=moment(T0))
    still_paused = await db.pick(at=LATER)
    await db.driver.queue_resume(user, moment=moment(T0))

    assert still_paused == []
    assert [j.id for j in await db.pick(at=LATER)] == [job.id]


async def test_resuming_announces_the_jobs_it_frees(db: DriverUnderTest, heard: Heard):
    user = uuid.uuid4()
    await db.driver.queue_pause(user, "hold", None, moment=moment(T0))
    for _ in range(2):
        await db.insert(await db.add_account(user_id=user), at=T0)
    await db.insert(await db.add_account(user_id=user), at=T0, scheduled_at=T0 + timedelta(hours=1))
    await heard.settled()

    await db.driver.queue_resume(user, moment=moment(LATER))

    assert await heard.settled() == [2]
