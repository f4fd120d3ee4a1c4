"""The hot statements' plans stay proportional to the rows they touch, whatever the planner
guesses: plan checks of what PostgreSQL really executed, not timings.

The PostgreSQL driver runs on connections that load `auto_explain` and send every executed
plan back as a notice, so what is checked is the plan each statement ran with: the custom plans
of its first executions and the generic plan psycopg's prepared statement settles on, under
the service's default `plan_cache_mode` and with a plan made for every execution. With
100,000 accounts, a statement that joined the accounts table by hash (the planner cannot know how
many rows a pick or an enqueue changes, and guessed a thousand) read all of them for a handful of
jobs: 30 ms of a 33 ms pick of 64 jobs with 100,000 accounts.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from queue_service.drivers import Moment, PickParams, QueueDriver, driver_for
from queue_service.lifecycle import RetryPolicy
from queue_service.models import Caller, Completion, EnqueueRequest, SyncType
from service_runtime.database import PoolSettings, create_engine_async

ACCOUNTS = 100_000
BACKLOG = 50_000
# psycopg prepares a statement at its fifth execution; a few more run the generic plan.
EXECUTIONS = 8


@dataclass
class Explained:
    driver: QueueDriver
    engine: AsyncEngine
    accounts: list[uuid.UUID]
    plans: list[str] = field(default_factory=list)

    def plans_of(self, marker: str) -> list[str]:
        return [plan for plan in self.plans if marker in plan]


def _explaining_engine(
    pg_url: str, pool: PoolSettings, plans: list[str], *, analyze: bool = False
) -> AsyncEngine:
    """An engine whose connections send every executed plan back as a notice, kept in
    `plans` (`analyze`: with the rows each node really returned)."""
    engine = create_engine_async(pg_url, pool=pool)

    @event.listens_for(engine.sync_engine, "connect")
    def _explain_every_statement(dbapi_connection, _record):
        dbapi_connection.driver_connection.add_notice_handler(
            lambda notice: plans.append(notice.message_primary or "")
        )
        cursor = dbapi_connection.cursor()
        cursor.execute("LOAD 'auto_explain'")
        cursor.execute("SET auto_explain.log_min_duration = 0")
        if analyze:
            cursor.execute("SET auto_explain.log_analyze = on")
            cursor.execute("SET auto_explain.log_timing = off")
        cursor.execute("SET auto_explain.log_level = notice")
        cursor.execute("SET client_min_messages = notice")
        cursor.close()

    return engine


async def _add_accounts(
    conn: AsyncConnection, count: int, now: datetime, *, users: int | None = None
) -> list[uuid.UUID]:
    """`count` active accounts, each of its own user or spread over `users` users; their ids
    in order."""
    owner = (
        "gen_random_uuid()"
        if users is None
        else "('00000000-0000-0000-0000-' || lpad(mod(i, %(users)s)::text, 12, '0'))::uuid"
    )
    await conn.exec_driver_sql(
        "INSERT INTO gmb_accounts (id, user_id, account_name, google_account_id, is_active,"
        f" created_at, updated_at) SELECT gen_random_uuid(), {owner}, 'Shop ' || i,"
        " 'accounts/' || i, true, %(now)s, %(now)s FROM generate_series(1, %(count)s) AS i",
        {"now": now, "count": count, "users": users},
    )
    return sorted((await conn.exec_driver_sql("SELECT id FROM gmb_accounts")).scalars())


async def _add_jobs(conn: AsyncConnection, count: int, now: datetime, *, finished: bool) -> None:
    """A job for each of the first `count` accounts in id order: pending, or succeeded (one
    attempt spent)."""
    status, attempts, completed_at = (
        ("succeeded", 1, "%(now)s") if finished else ("pending", 0, "NULL")
    )
    await conn.exec_driver_sql(
        "INSERT INTO sync_queue (id, user_id, account_id, sync_type, status, priority,"
        " attempts, max_attempts, metadata, created_at, updated_at, completed_at,"
        " trace_context, errors)"
        f" SELECT gen_random_uuid(), user_id, id, 'full', '{status}', 0, {attempts}, 3, '{{}}',"
        f" %(now)s, %(now)s, {completed_at}, '{{}}', '[]' FROM gmb_accounts ORDER BY id"
        " LIMIT %(count)s",
        {"now": now, "count": count},
    )


async def _analyze(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.exec_driver_sql("ANALYZE gmb_accounts")
        await conn.exec_driver_sql("ANALYZE sync_queue")
        await conn.commit()


def _driver(engine: AsyncEngine) -> QueueDriver:
    return driver_for(engine, retry_policy=RetryPolicy(base=timedelta(seconds=60)))


# The service's default (DB_PLAN_CACHE_MODE) and the plans made for each execution's values,
# which see how many accounts there are.
@pytest.fixture(params=["force_generic_plan", "force_custom_plan"])
async def explained(pg_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Explained]:
    plans: list[str] = []
    engine = _explaining_engine(pg_url, PoolSettings(plan_cache_mode=request.param), plans)
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        accounts = await _add_accounts(conn, ACCOUNTS, now)
        # A backlog, so that the planner expects picks and reports of many rows.
        await _add_jobs(conn, BACKLOG, now, finished=False)
    await _analyze(engine)
    yield Explained(_driver(engine), engine, accounts, plans)
    await engine.dispose()


def _assert_never_reads_every_account(plans: list[str]) -> None:
    """Every read of the accounts table is a lookup of one key: no scan of it, sequential or
    along an index (a merge join reads the whole primary key), expects more than one row."""
    assert plans, "no plan was explained"
    for plan in plans:
        for scan in re.findall(r"Scan[^\n]* on gmb_accounts\b[^\n]*", plan):
            assert re.search(r"\(cost=[\d.]+ rows=1 width", scan), plan


def _moment() -> Moment:
    return Moment(now=datetime.now(UTC))


async def _enqueue(db: Explained, accounts: list[uuid.UUID]) -> None:
    requests = [EnqueueRequest(account_id=a, sync_type=SyncType.FULL) for a in accounts]
    await db.driver.job_insert_many(requests, caller=Caller.everyone(), moment=_moment())


async def test_an_enqueue_looks_up_only_its_own_accounts(explained):
    fresh = explained.accounts[BACKLOG:]
    for account in fresh[:EXECUTIONS]:
        await _enqueue(explained, [account])
    await _enqueue(explained, fresh[EXECUTIONS : EXECUTIONS + 500])

    plans = explained.plans_of("WITH request AS")
    assert len(plans) == EXECUTIONS + 1
    _assert_never_reads_every_account(plans)


async def test_a_pick_and_its_report_look_up_only_the_jobs_accounts(explained):
    params = PickParams(max_jobs=64, lease=timedelta(seconds=60), worker_id="planner")
    for _ in range(EXECUTIONS):
        jobs = await explained.driver.job_pick(params, moment=_moment())
        assert len(jobs) == 64
        completions = [Completion(j.id, j.lease_token, {"reviews_added": 0}) for j in jobs]
        half = len(completions) // 2
        # Both answers: the full jobs (CompleteJob, ReportResults) and acknowledgements.
        await explained.driver.job_report_many(completions[:half], moment=_moment())
        await explained.driver.job_report_many(
            completions[half:], moment=_moment(), with_jobs=False
        )

    picks = explained.plans_of("status = 'processing',")
    reports = explained.plans_of("status = 'succeeded',")
    assert len(picks) == EXECUTIONS and len(reports) == 2 * EXECUTIONS
    _assert_never_reads_every_account(picks + reports)


async def test_the_plans_are_read_from_what_postgresql_executed(explained):
    """The check itself can fail: a statement that does read every account is caught."""
    async with explained.engine.connect() as conn:
        await conn.execute(sa.text("SELECT count(*) FROM gmb_accounts WHERE account_name <> ''"))

    with pytest.raises(AssertionError):
        _assert_never_reads_every_account(explained.plans_of("gmb_accounts"))


# -- a burst of jobs the planner does not know of ------------------------------------------
#
# A queue analyzed while it held only finished jobs tells the planner there are no pending
# jobs; a new queue's first plans are made while it is near empty; either way a burst of
# enqueues grows the pending set long before the next ANALYZE. A statement that reads "the
# pending jobs" whole through one of their partial indexes, believing it holds a row or two,
# then costs as much as the backlog on every call: in these scenarios each enqueue read all
# 3,000 pending jobs twice, each pick read and sorted all of them to lease 64, and each report
# of 64 results read all the active jobs. Every read of the queue table must stay proportional
# to the rows the statement is about.

FINISHED = 20_000
BURST = 3_000


@pytest.fixture(
    params=[
        ("force_generic_plan", "drained"),
        ("force_custom_plan", "drained"),
        # A plan made once, while the queue was empty, and kept: a plan made for each
        # execution sees how big the table is (and, for a small one, may rightly scan it).
        ("force_generic_plan", "new"),
    ],
    ids=lambda param: "-".join(param),
)
async def burst(pg_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Explained]:
    """`drained`: 20,000 finished jobs, analyzed, then the burst; `new`: the enqueue's plan
    made on an empty, never analyzed queue, then the burst."""
    plan_cache_mode, history = request.param
    plans: list[str] = []
    # One connection, so that the plans the enqueue made before the burst are the ones used.
    pool = PoolSettings(plan_cache_mode=plan_cache_mode, size=1, max_overflow=0)
    engine = _explaining_engine(pg_url, pool, plans, analyze=True)

    now = datetime.now(UTC)
    async with engine.begin() as conn:
        accounts = await _add_accounts(conn, FINISHED + BURST + 200, now, users=50)
    driver = _driver(engine)
    if history == "new":
        for account in accounts[-EXECUTIONS:]:
            await driver.job_insert_many(
                [EnqueueRequest(account_id=account, sync_type=SyncType.FULL)],
                caller=Caller.everyone(),
                moment=_moment(),
            )
    else:
        async with engine.begin() as conn:
            await _add_jobs(conn, FINISHED, now, finished=True)
        await _analyze(engine)
    # The burst, through the service's own enqueue, after those plans or statistics.
    requests = [
        EnqueueRequest(account_id=a, sync_type=SyncType.FULL)
        for a in accounts[FINISHED : FINISHED + BURST]
    ]
    for start in range(0, BURST, 500):
        await driver.job_insert_many(
            requests[start : start + 500], caller=Caller.everyone(), moment=_moment()
        )
    plans.clear()
    yield Explained(driver, engine, accounts[FINISHED + BURST : -EXECUTIONS], plans)
    await engine.dispose()


_SCAN = re.compile(r"Scan[^\n]* on sync_queue\b[^\n]*actual[^\n]* rows=(\d+) loops=(\d+)")


def _queue_rows_read(plan: str) -> list[int]:
    """How many rows each scan of the queue table in an executed plan read: those it
    returned and those its filter removed, over all its loops."""
    reads = []
    lines = plan.splitlines()
    for at, line in enumerate(lines):
        scan = _SCAN.search(line)
        if scan is None:
            continue
        rows, loops = int(scan[1]), int(scan[2])
        removed = 0
        for detail in lines[at + 1 :]:
            if "->" in detail:
                break
            if match := re.search(r"Rows Removed by Filter: (\d+)", detail):
                removed += int(match[1])
        reads.append((rows + removed) * loops)
    return reads


def _assert_reads_at_most(plans: list[str], rows: int) -> None:
    assert plans, "no plan was explained"
    for plan in plans:
        assert "actual" in plan, plan
        assert max(_queue_rows_read(plan), default=0) <= rows, plan


async def test_an_enqueue_reads_only_its_own_accounts_jobs_after_a_burst(burst):
    for account in burst.accounts[:EXECUTIONS]:
        await _enqueue(burst, [account])
    single = burst.plans_of("WITH request AS")
    assert len(single) == EXECUTIONS
    _assert_reads_at_most(single, 3)

    burst.plans.clear()
    # Duplicates of pending jobs too: their upgrade and their answer.
    await _enqueue(burst, burst.accounts[EXECUTIONS : EXECUTIONS + 100])
    await _enqueue(burst, burst.accounts[: EXECUTIONS + 100])
    _assert_reads_at_most(burst.plans_of("WITH request AS"), 2 * (EXECUTIONS + 100) + 2)


async def test_a_pick_and_its_report_read_only_their_jobs_after_a_burst(burst):
    params = PickParams(max_jobs=64, lease=timedelta(seconds=60), worker_id="planner")
    for _ in range(EXECUTIONS):
        jobs = await burst.driver.job_pick(params, moment=_moment())
        assert len(jobs) == 64
        completions = [Completion(j.id, j.lease_token, {"reviews_added": 0}) for j in jobs]
        await burst.driver.job_report_many(completions, moment=_moment(), with_jobs=False)

    picks = burst.plans_of("status = 'processing',")
    assert len(picks) == EXECUTIONS
    _assert_reads_at_most(picks, 2 * 64 + 2)
    _assert_reads_at_most(burst.plans_of("status = 'succeeded',"), 2 * 64 + 2)


def test_the_rows_read_count_what_a_filter_removed():
    """The check itself can fail: a scan that returns nothing but filtered 3,000 rows."""
    plan = (
        "Update on sync_queue q  (cost=0.15..8.22 rows=1 width=158) (actual rows=0 loops=1)\n"
        "  ->  Index Scan using ix_sync_queue_pick on sync_queue q_1  (cost=0.12..5.89 rows=1"
        " width=47) (actual rows=0 loops=2)\n"
        "        Filter: (account_id = $1)\n"
        "        Rows Removed by Filter: 1500\n"
        "  ->  Index Scan using pk_sync_queue on sync_queue p  (cost=0.29..8.31 rows=1"
        " width=16) (actual rows=1 loops=4)\n"
    )
    assert _queue_rows_read(plan) == [3000, 4]
    with pytest.raises(AssertionError):
        _assert_reads_at_most([plan], 100)
