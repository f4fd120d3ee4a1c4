"""Seven faults, each against a fresh batch of jobs flowing worker -> SyncService -> emulator.

After every fault: no job lost, none run twice, no stale completion accepted, and the system
recovered by itself (the suite restarts a killed process only where an orchestrator would, and
never touches the survivors). Every fault adds its line to the table printed at the end of the
session. docs/chaos.md says what each fault proves.
"""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa

from tests.chaos.cluster import LEASE_SECONDS, WORKER_CONCURRENCY, Cluster
from tests.chaos.conftest import CHAOS_SYNC_DOWN, REPORTS
from tests.chaos.oracle import FaultReport, LogCursor, refused_holders
from tests.chaos.run import Batch, run_fault

pytestmark = pytest.mark.postgres_only

# Google's answers take this long during the faults that must catch syncs mid-flight.
GOOGLE_LATENCY_MS = 50
# How long the frozen worker stays frozen: twice its lease, so every lease it holds expires.
FREEZE_SECONDS = 2.0 * LEASE_SECONDS
# Syncs slower than the lease during that fault.
SLOW_SYNC_MS = int(1.2 * LEASE_SECONDS * 1000)


def settle(report: FaultReport) -> None:
    """Records the line, then holds the fault to the queue's promises."""
    REPORTS.append(report)
    assert report.lost == 0, report
    assert report.run_twice == 0, report
    assert report.stale_accepted == 0, report
    assert report.succeeded + report.failed + report.pending_with_attempts_left == report.jobs


async def progress(batch: Batch, more: int, timeout: float = 120.0) -> None:
    """Waits until `more` further jobs of the batch have ended: the system works again."""
    target = min(len(batch.job_ids), batch.ended + more)
    moved = await batch.until(lambda: batch.ended >= target, timeout, "progress")
    assert moved, f"no progress after the fault: {batch.ended} ended, waiting for {target}"


def slow_google(cluster: Cluster) -> None:
    cluster.inject_google_fault(kind="latency", latencyMs=GOOGLE_LATENCY_MS)


async def test_sigkill_of_a_worker_mid_sync(cluster: Cluster) -> None:
    slow_google(cluster)

    async def kill_worker(batch: Batch) -> str:
        assert await batch.until_async(lambda: batch.held_by("chaos-worker-1"), 60)
        held = await batch.held_by("chaos-worker-1")
        await asyncio.to_thread(cluster.services["worker-1"].kill)
        return f"worker-1 SIGKILLed holding {held} job(s); worker-2 alone finishes the batch"

    settle(await run_fault(cluster, "SIGKILL worker mid-sync", kill_worker))


async def test_sigkill_of_each_queue_replica_in_turn(cluster: Cluster) -> None:
    slow_google(cluster)

    async def kill_replicas(batch: Batch) -> str:
        for name in ("queue-1", "queue-2"):
            replica = cluster.services[name]
            await asyncio.to_thread(replica.kill)
            await progress(batch, 20)  # the survivor alone serves the workers
            await asyncio.to_thread(replica.restart)
        return "queue-1 then queue-2 SIGKILLed; work went on through the other"

    settle(await run_fault(cluster, "SIGKILL each queue replica", kill_replicas))


async def test_sigkill_of_sync_service_for_a_while(cluster: Cluster) -> None:
    slow_google(cluster)

    async def kill_sync(batch: Batch) -> str:
        sync = cluster.services["sync"]
        await asyncio.to_thread(sync.kill)
        # The outage itself: how long SyncService stays dead, not a wait for something.
        await asyncio.sleep(CHAOS_SYNC_DOWN)
        await asyncio.to_thread(sync.restart)
        await progress(batch, 20)
        return f"SyncService dead for {CHAOS_SYNC_DOWN:.0f} s"

    report = await run_fault(cluster, "SIGKILL SyncService", kill_sync)
    settle(report)
    # Jobs that met the outage were handed back or retried, never failed for it.
    assert report.failed == 0, report


