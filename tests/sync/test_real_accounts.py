"""Real accounts are messy: what a sync of one must get right, against the emulator.

Each test names a way a real Google account broke the sync: a location whose reviews Google
refuses, a review list that changes while it is paged, a grant replaced mid-sync, quota that
runs out, a project whose API is disabled, an account too big for one deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta

import grpc
import pytest

from clients import Credentials, SyncClient
from gmbsync.sync.v1 import sync_service_pb2 as pb
from service_runtime.errors import ErrorInfo, error_info, retry_delay
from tests.conftest import TEST_TRIGGER_SECRET, WORKER_METADATA
from tests.sync.conftest import OWNER, Harness, MakeHarness

FULL, INCREMENTAL = pb.SYNC_TYPE_FULL, pb.SYNC_TYPE_INCREMENTAL


def _error_info(error: grpc.aio.AioRpcError) -> ErrorInfo:
    info = error_info(error)
    assert info is not None, "no ErrorInfo in the status"
    return info


def _newest_first(harness: Harness, location: str) -> list:
    """A location's reviews in the order reviews.list pages them."""
    return sorted(
        harness.state.location("1", location).reviews.values(),
        key=lambda r: (r.update_time, r.review_id),
        reverse=True,
    )


async def _sync_status(harness: Harness, account_id: str) -> pb.GetSyncStatusResponse:
    return await harness.stub.GetSyncStatus(
        pb.GetSyncStatusRequest(account_id=account_id), metadata=WORKER_METADATA
    )


# --- Locations whose reviews Google refuses ------------------------------------------------


async def test_a_location_whose_reviews_answer_404_is_skipped_and_the_rest_syncs(
    harness: Harness,
):
    account = await harness.connect(1)
    await harness.sync(account.id)
    broken, healthy, _ = harness.location_ids(1)
    harness.state.inject("not_found", endpoint="reviews", match=f"locations/{broken}/")
    added = harness.state.add_review("1", healthy, comment="new at a healthy location")

    result = await harness.sync(account.id)
    again = await harness.sync(account.id)

    assert result.locations_skipped == 1 and again.locations_skipped == 1
    [skipped] = result.skipped_locations
    assert skipped.location_id == f"locations/{broken}"
    assert skipped.review_state == pb.REVIEW_STATE_FAILED and "HTTP 404" in skipped.reason
    assert result.reviews_added == 1 and result.reviews_removed == 0
    assert added["reviewId"] in {r.review_id for r in await harness.reviews(account.id)}
    status = await _sync_status(harness, account.id)
    assert status.status.locations_skipped == 1 and status.status.consecutive_failures == 0
    states = {loc.location_id: loc for loc in status.locations}
    assert states[f"locations/{broken}"].review_state == pb.REVIEW_STATE_FAILED
    assert "404" in states[f"locations/{broken}"].review_state_reason
    # What was stored of the refused location is kept, not deleted.
    assert states[f"locations/{broken}"].reviews_stored == 20
    assert states[f"locations/{healthy}"].review_state == pb.REVIEW_STATE_SYNCED


async def test_locations_that_cannot_have_reviews_are_not_asked_for_them(
    make_harness: MakeHarness,
):
    harness = await make_harness(accounts=1, messy=True)
    account = await harness.connect(1)
    kinds = {
        loc.location_id: loc.kind.value for loc in harness.state.account("1").locations.values()
    }

    result = await harness.sync(account.id)

    ineligible = {
        f"locations/{loc_id}"
        for loc_id, kind in kinds.items()
        if kind in ("unverified", "suspended", "duplicate")
    }
    assert {s.location_id for s in result.skipped_locations} == ineligible
    assert {s.review_state for s in result.skipped_locations} == {pb.REVIEW_STATE_INELIGIBLE}
    asked = {path for _, path, _ in harness.review_calls()}
    assert not any(location in path for path in asked for location in ineligible)
    # A permanently closed location keeps its reviews.
    closed = next(loc_id for loc_id, kind in kinds.items() if kind == "closed")
    assert any(f"locations/{closed}/" in path for path in asked)
    status = await _sync_status(harness, account.id)
    assert status.status.locations_skipped == len(ineligible)


async def test_rating_and_review_count_of_each_location_are_kept(harness: Harness):
    account = await harness.connect(1)

    await harness.sync(account.id)

    status = await _sync_status(harness, account.id)
    assert len(status.locations) == 3
    for location in status.locations:
        reviews = harness.state.location("1", location.location_id).reviews.values()
        stars = [("ONE", "TWO", "THREE", "FOUR", "FIVE").index(r.star_rating) + 1 for r in reviews]
        assert location.total_review_count == 20 == location.reviews_stored
        assert location.average_rating == pytest.approx(round(sum(stars) / len(stars), 1))
        assert location.HasField("reviews_read_at")


