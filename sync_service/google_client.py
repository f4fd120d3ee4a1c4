"""An async client of Google's Business Profile APIs (httpx), with errors classified once.

`GoogleApi` is per process: one connection pool, and the quota limiter of the Google Cloud
project (shared with other replicas through the database, see `sync_service.quota`).
`GoogleSession` is per sync: it holds the account's credentials, refreshes the access token
when it is missing or about to expire (and once more on a 401), follows `nextPageToken` to the
end, and counts its HTTP calls.

Every failure leaves this module as one `GoogleError` subclass: `RetryableGoogleError` (429
quota, 5xx, timeouts, connection errors; with the delay Google asked for) or
`PermanentGoogleError` (400, 403, 404, `invalid_grant`, `invalid_client`, and a 429 whose
`quota_limit_value` is "0": the project has no access to the API at all).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

from sync_service.models import OAuthCredentials
from sync_service.quota import GoogleApiName, LocalQuota, QuotaLimiter, quota_shapes
from sync_service.settings import GoogleSettings

log = logging.getLogger(__name__)

LOCATIONS_PAGE_SIZE = 100  # Business Information API maximum
REVIEWS_PAGE_SIZE = 50  # v4 reviews.list maximum
ACCOUNTS_PAGE_SIZE = 20  # Account Management API maximum
LOCATION_READ_MASK = (
    "name,title,storeCode,languageCode,phoneNumbers,categories,storefrontAddress,"
    "websiteUri,openInfo,metadata"
)
# Google Cloud's troubleshooting guidance: wait at least 30 s after a 429, 1 s after a 5xx.
DEFAULT_QUOTA_RETRY_AFTER = 30.0
DEFAULT_UNAVAILABLE_RETRY_AFTER = 1.0


class GoogleError(Exception):
    """A call to Google failed. `message` is for people; `reason` is Google's code, if any."""

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        reason: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.reason = reason
        self.url = url

    def details(self) -> dict[str, Any]:
        """What is worth keeping in error_logs (never a token: URLs carry none)."""
        return {
            "error_class": type(self).__name__,
            "http_status": self.http_status,
            "reason": self.reason,
            "url": self.url,
        }


