"""The worker loop: pick jobs, run up to N at once, record the run, stop gracefully.

    worker = Worker(config)
    summary = await worker.run()      # until request_stop(), or one batch with config.once

Continuous mode long-polls PickJobs for all free slots at once whenever slots are free and the
circuit breaker allows. With WORKER_PREFETCH it also leases up to that many jobs ahead of a
free slot and holds them, so that a slot that frees starts its next job at once instead of
after a PickJobs round trip; a held job's lease is kept while it waits for a slot of this
worker. `--once` (cron or serverless) picks up to MAX_JOBS_PER_RUN jobs without waiting, runs
them and ends within WORKER_TIMEOUT: it only starts a job whose whole JOB_TIMEOUT fits before
then, and never prefetches. Jobs hand their results to one Reporter (ReportResults for many
jobs at once) and their leases to one Heartbeats task; a job's slot is free once its result
is queued.

On request_stop() (SIGTERM/SIGINT) the worker picks nothing more, hands back held jobs and
sends held-back results at once, gives in-flight jobs SHUTDOWN_GRACE to finish, hands back
what is left (no attempt spent), sends every result still waiting, closes its worker run and
returns. A second request_stop() ends the grace period at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.instrumentation.grpc import filters

from clients.channel import Credentials
from clients.errors import ClientError
from clients.queue import Job, JobView, QueueClient, WorkerRun, WorkerRunStatus
from clients.sync import SyncClient
from clients.worker import metrics
from clients.worker.backoff import Backoff
from clients.worker.circuit_breaker import CircuitBreaker, Permit
from clients.worker.config import WorkerConfig
from clients.worker.job import JobDeps, JobExecution, Outcome
from clients.worker.lease import Heartbeats
from clients.worker.reporter import Reporter
from service_runtime.telemetry import tracing_enabled

log = logging.getLogger(__name__)

# PickJobs leases at most this many jobs per call (its max_jobs range).
_MAX_PICK = 100
# Long polls are not worth a span each; the job's own calls (heartbeats included) are.
_QUEUE_TRACE_FILTER = filters.negate(filters.method_name("PickJobs"))


@dataclass
class RunSummary:
    """What a worker run did: the server's exact counts and this process's view."""

    run: WorkerRun | None
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    picked: int = 0
    stop_reason: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.run is not None and not self.error

    def as_dict(self) -> dict[str, Any]:
        """The seed worker's response shape, with the run's exact counts."""
        run = self.run
        return {
            "success": self.ok,
            "run_id": run.id if run else None,
            "jobs_picked": run.jobs_picked if run else self.picked,
            "jobs_processed": run.jobs_processed if run else None,
            "jobs_succeeded": run.jobs_succeeded if run else None,
            "jobs_failed": run.jobs_failed if run else None,
            "jobs_released": run.jobs_released if run else None,
            # Of the released jobs, those SyncService asked to come back later (this process's
            # own count: QueueService knows them only as released).
            "jobs_deferred": self.outcomes[Outcome.DEFERRED],
            "outcomes": dict(self.outcomes),
            "stop_reason": self.stop_reason,
            **({"error": self.error} if self.error else {}),
        }


class Worker:
    """One worker process's loop. Clients may be given (tests); else they are made from config."""

    def __init__(
        self,
        config: WorkerConfig,
        *,
        queue: QueueClient | None = None,
        sync: SyncClient | None = None,
    ) -> None:
        self.config = config
        credentials = Credentials.trigger_secret(config.trigger_secret)
        self._owns_clients = queue is None or sync is None
        self.queue = queue or QueueClient.connect(
            config.queue_addr, credentials, trace_filter=_QUEUE_TRACE_FILTER, tls=config.tls
        )
        self.sync = sync or SyncClient.connect(config.sync_addr, credentials, tls=config.tls)
        self.breaker = CircuitBreaker(
            config.circuit_breaker_threshold, config.circuit_breaker_cooldown.total_seconds()
        )
        # Spans cost a busy worker most of its per-job time: none at all unless recorded.
        tracing = tracing_enabled()
        self.reporter = Reporter(
            self.queue,
            interval=config.report_interval.total_seconds(),
            batch=config.report_batch,
            tracing=tracing,
        )
        self.heartbeats = Heartbeats(self.queue, config.lease_duration)
        self._deps = JobDeps(
            self.queue,
            self.sync,
            self.breaker,
            config,
            self.reporter,
            self.heartbeats,
            tracing=tracing,
        )
        self._inflight: dict[asyncio.Task[Outcome], JobExecution] = {}
        # Of the in-flight jobs, those still running (not yet waiting for their result's ack).
        self._running = 0
        # Jobs leased ahead of a free slot, oldest first. --once leases only what it will run.
        self._prefetch = 0 if config.once else config.prefetch
        self._held: collections.deque[JobExecution] = collections.deque()
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._hurry = asyncio.Event()
        self._grace_deadline: float | None = None
        self._run_deadline: float | None = None
        self._stop_reason = ""
        self._summary = RunSummary(run=None)
        self.run_id = ""
        metrics.watch(self)

    # --- control -----------------------------------------------------------------------------

    def request_stop(self, reason: str = "stop requested") -> None:
        """Stops picking and starts the grace period; called twice, ends the grace period."""
        loop = asyncio.get_running_loop()
        if self._stopping.is_set():
            log.warning("%s again: handing back in-flight jobs now", reason)
            self._grace_deadline = loop.time()
            self._hurry.set()
            return
        log.info(
            "%s: picking stopped; %d in-flight job(s) get %.0f s to finish",
            reason,
            len(self._inflight),
            self.config.shutdown_grace.total_seconds(),
        )
        self._stop_reason = reason
        self._grace_deadline = loop.time() + self.config.shutdown_grace.total_seconds()
        self._stopping.set()
        self._start_held()  # held jobs go back at once: none of them has started
        # Results still held back for a fuller batch go out now: nothing more is coming soon.
        self.reporter.hurry()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def outcomes(self) -> collections.Counter[str]:
        """How many picked jobs ended each way so far (see job.Outcome)."""
        return self._summary.outcomes

    # --- the run -----------------------------------------------------------------------------

    async def run(self) -> RunSummary:
        """Runs until stopped (or one batch with --once) and returns what the run did."""
        loop = asyncio.get_running_loop()
        self._run_deadline = (
            loop.time() + self.config.worker_timeout.total_seconds() if self.config.once else None
        )
        status = WorkerRunStatus.Value("WORKER_RUN_STATUS_COMPLETED")
        try:
            run = await self._start_run()
            if run is None:
                self._summary.stop_reason = self._stop_reason or "no worker run could be started"
                if not self._stopping.is_set():
                    self._summary.error = "QueueService unreachable: no worker run was started"
                return self._summary
            self.run_id = run.id
            log.info(
                "worker %s: run %s started (%s, concurrency %d)",
                self.config.worker_id,
                run.id,
                "once" if self.config.once else "continuous",
                self.config.concurrency,
            )
            self.reporter.start()
            self.heartbeats.start()
            try:
                await self._pick_loop()
            except Exception as exc:  # the run is still closed and in-flight jobs handed back
                log.exception("worker loop failed")
                status = WorkerRunStatus.Value("WORKER_RUN_STATUS_FAILED")
                self._summary.error = f"worker loop failed: {exc}"
                if not self._stopping.is_set():
                    self.request_stop("worker loop failed")
            try:
                await self._drain()
            finally:
                # Every job has its answer by now, unless one was cut short: what is still
                # waiting goes out at once (retried while its lease lasts) before the run ends.
                await self.reporter.close()
                await self.heartbeats.stop()
            self._summary.stop_reason = self._stop_reason or "batch done"
            await self._finish_run(status)
            return self._summary
        finally:
            if self._owns_clients:
                await self.queue.close()
                await self.sync.close()

    async def _start_run(self) -> WorkerRun | None:
        """StartWorkerRun, retried until QueueService answers (or the worker must stop)."""
        config = self.config
        metadata = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "mode": "once" if config.once else "continuous",
            "concurrency": config.concurrency,
            "prefetch": self._prefetch,
            "job_timeout_seconds": config.job_timeout.total_seconds(),
            "lease_seconds": config.lease_duration.total_seconds(),
            "circuit_breaker_threshold": config.circuit_breaker_threshold,
        }
        backoff = Backoff()
        while not self._stopping.is_set():
            try:
                return await self.queue.start_worker_run(config.worker_id, metadata)
            except ClientError as exc:
                if not exc.retryable:
                    raise
                delay = backoff.next(exc.retry_delay)
                if self._run_deadline is not None:
                    remaining = self._run_deadline - asyncio.get_running_loop().time()
                    if remaining < delay:
                        log.error("QueueService unreachable for the whole run: %s", exc)
                        return None
                log.warning("QueueService unreachable (%s); retrying in %.1f s", exc, delay)
                await self._sleep(delay)
        return None

    async def _pick_loop(self) -> None:
        config, loop = self.config, asyncio.get_running_loop()
        # --once: when the run must end (set by run()); without --once, never.
        run_deadline = self._run_deadline if self._run_deadline is not None else float("inf")
        backoff = Backoff()
        gathered = False
        while not self._stopping.is_set():
            if not self._prefetch and not gathered and self._running and self._free_slots() > 0:
                # Slots of jobs started together free within moments of each other: one pick
                # for all of them, rather than a pick per slot that keeps the jobs out of step.
                await self._gather_slots(config.report_interval.total_seconds())
                gathered = True
            wanted = self._free_slots()
            if config.once:
                wanted = min(wanted, config.max_jobs_per_run - self._summary.picked)
                time_left = run_deadline - loop.time()
                if self._summary.picked >= config.max_jobs_per_run:
                    self._stop_reason = f"--once: {self._summary.picked} job(s) picked"
                    return
                if time_left <= config.job_timeout.total_seconds():
                    self._stop_reason = "--once: no time left for another job"
                    return
            if wanted < self._worth_picking():
                await self._wait_for_slot()
                continue
            permits = self.breaker.acquire(min(wanted, _MAX_PICK))
            if not permits:
                # Open breaker (or a probe still out): jobs stay pending, spending nothing.
                pause = max(self.breaker.seconds_until_probe(), 0.1)
                if config.once and loop.time() + pause + config.job_timeout.total_seconds() >= (
                    run_deadline
                ):
                    # No job could start after the pause: end the run now, not after it.
                    self._stop_reason = "--once: circuit breaker open until the run's end" + (
                        f" ({self.breaker.hold_reason})" if self.breaker.hold_reason else ""
                    )
                    return
                await self._sleep(pause)
                continue
            try:
                jobs = await self._pick(len(permits))
            except ClientError as exc:
                for permit in permits:
                    self.breaker.give_back(permit)
                if not exc.retryable:
                    raise
                # QueueService or its database blipped: retry soon. This is not SyncService's
                # health, so the circuit breaker does not hear of it.
                delay = backoff.next(exc.retry_delay)
                log.warning("PickJobs failed (%s); retrying in %.1f s", exc, delay)
                await self._sleep(delay)
                continue
            backoff.reset()
            gathered = False
            for permit in permits[len(jobs) :]:
                self.breaker.give_back(permit)
            for job, permit in zip(jobs, permits, strict=False):
                self._hold(job, permit)
            self._start_held()
            if config.once and not jobs:
                self._stop_reason = "--once: queue drained"
                return

    async def _pick(self, max_jobs: int) -> list[Job]:
        """One PickJobs. A stop does not cancel it (jobs it leased would wait for their lease
        to expire); they are handed back instead, unless the grace period runs out first."""
        config = self.config
        wait = 0.0 if config.once else config.poll_wait.total_seconds()
        pick = asyncio.ensure_future(
            self.queue.pick_jobs(
                worker_id=config.worker_id,
                max_jobs=max_jobs,
                wait=wait,
                lease_duration=config.lease_duration,
                worker_run_id=self.run_id,
                # The fields a job needs and no more: the full job costs QueueService dearly.
                view=JobView.Value("JOB_VIEW_WORKER"),
            )
        )
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({pick, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not pick.done():
                hurry = asyncio.ensure_future(self._hurry.wait())
                try:
                    await asyncio.wait(
                        {pick, hurry},
                        timeout=self._grace_left(),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    hurry.cancel()
            if not pick.done():
                pick.cancel()
                with contextlib.suppress(asyncio.CancelledError, ClientError):
                    await pick
                return []
            jobs = pick.result()
        finally:
            stop.cancel()
        self._summary.picked += len(jobs)
        return jobs

    def _free_slots(self) -> int:
        """Jobs to pick now: a slot frees as soon as its job's result is queued for the reporter,
        so the next pick overlaps the report; but at most `concurrency` more jobs may wait for
        their ack, which bounds what is held if QueueService is slow to answer. Prefetched jobs
        count as taken slots, up to `concurrency + prefetch` of them."""
        concurrency, prefetch, held = self.config.concurrency, self._prefetch, len(self._held)
        return min(
            concurrency + prefetch - self._running - held,
            2 * concurrency + prefetch - len(self._inflight) - held,
        )

    def _worth_picking(self) -> int:
        """The fewest free slots worth a PickJobs: one, unless jobs are held to run next, when
        waiting for half the prefetch keeps picks as large as without it."""
        return max(1, self._prefetch // 2) if self._held else 1

    def _slot_done(self) -> None:
        self._running -= 1
        self._start_held()
        if not self._running:
            self.reporter.nothing_running()
        self._slot_freed.set()

    def _hold(self, job: Job, permit: Permit) -> None:
        """Takes a picked job; its lease is kept from now, also while it waits for a slot."""
        execution = JobExecution(job, permit, self._deps, on_finished_work=self._slot_done)
        execution.keep_lease()
        log.info(
            "job %s: picked (account %s, attempt %d/%d)",
            job.id,
            job.account_id,
            job.attempts,
            job.max_attempts,
        )
        self._held.append(execution)

    def _start_held(self) -> None:
        """Starts held jobs on free slots; once the worker is stopping, hands them all back unrun
        (a long poll may also return jobs after the signal)."""
        held = self._held
        while held and self._stopping.is_set():
            self._launch(held.popleft(), hand_back="worker shutting down")
        while held and self._running < self.config.concurrency:
            execution = held.popleft()
            # After a stall (a stopped process, a starved loop) the lease may have run out and
            # the job gone to another worker: hand it back rather than run it (a hand-back is
            # refused if the lease is gone, and the job is then no longer this worker's).
            late = "its lease ran low while it waited" if execution.lease_at_risk() else None
            self._launch(execution, hand_back=late)

    def _launch(self, execution: JobExecution, hand_back: str | None = None) -> None:
        task = asyncio.create_task(execution.run(hand_back), name=f"job-{execution.job.id}")
        self._running += 1
        self._inflight[task] = execution
        task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task[Outcome]) -> None:
        execution = self._inflight.pop(task)
        execution.finished_work()  # a task cancelled before it ever ran never gave it back
        if task.cancelled():
            outcome = Outcome.RELEASED if execution.reported else Outcome.UNREPORTED
        elif task.exception() is not None:
            log.error("job %s: crashed", execution.job.id, exc_info=task.exception())
            outcome = Outcome.UNREPORTED
        else:
            outcome = task.result()
        self._summary.outcomes[outcome] += 1
        metrics.job_ended(outcome, asyncio.get_running_loop().time() - execution.picked_at)
        log.info("job %s: %s", execution.job.id, outcome)
        self._slot_freed.set()

    async def _wait_for_slot(self) -> None:
        self._slot_freed.clear()
        if self._free_slots() >= self._worth_picking():
            return
        stop = asyncio.ensure_future(self._stopping.wait())
        freed = asyncio.ensure_future(self._slot_freed.wait())
        try:
            await asyncio.wait({stop, freed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            freed.cancel()

    async def _gather_slots(self, window: float) -> None:
        """Waits up to `window` seconds for the running jobs to free their slots too."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + window
        while self._running and not self._stopping.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._slot_freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._slot_freed.wait(), remaining)

    async def _sleep(self, seconds: float) -> None:
        """Sleeps, but wakes up at once when a stop is requested."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _grace_left(self) -> float:
        if self._grace_deadline is None:
            return 0.0
        return max(0.0, self._grace_deadline - asyncio.get_running_loop().time())

    async def _drain(self) -> None:
        """Waits for in-flight jobs (--once: until the run's deadline; else the grace period),
        then cancels the rest, which hand their jobs back."""
        loop = asyncio.get_running_loop()
        while self._inflight:
            if self._stopping.is_set():
                deadline = self._grace_deadline or loop.time()
            elif self._run_deadline is not None:
                deadline = self._run_deadline
            else:  # the loop ended without a stop (--once): wait for the jobs
                deadline = loop.time() + 3600
            if self._run_deadline is not None:
                deadline = min(deadline, self._run_deadline)
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            hurry = asyncio.ensure_future(self._hurry.wait())
            stop = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait(
                    {*self._inflight, hurry, stop},
                    timeout=remaining,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                hurry.cancel()
                stop.cancel()
        leftovers = list(self._inflight)
        if leftovers:
            # A job task created this very moment has not run yet; cancelled before its first
            # step it would never reach its hand-back. One turn of the loop lets it start.
            await asyncio.sleep(0)
            log.warning("handing back %d unfinished job(s)", len(leftovers))
            for task in leftovers:
                task.cancel()
            await asyncio.gather(*leftovers, return_exceptions=True)

    async def _finish_run(self, status: WorkerRunStatus.ValueType) -> None:
        outcomes = dict(self._summary.outcomes)
        notes = self._summary.stop_reason
        backoff = Backoff(initial=0.5, maximum=2.0)
        for attempt in range(1, 6):
            try:
                run = await self.queue.finish_worker_run(
                    self.run_id,
                    status=status,
                    notes=notes,
                    metadata={
                        "outcomes": outcomes,
                        "circuit_breaker_opened": self.breaker.times_opened,
                    },
                )
            except ClientError as exc:
                if not exc.retryable or attempt == 5:
                    log.error("run %s could not be finished: %s", self.run_id, exc)
                    self._summary.error = f"FinishWorkerRun failed: {exc}"
                    return
                await asyncio.sleep(backoff.next())
                continue
            self._summary.run = run
            log.info(
                "run %s finished: picked %d, processed %d, succeeded %d, failed %d, "
                "released %d of which deferred %d (%s)",
                run.id,
                run.jobs_picked,
                run.jobs_processed,
                run.jobs_succeeded,
                run.jobs_failed,
                run.jobs_released,
                self._summary.outcomes[Outcome.DEFERRED],
                notes,
            )
            return
