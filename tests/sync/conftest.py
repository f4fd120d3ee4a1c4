"""SyncService fixtures: the Google emulator on port 0, a SyncApp on port 0 against it, a stub.

`harness` is the usual entry: a small emulator (2 accounts x 3 locations x 20 reviews), a
SyncApp on the session's PostgreSQL, and helpers to connect accounts, sync them and read rows.
Tests that need another shape build their own with `make_harness(...)`.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from sqlalchemy.ext.asyncio import AsyncEngine

from gmbsync.sync.v1 import sync_service_pb2 as pb
from gmbsync.sync.v1 import sync_service_pb2_grpc as pb_grpc
from service_runtime.auth import AuthSettings
from service_runtime.database import create_engine_async
from sync_service.app import SyncApp
from sync_service.emulator import EmulatorServer
from sync_service.settings import GoogleEndpoints, GoogleSettings, SyncSettings
from sync_service.tables import error_logs, gmb_locations, gmb_reviews, oauth_tokens
from tests.conftest import TEST_JWT_SECRET, TEST_TRIGGER_SECRET, WORKER_METADATA

TEST_TOKEN_KEY = Fernet.generate_key().decode()
TEST_CLIENT_ID = "test-client.apps.googleusercontent.com"
TEST_CLIENT_SECRET = "test-client-secret"
OWNER = uuid.UUID("00000000-0000-4000-8000-0000000000a1")


def make_settings(database_url: str, api_root: str, **google: Any) -> SyncSettings:
    """Test settings: fast in-call retries, the test secrets, one fixed encryption key."""
    google_settings = GoogleSettings(
        endpoints=GoogleEndpoints.rooted(api_root),
        client_id=TEST_CLIENT_ID,
        client_secret=TEST_CLIENT_SECRET,
        retry_base_delay=timedelta(milliseconds=5),
        max_in_call_wait=timedelta(seconds=2),
        request_timeout=timedelta(seconds=10),
        # The client's quota is smooth (about 5 requests a second at 300 a minute): it would
        # slow tests of other things that read 100 pages. Quota tests set their own.
        quota_per_window=100_000,
    )
    return SyncSettings(
        listen_addr="127.0.0.1:0",
        database_url=database_url,
        auth=AuthSettings(jwt_secret=TEST_JWT_SECRET, trigger_secret=TEST_TRIGGER_SECRET),
        google=dataclasses.replace(google_settings, **google),
        token_encryption_keys=(TEST_TOKEN_KEY,),
    )


@dataclass
class Harness:
    """A running emulator + SyncApp + client stub, and helpers that read the database."""

    emulator: EmulatorServer
    app: SyncApp
    channel: grpc.aio.Channel
    stub: pb_grpc.SyncServiceStub
    engine: AsyncEngine

    @property
    def state(self):
        return self.emulator.state

    async def connect(self, n: int = 1, *, user_id: uuid.UUID = OWNER, **fields: Any) -> pb.Account:
        """Connects emulator account n (refresh token `emulator-refresh-token-n`)."""
        request = pb.ConnectAccountRequest(
            user_id=str(user_id),
            account_name=f"Business {n}",
            google_account_id=f"accounts/{n}",
            refresh_token=f"emulator-refresh-token-{n}",
        )
        for key, value in fields.items():
            if key == "access_token_expires_at":
                request.access_token_expires_at.FromDatetime(value)
            else:
                setattr(request, key, value)
        response = await self.stub.ConnectAccount(request, metadata=WORKER_METADATA)
        return response.account

    async def sync(
        self,
        account_id: str,
        sync_type: int = pb.SYNC_TYPE_FULL,
        *,
        timeout: float | None = 60.0,
        **fields: Any,
    ) -> pb.SyncAccountResponse:
        return await self.stub.SyncAccount(
            pb.SyncAccountRequest(account_id=account_id, sync_type=sync_type, **fields),
            metadata=WORKER_METADATA,
            timeout=timeout,
        )

    async def sync_error(self, account_id: str, **kwargs: Any) -> grpc.aio.AioRpcError:
        """The error of a SyncAccount that must fail."""
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await self.sync(account_id, **kwargs)
        return caught.value

    async def status(self, account_id: str) -> pb.SyncStatus:
        response = await self.stub.GetSyncStatus(
            pb.GetSyncStatusRequest(account_id=account_id), metadata=WORKER_METADATA
        )
        return response.status

    async def _rows(self, query: Any) -> list[Any]:
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).all())

    async def reviews(self, account_id: str, *, deleted: bool | None = False) -> list[Any]:
        """The account's review rows; deleted=None for all, True for the soft-deleted only."""
        query = sa.select(gmb_reviews).where(gmb_reviews.c.account_id == uuid.UUID(account_id))
        if deleted is not None:
            column = gmb_reviews.c.deleted_at
            query = query.where(column.is_not(None) if deleted else column.is_(None))
        return await self._rows(query)

    async def locations(self, account_id: str, *, deleted: bool | None = False) -> list[Any]:
        query = sa.select(gmb_locations).where(gmb_locations.c.account_id == uuid.UUID(account_id))
        if deleted is not None:
            column = gmb_locations.c.deleted_at
            query = query.where(column.is_not(None) if deleted else column.is_(None))
        return await self._rows(query)

    async def error_logs(self, account_id: str) -> list[Any]:
        return await self._rows(
            sa.select(error_logs)
            .where(error_logs.c.account_id == uuid.UUID(account_id))
            .order_by(error_logs.c.created_at)
        )

    async def tokens(self, account_id: str) -> Any:
        rows = await self._rows(
            sa.select(oauth_tokens).where(oauth_tokens.c.account_id == uuid.UUID(account_id))
        )
        return rows[0]

    def google_reviews(self, n: int = 1) -> dict[tuple[str, str], Any]:
        """What the emulator holds for account n: (locations/{id}, reviewId) -> review."""
        account = self.state.account(str(n))
        return {
            (f"locations/{loc.location_id}", review.review_id): review
            for loc in account.locations.values()
            for review in loc.reviews.values()
        }

    def location_ids(self, n: int = 1) -> list[str]:
        return list(self.state.account(str(n)).locations)

    def review_calls(self) -> list[tuple[str, str, int]]:
        return [call for call in self.state.stats.calls if call[0] == "reviews"]


