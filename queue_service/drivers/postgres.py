"""The queue on PostgreSQL: each change on the hot path is one statement.

The hot statements (`INSERT_SQL`, `PICK_SQL`, `EXTEND_SQL`, `REPORT_SQL`, `RELEASE_SQL`, and
`INSERT_REF_SQL` and `PICK_LEASED_SQL`, the same two answering less) are written out here as
SQL and run through psycopg as they are:
- every status is a literal in the text, never a parameter, so the generic plan psycopg's
  prepared statements settle on still reads the partial indexes of pending and processing jobs
  (`ix_sync_queue_pick`, `ix_sync_queue_lease_expiry`);
- no plan rests on how many jobs the planner believes pending or processing, a number that
  is wrong after every burst: rows are found by key, one probe per request or result, and the
  pick says its index's own predicate (`tables.PENDING_IN_PICK_ORDER`), which no other
  partial index can serve;
- a change and the worker-run counts it owes are one statement: the job UPDATE is a
  data-modifying CTE and the runs are updated from its RETURNING rows, after locking them in
  id order (jobs are always locked before runs, so no two transactions wait in a cycle);
- many rows travel as arrays (`unnest`), so a batch costs one statement, not one per row, and
  in psycopg's binary format (`%(name)b`): a text array escapes every element with a regular
  expression, which for a report of 64 results cost more than the rest of the call;
- a one-statement change runs in autocommit: no BEGIN and COMMIT round trips;
- they run on psycopg's own cursor (`pgexec`), not through SQLAlchemy's result layer, whose
  per-execution cost was 15 % of an enqueue's CPU in the store;
- ready jobs are announced with `pg_notify('gmbsync_jobs', '<count>')` in the statement that
  made them, so the NOTIFY is sent only if it commits, once, to every replica's listener (this
  one's included: nothing is told in-process, or its pickers would be woken twice).
What is not on the hot path (cancel, retry, the reaper, the pruner, worker runs) is the shared
SQLAlchemy Core of `drivers.shared`.

Leases are judged by the database's clock (`statement_timestamp()`, stable within a
statement) unless a clock is injected (`Moment.lease_now`), so that every replica, the reaper
and every pick agree on when a lease ends however far their hosts' clocks drift.

Leadership is a session-level advisory lock on a dedicated connection: if that connection
drops, PostgreSQL releases the lock and another replica takes it at its next attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from queue_service.drivers.base import Moment, PickParams, SignalTarget, statistics_stale
from queue_service.drivers.pgexec import Row, fetch_one, fetch_rows
from queue_service.drivers.shared import (
    MAX_ERROR_LENGTH,
    SharedDriver,
    enqueue_results,
    job_from_row,
    leased_from_row,
    merge_by_account,
    pick_order,
    q,
    ref_from_row,
)
from queue_service.drivers.sqltext import compact
from queue_service.errors import AccountInactive, AccountNotFound, ActiveJobExists
from queue_service.lifecycle import MAX_RETRY_DELAY
from queue_service.models import (
    LEASED_FIELDS,
    Caller,
    Completion,
    EnqueueRequest,
    EnqueueResult,
    Failure,
    J,
    Job,
    JobRef,
    JobStatus,
    LeasedJob,
    Release,
    ResultAck,
)
from queue_service.tables import PENDING_IN_PICK_ORDER, WHOLE_QUEUE
from service_runtime import fastjson
from service_runtime.database import connect_with
from service_runtime.sqltypes import UtcDateTime

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "gmbsync_jobs"
# Any fixed 64-bit key shared by every replica: "gmbsync" in ASCII.
LEADER_LOCK_KEY = 0x676D6273796E63

# The statements below are SQL text, run through psycopg as written (`%(name)s` parameters,
# each cast to its type). Statuses are literals, never parameters (see the module docstring).
_FIELDS = [c.name for c in q.c]
JOB_FIELDS = ", ".join(_FIELDS)
Q_JOB_FIELDS = ", ".join(f"q.{name}" for name in _FIELDS)

# The lease clock: an injected instant, or the start of this statement by the database's clock.
LEASE_NOW = "coalesce(%(lease_now)s::timestamptz, statement_timestamp())"


def _lease_held_sql(alias: str, job_id: str, token: str) -> str:
    """SQL: `token` holds the lease of job `job_id` (table alias `alias`) right now.

    A job has a lease token and expiry exactly while it is processing (the table's check
    `lease_iff_processing`), so the token says the status. It is not said again as
    `status = 'processing'`: that literal would let the planner read a partial index of the
    active jobs whole instead of probing the primary key once per result (a report of 64 read
    the whole backlog so, when it guessed the active jobs few)."""
    return (
        f"{alias}.id = {job_id} AND {alias}.lease_token = {token}"
        f" AND {alias}.lease_expires_at > {LEASE_NOW}"
    )


# Locks the runs of `per_run` (run_id and counts) in id order, then adds each run's counts:
# jobs are locked before runs in every statement, so no two wait on each other in a cycle.
_COUNT_RUNS = """
locked_runs AS (
    SELECT id FROM sync_worker_runs
    WHERE id IN (SELECT run_id FROM per_run)
    ORDER BY id
    FOR UPDATE
),
counted AS (
    UPDATE sync_worker_runs r
    SET {sets}
    FROM per_run p
    WHERE r.id = p.run_id AND r.id IN (SELECT id FROM locked_runs)
)"""

# `shared.lost_worker_error`, built by PostgreSQL from the row being updated.
_LOST_ERROR = (
    "'worker lost: lease expired at '"
    " || to_char(lease_expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')"
    " || ' (worker ' || coalesce(worker_id, 'None') || ')'"
)
# `shared.error_entry` of a lost attempt, as a one-element array to append to `errors`.
_LOST_ENTRY = (
    "jsonb_build_array(jsonb_build_object('attempt', attempts, 'error', "
    + _LOST_ERROR
    + ", 'failed_at', %(now_text)s::text, 'worker_id', worker_id, 'permanent', false))"
)

# Jobs the pick may act on: neither the whole queue (the nil UUID) nor the job's user is paused.
# The first test runs once per statement (an InitPlan); the second probes a hash of the few
# paused users built once per statement: next to nothing while nothing is paused.
_NOT_PAUSED = f"""NOT EXISTS (SELECT 1 FROM sync_queue_pauses WHERE user_id = '{WHOLE_QUEUE}'::uuid)
      AND user_id NOT IN (SELECT user_id FROM sync_queue_pauses)"""  # noqa: S608


# The account's name of each row, looked up through the accounts' primary key. Written as a
# correlated subquery rather than a join because the planner cannot know how many rows a
# statement changes: guessing a thousand, it hashed every account for a join (30 ms of a 33 ms
# pick of 64 jobs with 100,000 accounts); a subquery is one index probe per row whatever the
# guess, and any plan, generic or custom, stays proportional to the rows at hand.
def _account_name(row: str) -> str:
    return f"(SELECT a.account_name FROM gmb_accounts a WHERE a.id = {row}.account_id)"  # noqa: S608 - `row` is an alias of this module


def _pick_sql(returning: str, answer: str) -> str:
    """The pick (see `PostgresDriver.job_pick`): `changed` returns `returning` (with
    `worker_run_id`, which the run counts need), and the statement answers `answer` of each
    leased row, with its account's name."""
    return compact(f"""
WITH expired AS (
    SELECT id, attempts, max_attempts, worker_run_id
    FROM sync_queue
    WHERE status = 'processing' AND lease_expires_at <= {LEASE_NOW} AND {_NOT_PAUSED}
    ORDER BY lease_expires_at
    LIMIT %(max_jobs)s::int
    FOR UPDATE SKIP LOCKED
),
-- Pending, said as the pick index's predicate: only that index can serve it (see
-- `tables.PENDING_IN_PICK_ORDER`), read in order for as many jobs as the LIMIT asks.
ready AS (
    SELECT id
    FROM sync_queue
    WHERE {PENDING_IN_PICK_ORDER}
      AND (scheduled_at IS NULL OR scheduled_at <= %(now)s::timestamptz)
      AND attempts < max_attempts
      AND {_NOT_PAUSED}
    ORDER BY priority DESC, fair_key, created_at, id
    LIMIT greatest(
        %(max_jobs)s::int - (SELECT count(*) FROM expired WHERE attempts < max_attempts), 0
    )
    FOR UPDATE SKIP LOCKED
),
lost AS (
    UPDATE sync_queue
    SET status = 'failed',
        completed_at = %(now)s::timestamptz,
        updated_at = %(now)s::timestamptz,
        last_error = {_LOST_ERROR},
        errors = errors || {_LOST_ENTRY},
        lease_token = NULL,
        lease_expires_at = NULL
    WHERE id IN (SELECT id FROM expired WHERE attempts >= max_attempts)
    RETURNING id
),
changed AS (
    UPDATE sync_queue
    SET status = 'processing',
        attempts = attempts + 1,
        -- The lease's own start: `lease_expires_at - started_at` is the lease granted.
        started_at = {LEASE_NOW},
        updated_at = %(now)s::timestamptz,
        lease_token = gen_random_uuid(),
        lease_expires_at = {LEASE_NOW} + %(lease)s::interval,
        worker_id = %(worker_id)s::text,
        worker_run_id = %(worker_run_id)s::uuid,
        -- In SET, columns are the row before the update: 'processing' marks a takeover,
        -- which records its lost attempt as the reaper would.
        last_error = CASE WHEN status = 'processing' THEN {_LOST_ERROR} ELSE last_error END,
        errors = CASE WHEN status = 'processing' THEN errors || {_LOST_ENTRY} ELSE errors END
    WHERE id IN (
        SELECT id FROM expired WHERE attempts < max_attempts
        UNION ALL
        SELECT id FROM ready
    )
    RETURNING {returning}
),
per_run AS (
    SELECT run_id, sum(picked) AS picked, sum(lost) AS lost
    FROM (
        SELECT worker_run_id AS run_id, 1 AS picked, 0 AS lost FROM changed
        UNION ALL
        SELECT worker_run_id, 0, 1 FROM expired
    ) owed
    WHERE run_id IS NOT NULL
    GROUP BY run_id
),
{
        _COUNT_RUNS.format(
            sets="jobs_picked = r.jobs_picked + p.picked,"
            " jobs_processed = r.jobs_processed + p.lost,"
            " jobs_failed = r.jobs_failed + p.lost"
        )
    }
SELECT {answer}, {_account_name("c")} AS account_name
FROM changed c
""")  # noqa: S608