class RetryableGoogleError(GoogleError):
    """Worth retrying later; `retry_after` is the delay in seconds Google asked for or advises;
    `server_delay` only what the server itself asked for (Retry-After, RetryInfo), if it did."""

    def __init__(
        self, message: str, *, retry_after: float, server_delay: float | None = None, **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after
        self.server_delay = server_delay


class QuotaExceeded(RetryableGoogleError):
    """429: the project's request quota is used up for now."""


class GoogleUnavailable(RetryableGoogleError):
    """5xx, a timeout or a connection error: Google (or the way to it) is failing for now."""


class PermanentGoogleError(GoogleError):
    """Retrying the same request cannot help; a person must act."""


class InvalidGrant(PermanentGoogleError):
    """The refresh token was revoked or expired: the account must be reconnected."""


class InvalidClient(PermanentGoogleError):
    """The OAuth client id or secret is wrong: the service's configuration must be fixed."""


class ApiAccessNotApproved(PermanentGoogleError):
    """429 with quota_limit_value "0": the Cloud project has no quota for this API at all."""


class AccessDenied(PermanentGoogleError):
    """403: the grant has no access to the resource, lacks scopes, or the API is not enabled."""


class Unauthenticated(PermanentGoogleError):
    """401 even with a freshly refreshed access token."""


class ResourceNotFound(PermanentGoogleError):
    """404: the account or location no longer exists or is not visible to this grant."""


class BadRequest(PermanentGoogleError):
    """400 or an unexpected answer: a bug on one side or the other; retrying will not help."""


@dataclass(frozen=True, slots=True)
class AccessToken:
    """The result of a token refresh. `refresh_token` is set only if Google rotated it."""

    value: str
    expires_at: datetime | None
    scope: str | None
    refresh_token: str | None

    def __repr__(self) -> str:
        return f"AccessToken(expires_at={self.expires_at!r}, scope={self.scope!r})"


def _retry_after_seconds(response: httpx.Response) -> float | None:
    """Retry-After as seconds or an HTTP date."""
    raw = response.headers.get("retry-after")
    if not raw:
        return None
    raw = raw.strip()
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _parse_duration(raw: Any) -> float | None:
    """A protobuf JSON Duration ("30s", "1.5s")."""
    if isinstance(raw, str) and raw.endswith("s"):
        try:
            return max(0.0, float(raw[:-1]))
        except ValueError:
            return None
    return None


def _error_body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def classify_api_error(response: httpx.Response) -> GoogleError:
    """One place that turns an API error response (AIP-193 body) into an exception."""
    status = response.status_code
    url = str(response.request.url.copy_with(query=None)) if response.request else None
    body = _error_body(response)
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    google_message = str(error.get("message") or response.reason_phrase or "no message")[:500]
    reason: str | None = error.get("status")
    quota_limit_value: str | None = None
    retry_delay: float | None = None
    for detail in error.get("details") or ():
        if not isinstance(detail, dict):
            continue
        kind = str(detail.get("@type", ""))
        if kind.endswith("google.rpc.ErrorInfo"):
            reason = detail.get("reason") or reason
            metadata = detail.get("metadata") or {}
            if "quota_limit_value" in metadata:
                quota_limit_value = str(metadata["quota_limit_value"])
        elif kind.endswith("google.rpc.RetryInfo"):
            retry_delay = _parse_duration(detail.get("retryDelay"))
    retry_after = _retry_after_seconds(response)
    if retry_after is None:
        retry_after = retry_delay
    where = url or "Google"
    common: dict[str, Any] = {"http_status": status, "reason": reason, "url": url}

    if status == 429:
        if quota_limit_value == "0":
            return ApiAccessNotApproved(
                "API access not approved for the Google Cloud project: its quota for "
                f"{where} is 0 requests. Request Business Profile API access for the project "
                f"(Google said: {google_message})",
                **common,
            )
        return QuotaExceeded(
            f"Google rate limit reached for {where}; retry later (Google said: {google_message})",
            retry_after=retry_after if retry_after is not None else DEFAULT_QUOTA_RETRY_AFTER,
            server_delay=retry_after,
            **common,
        )
    if status >= 500 or status == 408:
        return GoogleUnavailable(
            f"Google returned HTTP {status} for {where}; retry later (Google said: "
            f"{google_message})",
            retry_after=retry_after if retry_after is not None else DEFAULT_UNAVAILABLE_RETRY_AFTER,
            server_delay=retry_after,
            **common,
        )
    if status == 401:
        return Unauthenticated(
            f"Google rejected a freshly refreshed access token for {where}: reconnect the "
            f"account (Google said: {google_message})",
            **common,
        )
    if status == 403:
        return AccessDenied(
            f"Google denied access to {where}: the account's grant lacks access or the "
            "business.manage scope, or the API is not enabled for the Google Cloud project "
            f"(Google said: {google_message})",
            **common,
        )
    if status == 404:
        return ResourceNotFound(
            f"Google has no {where}: the account or location was removed or is not visible to "
            f"this account's grant (Google said: {google_message})",
            **common,
        )
    return BadRequest(
        f"Google refused the request to {where} with HTTP {status} (Google said: {google_message})",
        **common,
    )


def classify_token_error(response: httpx.Response) -> GoogleError:
    """The OAuth endpoint's errors: `{"error": "invalid_grant", "error_description": ...}`."""
    status = response.status_code
    body = _error_body(response)
    code = body.get("error")
    code = code if isinstance(code, str) else None
    description = str(body.get("error_description") or "")[:300]
    common: dict[str, Any] = {"http_status": status, "reason": code, "url": None}
    if code == "invalid_grant":
        return InvalidGrant(
            "Google refused the stored refresh token (invalid_grant"
            + (f": {description}" if description else "")
            + "): the account must be reconnected with ConnectAccount",
            **common,
        )
    if code in ("invalid_client", "unauthorized_client"):
        return InvalidClient(
            f"Google rejected the OAuth client ({code}"
            + (f": {description}" if description else "")
            + "): check GOOGLE_OAUTH_CLIENT_ID and GOOGLE_OAUTH_CLIENT_SECRET",
            **common,
        )
    if status == 429 or status >= 500 or code == "internal_failure":
        retry_after = _retry_after_seconds(response)
        return GoogleUnavailable(
            f"Google's OAuth token endpoint returned HTTP {status}; retry later",
            retry_after=retry_after if retry_after is not None else DEFAULT_UNAVAILABLE_RETRY_AFTER,
            server_delay=retry_after,
            **common,
        )
    return BadRequest(
        f"Google's OAuth token endpoint refused the refresh with HTTP {status}"
        + (f" ({code})" if code else ""),
        **common,
    )


def _transport_error(exc: httpx.HTTPError, what: str) -> GoogleUnavailable:
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
    return GoogleUnavailable(
        f"request to {what} {kind}: {type(exc).__name__}; retry later",
        retry_after=DEFAULT_UNAVAILABLE_RETRY_AFTER,
        reason=type(exc).__name__,
        url=what,
    )


class GoogleApi:
    """Process-wide: the HTTP connection pool, the project's quota limiter, the configuration."""

    def __init__(
        self,
        settings: GoogleSettings,
        *,
        http: httpx.AsyncClient | None = None,
        quota: QuotaLimiter | None = None,
    ) -> None:
        self.settings = settings
        timeout = settings.request_timeout.total_seconds()
        self.http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            headers={"accept": "application/json", "user-agent": "gmb-sync-queue/0.1"},
        )
        # Spans of Google calls become children of the current (SyncAccount) span, and W3C
        # trace context travels with each request.
        HTTPXClientInstrumentor.instrument_client(self.http)
        # The project's quota, one budget per API; this process uses one OAuth client, so one
        # project. Without a shared limiter, this process's own (right for one process only).
        self.quota = quota if quota is not None else LocalQuota(quota_shapes(settings))

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.quota.aclose()

    def session(
        self,
        credentials: OAuthCredentials,
        on_token_refreshed: Callable[[AccessToken], Awaitable[None]],
    ) -> GoogleSession:
        return GoogleSession(self, credentials, on_token_refreshed)


