"""Google's quota shared by SyncService replicas: two SyncApps on one PostgreSQL database and one
Google (the emulator, whose quota window is short) sync accounts at the same time, through
SyncAccount, without one quota rejection; on SQLite the one process keeps within it alone.

The emulator may count every API of a project in one window or each API in its own: the
client's per-API limits below add up to the emulator's quota, so both hold.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import sqlalchemy as sa

from sync_service.quota import GoogleApiName, LocalQuota, PostgresQuota
from sync_service.tables import google_quota_buckets
from tests.sync.conftest import TEST_CLIENT_ID, Harness, MakeHarness

QUOTA, WINDOW = 30, 2.0
EMULATOR = {
    "locations_per_account": 3,
    "reviews_per_location": 60,  # two review pages per location
    "quota_per_minute": QUOTA,
    "quota_window": WINDOW,
}
# A sync reads one locations page and two review pages per location: reviews get most of the
# quota. Account Management is not called by a sync. 24 + 5 + 1 = 30.
CLIENT = {
    "quota_per_window": QUOTA,
    "quota_per_window_reviews": 24,
    "quota_per_window_business_information": 5,
    "quota_per_window_account_management": 1,
    "quota_window": timedelta(seconds=WINDOW),
}


def _stats(harness: Harness) -> dict[GoogleApiName, object]:
    assert harness.app.google is not None
    return harness.app.google.quota.stats()


async def test_two_replicas_on_one_database_stay_within_googles_quota(
    make_harness: MakeHarness, pg_url: str
):
    """Run against the per-process limiter this replaced (each replica its own 30 requests per
    window, one limiter for every API), 3 of these 6 syncs failed with RESOURCE_EXHAUSTED and the
    emulator rejected 6 requests, on each of three runs."""
    first = await make_harness(accounts=6, google=CLIENT, **EMULATOR)
    # The second replica: same database, same Google (its own emulator stays unused).
    second = await make_harness(accounts=0, api_root=first.emulator.url, google=CLIENT)
    accounts = [await first.connect(n) for n in range(1, 7)]

    results = await asyncio.gather(
        *((first if i % 2 == 0 else second).sync(a.id) for i, a in enumerate(accounts))
    )

    assert [r.reviews_added for r in results] == [180] * 6
    stats = first.state.stats
    assert stats.quota_rejections == 0
    assert stats.requests["locations"] == 6 and stats.requests["reviews"] == 36
    assert max(stats.peak_window_requests.values()) <= QUOTA
    # Both replicas sent requests, and both were held back by the one shared budget.
    for replica in (first, second):
        assert replica.app.google is not None
        assert isinstance(replica.app.google.quota, PostgresQuota)
        reviews = _stats(replica)[GoogleApiName.REVIEWS]
        assert reviews.acquired > 0 and reviews.waits > 0  # type: ignore[attr-defined]
    async with first.engine.connect() as conn:
        rows = (await conn.execute(sa.select(google_quota_buckets))).all()
    assert sorted((r.project, r.api) for r in rows) == [
        (TEST_CLIENT_ID, "business_information"),
        (TEST_CLIENT_ID, "reviews"),
    ]


async def test_on_sqlite_one_process_keeps_within_googles_quota_by_itself(
    make_harness: MakeHarness, sqlite_url: str
):
    harness = await make_harness(accounts=4, database_url=sqlite_url, google=CLIENT, **EMULATOR)
    accounts = [await harness.connect(n) for n in range(1, 5)]

    results = await asyncio.gather(*(harness.sync(a.id) for a in accounts))

    assert [r.reviews_added for r in results] == [180] * 4
    assert harness.state.stats.quota_rejections == 0
    assert max(harness.state.stats.peak_window_requests.values()) <= QUOTA
    assert harness.app.google is not None
    assert isinstance(harness.app.google.quota, LocalQuota)
    assert _stats(harness)[GoogleApiName.REVIEWS].waits > 0  # type: ignore[attr-defined]
