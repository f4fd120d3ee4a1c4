"""Full and incremental syncs against the emulator over real HTTP, stored in real PostgreSQL."""

from __future__ import annotations

import asyncio

from gmbsync.sync.v1 import sync_service_pb2 as pb
from sync_service.emulator.state import STARS
from tests.sync.conftest import Harness, MakeHarness

FULL, INCREMENTAL = pb.SYNC_TYPE_FULL, pb.SYNC_TYPE_INCREMENTAL


def _snapshot(rows: list) -> dict:
    """Rows by key, without the bookkeeping columns that a re-read legitimately moves."""
    moving = {"last_seen_at", "observed_at", "updated_at", "first_seen_at"}
    return {
        (r.location_id, r.review_id): {k: v for k, v in r._mapping.items() if k not in moving}
        for r in rows
    }


async def test_full_sync_stores_every_location_and_review_with_its_fields(harness: Harness):
    account = await harness.connect(1)

    result = await harness.sync(account.id)

    expected = harness.google_reviews(1)
    assert result.sync_type == FULL
    assert result.locations_synced == 3
    assert result.reviews_added == len(expected) == 60
    assert (result.reviews_updated, result.reviews_removed, result.locations_removed) == (0, 0, 0)
    # One token refresh, one locations page, one reviews page per location.
    assert result.api_calls == 1 + 1 + 3
    rows = await harness.reviews(account.id)
    assert {(r.location_id, r.review_id) for r in rows} == set(expected)
    for row in rows:
        google = expected[(row.location_id, row.review_id)]
        assert row.star_rating == STARS.index(google.star_rating) + 1
        assert row.comment == google.comment
        assert row.reviewer_anonymous == google.anonymous
        assert row.reviewer_name == google.reviewer_name
        assert row.reply_comment == google.reply_comment
        assert row.reply_update_time == (
            google.reply_update_time.replace(
                microsecond=google.reply_update_time.microsecond // 1000 * 1000
            )
            if google.reply_update_time
            else None
        )
        assert row.update_time == google.update_time.replace(
            microsecond=google.update_time.microsecond // 1000 * 1000
        )
        assert row.raw["reviewId"] == row.review_id
    locations = await harness.locations(account.id)
    assert sorted(r.location_id for r in locations) == sorted(
        f"locations/{i}" for i in harness.location_ids(1)
    )
    assert all(r.title and r.place_id and r.primary_phone for r in locations)
    status = await harness.status(account.id)
    assert status.last_sync_type == FULL
    assert (status.locations_count, status.reviews_count) == (3, 60)
    assert status.consecutive_failures == 0 and status.last_error == ""
    newest = max(r.update_time for r in harness.google_reviews(1).values())
    assert abs(status.reviews_watermark.ToDatetime().timestamp() - newest.timestamp()) < 0.001


async def test_running_the_same_full_sync_twice_leaves_the_same_rows(harness: Harness):
    account = await harness.connect(1)
    await harness.sync(account.id)
    before = _snapshot(await harness.reviews(account.id, deleted=None))

    again = await harness.sync(account.id)

    assert (again.reviews_added, again.reviews_updated, again.reviews_removed) == (0, 0, 0)
    assert again.locations_removed == 0
    assert _snapshot(await harness.reviews(account.id, deleted=None)) == before
    assert len(await harness.locations(account.id, deleted=None)) == 3


async def test_incremental_sync_picks_up_new_and_edited_reviews_and_stops_at_the_watermark(
    make_harness: MakeHarness,
):
    harness = await make_harness(accounts=1, locations_per_account=2, reviews_per_location=120)
    account = await harness.connect(1)
    await harness.sync(account.id)
    first, second = harness.location_ids(1)
    added = harness.state.add_review("1", first, star_rating="TWO", comment="Cold coffee")
    edited_id = next(iter(harness.state.location("1", second).reviews))
    harness.state.edit_review("1", second, edited_id, comment="Better now", star_rating="FIVE")
    calls_before = len(harness.review_calls())

    result = await harness.sync(account.id, INCREMENTAL)

    assert (result.reviews_added, result.reviews_updated, result.reviews_removed) == (1, 1, 0)
    # 120 reviews are three pages each; one batchGetReviews page over both locations reaches
    # the watermark, where reading each location alone would cost a call each.
    assert len(harness.review_calls()) - calls_before == 0
    assert harness.state.stats.requests["batch_reviews"] == 1
    rows = {r.review_id: r for r in await harness.reviews(account.id)}
    assert rows[added["reviewId"]].comment == "Cold coffee"
    assert rows[added["reviewId"]].star_rating == 2
    assert rows[edited_id].comment == "Better now" and rows[edited_id].star_rating == 5
    status = await harness.status(account.id)
    assert status.last_sync_type == INCREMENTAL and status.reviews_count == 241


async def test_incremental_sync_deletes_nothing_and_full_sync_soft_deletes_what_is_gone(
    harness: Harness,
):
    account = await harness.connect(1)
    await harness.sync(account.id)
    kept, dropped, *_ = harness.location_ids(1)
    gone_review = next(iter(harness.state.location("1", kept).reviews))
    harness.state.delete_review("1", kept, gone_review)
    harness.state.delete_location("1", dropped)

    incremental = await harness.sync(account.id, INCREMENTAL)
    assert (incremental.reviews_removed, incremental.locations_removed) == (0, 0)
    assert len(await harness.reviews(account.id)) == 60

    full = await harness.sync(account.id)

    assert full.locations_removed == 1
    # The dropped location's 20 reviews and the one deleted review.
    assert full.reviews_removed == 21
    deleted = await harness.reviews(account.id, deleted=True)
    assert {r.review_id for r in deleted if r.location_id == f"locations/{kept}"} == {gone_review}
    assert [r.location_id for r in await harness.locations(account.id, deleted=True)] == [
        f"locations/{dropped}"
    ]
    status = await harness.status(account.id)
    assert (status.locations_count, status.reviews_count) == (2, 39)


