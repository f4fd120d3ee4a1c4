"""The seam between the queue's state machine and a database: the `QueueDriver` protocol.

A driver owns every statement that changes a job or a worker run, written for its database:
`drivers/postgres.py` (one statement per change wherever PostgreSQL allows it) and
`drivers/sqlite.py` (one `BEGIN IMMEDIATE` transaction per change). What both run unchanged is
shared in `drivers/shared.py`. Methods are named noun first (`job_pick`, `job_report_many`,
`worker_run_insert`), so a family sorts together. One suite, `tests/queue/driver/`, holds every
driver to the same contract.

Time comes in as a `Moment`: `now` is this process's clock (written to `updated_at`,
`completed_at`, and the base of a retry's `scheduled_at`), `lease_now` the instant leases are
judged by, None for the database's own clock. A lease ends at `lease_expires_at` by that clock
and every lease-guarded change checks it in the same statement as the change.

Methods that take `conn` run inside the caller's transaction when given one (it must come from
`transaction()`); otherwise the driver uses a connection of its own, in autocommit when the
change is one statement.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from queue_service.models import (
    Caller,
    Completion,
    EnqueueRequest,
    EnqueueResult,
    Failure,
    Job,
    JobRef,
    LeasedJob,
    QueuePause,
    RecoveredJobs,
    Release,
    ResultAck,
    WorkerRun,
    WorkerRunStatus,
)
from service_runtime.database import ReadEngine

# Called with how many jobs became ready, or None for "look, there may be some".
JobsAvailable = Callable[[int | None], None]


@dataclass(frozen=True, slots=True)
class Moment:
    """When a change happens: `now` by this process's clock; `lease_now`, the instant leases
    are judged by, or None to leave it to the database's clock (PostgreSQL's
    `statement_timestamp()`; SQLite has only this process's, so `now`)."""

    now: datetime
    lease_now: datetime | None = None


# When the queue table's statistics are stale: more rows changed since its last ANALYZE than
# the autovacuum settings migration 0006 gives it (1,000 plus 2 % of the table), and no ANALYZE
# for longer than autovacuum's default nap, so autovacuum, when it runs, goes first.
ANALYZE_THRESHOLD = 1000
ANALYZE_SCALE_FACTOR = 0.02
ANALYZE_GRACE = timedelta(seconds=60)


def statistics_stale(
    changed: int, live: int, last_analyzed: datetime | None, *, now: datetime
) -> bool:
    """Whether statistics `changed` rows behind a table of `live` rows, last refreshed at
    `last_analyzed` (None: never), need refreshing now."""
    if changed <= ANALYZE_THRESHOLD + ANALYZE_SCALE_FACTOR * live:
        return False
    return last_analyzed is None or now - last_analyzed >= ANALYZE_GRACE


@dataclass(frozen=True, slots=True)
class PickParams:
    """What `job_pick` leases: up to `max_jobs` jobs, for `lease`, to a worker (and its run)."""

    max_jobs: int
    lease: timedelta
    worker_id: str
    worker_run_id: uuid.UUID | None = None


class SignalTarget(Protocol):
    """Where a listener relays wake-ups: `notify(n)` wakes at most n waiting pickers, None all."""

    def notify(self, count: int | None = None) -> None:
        """Wakes at most `count` waiting pickers (all when None)."""


class JobListener(Protocol):
    """A background task relaying other replicas' announcements of ready jobs (PostgreSQL's
    LISTEN); `connected` is set while it listens."""

    @property
    def connected(self) -> asyncio.Event:
        """An asyncio.Event set while the listener is connected."""

    async def run(self) -> None:
        """Listens until cancelled, reconnecting when the link drops."""


class LeaderSession(Protocol):
    """One replica's bid for leadership, held for as long as the session lives."""

    async def attempt_elect(self) -> bool:
        """Tries to become leader (or confirms it still is); True while this session leads."""

    async def confirm(self) -> None:
        """Raises if the session, and the leadership with it, has been lost."""