# --- A review list that changes while it is paged --------------------------------------------


async def test_a_review_edited_while_the_list_is_paged_is_not_marked_deleted(
    make_harness: MakeHarness,
):
    harness = await make_harness(accounts=1, locations_per_account=1, reviews_per_location=140)
    account = await harness.connect(1)
    await harness.sync(account.id)
    [location] = harness.location_ids(1)
    ordered = _newest_first(harness, location)
    moved = ordered[120].review_id
    harness.state.after_page(
        f"locations/{location}/",
        1,
        lambda: harness.state.edit_review("1", location, moved, comment="edited mid-listing"),
    )

    result = await harness.sync(account.id)
    again = await harness.sync(account.id)

    assert (result.reviews_removed, result.reviews_updated) == (0, 1)
    assert (again.reviews_added, again.reviews_removed) == (0, 0)
    rows = {r.review_id: r for r in await harness.reviews(account.id)}
    assert len(rows) == 140 and rows[moved].comment == "edited mid-listing"


async def test_a_review_deleted_while_the_list_is_paged_defers_deletions_not_loses_reviews(
    make_harness: MakeHarness,
):
    harness = await make_harness(accounts=1, locations_per_account=1, reviews_per_location=140)
    account = await harness.connect(1)
    await harness.sync(account.id)
    [location] = harness.location_ids(1)
    ordered = _newest_first(harness, location)
    # Deleting a review of page 1 shifts page 2's first review onto page 1, already read.
    deleted, shifted = ordered[10].review_id, ordered[50].review_id
    harness.state.after_page(
        f"locations/{location}/", 1, lambda: harness.state.delete_review("1", location, deleted)
    )

    result = await harness.sync(account.id)

    assert result.reviews_removed == 0 and result.locations_deletions_deferred == 1
    live = {r.review_id for r in await harness.reviews(account.id)}
    assert shifted in live
    # The next full sync, on a list that holds still, removes exactly the deleted review.
    settled = await harness.sync(account.id)
    assert settled.reviews_removed == 1 and settled.locations_deletions_deferred == 0
    live = {r.review_id for r in await harness.reviews(account.id)}
    assert deleted not in live and shifted in live and len(live) == 139


# --- Grants ----------------------------------------------------------------------------------


async def test_reconnecting_during_a_sync_is_not_undone_by_the_old_grants_failure(
    harness: Harness,
):
    account = await harness.connect(1)
    harness.state.revoke_refresh_token("emulator-refresh-token-1")
    new_grant = harness.state.add_grant(["accounts/1"])
    harness.state.inject("latency", endpoint="token", latency=1.0, count=1)

    token_requests = harness.state.stats.requests["token"]
    sync = asyncio.create_task(harness.sync_error(account.id))
    # The sync's token request, with the old grant, has reached the emulator (counted as it
    # arrives, before its latency): only now is the account reconnected.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while harness.state.stats.requests["token"] == token_requests:
        assert loop.time() < deadline, "the sync never asked for a token"
        await asyncio.sleep(0.01)
    await harness.connect(1, refresh_token=new_grant)
    error = await sync

    assert (
        error.code() == grpc.StatusCode.FAILED_PRECONDITION and "invalid_grant" in error.details()
    )
    listed = await harness.stub.ListAccounts(
        pb.ListAccountsRequest(user_id=str(OWNER), include_inactive=True), metadata=WORKER_METADATA
    )
    assert [a.is_active for a in listed.accounts] == [True]
    result = await harness.sync(account.id)
    assert result.reviews_added == 60


async def test_a_grant_without_the_scope_deactivates_the_account(harness: Harness):
    account = await harness.connect(1)
    harness.state.inject("scope_insufficient", endpoint="locations", count=1)

    error = await harness.sync_error(account.id)

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "reconnect" in error.details()
    listed = await harness.stub.ListAccounts(
        pb.ListAccountsRequest(user_id=str(OWNER), include_inactive=True), metadata=WORKER_METADATA
    )
    assert [a.is_active for a in listed.accounts] == [False]


async def test_concurrent_syncs_of_one_account_refresh_its_token_once(harness: Harness):
    account = await harness.connect(1)
    refreshes = harness.state.stats.token_refreshes

    await asyncio.gather(*(harness.sync(account.id) for _ in range(3)))

    assert harness.state.stats.token_refreshes - refreshes == 1


