"""PickJobs' long poll: return as soon as a job is leased, or when the wait runs out."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import TypeVar

from queue_service.notifier import JobSignal

T = TypeVar("T")


async def pick_with_wait(
    pick: Callable[[], Awaitable[Sequence[T]]],
    signal: JobSignal,
    *,
    wait: timedelta,
    fallback_interval: timedelta,
) -> Sequence[T]:
    """Picks; if nothing is ready, sleeps until a notification or the process's shared fallback
    check wakes it (see `notifier`), repeats until jobs or the end of `wait`.
    `pick` is one pick (JobStore.job_pick or job_pick_leased with their arguments).

    The picker subscribes before its first pick, so a job enqueued between an empty pick and
    the sleep still wakes it at once.
    """
    if signal.closed:  # shutting down: lease nothing to a worker we are about to drop
        return []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait.total_seconds()
    fallback = fallback_interval.total_seconds()
    with signal.subscribe() as ticket:
        while True:
            jobs = await pick()
            if jobs and ticket.by_fallback:
                signal.pass_on()
            remaining = deadline - loop.time()
            if jobs or remaining <= 0 or signal.closed:
                return jobs
            woken = await signal.wait(ticket, remaining, fallback=fallback)
            if not woken and deadline - loop.time() <= 0:
                # The wait ran out with nothing said: no pick for nothing at the very end (the
                # worker's next PickJobs starts with one anyway).
                return []