PICK_SQL = _pick_sql(JOB_FIELDS, "c.*")
# A worker's pick: only what `LeasedJob` holds is returned and decoded. The full row's JSON
# (errors, metadata, result) and the rest were a sixth of the pick's time in the database and
# on the wire, and most of its per-row decoding in QueueService.
_LEASED_COLUMNS = [name for name in LEASED_FIELDS if name != "account_name"]
PICK_LEASED_SQL = _pick_sql(
    ", ".join([*_LEASED_COLUMNS, "worker_run_id"]), ", ".join(f"c.{n}" for n in _LEASED_COLUMNS)
)

EXTEND_SQL = f"""
UPDATE sync_queue q
SET lease_expires_at = {LEASE_NOW} + %(lease)s::interval, updated_at = %(now)s::timestamptz
WHERE {_lease_held_sql("q", "%(job_id)s::uuid", "%(lease_token)s::uuid")}
RETURNING q.lease_expires_at
"""  # noqa: S608

# A failure's retry, and its delay in seconds from the row's attempts: `decide_failure` and
# `RetryPolicy.delay` of queue_service.lifecycle in SQL, with each failure's jitter factor
# drawn by the policy.
_RETRY = "(NOT f.permanent AND q.attempts < q.max_attempts)"
_BACKOFF = (
    "(least(%(base)s::float8 * power(2::float8, greatest(q.attempts, 1) - 1),"
    " %(max_delay)s::float8) * f.jitter)"
)
_DELAY = (
    f"(CASE WHEN f.retry_after > {_BACKOFF} THEN least(f.retry_after, %(max_delay)s::float8)"
    f" ELSE {_BACKOFF} END)"
)


