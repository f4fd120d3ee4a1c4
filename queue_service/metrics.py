"""QueueService's Prometheus metrics: job counters and wait times as jobs move, and the queue's
state (depth, oldest pending age, worker-run figures) read from the database by the leader.

Counters and histograms are counted by each process for the jobs it handled (sum them over
replicas). The state gauges come from one pair of aggregate queries every
QUEUE_METRICS_REFRESH, run by the maintenance leader only, so N replicas cost the database no
more than one, and summing over replicas never double-counts (the others export none). No RPC
queries the database for metrics.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from queue_service.models import (
    Caller,
    Completion,
    EnqueueRequest,
    EnqueueResult,
    Failure,
    Job,
    JobRef,
    LeasedJob,
    QueueGauges,
    RecoveredJobs,
    ResultAck,
)
from queue_service.scheduler import PassReport, Scheduler
from queue_service.store import JobStore
from service_runtime.metrics import LoopCounter, LoopHistogram

log = logging.getLogger(__name__)

# Seconds a job waited from when it could run (scheduled_at, or its creation) to its pick.
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

# Counted with the hot path's LoopCounter (no lock): a pick of 100 jobs updates them 100 times.
ENQUEUED = LoopCounter(
    "gmbsync_queue_jobs_enqueued_total",
    "Jobs created, by source: rpc (EnqueueSync, EnqueueSyncBatch) or scheduler (periodic "
    "syncs, enqueued by the leader). Duplicates excluded.",
    ("source",),
)
DUPLICATES = LoopCounter(
    "gmbsync_queue_enqueue_duplicates_total",
    "Enqueues answered with the account's active job (duplicate detection), by source.",
    ("source",),
)
ENQUEUED_RPC, ENQUEUED_SCHEDULER = ENQUEUED.labels("rpc"), ENQUEUED.labels("scheduler")
DUPLICATES_RPC, DUPLICATES_SCHEDULER = DUPLICATES.labels("rpc"), DUPLICATES.labels("scheduler")
PICKED = LoopCounter(
    "gmbsync_queue_jobs_picked_total", "Jobs leased to workers (attempts started)."
)
SUCCEEDED = LoopCounter("gmbsync_queue_jobs_succeeded_total", "Jobs completed successfully.")
FAILED = LoopCounter(
    "gmbsync_queue_jobs_failed_total",
    "Jobs failed for good by a worker's report (permanent error or attempts used up).",
)
RETRIED = LoopCounter(
    "gmbsync_queue_jobs_retried_total", "Failed attempts whose job goes back to pending."
)
RELEASED = LoopCounter(
    "gmbsync_queue_jobs_released_total", "Jobs handed back unrun by workers (attempt returned)."
)
REAPED = LoopCounter(
    "gmbsync_queue_jobs_reaped_total",
    "Processing jobs of lost workers recovered by the reaper or MarkStaleJobs, by outcome "
    "(requeued, failed).",
    ("outcome",),
)
for _outcome in ("requeued", "failed"):  # exported as 0 from the start, so rate() sees the first
    REAPED.labels(_outcome)
START_WAIT = LoopHistogram(
    "gmbsync_queue_enqueue_to_start_seconds",
    "Time from when a job could run (scheduled_at, else creation) to its pick.",
    buckets=WAIT_BUCKETS,
)
BANDS = ("low", "default", "high")


class QueueStateCollector(Collector):
    """The queue's state gauges, from the last reading this process made as leader; none at
    all from a process that is not leading (so replicas never double-count)."""

    def __init__(self) -> None:
        self.latest: tuple[QueueGauges, datetime] | None = None

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # read at each scrape: nothing to check at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        latest = self.latest  # one read: the refresher may replace it meanwhile
        if latest is None:
            return
        gauges, read_at = latest
        depth = GaugeMetricFamily(
            "gmbsync_queue_jobs",
            "Pending and processing jobs by status and priority band (low: below 0; "
            "default: 0..5, the default priority and periodic syncs; high: above 5).",
            labels=["status", "band"],
        )
        counts = {(status, band): 0 for status in ("pending", "processing") for band in BANDS}
        for (status, priority), count in gauges.depth.items():
            counts[(status, priority_band(priority))] += count
        for (status, band), count in counts.items():
            depth.add_metric([status, band], count)
        yield depth
        yield GaugeMetricFamily(
            "gmbsync_queue_oldest_pending_age_seconds",
            "Age of the oldest ready pending job (0 when none).",
            value=gauges.oldest_ready_age.total_seconds(),
        )
        yield GaugeMetricFamily(
            "gmbsync_queue_longest_processing_seconds",
            "How long the longest-running processing job has run (0 when none).",
            value=gauges.longest_processing.total_seconds(),
        )
        per_status = [
            ("gmbsync_worker_runs_24h", "Worker runs started in the last 24 hours", "runs"),
            (
                "gmbsync_worker_run_avg_jobs_processed_24h",
                "Average jobs processed per worker run started in the last 24 hours",
                "avg_jobs_processed",
            ),
            (
                "gmbsync_worker_run_avg_jobs_succeeded_24h",
                "Average jobs succeeded per worker run started in the last 24 hours",
                "avg_jobs_succeeded",
            ),
            (
                "gmbsync_worker_run_avg_duration_seconds_24h",
                "Average duration of the finished worker runs started in the last 24 hours",
                "avg_duration",
            ),
        ]
        for name, help_text, attribute in per_status:
            family = GaugeMetricFamily(name, f"{help_text}, by status.", labels=["status"])
            for figures in gauges.worker_run_figures_24h:
                value = getattr(figures, attribute)
                if isinstance(value, timedelta):
                    value = value.total_seconds()
                family.add_metric([figures.status.value], float(value))
            yield family
        yield GaugeMetricFamily(
            "gmbsync_queue_state_read_timestamp_seconds",
            "When the leader last read the queue's state from the database (Unix time).",
            value=read_at.timestamp(),
        )


QUEUE_STATE = QueueStateCollector()
REGISTRY.register(QUEUE_STATE)


def priority_band(priority: int) -> str:
    """low below 0; default 0..5 (the default priority, and the band of periodic syncs);
    high above 5 (what a user asks for ahead of routine work)."""
    if priority < 0:
        return "low"
    return "default" if priority <= 5 else "high"


class MeteredJobStore(JobStore):
    """A JobStore that counts what its operations did. It adds no query: every figure comes
    from what the operation returned anyway."""

    async def job_enqueue_many(
        self, requests: Sequence[EnqueueRequest], caller: Caller
    ) -> list[EnqueueResult[Job]]:
        results = await super().job_enqueue_many(requests, caller)
        _count_enqueued(results)
        return results

    async def job_enqueue_many_refs(
        self, requests: Sequence[EnqueueRequest], caller: Caller
    ) -> list[EnqueueResult[JobRef]]:
        results = await super().job_enqueue_many_refs(requests, caller)
        _count_enqueued(results)
        return results

    async def job_enqueue(self, request: EnqueueRequest, caller: Caller) -> EnqueueResult[Job]:
        result = await super().job_enqueue(request, caller)
        _count_enqueued([result])
        return result

    async def job_pick(self, **kwargs) -> list[Job]:
        jobs = await super().job_pick(**kwargs)
        _count_picked(jobs)
        return jobs

    async def job_pick_leased(self, **kwargs) -> list[LeasedJob]:
        jobs = await super().job_pick_leased(**kwargs)
        _count_picked(jobs)
        return jobs

    async def job_complete(self, completion: Completion) -> Job:
        job = await super().job_complete(completion)
        SUCCEEDED.inc()
        return job

    async def job_fail(self, failure: Failure):
        outcome = await super().job_fail(failure)
        (RETRIED if outcome.will_retry else FAILED).inc()
        return outcome

    async def job_release(self, *args, **kwargs) -> Job:
        job = await super().job_release(*args, **kwargs)
        RELEASED.inc()
        return job

    async def results_report(
        self, results: Sequence[Completion | Failure], *, with_jobs: bool = True
    ) -> list[ResultAck]:
        acks = await super().results_report(results, with_jobs=with_jobs)
        succeeded = retried = failed = 0
        for result, ack in zip(results, acks, strict=True):
            if ack.error is not None:
                continue
            if isinstance(result, Completion):
                succeeded += 1
            elif ack.will_retry:
                retried += 1
            else:
                failed += 1
        for counter, n in ((SUCCEEDED, succeeded), (RETRIED, retried), (FAILED, failed)):
            if n:
                counter.inc(n)
        return acks

    async def jobs_recover(self, *, started_before: datetime | None = None) -> RecoveredJobs:
        recovered = await super().jobs_recover(started_before=started_before)
        if recovered.requeued:
            REAPED.labels("requeued").inc(len(recovered.requeued))
        if recovered.failed:
            REAPED.labels("failed").inc(len(recovered.failed))
        return recovered


def _count_picked(jobs: Sequence[Job | LeasedJob]) -> None:
    if jobs:
        PICKED.inc(len(jobs))
        for job in jobs:
            ready_at = job.scheduled_at or job.created_at
            if job.started_at is not None:
                START_WAIT.observe(max((job.started_at - ready_at).total_seconds(), 0.0))


def _count_enqueued(
    results: Sequence[EnqueueResult[Job]] | Sequence[EnqueueResult[JobRef]],
) -> None:
    duplicates = sum(1 for r in results if r.duplicate)
    DUPLICATES_RPC.value += duplicates
    ENQUEUED_RPC.value += len(results) - duplicates


class MeteredScheduler(Scheduler):
    """A Scheduler that counts the periodic syncs it enqueued (source="scheduler")."""

    async def run_pass(self, now: datetime | None = None) -> PassReport:
        report = await super().run_pass(now)
        ENQUEUED_SCHEDULER.value += report.enqueued
        DUPLICATES_SCHEDULER.value += report.duplicates
        return report


class GaugeRefresher:
    """Reads the queue's state into the gauges every `interval` while `is_leader` is set."""

    def __init__(self, store: JobStore, is_leader: asyncio.Event, interval: timedelta) -> None:
        self._store = store
        self._is_leader = is_leader
        self._interval = interval.total_seconds()

    async def refresh(self) -> None:
        """One reading, exported (tests call it to skip the wait)."""
        now = self._store.clock()
        QUEUE_STATE.latest = (await self._store.reader.gauges(now=now), now)

    async def run(self) -> None:
        while True:
            if self._is_leader.is_set():
                try:
                    await self.refresh()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the database blipped: keep the last figures
                    log.warning("reading the queue's metrics failed: %s", exc)
            else:
                QUEUE_STATE.latest = None
            await asyncio.sleep(self._interval)
