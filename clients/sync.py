"""SyncClient: typed async calls of every SyncService RPC.

SyncAccount is not retried here: whether to run a sync again is the queue's decision (backoff,
attempts), and the worker reports the error to QueueService instead. Its errors say what to
do: `Unavailable` / `ResourceExhausted` are retryable (`retry_delay` from the server), while
`FailedPrecondition` (reconnect the account), `NotFound` and `InvalidArgument` are permanent.
Reads (GetSyncStatus, ListAccounts) are retried; ConnectAccount is an upsert, safe to repeat.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from clients.calls import ServiceClient, sync_type_value, to_timestamp
from gmbsync.sync.v1 import sync_service_pb2 as pb
from gmbsync.sync.v1 import sync_service_pb2_grpc as pb_grpc

Account = pb.Account
SyncStatus = pb.SyncStatus
SyncType = pb.SyncType


class SyncClient(ServiceClient):
    """Typed client of gmbsync.sync.v1.SyncService."""

    service_name = "SyncService"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stub = pb_grpc.SyncServiceStub(self._channel)

    async def sync_account(
        self,
        account_id: str,
        sync_type: int | str,
        *,
        job_id: str = "",
        attempt: int = 0,
        timeout: float | None = None,
    ) -> pb.SyncAccountResponse:
        """Syncs one account now, within `timeout` seconds."""
        request = pb.SyncAccountRequest(
            account_id=account_id,
            sync_type=sync_type_value(pb.SyncType, sync_type),
            job_id=job_id,
            attempt=attempt,
        )
        return await self._unary("SyncAccount", self._stub.SyncAccount, request, timeout=timeout)

    async def get_sync_status(self, account_id: str, *, timeout: float | None = None) -> SyncStatus:
        return (await self.get_sync_status_details(account_id, timeout=timeout)).status

    async def get_sync_status_details(
        self, account_id: str, *, timeout: float | None = None
    ) -> pb.GetSyncStatusResponse:
        """The account's status and each stored location's review state and figures."""
        request = pb.GetSyncStatusRequest(account_id=account_id)
        return await self._unary(
            "GetSyncStatus", self._stub.GetSyncStatus, request, timeout=timeout, idempotent=True
        )

    async def discover_accounts(
        self,
        *,
        user_id: str,
        refresh_token: str,
        account_types: list[str] | None = None,
        timeout: float | None = None,
    ) -> pb.DiscoverAccountsResponse:
        """Connects every account an OAuth grant sees, of the types asked for (by default
        personal accounts, location groups and organizations)."""
        request = pb.DiscoverAccountsRequest(
            user_id=user_id, refresh_token=refresh_token, account_types=account_types or []
        )
        return await self._unary(
            "DiscoverAccounts",
            self._stub.DiscoverAccounts,
            request,
            timeout=timeout,
            idempotent=True,
        )

    async def connect_account(
        self,
        *,
        user_id: str,
        account_name: str,
        google_account_id: str,
        refresh_token: str,
        access_token: str = "",
        access_token_expires_at: datetime | None = None,
        timeout: float | None = None,
    ) -> pb.ConnectAccountResponse:
        """Stores (or updates) a Google account and its tokens for a user."""
        request = pb.ConnectAccountRequest(
            user_id=user_id,
            account_name=account_name,
            google_account_id=google_account_id,
            refresh_token=refresh_token,
            access_token=access_token,
            access_token_expires_at=to_timestamp(access_token_expires_at),
        )
        return await self._unary(
            "ConnectAccount", self._stub.ConnectAccount, request, timeout=timeout, idempotent=True
        )

    async def list_accounts(
        self,
        *,
        user_id: str = "",
        page_size: int = 0,
        page_token: str = "",
        include_inactive: bool = False,
        timeout: float | None = None,
    ) -> pb.ListAccountsResponse:
        """One page of a user's accounts, oldest first."""
        request = pb.ListAccountsRequest(
            user_id=user_id,
            page_size=page_size,
            page_token=page_token,
            include_inactive=include_inactive,
        )
        return await self._unary(
            "ListAccounts", self._stub.ListAccounts, request, timeout=timeout, idempotent=True
        )
