"""The store's guarantees, on PostgreSQL and on SQLite alike."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from gmbsync.sync.v1 import sync_service_pb2 as pb
from service_runtime.database import create_engine_async
from sync_service.crypto import TokenCipher
from sync_service.models import LocationRead, LocationRow, ReviewRow, SyncPass, SyncType
from sync_service.store import AccountGone, SyncStore
from sync_service.tables import gmb_accounts, gmb_locations, gmb_reviews, oauth_tokens
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
    return LocationRow.from_google(
        {"name": f"locations/{n}", "title": f"Shop {n}", "metadata": {"hasVoiceOfMerchant": True}}
    )


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


async def sync_write(
    store: SyncStore,
    account_id: uuid.UUID,
    seen: datetime,
    reviews: list[ReviewRow],
    sync_type: SyncType = SyncType.FULL,
    *,
    locations: tuple[int, ...] = (1,),
    verified: bool = True,
):
    """One whole pass with snapshot time `seen`, as the syncer writes it: the listed
    locations, each location's reviews, then the pass's end."""
    await store.locations_write(account_id, [_location(n) for n in locations], seen)
    counts = None
    for n in locations:
        location_id = f"locations/{n}"
        read = LocationRead(
            account_id,
            location_id,
            [r for r in reviews if r.location_id == location_id],
            verified=verified,
        )
        written = await store.location_reviews_write(read, seen)
        counts = written if counts is None else counts + written
    end_counts, status = await store.pass_complete(
        account_id, sync_type, SyncPass(seen, seen, False, True), locations_skipped=0
    )
    return (counts + end_counts if counts else end_counts), status


async def test_a_late_older_snapshot_neither_reverts_nor_deletes_newer_rows(store: SyncStore):
    account_id = await _account(store)
    await sync_write(
        store, account_id, T0 + timedelta(seconds=10), [_review("a", "edited"), _review("b", "new")]
    )
    counts, status = await sync_write(store, account_id, T0, [_review("a", "original")])

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
    await sync_write(store, account_id, T0, [_review("a", "x"), _review("b", "y")])

    counts, status = await sync_write(
        store, account_id, T0 + timedelta(minutes=1), [_review("a", "x changed")]
    )

    assert (counts.reviews_updated, counts.reviews_removed) == (1, 1)
    assert status.reviews_count == 1


async def test_an_incremental_write_deletes_nothing(store: SyncStore):
    account_id = await _account(store)
    await sync_write(store, account_id, T0, [_review("a", "x"), _review("b", "y")])

    counts, status = await sync_write(
        store, account_id, T0 + timedelta(minutes=1), [], SyncType.INCREMENTAL, verified=False
    )

    assert counts.reviews_removed == 0 and status.reviews_count == 2
    assert status.last_sync_type is SyncType.INCREMENTAL


async def test_the_watermark_only_moves_forward(store: SyncStore):
    account_id = await _account(store)
    newer = ReviewRow.from_google(
        "locations/1",
        {**_review("n", "z").raw, "reviewId": "n", "updateTime": "2025-06-01T00:00:00Z"},
    )
    await sync_write(store, account_id, T0, [_review("a", "x"), newer])

    _, status = await sync_write(
        store, account_id, T0 + timedelta(minutes=1), [_review("a", "x")], SyncType.INCREMENTAL
    )

    assert status.reviews_watermark == datetime(2025, 6, 1, tzinfo=UTC)


async def test_failures_accumulate_and_deactivate_when_asked(store: SyncStore):
    account_id = await _account(store)

    for n in (1, 2):
        status, _ = await store.sync_failure(
            account_id,
            error_type="google_unavailable",
            message=f"failure {n}",
            details={"n": n},
            job_id=None,
            now=T0 + timedelta(seconds=n),
        )
    context = await store.sync_context(account_id)
    assert context is not None and context.credentials is not None
    final, deactivated = await store.sync_failure(
        account_id,
        error_type="invalid_grant",
        message="revoked",
        details={},
        job_id=uuid.uuid4(),
        now=T0 + timedelta(seconds=3),
        deactivate_if_version=context.credentials.version,
    )

    assert status is not None and status.consecutive_failures == 2
    assert deactivated and final is not None and final.consecutive_failures == 3
    assert final.last_error == "revoked" and final.last_error_at == T0 + timedelta(seconds=3)
    account = await store.account_get(account_id)
    assert account is not None and not account.is_active
    assert await store.sync_failure(
        uuid.uuid4(), error_type="x", message="x", details={}, job_id=None, now=T0
    ) == (None, False)


async def test_a_grant_that_failed_does_not_deactivate_an_account_reconnected_meanwhile(
    store: SyncStore,
):
    account_id = await _account(store)
    context = await store.sync_context(account_id)
    assert context is not None and context.credentials is not None
    # ConnectAccount stores a new grant while the sync that read the old one is still running.
    await store.account_connect(
        user_id=OWNER,
        account_name="Acme",
        google_account_id="accounts/1",
        refresh_token="a new, valid refresh token",
        access_token=None,
        access_token_expires_at=None,
        now=T0 + timedelta(seconds=1),
    )

    _, deactivated = await store.sync_failure(
        account_id,
        error_type="invalid_grant",
        message="revoked",
        details={},
        job_id=None,
        now=T0 + timedelta(seconds=2),
        deactivate_if_version=context.credentials.version,
    )

    account = await store.account_get(account_id)
    assert not deactivated and account is not None and account.is_active
    async with store.engine.connect() as conn:
        stored = (await conn.execute(sa.select(oauth_tokens.c.refresh_token_encrypted))).scalar()
    assert stored != context.credentials.version


async def test_a_late_older_snapshot_does_not_revive_what_a_newer_one_deleted(store: SyncStore):
    account_id = await _account(store)
    both = [_review("a", "x"), _review("b", "y"), _review("c", "z", location=2)]
    await sync_write(store, account_id, T0, both, locations=(1, 2))
    # The newer pass no longer sees review b nor location 2 (and its review c).
    newer_counts, _ = await sync_write(
        store, account_id, T0 + timedelta(seconds=10), [_review("a", "x")]
    )
    assert (newer_counts.reviews_removed, newer_counts.locations_removed) == (2, 1)

    # An older pass (a retry after a lost lease, a direct SyncAccount) that still saw them
    # writes late.
    counts, status = await sync_write(
        store, account_id, T0 + timedelta(seconds=5), both, locations=(1, 2)
    )

    assert (counts.reviews_added, counts.reviews_removed, counts.locations_removed) == (0, 0, 0)
    assert (status.reviews_count, status.locations_count) == (1, 1)
    async with store.engine.connect() as conn:
        deleted_reviews = (
            await conn.execute(
                sa.select(gmb_reviews.c.review_id).where(gmb_reviews.c.deleted_at.is_not(None))
            )
        ).scalars()
        deleted_locations = (
            await conn.execute(
                sa.select(gmb_locations.c.location_id).where(
                    gmb_locations.c.deleted_at.is_not(None)
                )
            )
        ).scalars()
        assert sorted(deleted_reviews) == ["b", "c"]
        assert list(deleted_locations) == ["locations/2"]


async def test_an_unverified_read_deletes_none_of_its_locations_reviews(store: SyncStore):
    account_id = await _account(store)
    await sync_write(store, account_id, T0, [_review("a", "x"), _review("b", "y")])

    counts, status = await sync_write(
        store, account_id, T0 + timedelta(minutes=1), [_review("a", "x")], verified=False
    )

    assert counts.reviews_removed == 0 and status.reviews_count == 2


async def test_a_pass_is_resumed_by_the_next_attempt_of_the_same_type_only(store: SyncStore):
    account_id = await _account(store)

    first = await store.pass_begin(account_id, SyncType.FULL, timedelta(hours=1))
    again = await store.pass_begin(account_id, SyncType.FULL, timedelta(hours=1))
    beside = await store.pass_begin(account_id, SyncType.INCREMENTAL, timedelta(hours=1))
    expired = await store.pass_begin(account_id, SyncType.FULL, timedelta(0))

    assert (first.resumed, first.checkpointed) == (False, True)
    assert again.resumed and again.started_at == first.started_at
    # Each attempt stamps what it writes with its own snapshot time.
    assert again.seen_at > first.seen_at
    # An incremental sync leaves the unfinished full pass alone.
    assert (beside.resumed, beside.checkpointed) == (False, False)
    assert not expired.resumed and expired.started_at > first.started_at
    await store.pass_complete(account_id, SyncType.FULL, expired, locations_skipped=0)
    assert not (await store.pass_begin(account_id, SyncType.FULL, timedelta(hours=1))).resumed


async def test_review_times_keep_microseconds_and_utc(store: SyncStore):
    account_id = await _account(store)
    await sync_write(store, account_id, T0, [_review("a", "x")])

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


async def test_every_write_of_a_pass_refuses_an_account_deleted_meanwhile(store: SyncStore):
    account_id = await _account(store)
    sync_pass = await store.pass_begin(account_id, SyncType.FULL, timedelta(hours=1))
    async with store.engine.begin() as conn:
        await conn.execute(sa.delete(gmb_accounts).where(gmb_accounts.c.id == account_id))
    read = LocationRead(account_id, "locations/1", [_review("a", "x")], verified=True)

    with pytest.raises(AccountGone):
        await store.pass_begin(account_id, SyncType.FULL, timedelta(hours=1))
    with pytest.raises(AccountGone):
        await store.locations_write(account_id, [_location()], sync_pass.seen_at)
    with pytest.raises(AccountGone):
        await store.location_reviews_write(read, sync_pass.seen_at)
    with pytest.raises(AccountGone):
        await store.pass_complete(account_id, SyncType.FULL, sync_pass, locations_skipped=0)
    async with store.engine.connect() as conn:
        assert (
            await conn.execute(sa.select(sa.func.count()).select_from(gmb_reviews))
        ).scalar() == 0


async def test_a_deletion_racing_a_pass_write_is_account_gone_and_nothing_is_written(
    pg_url: str,
):
    """PostgreSQL only: SQLite's `BEGIN IMMEDIATE` lets no deletion be in flight meanwhile."""
    engine = create_engine_async(pg_url)
    store = SyncStore(engine, TokenCipher([TEST_TOKEN_KEY]))
    try:
        account_id = await _account(store)
        sync_pass = await store.pass_begin(account_id, SyncType.FULL, timedelta(hours=1))
        async with engine.connect() as deleter:
            # The account's deletion, not yet committed, while a pass starts to write.
            await deleter.execute(sa.delete(gmb_accounts).where(gmb_accounts.c.id == account_id))
            write = asyncio.create_task(
                store.locations_write(account_id, [_location()], sync_pass.seen_at)
            )
            await asyncio.sleep(0.3)
            assert not write.done()  # the write waits for the deletion to commit or roll back
            await deleter.commit()

        with pytest.raises(AccountGone):
            await asyncio.wait_for(write, 10)
        async with engine.connect() as conn:
            count = sa.select(sa.func.count()).select_from(gmb_locations)
            assert (await conn.execute(count)).scalar() == 0
    finally:
        await engine.dispose()


async def test_a_pass_stamps_its_writes_with_the_database_clock(store: SyncStore):
    account_id = await _account(store)
    before = datetime.now(UTC) - timedelta(seconds=5)

    sync_pass = await store.pass_begin(account_id, SyncType.FULL, timedelta(hours=1))
    _, status = await sync_write(store, account_id, sync_pass.seen_at, [_review("a", "x")])

    assert sync_pass.seen_at.tzinfo is not None and sync_pass.seen_at >= before
    assert status.last_sync_at is not None and status.last_sync_at >= sync_pass.seen_at
    assert (status.locations_count, status.reviews_count) == (1, 1)
