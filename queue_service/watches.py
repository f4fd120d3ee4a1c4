"""The reads behind every open WatchJob stream of a process: one statement a tick.

A watch sends its job at once (read with the caller's rights, so someone else's job is
NOT_FOUND), then waits for the job's next read here. Every `interval` one statement reads the
jobs that open watches are waiting for and hands each watch its own: one statement a tick
however many watches are open, where each watch reading its own job made one each.
Completions are not signalled across replicas (only ready jobs are), which is why watches read
at all.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence

from queue_service.models import Job

ReadJobs = Callable[[Sequence[uuid.UUID]], Awaitable[dict[uuid.UUID, Job]]]


class WatchesClosed(Exception):
    """The server is shutting down: every watch ends (the client watches again elsewhere)."""


class WatchReads:
    """Each tick, one read of the jobs that watches wait for; ticks only while some wait."""

    def __init__(self, read: ReadJobs, interval: float) -> None:
        self._read = read
        self._interval = interval
        self._waiting: dict[uuid.UUID, list[asyncio.Future[Job | None]]] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._closed = False

    async def next_read(self, job_id: uuid.UUID) -> Job | None:
        """The job as the next tick reads it (None if it is gone); WatchesClosed at shutdown."""
        if self._closed:
            raise WatchesClosed
        future: asyncio.Future[Job | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(job_id, []).append(future)
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._tick(), name="watch reads")
        return await future

    def close(self) -> None:
        """Ends every watch waiting now or later with WatchesClosed."""
        self._closed = True
        waiting, self._waiting = self._waiting, {}
        _settle(waiting, error=WatchesClosed())
        if self._ticker is not None:
            self._ticker.cancel()

    async def _tick(self) -> None:
        while self._waiting:
            await asyncio.sleep(self._interval)
            waiting, self._waiting = self._waiting, {}
            # A watch whose client went away has its future cancelled: nothing to read for it.
            live = {
                job_id: pending
                for job_id, futures in waiting.items()
                if (pending := [f for f in futures if not f.done()])
            }
            if not live:
                continue
            try:
                jobs = await self._read(list(live))
            except asyncio.CancelledError:
                _settle(live, error=WatchesClosed())  # closed while this tick read
                raise
            except Exception as exc:  # each watch ends with the error, as its own read would
                _settle(live, error=exc)
            else:
                _settle(live, jobs=jobs)


def _settle(
    waiting: dict[uuid.UUID, list[asyncio.Future[Job | None]]],
    *,
    jobs: dict[uuid.UUID, Job] | None = None,
    error: BaseException | None = None,
) -> None:
    for job_id, futures in waiting.items():
        for future in futures:
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result((jobs or {}).get(job_id))