def _report_sql(*, with_jobs: bool) -> str:
    """Every completion and failure of a report in one statement, with the run counts."""
    returning = Q_JOB_FIELDS if with_jobs else "q.id, q.status, q.scheduled_at, q.worker_run_id"
    answer = (
        f"SELECT d.*, {_account_name('d')} AS account_name FROM done d"  # noqa: S608
        if with_jobs
        else "SELECT * FROM done"
    )
    count_runs = _COUNT_RUNS.format(
        sets="jobs_processed = r.jobs_processed + p.succeeded + p.failed,"
        " jobs_succeeded = r.jobs_succeeded + p.succeeded,"
        " jobs_failed = r.jobs_failed + p.failed"
    )
    # Built once at import from this module's constants: no input ever reaches the text.
    return compact(f"""
WITH completion AS (
    SELECT *
    FROM unnest(%(c_ids)b::uuid[], %(c_tokens)b::uuid[], %(c_results)b::text[]::jsonb[])
        AS c(job_id, lease_token, result)
),
failure AS (
    SELECT *
    FROM unnest(
        %(f_ids)b::uuid[], %(f_tokens)b::uuid[], %(f_errors)b::text[],
        %(f_permanent)b::boolean[], %(f_retry_after)b::float8[], %(f_jitter)b::float8[]
    ) AS f(job_id, lease_token, error, permanent, retry_after, jitter)
),
completed AS (
    UPDATE sync_queue q
    SET status = 'succeeded',
        completed_at = %(now)s::timestamptz,
        updated_at = %(now)s::timestamptz,
        last_error = NULL,
        result = c.result,
        lease_token = NULL,
        lease_expires_at = NULL
    FROM completion c
    WHERE {_lease_held_sql("q", "c.job_id", "c.lease_token")}
    RETURNING {returning}
),
failed AS (
    UPDATE sync_queue q
    SET status = CASE WHEN {_RETRY} THEN 'pending' ELSE 'failed' END,
        scheduled_at = CASE
            WHEN {_RETRY} THEN %(now)s::timestamptz + make_interval(secs => {_DELAY})
            ELSE q.scheduled_at
        END,
        completed_at = CASE WHEN {_RETRY} THEN q.completed_at ELSE %(now)s::timestamptz END,
        last_error = f.error,
        errors = q.errors || jsonb_build_array(jsonb_build_object(
            'attempt', q.attempts, 'error', f.error, 'failed_at', %(now_text)s::text,
            'worker_id', q.worker_id, 'permanent', f.permanent
        )),
        updated_at = %(now)s::timestamptz,
        lease_token = NULL,
        lease_expires_at = NULL
    FROM failure f
    WHERE {_lease_held_sql("q", "f.job_id", "f.lease_token")}
    RETURNING {returning}
),
done AS (
    SELECT * FROM completed UNION ALL SELECT * FROM failed
),
per_run AS (
    SELECT worker_run_id AS run_id,
           count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE status <> 'succeeded') AS failed
    FROM done
    WHERE worker_run_id IS NOT NULL
    GROUP BY worker_run_id
),
{count_runs}
{answer}
""")  # noqa: S608


REPORT_SQL = _report_sql(with_jobs=True)
REPORT_ACK_SQL = _report_sql(with_jobs=False)

