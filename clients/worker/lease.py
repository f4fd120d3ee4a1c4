"""Keeping the leases of a worker's jobs while they run: heartbeats, and noticing a lost lease.

A heartbeat extends a job's lease a third of the lease's length after the job was picked (or
after its previous heartbeat), so two heartbeats can fail (a QueueService restart) before it runs
out. One task (`Heartbeats`) does this for every job of the worker: jobs shorter than a third
of the lease, the usual case, cost it nothing but a place in a queue, and longer ones get one
ExtendLease each per third of the lease. When QueueService says a lease is gone (it expired and
the job was recovered, or another worker holds it), the job's `LeaseKeeper` sets `lost` and
calls `on_lost`: the job's work is stopped and nothing more is reported for it, since the
worker no longer owns the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from datetime import timedelta

from clients.errors import ClientError, LeaseLost, NotFound
from clients.queue import QueueClient
from clients.worker.backoff import Backoff

log = logging.getLogger(__name__)

# The share of a lease after which a lease with no confirmed extension counts as at risk:
# heartbeats come every third of it, so only a stall or failed heartbeats get this far.
_AT_RISK = 0.9


class LeaseKeeper:
    """One job's lease, kept by the worker's Heartbeats until stopped or lost."""

    def __init__(
        self,
        heartbeats: Heartbeats,
        job_id: str,
        lease_token: str,
        *,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self._heartbeats = heartbeats
        self.job_id = job_id
        self.lease_token = lease_token
        self._on_lost = on_lost
        self.lost = False
        self.stopped = True
        self.extensions = 0
        # Loop time from which the lease is known to run its whole length: when the keeper
        # started (the pick), then when each extension that QueueService granted was sent.
        self.confirmed_at = 0.0
        # Loop time of the next heartbeat, while queued for it.
        self.due = 0.0
        self.queued = False
        self._extending: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Queues the first heartbeat; a keeper already started stays as it is."""
        if not self.stopped:
            return
        self.stopped = False
        self.confirmed_at = asyncio.get_running_loop().time()
        self._heartbeats.schedule(self)

    def at_risk(self) -> bool:
        """Whether the lease is gone or may be about to be: lost, or no extension confirmed for
        most of a lease (the process was stopped or starved, or QueueService out of reach)."""
        elapsed = asyncio.get_running_loop().time() - self.confirmed_at
        return self.lost or elapsed >= _AT_RISK * self._heartbeats.lease_seconds

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        # The job is done with: keep nothing of it alive while this waits in the queue.
        self._on_lost = None
        self._heartbeats.forget(self)
        extending, self._extending = self._extending, None
        if extending is not None and not extending.done():
            extending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await extending

    def mark_lost(self, reason: str) -> None:
        """Records that the lease is gone (also when a report found out first)."""
        if self.lost:
            return
        self.lost = True
        log.warning("job %s: lease lost (%s); nothing more is reported for it", self.job_id, reason)
        if self._on_lost is not None:
            self._on_lost()


class Heartbeats:
    """Extends the leases of all a worker's running jobs, from one task."""

    def __init__(self, queue: QueueClient, lease_duration: timedelta) -> None:
        self._queue = queue
        self._duration = lease_duration
        self.lease_seconds = lease_duration.total_seconds()
        self.interval = self.lease_seconds / 3
        # Every lease waits the same interval, so keepers come due in the order they were
        # queued: a FIFO is a timer queue here. Stopped keepers are dropped when they come up.
        self._due: deque[LeaseKeeper] = deque()
        self._stopped_queued = 0
        self._queued = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        """Keepers waiting for a heartbeat, ended ones not yet swept out included."""
        return len(self._due)

    def keep(
        self, job_id: str, lease_token: str, *, on_lost: Callable[[], None] | None = None
    ) -> LeaseKeeper:
        return LeaseKeeper(self, job_id, lease_token, on_lost=on_lost)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="heartbeats")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def schedule(self, keeper: LeaseKeeper) -> None:
        keeper.due = asyncio.get_running_loop().time() + self.interval
        keeper.queued = True
        self._due.append(keeper)
        self._queued.set()

    def forget(self, keeper: LeaseKeeper) -> None:
        """A stopped keeper still queued: dropped when it comes up, or in a sweep when stopped
        ones are most of the queue (long leases and many short jobs)."""
        if not keeper.queued:
            return
        self._stopped_queued += 1
        if self._stopped_queued > 1024 and self._stopped_queued * 2 > len(self._due):
            for dropped in self._due:
                if dropped.stopped:
                    dropped.queued = False
            self._due = deque(k for k in self._due if not k.stopped)
            self._stopped_queued = 0

    def _pop(self) -> LeaseKeeper:
        keeper = self._due.popleft()
        keeper.queued = False
        if keeper.stopped:
            self._stopped_queued -= 1
        return keeper

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._due:
                self._queued.clear()
                await self._queued.wait()
                continue
            keeper = self._due[0]
            if keeper.stopped or keeper.lost:
                self._pop()
                continue
            wait = keeper.due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            self._pop()
            keeper._extending = asyncio.create_task(
                self._extend(keeper), name=f"lease-{keeper.job_id}"
            )

    async def _extend(self, keeper: LeaseKeeper) -> None:
        backoff = Backoff()
        loop = asyncio.get_running_loop()
        while not keeper.stopped:
            sent = loop.time()
            try:
                # A retry inside the client covers a brief outage; its deadline stays well
                # inside the interval so heartbeats never pile up.
                await self._queue.extend_lease(
                    keeper.job_id, keeper.lease_token, self._duration, timeout=self.interval
                )
                keeper.extensions += 1
                keeper.confirmed_at = sent
                break
            except (LeaseLost, NotFound) as exc:
                keeper.mark_lost(exc.message)
                return
            except ClientError as exc:
                # QueueService or its database blipped: try again soon rather than a whole
                # interval later, since the lease keeps running meanwhile. If it runs out, the
                # server says so and the lease is marked lost.
                delay = min(backoff.next(exc.retry_delay), self.interval)
                log.warning(
                    "job %s: heartbeat failed (%s); retrying in %.1f s", keeper.job_id, exc, delay
                )
                await asyncio.sleep(delay)
        if not keeper.stopped:
            self.schedule(keeper)