class GoogleSession:
    """One sync's conversation with Google on behalf of one account."""

    def __init__(
        self,
        api: GoogleApi,
        credentials: OAuthCredentials,
        on_token_refreshed: Callable[[AccessToken], Awaitable[None]],
    ) -> None:
        self._api = api
        self._settings = api.settings
        self._refresh_token = credentials.refresh_token
        self._access_token = credentials.access_token
        self._expires_at = credentials.access_token_expires_at
        self._on_token_refreshed = on_token_refreshed
        # Concurrent page reads of one sync share one refresh, not one each.
        self._refresh_lock = asyncio.Lock()
        self.api_calls = 0
        self.token_refreshes = 0

    # --- OAuth -------------------------------------------------------------------------

    def _token_is_fresh(self) -> bool:
        if not self._access_token:
            return False
        if self._expires_at is None:
            return True
        margin = self._settings.token_refresh_margin
        return self._expires_at - margin > datetime.now(UTC)

    async def _valid_access_token(self) -> str:
        if self._token_is_fresh():
            assert self._access_token is not None
            return self._access_token
        async with self._refresh_lock:
            if not self._token_is_fresh():
                await self._refresh()
        assert self._access_token is not None
        return self._access_token

    async def _refresh_after_401(self, rejected: str) -> str:
        async with self._refresh_lock:
            # Another task may have refreshed while this one waited for the lock.
            if self._access_token == rejected or not self._access_token:
                await self._refresh()
        assert self._access_token is not None
        return self._access_token

    async def _refresh(self) -> None:
        settings = self._settings
        form = {
            "grant_type": "refresh_token",
            "refresh_token": self._refresh_token,
            "client_id": settings.client_id,
            "client_secret": settings.client_secret,
        }
        url = settings.endpoints.token_url
        response = await self._send_with_retries(
            lambda: self._api.http.post(url, data=form),
            what=url,
            classify=classify_token_error,
        )
        if response.status_code != 200:
            raise classify_token_error(response)
        try:
            body = response.json()
            value = body["access_token"]
            if not isinstance(value, str) or not value:
                raise ValueError("empty access_token")
        except (ValueError, KeyError, TypeError):
            raise BadRequest(
                "Google's OAuth token endpoint answered 200 without an access_token",
                http_status=200,
                url=url,
            ) from None
        expires_in = body.get("expires_in")
        expires_at = (
            datetime.now(UTC) + timedelta(seconds=float(expires_in))
            if isinstance(expires_in, int | float)
            else None
        )
        rotated = body.get("refresh_token") if isinstance(body.get("refresh_token"), str) else None
        token = AccessToken(
            value=value, expires_at=expires_at, scope=body.get("scope"), refresh_token=rotated
        )
        self._access_token = token.value
        self._expires_at = token.expires_at
        if rotated:
            self._refresh_token = rotated
        self.token_refreshes += 1
        log.debug("access token refreshed (expires %s)", expires_at)
        await self._on_token_refreshed(token)

    # --- HTTP ----------------------------------------------------------------------------

    async def _send_with_retries(
        self,
        send: Callable[[], Awaitable[httpx.Response]],
        *,
        what: str,
        classify: Callable[[httpx.Response], GoogleError] = classify_api_error,
        api: GoogleApiName | None = None,
    ) -> httpx.Response:
        """Sends, retrying transient failures a bounded number of times, within the deadline.

        Returns the last response unless it was a transient failure with no retries left; the
        caller classifies other error responses. Each attempt at `api` takes a slot of its
        quota; the token endpoint (api None) takes none: it is OAuth's, not an API's quota.
        """
        settings = self._settings
        attempt = 0
        while True:
            failure: GoogleUnavailable
            try:
                self.api_calls += 1
                if api is not None:
                    await self._api.quota.acquire(api)
                response = await send()
                if response.status_code == 200:
                    return response
                classified = classify(response)
                if not isinstance(classified, GoogleUnavailable):
                    return response
                failure = classified
            except httpx.HTTPError as exc:
                failure = _transport_error(exc, what)
            if attempt >= settings.max_retries:
                raise failure
            backoff = settings.retry_base_delay.total_seconds() * (2**attempt)
            # A delay the server asked for wins; otherwise exponential backoff with jitter
            # (GBP_RETRY_BASE_DELAY defaults to Google's advised 1 s after a 5xx).
            delay = max(failure.server_delay or 0.0, backoff * random.uniform(0.9, 1.1))
            if delay > settings.max_in_call_wait.total_seconds():
                raise failure
            attempt += 1
            log.info("retrying %s in %.2fs after: %s", what, delay, failure.message)
            await asyncio.sleep(delay)

    def _getter(
        self, url: str, params: dict[str, Any], token: str
    ) -> Callable[[], Awaitable[httpx.Response]]:
        headers = {"authorization": f"Bearer {token}"}
        return lambda: self._api.http.get(url, params=params, headers=headers)

    async def _get_json(
        self, url: str, params: dict[str, Any], api: GoogleApiName
    ) -> dict[str, Any]:
        """GET an API resource with the account's token: one refresh and retry on a 401."""
        token = await self._valid_access_token()
        send = self._getter(url, params, token)
        response = await self._send_with_retries(send, what=url, api=api)
        if response.status_code == 401:
            token = await self._refresh_after_401(token)
            send = self._getter(url, params, token)
            response = await self._send_with_retries(send, what=url, api=api)
        if response.status_code != 200:
            raise classify_api_error(response)
        try:
            body = response.json()
        except ValueError:
            raise BadRequest(
                f"Google answered {url} with a body that is not JSON", http_status=200, url=url
            ) from None
        if not isinstance(body, dict):
            raise BadRequest(f"Google answered {url} with unexpected JSON", url=url)
        return body

    async def _pages(
        self, url: str, params: dict[str, Any], api: GoogleApiName
    ) -> AsyncIterator[dict[str, Any]]:
        """Every page of a list call, following nextPageToken to the end."""
        seen_tokens: set[str] = set()
        page_params = dict(params)
        while True:
            body = await self._get_json(url, page_params, api)
            yield body
            token = body.get("nextPageToken")
            if not token:
                return
            if token in seen_tokens:  # a server bug must not become an endless loop
                raise BadRequest(f"Google repeated a page token for {url}", url=url)
            seen_tokens.add(token)
            page_params = {**params, "pageToken": token}

    # --- Resources --------------------------------------------------------------------------

    async def list_accounts(self) -> list[dict[str, Any]]:
        """accounts.list: every account the grant can see."""
        url = f"{self._settings.endpoints.account_management_url}/v1/accounts"
        accounts: list[dict[str, Any]] = []
        pages = self._pages(url, {"pageSize": ACCOUNTS_PAGE_SIZE}, GoogleApiName.ACCOUNT_MANAGEMENT)
        async for page in pages:
            accounts.extend(page.get("accounts") or ())
        return accounts

    async def list_locations(self, account: str) -> list[dict[str, Any]]:
        """accounts.locations.list: every location of `accounts/{id}`."""
        url = f"{self._settings.endpoints.business_information_url}/v1/{account}/locations"
        params = {"readMask": LOCATION_READ_MASK, "pageSize": LOCATIONS_PAGE_SIZE}
        locations: list[dict[str, Any]] = []
        async for page in self._pages(url, params, GoogleApiName.BUSINESS_INFORMATION):
            locations.extend(page.get("locations") or ())
        return locations

    def review_pages(self, account: str, location: str) -> AsyncIterator[dict[str, Any]]:
        """reviews.list pages, newest update first; the caller may stop early.

        `location` is `locations/{id}`; the v4 API wants `accounts/{a}/locations/{l}`.
        """
        url = f"{self._settings.endpoints.v4_url}/v4/{account}/{location}/reviews"
        params = {"pageSize": REVIEWS_PAGE_SIZE, "orderBy": "updateTime desc"}
        return self._pages(url, params, GoogleApiName.REVIEWS)