RELEASE_SQL = f"""
WITH changed AS (
    UPDATE sync_queue q
    SET status = 'pending',
        attempts = greatest(q.attempts - 1, 0),
        scheduled_at = %(scheduled_at)s::timestamptz,
        updated_at = %(now)s::timestamptz,
        last_error = CASE WHEN %(reason)s::text = '' THEN q.last_error ELSE %(reason)s::text END,
        lease_token = NULL,
        lease_expires_at = NULL
    WHERE {_lease_held_sql("q", "%(job_id)s::uuid", "%(lease_token)s::uuid")}
    RETURNING {Q_JOB_FIELDS}
),
counted AS (
    UPDATE sync_worker_runs r
    SET jobs_released = r.jobs_released + 1
    FROM changed c
    WHERE r.id = c.worker_run_id
)
SELECT c.*, {_account_name("c")} AS account_name,
       (SELECT pg_notify('{NOTIFY_CHANNEL}', '1') FROM changed
        WHERE scheduled_at IS NULL OR scheduled_at <= %(now)s::timestamptz) AS notified
FROM changed c
"""  # noqa: S608

# A request asks for an earlier start than its account's pending job has: an explicit
# `scheduled_at` before the job's, or none (now) while the job waits for a later time.
_EARLIER = "q.scheduled_at > coalesce(a.scheduled_at, %(now)s::timestamptz)"

# Fair keys (virtual-time fair queuing within a priority): each user's line at each priority
# asked for (`lane`) goes on from the later of the head of the queue (the first due pending
# job's key at that priority, read through `ix_sync_queue_pick`, whose predicate
# `tables.PENDING_IN_PICK_ORDER` it says) and one step behind the
# user's last queued key there (`ix_sync_queue_fair_user`); the lane's requests take
# consecutive steps in request order. So a newcomer's first job sorts at the head, and a
# user's n-th queued job n - 1 steps behind it. `allowed` is `permitted` with each request's
# `fair_key`. `shared.fair_key_next` is the same rule for one job.
_FAIR_KEYS = f"""
head AS (
    SELECT h.priority, (
        SELECT p.fair_key FROM sync_queue p
        WHERE {PENDING_IN_PICK_ORDER} AND p.priority = h.priority
          AND (p.scheduled_at IS NULL OR p.scheduled_at <= %(now)s::timestamptz)
          AND p.attempts < p.max_attempts
        ORDER BY p.fair_key, p.created_at, p.id
        LIMIT 1
    ) AS fair_key
    FROM (SELECT DISTINCT priority FROM permitted) h
),
lane AS (
    SELECT l.user_id, l.priority, coalesce(greatest(head.fair_key, (
        SELECT max(p.fair_key) + 1 FROM sync_queue p
        WHERE p.status = 'pending' AND p.user_id = l.user_id AND p.priority = l.priority
    )), 0) AS first_key
    FROM (SELECT DISTINCT user_id, priority FROM permitted) l JOIN head ON head.priority = l.priority
),
allowed AS (
    SELECT m.*, lane.first_key - 1 + row_number() OVER (
        PARTITION BY m.user_id, m.priority ORDER BY m.n
    ) AS fair_key
    FROM permitted m JOIN lane ON lane.user_id = m.user_id AND lane.priority = m.priority
)"""  # noqa: S608 - the predicate is a constant of the schema


