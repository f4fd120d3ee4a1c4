"""The leader's companions: while it leads, the planner-statistics check runs on its own
cadence, beside the reaper passes, and stops when leadership ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

from queue_service import maintenance
from queue_service.maintenance import Maintenance
from queue_service.models import RecoveredJobs


class _Session:
    async def attempt_elect(self) -> bool:
        return True

    async def confirm(self) -> None:
        return None


class _Store:
    """What Maintenance asks of the store, counted."""

    def __init__(self) -> None:
        self.analyze_checks = 0
        self.checked = asyncio.Event()

    @contextlib.asynccontextmanager
    async def leader_session(self) -> AsyncIterator[_Session]:
        yield _Session()

    async def jobs_recover(self) -> RecoveredJobs:
        return RecoveredJobs(requeued=[], failed=[])

    async def analyze_if_stale(self) -> bool:
        self.analyze_checks += 1
        if self.analyze_checks >= 3:
            self.checked.set()
        if self.analyze_checks == 1:
            raise OSError("the database blipped")  # a failed check does not end the rounds
        return False


async def test_the_leader_checks_the_queues_statistics_every_round(monkeypatch):
    monkeypatch.setattr(maintenance, "STATISTICS_EVERY", 0.01)
    store = _Store()
    leader = Maintenance(store, interval=timedelta(seconds=5), retention=None)  # type: ignore[arg-type]

    task = asyncio.create_task(leader.run())
    try:
        await asyncio.wait_for(store.checked.wait(), timeout=10)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    assert leader.is_leader.is_set() and store.analyze_checks >= 3