class QueueDriver(Protocol):
    """The queue's state machine on one database. See the module docstring for conventions."""

    @property
    def name(self) -> str:
        """ "postgresql" or "sqlite"."""

    engine: AsyncEngine
    # `engine`'s pool for calls that only read.
    reads: ReadEngine

    # -- connections, clock, notifications, leadership -----------------------------------------

    def transaction(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A transaction for several driver calls (and shared statements) that must commit
        together; announcements of ready jobs made inside it go out only when it commits."""

    def snapshot(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A read-only connection whose reads all see the same snapshot of the database."""

    async def ping(self) -> None:
        """Raises unless the database answers."""

    async def lease_clock_now(self) -> datetime:
        """The database's lease clock now: what a lease's expiry is compared with."""

    def insert(self, table: Table) -> postgresql.Insert | sqlite.Insert:
        """This database's INSERT construct for `table`, with its ON CONFLICT clauses."""

    def listener(self, signal: SignalTarget) -> JobListener | None:
        """A listener that relays announcements of ready jobs made by any process to `signal`;
        None when the driver announces only in-process (after its own commits)."""

    def leader_session(self) -> AbstractAsyncContextManager[LeaderSession]:
        """A session that can hold the leadership of maintenance among replicas."""

    # -- jobs ---------------------------------------------------------------------------------

    async def job_insert_many(
        self,
        requests: Sequence[EnqueueRequest],
        *,
        caller: Caller,
        moment: Moment,
        conn: AsyncConnection | None = None,
    ) -> list[EnqueueResult[Job]]:
        """Enqueues syncs, one result per request in order, all or nothing.

        Every account must exist, be visible to `caller` (else AccountNotFound, exactly as if
        missing) and be active (else AccountInactive); the first bad one in request order stops
        the whole batch and nothing is written. An account with a pending or processing job
        gets no second one: the request returns that job as a duplicate, and upgrades it while
        pending to a full sync or a higher priority. Requests repeating an account in one call
        act like consecutive calls: the first inserts, later ones are duplicates, and the job
        carries every upgrade. Ready jobs created are announced with their number.

        Each new job gets its `fair_key`: the later of the head of the queue at its priority
        (the first due pending job's key) and one step behind its user's last queued key
        there; a user's jobs in one call take consecutive steps. A job upgraded to a higher
        priority takes its key there the same way.
        """

    async def job_insert_many_refs(
        self, requests: Sequence[EnqueueRequest], *, caller: Caller, moment: Moment
    ) -> list[EnqueueResult[JobRef]]:
        """`job_insert_many` in its own transaction, each job answered by its `JobRef` only
        (EnqueueSyncBatch with JOB_VIEW_ID): the same jobs inserted, upgraded and announced,
        with nothing else read back."""

    async def job_pick(self, params: PickParams, *, moment: Moment) -> list[Job]:
        """Leases up to `max_jobs` jobs, in pick order (`priority DESC, fair_key, created_at,
        id`: within a priority, users take turns; one user's jobs come oldest first). Nothing
        of a paused user, nothing at all while the whole queue is paused.

        Jobs whose lease ran out come first: each is leased again (its lost attempt recorded as
        the reaper would), or failed as "worker lost" when its attempts are used up. Then due
        pending jobs (`scheduled_at` unset or not after `moment.now`) with attempts left. A pick
        increments `attempts`, grants a new `lease_token` until lease clock + `lease`, and counts
        `jobs_picked` on the run (and a processed, failed job on the run of a lost lease). Rows
        another transaction holds are skipped, never waited for.
        """

    async def job_pick_leased(self, params: PickParams, *, moment: Moment) -> list[LeasedJob]:
        """`job_pick`, answered with each job's `LeasedJob` fields only (a worker's pick):
        the same jobs, leased the same way, with nothing read back that a worker never uses."""

    async def job_lease_extend(
        self, job_id: uuid.UUID, lease_token: uuid.UUID, lease: timedelta, *, moment: Moment
    ) -> datetime:
        """Moves a held lease's end to lease clock + `lease`; returns the new end.

        JobNotFound, LeaseExpired (the token matches but the lease ran out: it cannot be
        revived) or LeaseLost (another token holds the job, or none does).
        """

    async def job_report_many(
        self,
        results: Sequence[Completion | Failure],
        *,
        moment: Moment,
        with_jobs: bool = True,
    ) -> list[ResultAck]:
        """Applies workers' results (each for a different job) in one atomic change; one ack
        per result, in order. A refused result (JobNotFound, LeaseExpired, LeaseLost in its
        ack) does not stop the others.

        A completion makes the job succeeded with its `result`. A failure appends an entry to
        `errors` and retries the job (pending, `scheduled_at` after the policy's backoff from
        `attempts`, or the failure's `retry_after` when longer), or fails it when permanent or
        when its attempts are used up (`will_retry` in the ack says which). The lease is
        cleared; the run counts one processed job, succeeded or failed. With `with_jobs` False
        the acks carry no job: only what was accepted.
        """

    async def job_release(self, release: Release, *, moment: Moment) -> Job:
        """Hands a leased job back unrun: pending, its attempt given back, not picked before
        `now + delay`, `reason` (if any) in `last_error`; the run counts a released job.
        Errors as for `job_lease_extend`."""

    async def job_cancel(self, job_id: uuid.UUID, caller: Caller, *, moment: Moment) -> Job:
        """Cancels a pending job; IllegalTransition for any other status, JobNotFound for a
        job the caller cannot see."""

    async def job_retry(self, job_id: uuid.UUID, caller: Caller, *, moment: Moment) -> Job:
        """Puts a failed or cancelled job back to pending with its attempts reset, queued
        again behind its user's waiting jobs (a new `fair_key`); IllegalTransition for another status, ActiveJobExists when its account has an active
        job, JobNotFound for a job the caller cannot see."""

    async def job_rescue_stuck(
        self, *, moment: Moment, started_before: datetime | None = None
    ) -> RecoveredJobs:
        """The reaper: processing jobs whose lease ran out (or that started before
        `started_before`) go back to pending after backoff while attempts remain, else fail as
        "worker lost". A bounded batch, oldest expiry first; rows held elsewhere are skipped."""

    async def job_delete_finished(self, *, finished_before: datetime, limit: int) -> int:
        """Deletes up to `limit` succeeded, failed or cancelled jobs completed before
        `finished_before`; returns how many."""

    # -- pauses -------------------------------------------------------------------------------

    async def queue_pause(
        self, user_id: uuid.UUID | None, reason: str, paused_by: str | None, *, moment: Moment
    ) -> QueuePause:
        """Pauses picking for one user's jobs, or the whole queue when `user_id` is None; the
        pause is stored, so every replica's pick obeys it. Pausing what is already paused
        keeps its start and takes the new reason. Enqueueing is not affected."""

    async def queue_resume(self, user_id: uuid.UUID | None, *, moment: Moment) -> bool:
        """Ends the pause of one user (or of the whole queue, `user_id` None); False if there
        was none. Ready jobs it frees are announced (their number, counted up to a bound)."""

    # -- worker runs --------------------------------------------------------------------------

    async def worker_run_insert(
        self, worker_id: str, metadata: dict[str, object], *, moment: Moment
    ) -> WorkerRun:
        """Records the start of a worker run, with zero counts."""

    async def worker_run_finish(
        self,
        run_id: uuid.UUID,
        status: WorkerRunStatus,
        notes: str | None,
        metadata: dict[str, object],
        *,
        moment: Moment,
    ) -> WorkerRun:
        """Finishes a running run (metadata merged); WorkerRunNotFound, or IllegalTransition
        when it already finished."""

    async def worker_run_delete_finished(self, *, finished_before: datetime, limit: int) -> int:
        """Deletes up to `limit` finished (completed or failed) worker runs that finished before
        `finished_before`; returns how many. Running runs are kept, however old."""

    async def queue_analyze_if_stale(self, *, moment: Moment) -> bool:
        """Refreshes the planner's statistics of the queue table when they lag behind it
        (`statistics_stale`) and autovacuum has not refreshed them; returns whether it did.
        A database whose planner keeps no such statistics does nothing."""