MakeHarness = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make_harness(pg_url: str) -> AsyncIterator[MakeHarness]:
    """Builds harnesses: emulator options (seed, accounts, locations_per_account, ...), and
    `database_url`, `api_root` (Google somewhere else), `google=dict(...)` (GoogleSettings
    fields) or `settings=` (a function of the settings) for the SyncApp. Everything is stopped
    after the test."""
    started: list[Harness] = []

    async def make(
        *,
        database_url: str | None = None,
        api_root: str | None = None,
        google: dict[str, Any] | None = None,
        settings: Callable[[SyncSettings], SyncSettings] | None = None,
        **emulator_options: Any,
    ) -> Harness:
        options = {"accounts": 2, "locations_per_account": 3, "reviews_per_location": 20}
        options.update(emulator_options)
        emulator = EmulatorServer(**options)
        await emulator.start()
        config = make_settings(database_url or pg_url, api_root or emulator.url, **(google or {}))
        if settings is not None:
            config = settings(config)
        app = SyncApp(config)
        port = await app.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        harness = Harness(
            emulator=emulator,
            app=app,
            channel=channel,
            stub=pb_grpc.SyncServiceStub(channel),
            engine=create_engine_async(config.database_url),
        )
        started.append(harness)
        return harness

    yield make
    for harness in started:
        await harness.channel.close()
        await harness.app.stop(grace=1.0)
        await harness.emulator.stop()
        await harness.engine.dispose()


@pytest.fixture
async def harness(make_harness: MakeHarness) -> Harness:
    return await make_harness()
