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
from sqlalchemy.ext.asyncio import AsyncEngine

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


# The service's default (DB_PLAN_CACHE_MODE) and the plans made for each execution's values,
# which see how many accounts there are.
@pytest.fixture(params=["force_generic_plan", "force_custom_plan"])
async def explained(pg_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Explained]:
    engine = create_engine_async(pg_url, pool=PoolSettings(plan_cache_mode=request.param))
    plans: list[str] = []

    @event.listens_for(engine.sync_engine, "connect")
    def _explain_every_statement(dbapi_connection, _record):
        dbapi_connection.driver_connection.add_notice_handler(
            lambda notice: plans.append(notice.message_primary or "")
        )
        cursor = dbapi_connection.cursor()
        cursor.execute("LOAD 'auto_explain'")
        cursor.execute("SET auto_explain.log_min_duration = 0")
        cursor.execute("SET auto_explain.log_level = notice")
        cursor.execute("SET client_min_messages = notice")
        cursor.close()

    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.exec_driver_sql(
            "INSERT INTO gmb_accounts (id, user_id, account_name, google_account_id, is_active,"
            " created_at, updated_at)"
            " SELECT gen_random_uuid(), gen_random_uuid(), 'Shop ' || i, 'accounts/' || i, true,"
            " %(now)s, %(now)s FROM generate_series(1, %(count)s) AS i",
            {"now": now, "count": ACCOUNTS},
        )
        accounts = list((await conn.exec_driver_sql("SELECT id FROM gmb_accounts")).scalars())
        # A backlog, so that the planner expects picks and reports of many rows.
        await conn.exec_driver_sql(
            "INSERT INTO sync_queue (id, user_id, account_id, sync_type, status, priority,"
            " attempts, max_attempts, metadata, created_at, updated_at, trace_context, errors)"
            " SELECT gen_random_uuid(), user_id, id, 'full', 'pending', 0, 0, 3, '{}', %(now)s,"
            " %(now)s, '{}', '[]' FROM gmb_accounts ORDER BY id LIMIT %(count)s",
            {"now": now, "count": BACKLOG},
        )
        accounts.sort()
    async with engine.connect() as conn:
        await conn.exec_driver_sql("ANALYZE gmb_accounts")
        await conn.exec_driver_sql("ANALYZE sync_queue")
        await conn.commit()
    driver = driver_for(engine, retry_policy=RetryPolicy(base=timedelta(seconds=60)))
    yield Explained(driver, engine, accounts, plans)
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