async def test_restart_of_postgresql(cluster: Cluster) -> None:
    slow_google(cluster)

    async def restart(batch: Batch) -> str:
        took = await asyncio.to_thread(cluster.pg.restart)
        await progress(batch, 20)
        return f"pg_ctl restart -m fast took {took:.2f} s"

    report = await run_fault(cluster, "restart PostgreSQL", restart)
    settle(report)
    assert report.failed == 0, report


async def test_termination_of_every_service_connection(cluster: Cluster) -> None:
    slow_google(cluster)

    async def terminate(batch: Batch) -> str:
        leaders_before = await advisory_locks(batch)
        ended = await asyncio.to_thread(cluster.pg.terminate_backends, cluster.database)
        await progress(batch, 20)
        # The leader's lock connection was among those ended; a leader is elected again.
        relocked = await batch.until_async(lambda: advisory_locks(batch), 60)
        assert relocked, "no replica took the leader's advisory lock again"
        return (
            f"pg_terminate_backend ended {ended} sessions "
            f"({leaders_before} advisory lock(s) held before, leadership re-taken)"
        )

    report = await run_fault(cluster, "terminate every backend", terminate)
    settle(report)
    assert report.failed == 0, report


async def advisory_locks(batch: Batch) -> int:
    try:
        async with batch.engine.connect() as conn:
            return (
                await conn.execute(
                    sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")
                )
            ).scalar_one()
    except sa.exc.DBAPIError:
        return 0


async def test_syncs_slower_than_the_lease_are_refused_when_late(cluster: Cluster) -> None:
    async def freeze(batch: Batch) -> str:
        # The next syncs outlast the lease: only heartbeats keep their leases alive.
        slow = 6 * WORKER_CONCURRENCY
        before = await asyncio.to_thread(cluster.google_requests, "locations")
        cluster.inject_google_fault(
            kind="latency", endpoint="locations", latencyMs=SLOW_SYNC_MS, count=slow
        )
        # Both workers' slots (16 each) are busy with slow syncs once 32 of them reached Google.
        busy = await batch.until_async(
            lambda: asyncio.to_thread(lambda: cluster.google_requests("locations") - before >= 32),
            60,
        )
        assert busy, "the workers never took up the slow syncs"
        held = await batch.held_by("chaos-worker-1")
        worker = cluster.services["worker-1"]
        its_log = LogCursor(worker.log)
        await asyncio.to_thread(worker.freeze)
        # The fault: a worker paused (a long GC, a VM stall) for twice its lease.
        await asyncio.sleep(FREEZE_SECONDS)
        await asyncio.to_thread(worker.thaw)
        # The claim is about what the late holder is told when it reports: wait for that
        # answer in its log rather than race the other worker's drain of the batch.
        await batch.until_async(
            lambda: asyncio.to_thread(lambda: refused_holders([its_log.read()], batch.job_ids)),
            60,
        )
        return (
            f"worker-1 frozen {FREEZE_SECONDS:.0f} s holding {held} job(s), "
            f"{SLOW_SYNC_MS / 1000:.0f} s syncs under {LEASE_SECONDS} s leases"
        )

    report = await run_fault(cluster, "syncs slower than the lease", freeze)
    settle(report)
    # The fault proved something only if a late holder came back and was refused.
    assert report.stale_refused > 0, report


async def test_google_answering_429_and_5xx_at_twenty_percent(cluster: Cluster) -> None:
    cluster.inject_google_fault(kind="rate_limit", rate=0.1, retryAfter=1)
    cluster.inject_google_fault(kind="unavailable", rate=0.05)
    cluster.inject_google_fault(kind="internal", rate=0.05)

    async def already_faulty(batch: Batch) -> str:
        return "429 with Retry-After: 1 on 10 %, 503 on 5 %, 500 on 5 % of Google's answers"

    report = await run_fault(
        cluster, "Google 429 + 5xx at 20 %", already_faulty, max_attempts=25, strike_at=0.0
    )
    settle(report)
