"""Retention: deleting finished jobs and worker runs older than their retention periods.

The leader prunes in rounds (`Maintenance`). A round deletes everything older than its cut, in
batches of `batch_size` rows, each batch its own short transaction, and yields to the event
loop between batches: no long lock, no huge transaction, however far behind the round starts,
and no cap on how many rows one round removes (the table cannot outgrow the pruner). The cut is
fixed for the round, so a round always ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from queue_service.drivers.base import QueueDriver

# Rows per DELETE: small enough to hold locks only briefly, large enough that a round of a
# million rows is a thousand statements.
DEFAULT_BATCH_SIZE = 1000


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long finished rows are kept (None keeps them forever) and the batch size."""

    jobs: timedelta | None
    worker_runs: timedelta | None
    batch_size: int = DEFAULT_BATCH_SIZE

    @property
    def enabled(self) -> bool:
        return self.jobs is not None or self.worker_runs is not None


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one round deleted."""

    jobs: int = 0
    worker_runs: int = 0


async def delete_in_batches(delete_batch: Callable[[int], Awaitable[int]], batch_size: int) -> int:
    """Calls `delete_batch(batch_size)` until a batch comes back short; the total deleted."""
    total = 0
    while True:
        deleted = await delete_batch(batch_size)
        total += deleted
        if deleted < batch_size:
            return total
        await asyncio.sleep(0)  # let RPCs and the reaper run between batches


async def prune(driver: QueueDriver, policy: RetentionPolicy, *, now: datetime) -> Pruned:
    """One round: every finished job and worker run older than its retention at `now`."""
    jobs = runs = 0
    if policy.jobs is not None:
        jobs_cut = now - policy.jobs
        jobs = await delete_in_batches(
            lambda limit: driver.job_delete_finished(finished_before=jobs_cut, limit=limit),
            policy.batch_size,
        )
    if policy.worker_runs is not None:
        runs_cut = now - policy.worker_runs
        runs = await delete_in_batches(
            lambda limit: driver.worker_run_delete_finished(finished_before=runs_cut, limit=limit),
            policy.batch_size,
        )
    return Pruned(jobs=jobs, worker_runs=runs)
