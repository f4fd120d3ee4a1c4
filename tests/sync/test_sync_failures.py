"""Tokens, every fault class and its gRPC status, deadlines and the shared rate limit."""

from __future__ import annotations

import asyncio
import socket
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import sqlalchemy as sa

from gmbsync.sync.v1 import sync_service_pb2 as pb
from service_runtime.errors import retry_delay
from sync_service.crypto import TokenCipher
from sync_service.quota import GoogleApiName
from sync_service.tables import gmb_accounts
from tests.sync.conftest import TEST_TOKEN_KEY, Harness, MakeHarness

FULL, INCREMENTAL = pb.SYNC_TYPE_FULL, pb.SYNC_TYPE_INCREMENTAL
cipher = TokenCipher([TEST_TOKEN_KEY])


# --- OAuth tokens -----------------------------------------------------------------------------


async def test_a_missing_access_token_is_refreshed_and_stored_encrypted(harness: Harness):
    account = await harness.connect(1)

    await harness.sync(account.id)

    assert harness.state.stats.token_refreshes == 1
    tokens = await harness.tokens(account.id)
    access = cipher.decrypt(tokens.access_token_encrypted)
    assert access.startswith("emu-at-") and access not in tokens.access_token_encrypted
    assert cipher.decrypt(tokens.refresh_token_encrypted) == "emulator-refresh-token-1"
    assert tokens.access_token_expires_at > datetime.now(UTC) + timedelta(minutes=50)


async def test_a_valid_stored_access_token_is_used_without_a_refresh(harness: Harness):
    token = harness.state.issue_access_token("emulator-refresh-token-1", "test-client", "")
    harness.state.stats.token_refreshes = 0
    account = await harness.connect(
        1, access_token=token, access_token_expires_at=datetime.now(UTC) + timedelta(hours=1)
    )

    result = await harness.sync(account.id)

    assert harness.state.stats.token_refreshes == 0
    assert result.api_calls == 1 + 3  # no token call


async def test_an_access_token_about_to_expire_is_refreshed_first(harness: Harness):
    token = harness.state.issue_access_token("emulator-refresh-token-1", "test-client", "")
    harness.state.stats.token_refreshes = 0
    account = await harness.connect(
        1, access_token=token, access_token_expires_at=datetime.now(UTC) + timedelta(seconds=20)
    )

    await harness.sync(account.id)

    assert harness.state.stats.token_refreshes == 1
    assert cipher.decrypt((await harness.tokens(account.id)).access_token_encrypted) != token


async def test_a_refreshed_token_is_kept_even_when_the_sync_then_fails(harness: Harness):
    account = await harness.connect(1)
    harness.state.inject("permission_denied", count=1, endpoint="locations")

    error = await harness.sync_error(account.id)

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    tokens = await harness.tokens(account.id)
    assert cipher.decrypt(tokens.access_token_encrypted).startswith("emu-at-")


async def test_a_401_refreshes_the_token_once_and_retries_once(harness: Harness):
    account = await harness.connect(1)
    await harness.sync(account.id)
    harness.state.inject("expired_token", count=1, endpoint="reviews")

    result = await harness.sync(account.id)

    assert harness.state.stats.token_refreshes == 2
    # locations + 3 reviews pages + the rejected call + the refresh
    assert result.api_calls == 1 + 3 + 1 + 1
    assert result.reviews_added == 0 and result.reviews_removed == 0


async def test_a_second_401_after_a_refresh_is_a_permanent_failure(harness: Harness):
    account = await harness.connect(1)
    harness.state.inject("expired_token", count=2, endpoint="locations")

    error = await harness.sync_error(account.id)

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "reconnect" in error.details()
    assert harness.state.stats.token_refreshes == 2