def _insert_sql(answer: str) -> str:
    """The enqueue (see `PostgresDriver.job_insert_many`), answering `answer` of each request's
    job (`job`: inserted, upgraded or found active, with `created`; `acc`: its account)."""
    return compact(f"""
WITH request AS (
    SELECT *
    FROM unnest(
        %(ids)b::uuid[], %(account_ids)b::uuid[], %(sync_types)b::text[], %(priorities)b::int[],
        %(scheduled_ats)b::timestamptz[], %(max_attempts)b::int[],
        %(metadata)b::text[]::jsonb[], %(trace_contexts)b::text[]::jsonb[]
    ) WITH ORDINALITY
        AS r(id, account_id, sync_type, priority, scheduled_at, max_attempts, metadata,
             trace_context, n)
),
account AS (
    SELECT r.n, r.account_id, a.user_id, coalesce(a.is_active, false) AS is_active,
           (a.id IS NOT NULL AND (%(everyone)s::boolean OR a.user_id = %(caller)s::uuid))
               AS visible
    -- One probe of the accounts' key per request (see `_account_name`); the LIMIT, a no-op
    -- on a key, keeps the planner from flattening the LATERAL back into a hash join.
    FROM request r LEFT JOIN LATERAL (
        SELECT g.id, g.user_id, g.is_active FROM gmb_accounts g WHERE g.id = r.account_id
        LIMIT 1
    ) a ON true
),
permitted AS (
    -- All or nothing: one account missing, someone else's or inactive, and nothing is written.
    SELECT r.*, a.user_id
    FROM request r JOIN account a ON a.n = r.n
    WHERE NOT EXISTS (SELECT 1 FROM account WHERE NOT visible OR NOT is_active)
),
{_FAIR_KEYS},
-- Each request's active job (pending or processing) as this statement's snapshot sees it: one
-- probe of the active-account key per request, written LATERAL with a LIMIT so that it stays
-- one (see `_account_name`). Joined on the pending jobs instead, a plan made when the queue
-- was near empty, or believed so, read every pending job for each enqueue.
active AS (
    SELECT j.*
    FROM allowed a CROSS JOIN LATERAL (
        SELECT * FROM sync_queue p
        WHERE p.account_id = a.account_id AND p.status IN ('pending', 'processing')
        LIMIT 1
    ) j
),
-- `*`: every column of the job, written short (see `sqltext`).
inserted AS (
    INSERT INTO sync_queue (
        id, user_id, account_id, sync_type, status, priority, attempts, max_attempts,
        scheduled_at, metadata, created_at, updated_at, trace_context, errors, fair_key
    )
    SELECT id, user_id, account_id, sync_type, 'pending', priority, 0, max_attempts,
           scheduled_at, metadata, %(now)s::timestamptz, %(now)s::timestamptz, trace_context,
           '[]'::jsonb, fair_key
    FROM allowed
    ORDER BY n
    ON CONFLICT (account_id) WHERE status IN ('pending', 'processing') DO NOTHING
    RETURNING sync_queue.*
),
-- The active job, by key, if it is pending and still so when locked. Not said as a literal
-- `status = 'pending'` (nor as `j.status = 'pending'`, from which the planner infers that
-- literal): it would let the planner read a partial index of the pending jobs whole.
upgraded AS (
    UPDATE sync_queue q
    SET sync_type = CASE WHEN a.sync_type = 'full' THEN 'full' ELSE q.sync_type END,
        priority = greatest(q.priority, a.priority),
        scheduled_at = CASE WHEN {_EARLIER} THEN a.scheduled_at ELSE q.scheduled_at END,
        fair_key = CASE WHEN q.priority < a.priority THEN a.fair_key ELSE q.fair_key END,
        updated_at = %(now)s::timestamptz
    FROM allowed a JOIN active j ON j.account_id = a.account_id
    WHERE q.id = j.id AND j.status <> 'processing' AND q.status = j.status
      AND (q.priority < a.priority OR (a.sync_type = 'full' AND q.sync_type <> 'full')
           OR {_EARLIER})
      AND a.account_id NOT IN (SELECT account_id FROM inserted)
    RETURNING q.*
),
existing AS (
    -- This statement's snapshot: a row it cannot see (committed by another enqueue after the
    -- snapshot was taken) makes the INSERT skip the account and leaves it unanswered here.
    SELECT * FROM active
    WHERE account_id NOT IN (SELECT account_id FROM inserted)
      AND account_id NOT IN (SELECT account_id FROM upgraded)
),
job AS (
    SELECT *, true AS created FROM inserted
    UNION ALL SELECT *, false FROM upgraded
    UNION ALL SELECT *, false FROM existing
)
SELECT acc.visible, acc.is_active, {answer},
       (SELECT pg_notify('{NOTIFY_CHANNEL}', count(*)::text) FROM (
            SELECT id FROM inserted
            WHERE scheduled_at IS NULL OR scheduled_at <= %(now)s::timestamptz
            -- Pending jobs an earlier schedule made due now (`before`: as this statement's
            -- snapshot saw them, before the upgrade).
            UNION ALL
            SELECT u.id FROM upgraded u JOIN active before ON before.id = u.id
            WHERE before.scheduled_at > %(now)s::timestamptz
              AND (u.scheduled_at IS NULL OR u.scheduled_at <= %(now)s::timestamptz)
        ) ready
        HAVING count(*) > 0) AS notified
FROM account acc
LEFT JOIN job ON job.account_id = acc.account_id
ORDER BY acc.n
""")  # noqa: S608


INSERT_SQL = _insert_sql(f"job.*, {_account_name('acc')} AS account_name")
# EnqueueSyncBatch with JOB_VIEW_ID: each job's reference, not the whole row read back and
# decoded (a third of QueueService's time on a batch of 1,000).
INSERT_REF_SQL = _insert_sql("job.id, job.account_id, job.status, job.created")


# Sent compact: short enough for psycopg's query cache (see `sqltext`); the statements built
# by `_pick_sql`, `_report_sql` and `_insert_sql` come compact from them.
EXTEND_SQL, RELEASE_SQL = compact(EXTEND_SQL), compact(RELEASE_SQL)


# The queue table's change counter and last ANALYZE, by autovacuum or anyone.
STATISTICS_SQL = """
SELECT n_mod_since_analyze, n_live_tup, greatest(last_analyze, last_autoanalyze) AS analyzed
FROM pg_stat_user_tables WHERE relid = 'sync_queue'::regclass
"""


