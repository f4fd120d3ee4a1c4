"""PickJobs' long poll: return as soon as a job is leased, or when the wait runs out."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from queue_service.models import Job
from queue_service.notifier import JobSignal
from queue_service.store import JobStore


async def pick_with_wait(
    store: JobStore,
    signal: JobSignal,
    *,
    wait: timedelta,
    fallback_interval: timedelta,
    **pick: Any,
) -> list[Job]:
    """Picks; if nothing is ready, sleeps until a notification or the fallback interval, repeats.
    `pick` holds JobStore.job_pick's arguments (requests.pick_request's answer, less the wait).

    The picker subscribes before its first pick, so a job enqueued between an empty pick and
    the sleep still wakes it at once.
    """
    if signal.closed:  # shutting down: lease nothing to a worker we are about to drop
        return []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait.total_seconds()
    with signal.subscribe() as ticket:
        while True:
            jobs = await store.job_pick(**pick)
            remaining = deadline - loop.time()
            if jobs or remaining <= 0 or signal.closed:
                return jobs
            await signal.wait(ticket, min(remaining, fallback_interval.total_seconds()))