async def test_a_revoked_grant_fails_permanently_and_deactivates_the_account(harness: Harness):
    account = await harness.connect(1)
    await harness.sync(account.id)
    harness.state.revoke_refresh_token("emulator-refresh-token-1")

    error = await harness.sync_error(account.id)

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "invalid_grant" in error.details() and "reconnect" in error.details()
    status = await harness.status(account.id)
    assert status.consecutive_failures == 1 and "invalid_grant" in status.last_error
    [log] = await harness.error_logs(account.id)
    assert log.error_type == "invalid_grant" and log.details["account_deactivated"] is True
    assert "emulator-refresh-token" not in log.message + str(log.details)
    # Synced data is kept; the account waits for its owner to reconnect it.
    assert len(await harness.reviews(account.id)) == 60
    again = await harness.sync_error(account.id)
    assert again.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "deactivated" in again.details()
    reconnected = await harness.connect(1)
    assert reconnected.id == account.id and reconnected.is_active


async def test_a_rejected_oauth_client_names_the_settings_to_fix(harness: Harness):
    harness.state.require_client("another-client", "another-secret")
    account = await harness.connect(1)

    error = await harness.sync_error(account.id)

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "GOOGLE_OAUTH_CLIENT_ID" in error.details()


# --- Fault classes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "code", "error_type", "delay", "words"),
    [
        (
            {"kind": "rate_limit", "retry_after": 7},
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "quota_exceeded",
            7.0,
            "rate limit",
        ),
        (
            {"kind": "rate_limit"},
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "quota_exceeded",
            30.0,
            "rate limit",
        ),
        (
            {"kind": "quota_zero"},
            grpc.StatusCode.FAILED_PRECONDITION,
            "api_access_not_approved",
            None,
            "API access not approved",
        ),
        (
            {"kind": "permission_denied", "endpoint": "locations"},
            grpc.StatusCode.FAILED_PRECONDITION,
            "access_denied",
            None,
            "denied access",
        ),
        (
            {"kind": "not_found", "endpoint": "locations"},
            grpc.StatusCode.NOT_FOUND,
            "resource_not_found",
            None,
            "was removed",
        ),
        (
            {"kind": "unavailable", "count": None},
            grpc.StatusCode.UNAVAILABLE,
            "google_unavailable",
            1.0,
            "HTTP 503",
        ),
        (
            {"kind": "internal", "count": None},
            grpc.StatusCode.UNAVAILABLE,
            "google_unavailable",
            1.0,
            "HTTP 500",
        ),
    ],
    ids=["429-retry-after", "429", "429-quota-0", "403", "404", "503", "500"],
)
async def test_each_google_failure_maps_to_its_grpc_status_and_is_recorded(
    harness: Harness, fault, code, error_type, delay, words
):
    account = await harness.connect(1)
    await harness.sync(account.id)
    options = {"count": 1, "endpoint": "reviews", **fault}
    harness.state.inject(options.pop("kind"), **options)

    error = await harness.sync_error(account.id)

    assert error.code() == code
    assert words in error.details()
    assert retry_delay(error) == delay
    status = await harness.status(account.id)
    assert status.consecutive_failures == 1 and status.last_error == error.details()
    assert status.last_sync_type == FULL  # the last success is still on record
    [log] = await harness.error_logs(account.id)
    assert log.error_type == error_type and log.source == "sync_service"
    assert log.details["sync_type"] == "full"
    # Nothing of the failed sync was written.
    assert len(await harness.reviews(account.id)) == 60


async def test_a_transient_503_is_retried_within_the_call(harness: Harness):
    account = await harness.connect(1)
    harness.state.inject("unavailable", count=2, endpoint="reviews")

    result = await harness.sync(account.id)

    assert result.reviews_added == 60
    assert result.api_calls == 1 + 1 + 3 + 2


async def test_an_unreachable_google_is_unavailable(make_harness: MakeHarness):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    harness = await make_harness(
        google={"max_retries": 1}, api_root=f"http://127.0.0.1:{closed_port}"
    )
    account = await harness.connect(1)

    error = await harness.sync_error(account.id)

    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert retry_delay(error) == 1.0
    [log] = await harness.error_logs(account.id)
    assert log.error_type == "google_unavailable"


