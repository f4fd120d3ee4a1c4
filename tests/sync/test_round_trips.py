"""What a sync costs PostgreSQL: how many statements it sends, and that the statements it runs
again and again stay prepared on their connections (planned once, not on every execution)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from service_runtime.database import PoolSettings
from tests.sync.conftest import Harness, MakeHarness


@contextmanager
def statements_sent(engine: AsyncEngine) -> Iterator[list[str]]:
    """Every statement `engine` sends while the block runs."""
    sent: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        sent.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def _one_location_account(make_harness: MakeHarness, **settings: object) -> Harness:
    return await make_harness(
        accounts=1,
        locations_per_account=1,
        reviews_per_location=3,
        settings=lambda s: dataclasses.replace(s, **settings),
    )


async def test_a_full_sync_of_one_location_sends_few_statements(make_harness: MakeHarness):
    harness = await _one_location_account(make_harness)
    account = await harness.connect(1)
    engine = harness.app.store.engine

    with statements_sent(engine) as first:
        await harness.sync(account.id)  # refreshes the access token on the way
    with statements_sent(engine) as again:
        await harness.sync(account.id)

    # Read the context (3), begin the pass (the account's lock and the clock, checkpoint,
    # upsert: 3), store the location (2), read its stored reviews (1), store its reviews (lock
    # and clock, old reviews, upsert, location state: 4), end the pass (lock and clock, two
    # soft deletes, counts, status, checkpoint: 6), the quota of two Google calls (2).
    assert len(again) == 21, again
    # The refresh: the token lock, the stored tokens, the new access token.
    assert len(first) == len(again) + 3, first


async def test_the_statements_of_a_sync_stay_prepared(make_harness: MakeHarness):
    # One pooled connection serves every statement, so it runs each of a sync's statements
    # once per sync; psycopg prepares a statement at its fifth execution.
    harness = await _one_location_account(make_harness, db_pool=PoolSettings(size=1))
    account = await harness.connect(1)

    for _ in range(7):
        await harness.sync(account.id)

    async with harness.app.store.engine.connect() as conn:
        prepared = await conn.execute(sa.text("SELECT statement FROM pg_prepared_statements"))
        statements = list(prepared.scalars())
    assert any("INSERT INTO gmb_reviews" in s for s in statements), statements
    assert any("INSERT INTO sync_status" in s for s in statements), statements
    assert any("FOR NO KEY UPDATE" in s for s in statements), statements
