"""PickJobs' long poll: return as soon as a job is leased, or when the wait runs out."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from queue_service.models import Job
from queue_service.notifier import JobSignal, wait_for_ticket
from queue_service.store import JobStore


async def pick_with_wait(
    store: JobStore,
    signal: JobSignal,
    *,
    wait: timedelta,
    fallback_interval: timedelta,
    **pick: object,
) -> list[Job]:
    """Picks; if nothing is ready, sleeps until a notification or the fallback interval, repeats.

    The ticket is taken before each pick, so a job enqueued between an empty pick and the
    sleep still wakes this picker at once.
    """
    if signal.closed:  # shutting down: lease nothing to a worker we are about to drop
        return []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait.total_seconds()
    while True:
        ticket = signal.ticket()
        jobs = await store.job_pick(**pick)  # type: ignore[arg-type]
        remaining = deadline - loop.time()
        if jobs or remaining <= 0 or signal.closed:
            return jobs
        await wait_for_ticket(ticket, min(remaining, fallback_interval.total_seconds()))
