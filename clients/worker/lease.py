"""Keeping a job's lease while it runs: heartbeats, and noticing when the lease is lost.

A heartbeat extends the lease every third of its length, so two heartbeats can fail (a
QueueService restart) before it runs out. When QueueService says the lease is gone (it expired
and the job was recovered, or another worker holds it), the keeper sets `lost` and calls
`on_lost`: the job's work is stopped and nothing more is reported for it, since the worker no
longer owns the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import timedelta

from clients.errors import ClientError, LeaseLost, NotFound
from clients.queue import QueueClient
from clients.worker.backoff import Backoff

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Extends one job's lease in the background until stopped or lost."""

    def __init__(
        self,
        queue: QueueClient,
        job_id: str,
        lease_token: str,
        lease_duration: timedelta,
        *,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self._queue = queue
        self.job_id = job_id
        self.lease_token = lease_token
        self._duration = lease_duration
        self._interval = lease_duration.total_seconds() / 3
        self._on_lost = on_lost
        self._task: asyncio.Task[None] | None = None
        self.lost = False
        self.extensions = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._beat(), name=f"lease-{self.job_id}")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    def mark_lost(self, reason: str) -> None:
        """Records that the lease is gone (also when a report found out first)."""
        if self.lost:
            return
        self.lost = True
        log.warning("job %s: lease lost (%s); nothing more is reported for it", self.job_id, reason)
        if self._on_lost is not None:
            self._on_lost()

    async def _beat(self) -> None:
        backoff = Backoff()
        delay = self._interval
        while True:
            await asyncio.sleep(delay)
            try:
                # A retry inside the client covers a brief outage; its deadline stays well
                # inside the interval so heartbeats never pile up.
                await self._queue.extend_lease(
                    self.job_id, self.lease_token, self._duration, timeout=self._interval
                )
                self.extensions += 1
                backoff.reset()
                delay = self._interval
            except (LeaseLost, NotFound) as exc:
                self.mark_lost(exc.message)
                return
            except ClientError as exc:
                # QueueService or its database blipped: try again soon rather than a whole
                # interval later, since the lease keeps running meanwhile. If it runs out, the
                # next heartbeat or the report learns it from the server.
                delay = min(backoff.next(exc.retry_delay), self._interval)
                log.warning(
                    "job %s: heartbeat failed (%s); retrying in %.1f s", self.job_id, exc, delay
                )
