"""ConnectAccount, ListAccounts, GetSyncStatus and SyncAccount input: auth, ownership, and bad
input rejected with a status that names the field, with nothing written."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import sqlalchemy as sa

from gmbsync.sync.v1 import sync_service_pb2 as pb
from service_runtime.auth import Role
from service_runtime.errors import field_violations
from sync_service.crypto import TokenCipher
from sync_service.tables import gmb_accounts, oauth_tokens
from tests.conftest import ADMIN_USER, WORKER_METADATA, bearer
from tests.sync.conftest import OWNER, TEST_TOKEN_KEY, Harness

OTHER_USER = uuid.UUID("00000000-0000-4000-8000-0000000000b2")


def _connect_request(**overrides) -> pb.ConnectAccountRequest:
    fields = {
        "user_id": str(OWNER),
        "account_name": "Acme Coffee",
        "google_account_id": "accounts/1",
        "refresh_token": "emulator-refresh-token-1",
    }
    fields.update(overrides)
    return pb.ConnectAccountRequest(**fields)


async def _count(harness: Harness, table: sa.Table) -> int:
    async with harness.engine.connect() as conn:
        return (await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one()


# --- ConnectAccount ---------------------------------------------------------------------------


async def test_connect_account_stores_it_with_encrypted_tokens_and_returns_none(harness: Harness):
    expires = datetime.now(UTC) + timedelta(minutes=30)
    request = _connect_request(access_token="ya29.secret-access")
    request.access_token_expires_at.FromDatetime(expires)

    response = await harness.stub.ConnectAccount(request, metadata=WORKER_METADATA)

    account = response.account
    assert not response.updated
    uuid.UUID(account.id)
    assert (account.user_id, account.account_name, account.google_account_id) == (
        str(OWNER),
        "Acme Coffee",
        "accounts/1",
    )
    assert account.is_active and account.HasField("created_at")
    assert "token" not in str(response).lower()
    tokens = await harness.tokens(account.id)
    for column, plain in (
        (tokens.refresh_token_encrypted, "emulator-refresh-token-1"),
        (tokens.access_token_encrypted, "ya29.secret-access"),
    ):
        assert plain not in column
        assert TokenCipher([TEST_TOKEN_KEY]).decrypt(column) == plain
    assert abs((tokens.access_token_expires_at - expires).total_seconds()) < 0.001


async def test_connecting_the_same_account_again_replaces_its_tokens(harness: Harness):
    first = await harness.stub.ConnectAccount(_connect_request(), metadata=WORKER_METADATA)

    second = await harness.stub.ConnectAccount(
        _connect_request(account_name="Renamed", refresh_token="a-new-refresh-token"),
        metadata=bearer(ADMIN_USER, Role.ADMIN),
    )

    assert second.updated and second.account.id == first.account.id
    assert second.account.account_name == "Renamed"
    tokens = await harness.tokens(first.account.id)
    assert TokenCipher([TEST_TOKEN_KEY]).decrypt(tokens.refresh_token_encrypted) == (
        "a-new-refresh-token"
    )
    assert await _count(harness, gmb_accounts) == 1


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"user_id": ""}, "user_id"),
        ({"user_id": "not-a-uuid"}, "user_id"),
        ({"account_name": "   "}, "account_name"),
        ({"account_name": "x" * 201}, "account_name"),
        ({"google_account_id": "123"}, "google_account_id"),
        ({"google_account_id": "accounts/12a"}, "google_account_id"),
        ({"google_account_id": "accounts/1/locations/2"}, "google_account_id"),
        ({"refresh_token": ""}, "refresh_token"),
        ({"refresh_token": "t" * 2049}, "refresh_token"),
        ({"refresh_token": "has space"}, "refresh_token"),
        # Too long, and then its expiry is missing too: both are named.
        ({"access_token": "a" * 4097}, ("access_token", "access_token_expires_at")),
        ({"access_token": "ya29.no-expiry"}, "access_token_expires_at"),
    ],
)
async def test_connect_account_rejects_a_bad_field_by_name_and_writes_nothing(
    harness: Harness, overrides, field
):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stub.ConnectAccount(_connect_request(**overrides), metadata=WORKER_METADATA)

    expected = list(field) if isinstance(field, tuple) else [field]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(caught.value)] == expected
    assert expected[0] in caught.value.details()
    assert await _count(harness, gmb_accounts) == 0
    assert await _count(harness, oauth_tokens) == 0


async def test_connect_account_names_every_bad_field_at_once(harness: Harness):
    request = _connect_request(user_id="x", google_account_id="nope", refresh_token="")
    request.access_token_expires_at.FromDatetime(datetime.now(UTC))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stub.ConnectAccount(request, metadata=WORKER_METADATA)

    assert {v.field for v in field_violations(caught.value)} == {
        "user_id",
        "google_account_id",
        "refresh_token",
        "access_token_expires_at",
    }


async def test_connect_account_is_for_operators_only(harness: Harness):
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await harness.stub.ConnectAccount(_connect_request(), metadata=bearer(OWNER))
    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await harness.stub.ConnectAccount(_connect_request())

    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await _count(harness, gmb_accounts) == 0


# --- ListAccounts -------------------------------------------------------------------------------


async def test_a_user_lists_only_their_own_accounts_page_by_page(harness: Harness):
    mine = [await harness.connect(n) for n in (1, 2, 3)]
    await harness.connect(4, user_id=OTHER_USER)

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await harness.stub.ListAccounts(
            pb.ListAccountsRequest(page_size=2, page_token=token), metadata=bearer(OWNER)
        )
        seen += [a.id for a in page.accounts]
        pages += 1
        token = page.next_page_token
        if not token:
            break

    assert seen == [a.id for a in mine]
    assert pages == 2


async def test_list_accounts_hides_inactive_accounts_unless_asked(harness: Harness):
    active = await harness.connect(1)
    inactive = await harness.connect(2)
    async with harness.engine.begin() as conn:
        await conn.execute(
            sa.update(gmb_accounts)
            .where(gmb_accounts.c.id == uuid.UUID(inactive.id))
            .values(is_active=False)
        )

    default = await harness.stub.ListAccounts(pb.ListAccountsRequest(), metadata=bearer(OWNER))
    everything = await harness.stub.ListAccounts(
        pb.ListAccountsRequest(include_inactive=True), metadata=bearer(OWNER)
    )

    assert [a.id for a in default.accounts] == [active.id]
    assert {a.id for a in everything.accounts} == {active.id, inactive.id}


async def test_another_users_accounts_are_for_operators_only(harness: Harness):
    theirs = await harness.connect(1, user_id=OTHER_USER)
    request = pb.ListAccountsRequest(user_id=str(OTHER_USER))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stub.ListAccounts(request, metadata=bearer(OWNER))
    as_admin = await harness.stub.ListAccounts(request, metadata=bearer(ADMIN_USER, Role.ADMIN))
    as_worker = await harness.stub.ListAccounts(request, metadata=WORKER_METADATA)

    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert [a.id for a in as_admin.accounts] == [a.id for a in as_worker.accounts] == [theirs.id]


@pytest.mark.parametrize(
    ("request_fields", "metadata", "field"),
    [
        ({"page_size": -1}, None, "page_size"),
        ({"page_size": 501}, None, "page_size"),
        ({"page_token": "garbage!"}, None, "page_token"),
        ({"user_id": "nope"}, None, "user_id"),
        ({}, WORKER_METADATA, "user_id"),  # a worker has no user of its own
    ],
)
async def test_list_accounts_rejects_bad_input_by_field(
    harness: Harness, request_fields, metadata, field
):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stub.ListAccounts(
            pb.ListAccountsRequest(**request_fields), metadata=metadata or bearer(OWNER)
        )

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(caught.value)] == [field]


# --- GetSyncStatus ------------------------------------------------------------------------------


async def test_an_account_that_never_synced_has_an_empty_status(harness: Harness):
    account = await harness.connect(1)

    response = await harness.stub.GetSyncStatus(
        pb.GetSyncStatusRequest(account_id=account.id), metadata=bearer(OWNER)
    )

    assert response.status == pb.SyncStatus(account_id=account.id)


async def test_someone_elses_account_status_is_not_found(harness: Harness):
    theirs = await harness.connect(1, user_id=OTHER_USER)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stub.GetSyncStatus(
            pb.GetSyncStatusRequest(account_id=theirs.id), metadata=bearer(OWNER)
        )
    missing = str(uuid.uuid4())
    with pytest.raises(grpc.aio.AioRpcError) as absent:
        await harness.stub.GetSyncStatus(
            pb.GetSyncStatusRequest(account_id=missing), metadata=bearer(OWNER)
        )

    assert caught.value.code() == absent.value.code() == grpc.StatusCode.NOT_FOUND
    # The same words for both: nothing hints that the other user's account exists.
    assert caught.value.details().replace(theirs.id, "?") == absent.value.details().replace(
        missing, "?"
    )


async def test_get_sync_status_names_a_malformed_account_id(harness: Harness):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stub.GetSyncStatus(
            pb.GetSyncStatusRequest(account_id="123"), metadata=bearer(OWNER)
        )

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(caught.value)] == ["account_id"]


# --- SyncAccount input and roles ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"account_id": "", "sync_type": pb.SYNC_TYPE_FULL}, ["account_id"]),
        ({"account_id": "abc", "sync_type": pb.SYNC_TYPE_FULL}, ["account_id"]),
        ({"sync_type": pb.SYNC_TYPE_UNSPECIFIED}, ["sync_type"]),
        ({"sync_type": 7}, ["sync_type"]),
        ({"sync_type": pb.SYNC_TYPE_FULL, "job_id": "job-1"}, ["job_id"]),
        ({"sync_type": pb.SYNC_TYPE_FULL, "attempt": -1}, ["attempt"]),
        ({"account_id": "x", "sync_type": 0, "job_id": "y"}, ["account_id", "sync_type", "job_id"]),
    ],
)
async def test_sync_account_rejects_bad_input_by_field_without_calling_google(
    harness: Harness, fields, expected
):
    account = await harness.connect(1)
    request = pb.SyncAccountRequest(account_id=account.id)
    for key, value in fields.items():
        setattr(request, key, value)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stub.SyncAccount(request, metadata=WORKER_METADATA)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(caught.value)] == expected
    assert sum(harness.state.stats.requests.values()) == 0
    assert (await harness.status(account.id)) == pb.SyncStatus(account_id=account.id)


async def test_sync_account_is_for_workers_and_admins(harness: Harness):
    account = await harness.connect(1)
    request = pb.SyncAccountRequest(account_id=account.id, sync_type=pb.SYNC_TYPE_FULL)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stub.SyncAccount(request, metadata=bearer(OWNER))
    as_admin = await harness.stub.SyncAccount(request, metadata=bearer(ADMIN_USER, Role.ADMIN))

    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert as_admin.reviews_added == 60


async def test_a_job_id_and_attempt_are_kept_with_a_failure(harness: Harness):
    account = await harness.connect(1)
    harness.state.inject("not_found", count=1, endpoint="locations")
    job_id = str(uuid.uuid4())

    with pytest.raises(grpc.aio.AioRpcError):
        await harness.sync(account.id, job_id=job_id, attempt=2)

    [log] = await harness.error_logs(account.id)
    assert str(log.job_id) == job_id and log.details["attempt"] == 2
