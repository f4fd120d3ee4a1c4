"""WatchReads: the open watches of a process share one read a tick; a watch that went away is
not read for; shutdown and a failed read end the watches waiting, including those whose read
is under way."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import pytest

from queue_service.watches import WatchesClosed, WatchReads

TICK = 0.01


class Jobs:
    """The read WatchReads is given: a job (any object) per id, every call recorded."""

    def __init__(self) -> None:
        self.rows: dict[uuid.UUID, object] = {}
        self.calls: list[list[uuid.UUID]] = []
        self.error: Exception | None = None
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()

    async def read(self, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, object]:
        self.calls.append(list(job_ids))
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return {i: self.rows[i] for i in job_ids if i in self.rows}


async def test_every_waiting_watch_gets_its_own_job_from_one_read():
    jobs = Jobs()
    ids = [uuid.uuid4() for _ in range(50)]
    jobs.rows = {i: f"job {i}" for i in ids[:-1]}  # the last one is gone
    reads = WatchReads(jobs.read, TICK)  # type: ignore[arg-type]

    got = await asyncio.gather(*(reads.next_read(i) for i in ids), reads.next_read(ids[0]))

    assert len(jobs.calls) == 1 and set(jobs.calls[0]) == set(ids)
    assert got[:-2] == [f"job {i}" for i in ids[:-1]]
    assert got[-2] is None  # gone: the stream answers NOT_FOUND
    assert got[-1] == f"job {ids[0]}"  # two watches of one job share its read


async def test_a_watch_that_went_away_is_not_read_for():
    jobs = Jobs()
    kept, gone = uuid.uuid4(), uuid.uuid4()
    jobs.rows = {kept: "kept", gone: "gone"}
    reads = WatchReads(jobs.read, TICK)  # type: ignore[arg-type]
    leaving = asyncio.create_task(reads.next_read(gone))
    await asyncio.sleep(0)
    leaving.cancel()

    assert await reads.next_read(kept) == "kept"
    assert jobs.calls == [[kept]]


async def test_ticks_stop_with_the_last_watch_and_start_again_with_the_next():
    jobs = Jobs()
    job_id = uuid.uuid4()
    jobs.rows = {job_id: "job"}
    reads = WatchReads(jobs.read, TICK)  # type: ignore[arg-type]

    await reads.next_read(job_id)
    await asyncio.sleep(5 * TICK)
    assert len(jobs.calls) == 1  # no watch waiting: no reads
    assert await reads.next_read(job_id) == "job"
    assert len(jobs.calls) == 2


async def test_shutdown_ends_waiting_watches_and_those_whose_read_is_under_way():
    jobs = Jobs()
    jobs.gate = asyncio.Event()  # the read never finishes by itself
    reading, waiting = uuid.uuid4(), uuid.uuid4()
    reads = WatchReads(jobs.read, TICK)  # type: ignore[arg-type]
    under_way = asyncio.create_task(reads.next_read(reading))
    await asyncio.wait_for(jobs.started.wait(), 5)
    queued = asyncio.create_task(reads.next_read(waiting))
    await asyncio.sleep(0)

    reads.close()

    for task in (under_way, queued):
        with pytest.raises(WatchesClosed):
            await asyncio.wait_for(task, 5)
    with pytest.raises(WatchesClosed):
        await reads.next_read(uuid.uuid4())


async def test_a_failed_read_ends_the_watches_it_was_for_and_the_next_tick_reads_again():
    jobs = Jobs()
    job_id = uuid.uuid4()
    jobs.rows = {job_id: "job"}
    jobs.error = RuntimeError("database gone")
    reads = WatchReads(jobs.read, TICK)  # type: ignore[arg-type]

    results = await asyncio.gather(
        reads.next_read(job_id), reads.next_read(job_id), return_exceptions=True
    )
    assert [str(r) for r in results] == ["database gone"] * 2

    jobs.error = None
    assert await reads.next_read(job_id) == "job"