async def test_failures_count_up_and_a_success_resets_them(harness: Harness):
    account = await harness.connect(1)
    harness.state.inject("unavailable", count=6, endpoint="locations")

    for _ in range(2):
        await harness.sync_error(account.id)
    assert (await harness.status(account.id)).consecutive_failures == 2

    await harness.sync(account.id)

    status = await harness.status(account.id)
    assert status.consecutive_failures == 0 and status.last_error == ""
    assert status.HasField("last_error_at")  # when it last failed stays known
    assert len(await harness.error_logs(account.id)) == 2


# --- Deadlines ----------------------------------------------------------------------------------


async def test_a_deadline_that_expires_before_any_location_is_done_writes_no_review(
    harness: Harness,
):
    account = await harness.connect(1)
    # Locations answer at once; reviews pages take 10 s each, far beyond the 3 s deadline.
    harness.state.inject("latency", endpoint="reviews", latency=10.0)

    error = await harness.sync_error(account.id, timeout=3.0)

    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await harness.reviews(account.id, deleted=None) == []
    # The listed locations are stored, none of them with reviews read.
    locations = await harness.locations(account.id)
    assert len(locations) == 3 and {r.review_state for r in locations} == {"pending"}
    harness.state.clear_faults()
    # The sync stopped before the deadline with time to spare: its failure is on record.
    [log] = await harness.error_logs(account.id)
    assert log.error_type == "sync_deadline_exceeded"
    assert "before a location was finished" in log.message
    result = await harness.sync(account.id)
    assert result.reviews_added == 60


# --- Rate limiting ---------------------------------------------------------------------------------


async def test_concurrent_syncs_stay_under_the_projects_quota(make_harness: MakeHarness):
    harness = await make_harness(
        accounts=3,
        locations_per_account=3,
        reviews_per_location=60,
        quota_per_minute=10,
        quota_window=1.0,
        google={"quota_per_window": 10, "quota_window": timedelta(seconds=1)},
    )
    accounts = [await harness.connect(n) for n in (1, 2, 3)]

    results = await asyncio.gather(*(harness.sync(a.id) for a in accounts))

    # Each sync: 1 locations page + 3 locations x 2 review pages, 21 API calls in all: more
    # than two windows' worth, so the limiter had to hold some back.
    assert [r.reviews_added for r in results] == [180, 180, 180]
    stats = harness.state.stats
    assert stats.requests["locations"] + stats.requests["reviews"] == 21
    assert stats.quota_rejections == 0
    assert max(stats.peak_window_requests.values()) <= 10
    assert harness.app.google is not None
    assert harness.app.google.quota.stats()[GoogleApiName.REVIEWS].waits > 0


async def test_without_the_client_limit_the_emulator_rejects_the_excess(
    make_harness: MakeHarness,
):
    harness = await make_harness(
        accounts=3,
        locations_per_account=3,
        reviews_per_location=60,
        quota_per_minute=10,
        quota_window=60.0,
        google={"quota_per_window": 1000},
    )
    accounts = [await harness.connect(n) for n in (1, 2, 3)]

    results = await asyncio.gather(*(harness.sync(a.id) for a in accounts), return_exceptions=True)

    failures = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert failures and all(f.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for f in failures)
    assert harness.state.stats.quota_rejections >= 1


# --- Accounts the sync cannot run for ----------------------------------------------------------------


async def test_an_unknown_account_is_not_found_and_nothing_is_logged(harness: Harness):
    missing = str(uuid.uuid4())

    error = await harness.sync_error(missing)

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert missing in error.details()


async def test_an_inactive_account_is_a_failed_precondition(harness: Harness):
    account = await harness.connect(1)
    async with harness.engine.begin() as conn:
        await conn.execute(
            sa.update(gmb_accounts)
            .where(gmb_accounts.c.id == uuid.UUID(account.id))
            .values(is_active=False)
        )

    error = await harness.sync_error(account.id, sync_type=INCREMENTAL)

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "ConnectAccount" in error.details()
    assert harness.state.stats.requests["token"] == 0