def libpq_conninfo(database_url: str | sa.URL) -> str:
    """An SQLAlchemy PostgreSQL URL as a libpq URI that psycopg accepts."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class PostgresListener:
    """Relays NOTIFY gmbsync_jobs to a signal, waking as many pickers as the payload counts;
    reconnects with backoff when the link drops."""

    def __init__(self, database_url: str | sa.URL, signal: SignalTarget) -> None:
        self._conninfo = libpq_conninfo(database_url)
        self._signal = signal
        self.connected = asyncio.Event()

    async def run(self) -> None:
        """Listens until cancelled."""
        backoff = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.connected.set()
                    backoff = 0.5
                    # Anything enqueued while we were not listening must be looked at now.
                    self._signal.notify()
                    async for notification in conn.notifies():
                        self._signal.notify(_count(notification.payload))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the link dropped; pickers fall back to polling meanwhile
                log.warning(
                    "LISTEN %s lost (%s); reconnecting in %.1f s", NOTIFY_CHANNEL, exc, backoff
                )
            self.connected.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)


def _count(payload: str) -> int | None:
    """How many ready jobs a notification announces; None (wake everyone) if it does not say."""
    try:
        count = int(payload)
    except ValueError:
        return None
    return count if count > 0 else None


class _AdvisoryLeadership:
    """A leader bid on its own connection: the lock lives exactly as long as the connection."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    async def attempt_elect(self) -> bool:
        """Takes the lock unless another session holds it (re-entrant for this one)."""
        cursor = await self._conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK_KEY,))
        row = await cursor.fetchone()
        return bool(row and row[0])

    async def confirm(self) -> None:
        """Raises if the connection, and with it the lock, is gone."""
        await self._conn.execute("SELECT 1")