async def test_a_review_that_comes_back_is_restored_and_counted_as_added(harness: Harness):
    account = await harness.connect(1)
    await harness.sync(account.id)
    location = harness.location_ids(1)[0]
    review_id = next(iter(harness.state.location("1", location).reviews))
    review = harness.state.location("1", location).reviews.pop(review_id)
    await harness.sync(account.id)
    harness.state.location("1", location).reviews[review_id] = review

    result = await harness.sync(account.id)

    assert (result.reviews_added, result.reviews_removed) == (1, 0)
    assert review_id in {r.review_id for r in await harness.reviews(account.id)}


async def test_an_owner_reply_is_picked_up_by_a_full_sync(harness: Harness):
    account = await harness.connect(1)
    await harness.sync(account.id)
    location = harness.location_ids(1)[1]
    review_id = next(iter(harness.state.location("1", location).reviews))
    harness.state.edit_review("1", location, review_id, reply_comment="Thanks, see you soon")

    result = await harness.sync(account.id)

    assert (result.reviews_added, result.reviews_updated) == (0, 1)
    row = next(r for r in await harness.reviews(account.id) if r.review_id == review_id)
    assert row.reply_comment == "Thanks, see you soon" and row.reply_update_time is not None


async def test_incremental_sync_reads_a_location_it_never_saw_whole(make_harness: MakeHarness):
    harness = await make_harness(accounts=1, locations_per_account=1, reviews_per_location=5)
    account = await harness.connect(1)
    await harness.sync(account.id)
    # Seeded reviews are older than the watermark minus the overlap; a new location's must
    # still all be read.
    harness.state.location("1", harness.location_ids(1)[0]).reviews.clear()
    harness.state._add_seeded_location(harness.state.account("1"), 70)

    result = await harness.sync(account.id, INCREMENTAL)

    assert result.locations_synced == 2
    assert result.reviews_added == 70
    assert result.reviews_removed == 0


async def test_overlapping_syncs_of_one_account_leave_exactly_googles_rows(harness: Harness):
    account = await harness.connect(1)
    await harness.sync(account.id)
    location = harness.location_ids(1)[0]
    harness.state.add_review("1", location, comment="new one")

    results = await asyncio.gather(
        harness.sync(account.id), harness.sync(account.id), harness.sync(account.id, INCREMENTAL)
    )

    assert sum(r.reviews_added for r in results) == 1
    rows = await harness.reviews(account.id, deleted=None)
    assert len(rows) == len({(r.location_id, r.review_id) for r in rows}) == 61
    assert {(r.location_id, r.review_id) for r in rows if r.deleted_at is None} == set(
        harness.google_reviews(1)
    )
    assert (await harness.status(account.id)).reviews_count == 61


async def test_two_accounts_of_one_user_keep_their_own_rows(harness: Harness):
    first = await harness.connect(1)
    second = await harness.connect(2)

    await asyncio.gather(harness.sync(first.id), harness.sync(second.id))

    assert {(r.location_id, r.review_id) for r in await harness.reviews(first.id)} == set(
        harness.google_reviews(1)
    )
    assert {(r.location_id, r.review_id) for r in await harness.reviews(second.id)} == set(
        harness.google_reviews(2)
    )


async def test_an_empty_account_syncs_with_zero_counts(make_harness: MakeHarness):
    harness = await make_harness(accounts=1, locations_per_account=0)
    account = await harness.connect(1)

    result = await harness.sync(account.id)

    assert result.locations_synced == 0 and result.reviews_added == 0
    assert result.api_calls == 2  # token, one empty locations page
    status = await harness.status(account.id)
    assert status.last_sync_type == FULL and status.reviews_count == 0
    assert not status.HasField("reviews_watermark")


async def test_exactly_one_page_of_locations_and_of_reviews_needs_no_second_call(
    make_harness: MakeHarness,
):
    harness = await make_harness(accounts=1, locations_per_account=100, reviews_per_location=0)
    account = await harness.connect(1)
    location = harness.location_ids(1)[0]
    for _ in range(50):
        harness.state.add_review("1", location)

    result = await harness.sync(account.id)

    assert result.locations_synced == 100 and result.reviews_added == 50
    # token + 1 locations page + 1 reviews page for each of the 100 locations
    assert result.api_calls == 1 + 1 + 100
    assert harness.state.stats.requests["locations"] == 1


async def test_many_pages_are_followed_to_the_end(make_harness: MakeHarness):
    harness = await make_harness(accounts=1, locations_per_account=101, reviews_per_location=1)
    account = await harness.connect(1)
    location = harness.location_ids(1)[0]
    for _ in range(100):
        harness.state.add_review("1", location)

    result = await harness.sync(account.id)

    assert result.locations_synced == 101
    assert result.reviews_added == 101 + 100
    # token + 2 locations pages + 3 review pages (101 reviews) + 100 single pages
    assert result.api_calls == 1 + 2 + 3 + 100
    assert len(await harness.reviews(account.id)) == 201
