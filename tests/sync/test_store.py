"""The store's guarantees, on PostgreSQL and on SQLite alike."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from gmbsync.sync.v1 import sync_service_pb2 as pb
from service_runtime.database import create_engine_async
from sync_service.crypto import TokenCipher
from sync_service.models import LocationRow, ReviewRow, SyncSnapshot, SyncType
from sync_service.store import SyncStore
from sync_service.tables import gmb_reviews
from tests.sync.conftest import OWNER, TEST_TOKEN_KEY, MakeHarness

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
async def store(any_db_url: str) -> AsyncIterator[SyncStore]:
    engine = create_engine_async(any_db_url)
    yield SyncStore(engine, TokenCipher([TEST_TOKEN_KEY]))
    await engine.dispose()


async def _account(store: SyncStore) -> uuid.UUID:
    account, _ = await store.account_connect(
        user_id=OWNER,
        account_name="Acme",
        google_account_id="accounts/1",
        refresh_token="refresh",
        access_token=None,
        access_token_expires_at=None,
        now=T0,
    )
    return account.id


def _location(n: int = 1) -> LocationRow:
    return LocationRow.from_google({"name": f"locations/{n}", "title": f"Shop {n}"})


def _review(review_id: str, comment: str, *, location: int = 1) -> ReviewRow:
    return ReviewRow.from_google(
        f"locations/{location}",
        {
            "name": f"accounts/1/locations/{location}/reviews/{review_id}",
            "reviewId": review_id,
            "reviewer": {"displayName": "Ana K"},
            "starRating": "FOUR",
            "comment": comment,
            "createTime": "2025-03-02T10:47:32.807123456Z",
            "updateTime": "2025-03-02T10:47:32.807Z",
        },
    )


def _snapshot(account_id, started, reviews, sync_type=SyncType.FULL) -> SyncSnapshot:
    return SyncSnapshot(
        account_id=account_id,
        sync_type=sync_type,
        started_at=started,
        locations=[_location()],
        reviews=reviews,
    )


async def test_a_late_older_snapshot_neither_reverts_nor_deletes_newer_rows(store: SyncStore):
    account_id = await _account(store)
    newer = _snapshot(
        account_id, T0 + timedelta(seconds=10), [_review("a", "edited"), _review("b", "new")]
    )
    older = _snapshot(account_id, T0, [_review("a", "original")])

    await store.sync_write(newer, T0 + timedelta(seconds=11))
    counts, status = await store.sync_write(older, T0 + timedelta(seconds=12))

    assert (counts.reviews_added, counts.reviews_updated, counts.reviews_removed) == (0, 0, 0)
    assert status.reviews_count == 2
    async with store.engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.select(gmb_reviews.c.review_id, gmb_reviews.c.comment, gmb_reviews.c.deleted_at)
            )
        ).all()
    assert sorted(rows) == [("a", "edited", None), ("b", "new", None)]
    context = await store.sync_context(account_id)
    assert context is not None and context.known_location_ids == {"locations/1"}


async def test_a_full_write_soft_deletes_only_what_it_did_not_see(store: SyncStore):
    account_id = await _account(store)
    await store.sync_write(_snapshot(account_id, T0, [_review("a", "x"), _review("b", "y")]), T0)

    counts, status = await store.sync_write(
        _snapshot(account_id, T0 + timedelta(minutes=1), [_review("a", "x changed")]),
        T0 + timedelta(minutes=1),
    )

    assert (counts.reviews_updated, counts.reviews_removed) == (1, 1)
    assert status.reviews_count == 1


async def test_an_incremental_write_deletes_nothing(store: SyncStore):
    account_id = await _account(store)
    await store.sync_write(_snapshot(account_id, T0, [_review("a", "x"), _review("b", "y")]), T0)

    counts, status = await store.sync_write(
        _snapshot(account_id, T0 + timedelta(minutes=1), [], SyncType.INCREMENTAL),
        T0 + timedelta(minutes=1),
    )

    assert counts.reviews_removed == 0 and status.reviews_count == 2
    assert status.last_sync_type is SyncType.INCREMENTAL


async def test_the_watermark_only_moves_forward(store: SyncStore):
    account_id = await _account(store)
    newer = ReviewRow.from_google(
        "locations/1",
        {**_review("n", "z").raw, "reviewId": "n", "updateTime": "2025-06-01T00:00:00Z"},
    )
    await store.sync_write(_snapshot(account_id, T0, [_review("a", "x"), newer]), T0)

    _, status = await store.sync_write(
        _snapshot(account_id, T0 + timedelta(minutes=1), [_review("a", "x")], SyncType.INCREMENTAL),
        T0 + timedelta(minutes=1),
    )

    assert status.reviews_watermark == datetime(2025, 6, 1, tzinfo=UTC)


async def test_failures_accumulate_and_deactivate_when_asked(store: SyncStore):
    account_id = await _account(store)

    for n in (1, 2):
        status = await store.sync_failure(
            account_id,
            error_type="google_unavailable",
            message=f"failure {n}",
            details={"n": n},
            job_id=None,
            now=T0 + timedelta(seconds=n),
        )
    final = await store.sync_failure(
        account_id,
        error_type="invalid_grant",
        message="revoked",
        details={},
        job_id=uuid.uuid4(),
        now=T0 + timedelta(seconds=3),
        deactivate=True,
    )

    assert status is not None and status.consecutive_failures == 2
    assert final is not None and final.consecutive_failures == 3
    assert final.last_error == "revoked" and final.last_error_at == T0 + timedelta(seconds=3)
    account = await store.account_get(account_id)
    assert account is not None and not account.is_active
    assert (
        await store.sync_failure(
            uuid.uuid4(), error_type="x", message="x", details={}, job_id=None, now=T0
        )
        is None
    )


async def test_review_times_keep_microseconds_and_utc(store: SyncStore):
    account_id = await _account(store)
    await store.sync_write(_snapshot(account_id, T0, [_review("a", "x")]), T0)

    status = await store.status_get(account_id)

    assert status is not None
    assert status.reviews_watermark == datetime(2025, 3, 2, 10, 47, 32, 807000, tzinfo=UTC)


async def test_a_full_and_incremental_sync_run_end_to_end_on_sqlite(
    make_harness: MakeHarness, sqlite_url: str
):
    harness = await make_harness(database_url=sqlite_url, accounts=1)
    account = await harness.connect(1)

    full = await harness.sync(account.id)
    harness.state.add_review("1", harness.location_ids(1)[0], comment="on sqlite")
    incremental = await harness.sync(account.id, pb.SYNC_TYPE_INCREMENTAL)

    assert full.reviews_added == 60 and incremental.reviews_added == 1
    assert len(await harness.reviews(account.id)) == 61
