"""SyncService over gRPC: protobuf in, domain calls, protobuf or a precise status out.

Nothing else happens here: validation names the bad field (google.rpc.BadRequest), the auth
policy names who may call what, and domain errors become status codes that say whether a retry
can help (UNAVAILABLE / RESOURCE_EXHAUSTED with a RetryInfo delay) or a person must act
(FAILED_PRECONDITION, NOT_FOUND).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NoReturn, TypeVar

import grpc

from gmbsync.sync.v1 import sync_service_pb2 as pb
from gmbsync.sync.v1 import sync_service_pb2_grpc as pb_grpc
from service_runtime.auth import OPERATOR, USER, Principal, Role, current_principal
from service_runtime.errors import ErrorReason, FieldViolation, InvalidArgument, abort
from service_runtime.protoconv import (
    parse_uuid,
    read_timestamp,
    require_uuid,
    to_duration,
    to_timestamp,
)
from sync_service import google_client as google
from sync_service.models import Account, LocationStatusRecord, SyncStatusRecord, SyncType
from sync_service.store import BadPageToken, SyncStore
from sync_service.sync import (
    AccountInactive,
    AccountNotConnected,
    AccountNotFound,
    CredentialsUnreadable,
    SyncDeadlineExceeded,
    Syncer,
    SyncError,
    SyncIncomplete,
)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SyncService"].full_name
_PREFIX = f"/{SERVICE_NAME}/"

# Who may call what (DESIGN.md, "Auth"). An RPC missing here is closed to everyone.
POLICY = {
    f"{_PREFIX}SyncAccount": OPERATOR,
    f"{_PREFIX}GetSyncStatus": USER,
    f"{_PREFIX}ConnectAccount": OPERATOR,
    f"{_PREFIX}ListAccounts": USER,
    f"{_PREFIX}DiscoverAccounts": OPERATOR,
}
# A sync that made progress is resumed by the next attempt; there is nothing to wait for.
RESUME_DELAY_SECONDS = 1.0
_REVIEW_STATES = {
    "synced": pb.REVIEW_STATE_SYNCED,
    "ineligible": pb.REVIEW_STATE_INELIGIBLE,
    "failed": pb.REVIEW_STATE_FAILED,
}
_ACCOUNT_TYPES = ("PERSONAL", "LOCATION_GROUP", "ORGANIZATION", "USER_GROUP")
DEFAULT_ACCOUNT_TYPES = ("PERSONAL", "LOCATION_GROUP", "ORGANIZATION")

T = TypeVar("T")

_SYNC_TYPES = {
    pb.SYNC_TYPE_FULL: SyncType.FULL,
    pb.SYNC_TYPE_INCREMENTAL: SyncType.INCREMENTAL,
}
_SYNC_TYPES_PB = {value: key for key, value in _SYNC_TYPES.items()}
_GOOGLE_ACCOUNT_ID = re.compile(r"^accounts/[0-9]{1,32}$")
MAX_ACCOUNT_NAME = 200
MAX_REFRESH_TOKEN = 2048
MAX_ACCESS_TOKEN = 4096
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def account_pb(account: Account) -> pb.Account:
    return pb.Account(
        id=str(account.id),
        user_id=str(account.user_id),
        account_name=account.account_name,
        google_account_id=account.google_account_id,
        is_active=account.is_active,
        created_at=to_timestamp(account.created_at),
        updated_at=to_timestamp(account.updated_at),
    )


def status_pb(account_id: uuid.UUID, status: SyncStatusRecord | None) -> pb.SyncStatus:
    if status is None:
        return pb.SyncStatus(account_id=str(account_id))
    return pb.SyncStatus(
        account_id=str(status.account_id),
        last_sync_at=to_timestamp(status.last_sync_at),
        last_sync_type=_SYNC_TYPES_PB.get(status.last_sync_type, pb.SYNC_TYPE_UNSPECIFIED)
        if status.last_sync_type
        else pb.SYNC_TYPE_UNSPECIFIED,
        last_error=status.last_error or "",
        last_error_at=to_timestamp(status.last_error_at),
        consecutive_failures=status.consecutive_failures,
        locations_count=status.locations_count,
        reviews_count=status.reviews_count,
        reviews_watermark=to_timestamp(status.reviews_watermark),
        updated_at=to_timestamp(status.updated_at),
        locations_skipped=status.locations_skipped,
    )


def location_pb(location: LocationStatusRecord) -> pb.LocationStatus:
    message = pb.LocationStatus(
        location_id=location.location_id,
        title=location.title,
        review_state=_REVIEW_STATES.get(location.review_state, pb.REVIEW_STATE_UNSPECIFIED),
        review_state_reason=location.review_state_reason or "",
        reviews_stored=location.reviews_stored,
        reviews_read_at=to_timestamp(location.reviews_read_at),
    )
    if location.average_rating is not None:
        message.average_rating = location.average_rating
    if location.total_review_count is not None:
        message.total_review_count = location.total_review_count
    return message


def _sync_type(value: pb.SyncType.ValueType) -> SyncType:
    try:
        return _SYNC_TYPES[value]
    except KeyError:
        raise InvalidArgument.field(
            "sync_type", f"must be SYNC_TYPE_FULL or SYNC_TYPE_INCREMENTAL (got {value})"
        ) from None


def _text_violations(
    field: str, value: str, *, maximum: int, required: bool
) -> list[FieldViolation]:
    if not value.strip():
        return [FieldViolation(field, "is required")] if required else []
    if len(value) > maximum:
        return [FieldViolation(field, f"is {len(value)} characters long; at most {maximum}")]
    if any(ch.isspace() for ch in value) and field.endswith("token"):
        return [FieldViolation(field, "must not contain whitespace")]
    if any(ord(ch) < 32 for ch in value):
        return [FieldViolation(field, "must not contain control characters")]
    return []


def _connect_violations(request: pb.ConnectAccountRequest) -> list[FieldViolation]:
    violations: list[FieldViolation] = []
    _collect(violations, lambda: require_uuid("user_id", request.user_id))
    violations += _text_violations(
        "account_name", request.account_name, maximum=MAX_ACCOUNT_NAME, required=True
    )
    if not _GOOGLE_ACCOUNT_ID.match(request.google_account_id):
        violations.append(
            FieldViolation(
                "google_account_id",
                f"{request.google_account_id[:64]!r} is not a Google account name "
                "('accounts/' followed by the numeric account id)",
            )
        )
    violations += _text_violations(
        "refresh_token", request.refresh_token, maximum=MAX_REFRESH_TOKEN, required=True
    )
    violations += _text_violations(
        "access_token", request.access_token, maximum=MAX_ACCESS_TOKEN, required=False
    )
    has_expiry = request.HasField("access_token_expires_at")
    if request.access_token and not has_expiry:
        violations.append(
            FieldViolation("access_token_expires_at", "is required with access_token")
        )
    if has_expiry and not request.access_token:
        violations.append(
            FieldViolation("access_token_expires_at", "is only meaningful with access_token")
        )
    if has_expiry:
        _collect(
            violations,
            lambda: read_timestamp("access_token_expires_at", request.access_token_expires_at),
        )
    return violations


class SyncServicer(pb_grpc.SyncServiceServicer):
    """The SyncService RPCs."""

    def __init__(self, store: SyncStore, syncer: Syncer) -> None:
        self._store = store
        self._syncer = syncer

    async def SyncAccount(
        self, request: pb.SyncAccountRequest, context: grpc.aio.ServicerContext
    ) -> pb.SyncAccountResponse:
        violations: list[FieldViolation] = []
        account_id = _collect(violations, lambda: require_uuid("account_id", request.account_id))
        sync_type = _collect(violations, lambda: _sync_type(request.sync_type))
        job_id = _collect(violations, lambda: parse_uuid("job_id", request.job_id, required=False))
        if request.attempt < 0:
            violations.append(FieldViolation("attempt", "must not be negative"))
        if violations:
            await _invalid(context, InvalidArgument(violations))
        assert account_id is not None and sync_type is not None
        try:
            result = await self._syncer.sync(
                account_id,
                sync_type,
                time_budget=context.time_remaining(),
                job_id=job_id,
                attempt=request.attempt,
            )
        except (SyncError, google.GoogleError) as exc:
            await _sync_failed(context, exc)
        counts = result.counts
        skipped = [
            pb.SkippedLocation(
                location_id=location.location_id,
                review_state=_REVIEW_STATES[location.review_state],
                reason=location.reason,
            )
            for location in result.skipped
        ]
        return pb.SyncAccountResponse(
            account_id=str(result.account_id),
            sync_type=_SYNC_TYPES_PB[result.sync_type],
            locations_synced=counts.locations_synced,
            locations_removed=counts.locations_removed,
            reviews_added=counts.reviews_added,
            reviews_updated=counts.reviews_updated,
            reviews_removed=counts.reviews_removed,
            api_calls=result.api_calls,
            duration=to_duration(result.duration),
            status=status_pb(result.account_id, result.status),
            locations_skipped=len(skipped),
            skipped_locations=skipped,
            resumed=result.resumed,
            locations_deletions_deferred=result.deletions_deferred,
        )

    async def GetSyncStatus(
        self, request: pb.GetSyncStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSyncStatusResponse:
        try:
            account_id = require_uuid("account_id", request.account_id)
        except InvalidArgument as exc:
            await _invalid(context, exc)
        account = await self._store.account_get(account_id)
        if account is None or not _may_see(current_principal(), account.user_id):
            # Someone else's account is indistinguishable from a missing one.
            await abort(context, grpc.StatusCode.NOT_FOUND, f"account {account_id} not found")
        status = await self._store.status_get(account_id)
        locations = await self._store.location_statuses(account_id)
        return pb.GetSyncStatusResponse(
            status=status_pb(account_id, status), locations=[location_pb(x) for x in locations]
        )

    async def ConnectAccount(
        self, request: pb.ConnectAccountRequest, context: grpc.aio.ServicerContext
    ) -> pb.ConnectAccountResponse:
        violations = _connect_violations(request)
        if violations:
            await _invalid(context, InvalidArgument(violations))
        expires_at = (
            read_timestamp("access_token_expires_at", request.access_token_expires_at)
            if request.access_token
            else None
        )
        account, updated = await self._store.account_connect(
            user_id=uuid.UUID(request.user_id),
            account_name=request.account_name.strip(),
            google_account_id=request.google_account_id,
            refresh_token=request.refresh_token,
            access_token=request.access_token or None,
            access_token_expires_at=expires_at,
            now=datetime.now(UTC),
        )
        return pb.ConnectAccountResponse(account=account_pb(account), updated=updated)

    async def ListAccounts(
        self, request: pb.ListAccountsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAccountsResponse:
        principal = current_principal()
        violations: list[FieldViolation] = []
        user_id: uuid.UUID | None = None
        try:
            user_id = parse_uuid("user_id", request.user_id, required=False)
        except InvalidArgument as exc:
            violations.extend(exc.violations)
        if not request.user_id:
            user_id = principal.user_id
            if user_id is None:
                violations.append(
                    FieldViolation("user_id", "is required for callers that are not a user")
                )
        if not 0 <= request.page_size <= MAX_PAGE_SIZE:
            violations.append(
                FieldViolation("page_size", f"must be between 1 and {MAX_PAGE_SIZE} (0: default)")
            )
        if violations:
            await _invalid(context, InvalidArgument(violations))
        assert user_id is not None
        if not _may_see(principal, user_id):
            await abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                "listing another user's accounts needs role admin or service_role",
            )
        try:
            accounts, next_token = await self._store.account_list(
                user_id=user_id,
                include_inactive=request.include_inactive,
                page_size=request.page_size or DEFAULT_PAGE_SIZE,
                page_token=request.page_token,
            )
        except BadPageToken as exc:
            await _invalid(context, InvalidArgument.field("page_token", str(exc)))
        return pb.ListAccountsResponse(
            accounts=[account_pb(a) for a in accounts], next_page_token=next_token
        )

    async def DiscoverAccounts(
        self, request: pb.DiscoverAccountsRequest, context: grpc.aio.ServicerContext
    ) -> pb.DiscoverAccountsResponse:
        violations: list[FieldViolation] = []
        _collect(violations, lambda: require_uuid("user_id", request.user_id))
        violations += _text_violations(
            "refresh_token", request.refresh_token, maximum=MAX_REFRESH_TOKEN, required=True
        )
        unknown = [t for t in request.account_types if t not in _ACCOUNT_TYPES]
        if unknown:
            violations.append(
                FieldViolation(
                    "account_types",
                    f"{unknown[0][:40]!r} is not one of {', '.join(_ACCOUNT_TYPES)}",
                )
            )
        if violations:
            await _invalid(context, InvalidArgument(violations))
        wanted = set(request.account_types or DEFAULT_ACCOUNT_TYPES)
        try:
            found = await self._syncer.discover_accounts(
                request.refresh_token, time_budget=context.time_remaining()
            )
        except (SyncError, google.GoogleError) as exc:
            await _sync_failed(context, exc)
        response = pb.DiscoverAccountsResponse()
        now = datetime.now(UTC)
        for doc in found.accounts:
            name, kind = doc.get("name"), str(doc.get("type") or "")
            if not isinstance(name, str) or not _GOOGLE_ACCOUNT_ID.match(name):
                continue  # not an account this service can sync
            if kind not in wanted:
                response.skipped += 1
                continue
            account, updated = await self._store.account_connect(
                user_id=uuid.UUID(request.user_id),
                account_name=str(doc.get("accountName") or name)[:MAX_ACCOUNT_NAME],
                google_account_id=name,
                refresh_token=request.refresh_token,
                access_token=found.access_token,
                access_token_expires_at=found.access_token_expires_at,
                now=now,
            )
            response.accounts.append(
                pb.DiscoveredAccount(account=account_pb(account), type=kind, updated=updated)
            )
        return response


def _collect(violations: list[FieldViolation], parse: Callable[[], T]) -> T | None:
    """Runs one field's parser, adding its violation instead of raising: a request with
    several bad fields hears about all of them at once."""
    try:
        return parse()
    except InvalidArgument as exc:
        violations.extend(exc.violations)
        return None


def _may_see(principal: Principal, owner: uuid.UUID) -> bool:
    return principal.role is not Role.AUTHENTICATED or principal.user_id == owner


async def _invalid(context: grpc.aio.ServicerContext, exc: InvalidArgument) -> NoReturn:
    await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc), violations=exc.violations)
    raise AssertionError("abort returned")


async def _sync_failed(
    context: grpc.aio.ServicerContext, exc: SyncError | google.GoogleError
) -> NoReturn:
    """The one mapping of a failed sync to a gRPC status."""
    message = str(exc)
    if isinstance(exc, google.QuotaExceeded):
        await abort(
            context,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            message,
            retry_delay_seconds=exc.retry_after,
            reason=ErrorReason.GOOGLE_QUOTA,
            error_metadata={"url": exc.url or ""},
        )
    if isinstance(exc, SyncIncomplete):
        await abort(
            context,
            grpc.StatusCode.ABORTED,
            message,
            retry_delay_seconds=RESUME_DELAY_SECONDS,
            reason=ErrorReason.SYNC_INCOMPLETE,
            error_metadata={
                "locations_done": exc.locations_done,
                "locations_total": exc.locations_total,
            },
        )
    if isinstance(exc, google.ApiDisabled):
        await abort(
            context,
            grpc.StatusCode.UNAVAILABLE,
            message,
            retry_delay_seconds=exc.retry_after,
            reason=ErrorReason.GOOGLE_API_DISABLED,
            error_metadata={"service": exc.service, "activation_url": exc.activation_url},
        )
    if isinstance(exc, google.RetryableGoogleError):
        await abort(
            context, grpc.StatusCode.UNAVAILABLE, message, retry_delay_seconds=exc.retry_after
        )
    if isinstance(exc, AccountNotFound | google.ResourceNotFound):
        await abort(context, grpc.StatusCode.NOT_FOUND, message)
    if isinstance(exc, SyncDeadlineExceeded):
        await abort(context, grpc.StatusCode.DEADLINE_EXCEEDED, message)
    if isinstance(
        exc,
        AccountInactive | AccountNotConnected | CredentialsUnreadable | google.PermanentGoogleError,
    ):
        await abort(context, grpc.StatusCode.FAILED_PRECONDITION, message)
    await abort(context, grpc.StatusCode.INTERNAL, message)
    raise AssertionError("abort returned")