async def test_discovering_a_grants_accounts_connects_each_account_type_asked_for(
    harness: Harness,
):
    for kind in ("LOCATION_GROUP", "ORGANIZATION", "USER_GROUP"):
        harness.state.add_account(type=kind, locations=1, reviews_per_location=2)
    grant = harness.state.add_grant([f"accounts/{n}" for n in (1, 3, 4, 5)])

    response = await harness.stub.DiscoverAccounts(
        pb.DiscoverAccountsRequest(user_id=str(OWNER), refresh_token=grant),
        metadata=WORKER_METADATA,
    )

    assert [(a.account.google_account_id, a.type) for a in response.accounts] == [
        ("accounts/1", "PERSONAL"),
        ("accounts/3", "LOCATION_GROUP"),
        ("accounts/4", "ORGANIZATION"),
    ]
    assert response.skipped == 1
    group = response.accounts[1].account
    assert (await harness.sync(group.id)).reviews_added == 2


async def test_discover_accounts_rejects_bad_input_naming_the_field(harness: Harness):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stub.DiscoverAccounts(
            pb.DiscoverAccountsRequest(user_id="x", refresh_token="", account_types=["TEAM"]),
            metadata=WORKER_METADATA,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for field in ("user_id", "refresh_token", "account_types"):
        assert field in caught.value.details()


# --- Quota and transient answers --------------------------------------------------------------


async def test_a_short_retry_after_is_waited_out_inside_the_sync(harness: Harness):
    account = await harness.connect(1)
    harness.state.inject("rate_limit", endpoint="reviews", count=1, retry_after=0.2)

    result = await harness.sync(account.id)

    assert result.reviews_added == 60


async def test_a_long_retry_after_answers_resource_exhausted_with_the_delay(harness: Harness):
    account = await harness.connect(1)
    harness.state.inject("rate_limit", endpoint="reviews", count=1, retry_after=45)

    error = await harness.sync_error(account.id)

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert retry_delay(error) == 45.0
    assert _error_info(error).reason == "GOOGLE_QUOTA"


async def test_a_disabled_api_holds_the_sync_without_blaming_the_account(harness: Harness):
    account = await harness.connect(1)
    harness.state.inject("service_disabled", endpoint="locations", count=1)

    error = await harness.sync_error(account.id)

    assert error.code() == grpc.StatusCode.UNAVAILABLE
    info = _error_info(error)
    assert info.reason == "GOOGLE_API_DISABLED" and "googleapis.com" in info.metadata["service"]
    assert info.metadata["activation_url"].startswith("https://")
    assert retry_delay(error) == 300.0
    [log] = await harness.error_logs(account.id)
    assert log.error_type == "api_disabled" and log.details["service"]
    assert (await harness.sync(account.id)).reviews_added == 60  # the account was not touched


@pytest.mark.parametrize("kind", ["truncated_body", "not_json"])
async def test_a_200_with_a_broken_body_is_retried(harness: Harness, kind: str):
    account = await harness.connect(1)
    harness.state.inject(kind, endpoint="reviews", count=1)

    result = await harness.sync(account.id)

    assert result.reviews_added == 60


async def test_an_expired_page_token_restarts_the_listing(make_harness: MakeHarness):
    harness = await make_harness(accounts=1, locations_per_account=1, reviews_per_location=120)
    account = await harness.connect(1)
    harness.state.inject("page_token_expired", endpoint="reviews", count=1)

    result = await harness.sync(account.id)

    assert result.reviews_added == 120


async def test_a_refused_batch_is_read_location_by_location_and_skips_only_the_refused_one(
    harness: Harness,
):
    account = await harness.connect(1)
    await harness.sync(account.id)
    broken, healthy, _ = harness.location_ids(1)
    harness.state.inject("not_found", endpoint="batch_reviews", count=1)
    harness.state.inject("not_found", endpoint="reviews", match=f"locations/{broken}/")
    added = harness.state.add_review("1", healthy)

    result = await harness.sync(account.id, INCREMENTAL)

    assert [s.location_id for s in result.skipped_locations] == [f"locations/{broken}"]
    assert result.reviews_added == 1
    assert added["reviewId"] in {r.review_id for r in await harness.reviews(account.id)}


# --- An account too large for one deadline ----------------------------------------------------


LOCATIONS = 90
# Google answers this many locations' reviews per attempt, then holds every further reviews call
# past the attempt's deadline: the account is too big for one deadline by construction, however
# fast or slow the machine is.
LOCATIONS_PER_ATTEMPT = 30
# The sync's own upper bound, from which it derives its deadline (less a reserve to answer in);
# the caller's deadline is longer, so the answer is the sync's, never a client timeout.
SYNC_DURATION = timedelta(seconds=10)


def _hold_reviews_after(harness: Harness, pages: int) -> None:
    """After the next `pages` reviews.list listings are answered, every reviews call waits far
    past the sync's deadline (the emulator drops it when the sync gives up on it)."""
    answered = 0

    def one_more_answered() -> None:
        nonlocal answered
        answered += 1
        if answered < pages:
            harness.state.after_page("/reviews", 1, one_more_answered)
        else:
            harness.state.inject("latency", endpoint="reviews", latency=3600.0)

    harness.state.clear_faults()
    harness.state.clear_hooks()
    harness.state.after_page("/reviews", 1, one_more_answered)


async def test_an_account_too_big_for_one_deadline_finishes_over_attempts_that_resume(
    make_harness: MakeHarness,
):
    harness = await make_harness(
        accounts=1,
        locations_per_account=LOCATIONS,
        reviews_per_location=1,
        settings=lambda s: dataclasses.replace(
            s, location_concurrency=8, max_sync_duration=SYNC_DURATION
        ),
    )
    account = await harness.connect(1)
    done_after_each_attempt: list[int] = []

    while True:
        assert len(done_after_each_attempt) < 30, done_after_each_attempt
        _hold_reviews_after(harness, LOCATIONS_PER_ATTEMPT)
        failure: grpc.aio.AioRpcError | None = None
        try:
            result = await harness.sync(account.id, timeout=6 * SYNC_DURATION.total_seconds())
        except grpc.aio.AioRpcError as error:
            failure = error
        if failure is None:
            break
        # Out of time with locations written: a "come back later" that the worker honours
        # without spending an attempt.
        assert (failure.code(), _error_info(failure).reason) == (
            grpc.StatusCode.ABORTED,
            "SYNC_INCOMPLETE",
        ), failure.details()
        assert retry_delay(failure) is not None
        details = await _sync_status(harness, account.id)
        synced = [loc for loc in details.locations if loc.review_state == pb.REVIEW_STATE_SYNCED]
        done_after_each_attempt.append(len(synced))

    attempts = done_after_each_attempt
    # It took several attempts, each resuming where the last stopped (so each wrote more), and
    # each location was read about once in all: a location Google answered but whose write the
    # deadline cut short is read again, at most one per concurrent task and attempt.
    assert len(attempts) >= 2 and result.resumed
    assert attempts == sorted(set(attempts)) and attempts[0] > 0
    assert len(await harness.reviews(account.id)) == LOCATIONS
    answered = [call for call in harness.review_calls() if call[2] == 200]
    assert LOCATIONS <= len(answered) <= LOCATIONS + 8 * len(attempts)
    status = await harness.status(account.id)
    assert (status.locations_count, status.reviews_count) == (LOCATIONS, LOCATIONS)


async def test_the_typed_client_discovers_accounts_and_reads_location_states(harness: Harness):
    harness.state.add_account(type="LOCATION_GROUP", locations=1, reviews_per_location=1)
    grant = harness.state.add_grant(["accounts/1", "accounts/3"])
    assert harness.app.server is not None
    async with SyncClient.connect(
        f"127.0.0.1:{harness.app.server.port}", Credentials.trigger_secret(TEST_TRIGGER_SECRET)
    ) as client:
        found = await client.discover_accounts(
            user_id=str(OWNER), refresh_token=grant, account_types=["LOCATION_GROUP"]
        )
        [group] = found.accounts
        await client.sync_account(group.account.id, "full")
        details = await client.get_sync_status_details(group.account.id)

    assert group.type == "LOCATION_GROUP" and found.skipped == 1
    assert details.status.locations_count == 1
    [location] = details.locations
    assert location.review_state == pb.REVIEW_STATE_SYNCED and location.total_review_count == 1


async def test_a_late_older_sync_does_not_bring_back_a_review_a_newer_sync_deleted(
    make_harness: MakeHarness,
):
    harness = await make_harness(accounts=1, locations_per_account=2, reviews_per_location=60)
    account = await harness.connect(1)
    await harness.sync(account.id)
    location = harness.location_ids(1)[0]
    doomed = next(iter(harness.state.location("1", location).reviews))
    first_page_served = asyncio.Event()

    def between_the_older_syncs_pages() -> None:
        # The older sync has seen the review on page 1; it is deleted now, and the older sync's
        # next page is held back until a newer sync has come and gone.
        harness.state.delete_review("1", location, doomed)
        harness.state.inject(
            "latency", endpoint="reviews", match=f"locations/{location}/", latency=2.0, count=1
        )
        first_page_served.set()

    harness.state.after_page(f"locations/{location}/", 1, between_the_older_syncs_pages)
    older = asyncio.create_task(harness.sync(account.id))
    await first_page_served.wait()
    newer = await harness.sync(account.id)
    late = await older

    assert newer.reviews_removed == 1
    assert late.reviews_added == 0 and late.reviews_removed == 0
    live = {r.review_id for r in await harness.reviews(account.id)}
    assert doomed not in live and len(live) == 119
    assert (await harness.status(account.id)).reviews_count == 119