class PostgresDriver(SharedDriver):
    """`QueueDriver` on PostgreSQL (see the module docstring)."""

    name = "postgresql"

    # -- connections, clock, notifications, leadership -----------------------------------------

    def _lease_clock(self) -> sa.ColumnElement[datetime]:
        given = sa.bindparam("p_lease_now", type_=UtcDateTime())
        return sa.func.coalesce(given, sa.func.statement_timestamp(), type_=UtcDateTime())

    def _lease_params(self, moment: Moment) -> dict[str, Any]:
        return {"p_lease_now": moment.lease_now}

    def insert(self, table: sa.Table) -> Any:
        """PostgreSQL's INSERT, with ON CONFLICT."""
        return postgresql.insert(table)

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[AsyncConnection]:
        """A REPEATABLE READ transaction: every read sees the snapshot of the first. It ends
        with COMMIT, which for reads is what ROLLBACK is, except that psycopg keeps the
        connection's prepared statements through a COMMIT and drops them all on a ROLLBACK."""
        async with connect_with(self.engine, isolation_level="REPEATABLE READ") as conn:
            yield conn
            await conn.commit()

    def _autocommit(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        """A connection for a change that is one statement: one statement is atomic by itself,
        and BEGIN and COMMIT would cost two round trips."""
        return connect_with(self.engine, isolation_level="AUTOCOMMIT")

    async def _announce(self, conn: AsyncConnection, count: int) -> None:
        """One NOTIFY with the count, sent when `conn`'s transaction commits. This process
        hears it through its own listener like every other replica; nothing is told locally,
        or its pickers would be woken twice."""
        await conn.execute(sa.select(sa.func.pg_notify(NOTIFY_CHANNEL, str(count))))

    def listener(self, signal: SignalTarget) -> PostgresListener:
        """LISTEN on `gmbsync_jobs`: every replica's announcements reach this process."""
        return PostgresListener(self.engine.url, signal)

    @contextlib.asynccontextmanager
    async def leader_session(self) -> AsyncIterator[_AdvisoryLeadership]:
        """A dedicated connection that can hold the leader's advisory lock."""
        conninfo = libpq_conninfo(self.engine.url)
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
            yield _AdvisoryLeadership(conn)

    # -- enqueue ------------------------------------------------------------------------------

    async def job_insert_many(
        self,
        requests: Sequence[EnqueueRequest],
        *,
        caller: Caller,
        moment: Moment,
        conn: AsyncConnection | None = None,
    ) -> list[EnqueueResult[Job]]:
        """See `QueueDriver.job_insert_many`: `INSERT_SQL`, one statement for the whole call
        (account checks, the INSERT, upgrades of duplicates, the NOTIFY) whatever the number of
        requests. One enqueue runs in autocommit; a batch in a transaction, so that a second
        statement after a race (below) keeps it all or nothing."""
        return await self._insert_all(requests, caller, moment, conn, INSERT_SQL, job_from_row)

    async def job_insert_many_refs(
        self, requests: Sequence[EnqueueRequest], *, caller: Caller, moment: Moment
    ) -> list[EnqueueResult[JobRef]]:
        """See `QueueDriver.job_insert_many_refs`: `INSERT_REF_SQL`, `INSERT_SQL` answering
        each job's id, account and status only."""
        return await self._insert_all(requests, caller, moment, None, INSERT_REF_SQL, ref_from_row)

    async def _insert_all(
        self,
        requests: Sequence[EnqueueRequest],
        caller: Caller,
        moment: Moment,
        conn: AsyncConnection | None,
        sql: str,
        from_row: Callable[[Row], J],
    ) -> list[EnqueueResult[J]]:
        if not requests:
            return []
        merged = merge_by_account(requests)
        if conn is not None:
            inserted, active = await self._insert(conn, merged, caller, moment, sql, from_row)
        elif len(merged) == 1:
            async with self._autocommit() as own:
                inserted, active = await self._insert(own, merged, caller, moment, sql, from_row)
        else:
            async with self.transaction() as tx:
                # A generic plan assumes a few requests; a batch of hundreds joined that way
                # costs its size squared. Planned with the real arrays, its planning is a
                # rounding error of the work.
                await tx.exec_driver_sql("SET LOCAL plan_cache_mode = force_custom_plan")
                inserted, active = await self._insert(tx, merged, caller, moment, sql, from_row)
        return enqueue_results(requests, inserted, active)

    async def _insert(
        self,
        conn: AsyncConnection,
        merged: dict[uuid.UUID, EnqueueRequest],
        caller: Caller,
        moment: Moment,
        sql: str,
        from_row: Callable[[Row], J],
    ) -> tuple[dict[uuid.UUID, J], dict[uuid.UUID, J]]:
        """Runs `sql` (`INSERT_SQL` or `INSERT_REF_SQL`) for the merged requests: the jobs it
        created and the active jobs it found, by account, each made by `from_row`."""
        inserted: dict[uuid.UUID, J] = {}
        active: dict[uuid.UUID, J] = {}
        todo = list(merged.values())
        # An account whose INSERT met an active job this statement's snapshot cannot see (an
        # enqueue that committed meanwhile) is left unanswered; the next statement sees the
        # job. Three tries cover any realistic interleaving.
        for _ in range(3):
            rows = await fetch_rows(conn, sql, _insert_params(todo, caller, moment))
            unanswered = []
            for request, row in zip(todo, rows, strict=True):
                # Someone else's account is reported exactly like a missing one.
                if not row["visible"]:
                    raise AccountNotFound(f"account {request.account_id} not found")
                if not row["is_active"]:
                    raise AccountInactive(
                        f"account {request.account_id} is deactivated: reconnect it before syncing"
                    )
                if row["id"] is None:
                    unanswered.append(request)
                elif row["created"]:
                    inserted[request.account_id] = from_row(row)
                else:
                    active[request.account_id] = from_row(row)
            if not unanswered:
                return inserted, active
            todo = unanswered
        raise ActiveJobExists(
            f"account {todo[0].account_id} has a job changing state right now; retry"
        )

    # -- pick ---------------------------------------------------------------------------------

    @staticmethod
    def pick_params(params: PickParams, moment: Moment) -> dict[str, Any]:
        """The parameters of `PICK_SQL`."""
        return {
            "now": moment.now,
            "now_text": moment.now.isoformat(),
            "lease_now": moment.lease_now,
            "max_jobs": params.max_jobs,
            "lease": params.lease,
            "worker_id": params.worker_id,
            "worker_run_id": params.worker_run_id,
        }

    async def job_pick(self, params: PickParams, *, moment: Moment) -> list[Job]:
        """See `QueueDriver.job_pick`: `PICK_SQL`, one statement in autocommit:
        - `expired`: up to `max_jobs` jobs whose lease ran out, locked (SKIP LOCKED);
        - `lost`: those of them whose attempts are used up fail, with the error the reaper
          writes ("worker lost: ...");
        - `ready`: due pending jobs in pick order, locked, as many as the expired jobs with
          attempts left leave room for;
        - `changed`: those expired jobs, then the ready ones, are leased to this worker; a
          taken-over job records its lost attempt as the reaper would;
        - `counted`: the picking run's `jobs_picked`, and a processed, failed job on each run
          that lost one.
        A job is acted on by whoever locks its row first: a reaper pass or another pick that
        comes second skips the row, or re-reads it after the first commits and finds it no
        longer processing. Expired jobs go first: they were at the head of the queue when
        first picked.
        """
        async with self._autocommit() as conn:
            rows = await fetch_rows(conn, PICK_SQL, self.pick_params(params, moment))
        jobs = [job_from_row(r) for r in rows]
        # RETURNING gives no order; hand the jobs out in pick order.
        jobs.sort(key=pick_order)
        return jobs

    async def job_pick_leased(self, params: PickParams, *, moment: Moment) -> list[LeasedJob]:
        """See `QueueDriver.job_pick_leased`: `PICK_LEASED_SQL`, `PICK_SQL` answering only
        the `LeasedJob` columns."""
        async with self._autocommit() as conn:
            rows = await fetch_rows(conn, PICK_LEASED_SQL, self.pick_params(params, moment))
        jobs = [leased_from_row(r) for r in rows]
        jobs.sort(key=pick_order)
        return jobs

    # -- leases and results -------------------------------------------------------------------

    async def job_lease_extend(
        self, job_id: uuid.UUID, lease_token: uuid.UUID, lease: timedelta, *, moment: Moment
    ) -> datetime:
        """See `QueueDriver.job_lease_extend`: `EXTEND_SQL`, one UPDATE; a refusal reads why.
        A lease that has run out cannot be revived, only a held one moved."""
        params = {
            "job_id": job_id,
            "lease_token": lease_token,
            "lease": lease,
            "now": moment.now,
            "lease_now": moment.lease_now,
        }
        async with self._autocommit() as conn:
            row = await fetch_one(conn, EXTEND_SQL, params)
            if row is None:
                raise await self._lease_problem(conn, job_id, lease_token, moment)
        return row["lease_expires_at"]

    async def job_report_many(
        self,
        results: Sequence[Completion | Failure],
        *,
        moment: Moment,
        with_jobs: bool = True,
    ) -> list[ResultAck]:
        """See `QueueDriver.job_report_many`: `REPORT_SQL`, one statement in autocommit for
        every result of the report, whatever the mix: completions and failures each in one
        UPDATE ... FROM unnest(...), the backoff of each retried job computed from its attempts,
        and the run counts. A refused result is explained by one more query for all of them."""
        completions = [r for r in results if isinstance(r, Completion)]
        failures = [r for r in results if isinstance(r, Failure)]
        policy = self.retry_policy
        params = {
            "now": moment.now,
            "now_text": moment.now.isoformat(),
            "lease_now": moment.lease_now,
            "c_ids": [c.job_id for c in completions],
            "c_tokens": [c.lease_token for c in completions],
            "c_results": [fastjson.dumps_text(c.result) for c in completions],
            "f_ids": [f.job_id for f in failures],
            "f_tokens": [f.lease_token for f in failures],
            "f_errors": [f.error[:MAX_ERROR_LENGTH] for f in failures],
            "f_permanent": [f.permanent for f in failures],
            "f_retry_after": [
                None if f.retry_after is None else f.retry_after.total_seconds() for f in failures
            ],
            "f_jitter": [policy.jitter_factor() for _ in failures],
            "base": policy.base.total_seconds(),
            "max_delay": MAX_RETRY_DELAY.total_seconds(),
        }
        statement = REPORT_SQL if with_jobs else REPORT_ACK_SQL
        async with self._autocommit() as conn:
            rows = await fetch_rows(conn, statement, params)
            done = {row["id"]: row for row in rows}
            problems = await self._lease_problems(
                conn, [(r.job_id, r.lease_token) for r in results if r.job_id not in done], moment
            )
            ready = sum(
                row["status"] == JobStatus.PENDING.value and row["scheduled_at"] <= moment.now
                for row in rows
            )
            if ready:
                # Only with no backoff at all: a retried job is otherwise due later, and found
                # by the pickers' own polling then.
                await self._announce(conn, ready)
        acks = []
        for result in results:
            row = done.get(result.job_id)
            if row is None:
                acks.append(ResultAck(job_id=result.job_id, error=problems[result.job_id]))
                continue
            acks.append(
                ResultAck(
                    job_id=result.job_id,
                    job=job_from_row(row) if with_jobs else None,
                    will_retry=row["status"] == JobStatus.PENDING.value,
                )
            )
        return acks

    async def job_release(self, release: Release, *, moment: Moment) -> Job:
        """See `QueueDriver.job_release`: `RELEASE_SQL`, the update, its run count and the
        NOTIFY (when the job is due at once) in one statement."""
        params = {
            "job_id": release.job_id,
            "lease_token": release.lease_token,
            "scheduled_at": (moment.now + release.delay) if release.delay else None,
            "reason": release.reason[:MAX_ERROR_LENGTH],
            "now": moment.now,
            "lease_now": moment.lease_now,
        }
        async with self._autocommit() as conn:
            row = await fetch_one(conn, RELEASE_SQL, params)
            if row is None:
                raise await self._lease_problem(conn, release.job_id, release.lease_token, moment)
        return job_from_row(row)

    async def queue_analyze_if_stale(self, *, moment: Moment) -> bool:
        """See `QueueDriver.queue_analyze_if_stale`: the counters of `pg_stat_user_tables`,
        then `ANALYZE sync_queue` when they say so. ANALYZE reads a sample of the table and
        blocks no reader or writer. It also makes every session drop the plans it cached for
        the table's statements: the hot statements' generic plans (`DB_PLAN_CACHE_MODE`) are
        made again for what the table holds now, not for what it held when it was empty.
        Autovacuum normally does this; this covers a server where it is off or lagging."""
        async with self._autocommit() as conn:
            row = (await conn.exec_driver_sql(STATISTICS_SQL)).mappings().first()
            if row is None:
                return False
            changed = int(row["n_mod_since_analyze"])
            if not statistics_stale(
                changed, int(row["n_live_tup"]), row["analyzed"], now=moment.now
            ):
                return False
            await conn.exec_driver_sql("ANALYZE sync_queue")
        log.info("analyzed sync_queue: %d rows changed since its last statistics", changed)
        return True


def _insert_params(
    requests: Sequence[EnqueueRequest], caller: Caller, moment: Moment
) -> dict[str, Any]:
    """The parameters of `INSERT_SQL`: one array per column, one element per request."""
    return {
        "ids": [uuid.uuid4() for _ in requests],
        "account_ids": [r.account_id for r in requests],
        "sync_types": [r.sync_type.value for r in requests],
        "priorities": [r.priority for r in requests],
        "scheduled_ats": [r.scheduled_at for r in requests],
        "max_attempts": [r.max_attempts for r in requests],
        "metadata": [fastjson.dumps_text(r.metadata) for r in requests],
        "trace_contexts": [fastjson.dumps_text(r.trace_context) for r in requests],
        "everyone": caller.sees_everything,
        "caller": caller.user_id,
        "now": moment.now,
    }
