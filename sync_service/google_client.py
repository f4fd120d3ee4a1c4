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
import contextlib
import dataclasses
import email.utils
import logging
import random
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import httpx
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

from service_runtime.telemetry import tracing_enabled
from sync_service import metrics
from sync_service.http_transport import GoogleHttpClient
from sync_service.quota import (
    GoogleApiName,
    LocalQuota,
    QuotaLimiter,
    QuotaWaitTooLong,
    quota_shapes,
)
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
# How long dispatch is held after Google said an API is disabled for the project.
API_DISABLED_RETRY_AFTER = 300.0
BATCH_REVIEWS_MAX_LOCATIONS = 50  # v4 locations:batchGetReviews maximum


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


class PageTokenExpired(GoogleUnavailable):
    """400 naming `page_token`: a listing paged too slowly; it is read again from the start."""


class ApiDisabled(GoogleError):
    """403 SERVICE_DISABLED: the API is disabled for the whole Google Cloud project. Every
    account fails the same way until an operator enables it, so no account's job should fail for
    good: dispatch is held and an alert raised instead."""

    def __init__(
        self, message: str, *, service: str, activation_url: str, retry_after: float, **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.service = service
        self.activation_url = activation_url
        self.retry_after = retry_after

    def details(self) -> dict[str, Any]:
        return {
            **super().details(),
            "service": self.service,
            "activation_url": self.activation_url,
        }


class PermanentGoogleError(GoogleError):
    """Retrying the same request cannot help; a person must act."""


class InvalidGrant(PermanentGoogleError):
    """The refresh token was revoked or expired: the account must be reconnected."""


class InvalidClient(PermanentGoogleError):
    """The OAuth client id or secret is wrong: the service's configuration must be fixed."""


class ApiAccessNotApproved(PermanentGoogleError):
    """429 with quota_limit_value "0": the Cloud project has no quota for this API at all."""


class AccessDenied(PermanentGoogleError):
    """403: the grant has no access to the resource."""


class ScopeInsufficient(PermanentGoogleError):
    """403 ACCESS_TOKEN_SCOPE_INSUFFICIENT: the grant lacks the business.manage scope; only a
    new grant (reconnecting the account) can fix it."""


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


def classify_api_error(response: httpx.Response) -> GoogleError:
    """One place that turns an API error response (AIP-193 body) into an exception."""
    status = response.status_code
    url = str(response.request.url.copy_with(query=None)) if response.request else None
    body = _json_object(response) or {}
    raw_error = body.get("error")
    error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
    google_message = str(error.get("message") or response.reason_phrase or "no message")[:500]
    reason: str | None = error.get("status")
    quota_limit_value: str | None = None
    retry_delay: float | None = None
    info: dict[str, Any] = {}
    bad_fields: set[str] = set()
    for detail in error.get("details") or ():
        if not isinstance(detail, dict):
            continue
        kind = str(detail.get("@type", ""))
        if kind.endswith("google.rpc.ErrorInfo"):
            reason = detail.get("reason") or reason
            metadata = detail.get("metadata")
            info = metadata if isinstance(metadata, dict) else {}
            if "quota_limit_value" in info:
                quota_limit_value = str(info["quota_limit_value"])
        elif kind.endswith("google.rpc.RetryInfo"):
            retry_delay = _parse_duration(detail.get("retryDelay"))
        elif kind.endswith("google.rpc.BadRequest"):
            for violation in detail.get("fieldViolations") or ():
                if isinstance(violation, dict):
                    bad_fields.add(str(violation.get("field", "")))
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
    if status == 403 and reason == "SERVICE_DISABLED":
        service = str(info.get("service") or where)
        return ApiDisabled(
            f"{service} is disabled for the Google Cloud project: enable it "
            f"({info.get('activationUrl') or 'in the Google Cloud console'}); syncs are held "
            f"until then (Google said: {google_message})",
            service=service,
            activation_url=str(info.get("activationUrl") or ""),
            retry_after=retry_after if retry_after is not None else API_DISABLED_RETRY_AFTER,
            **common,
        )
    if status == 403 and reason == "ACCESS_TOKEN_SCOPE_INSUFFICIENT":
        return ScopeInsufficient(
            "the account's grant lacks the business.manage scope: reconnect the account with "
            f"ConnectAccount, granting that scope (Google said: {google_message})",
            **common,
        )
    if status == 403:
        return AccessDenied(
            f"Google denied access to {where}: the account's grant has no access to it "
            f"(Google said: {google_message})",
            **common,
        )
    if status == 400 and "page_token" in bad_fields:
        return PageTokenExpired(
            f"Google refused a page token of {where} (expired or invalid); the listing is "
            f"read again (Google said: {google_message})",
            retry_after=DEFAULT_UNAVAILABLE_RETRY_AFTER,
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
    body = _json_object(response) or {}
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
        self.http = http or GoogleHttpClient(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            headers={"accept": "application/json", "user-agent": "gmb-sync-queue/0.1"},
        )
        # Spans of Google calls become children of the current (SyncAccount) span, and W3C
        # trace context travels with each request; with tracing off, nothing is added to each
        # request (the instrumentation's wrapper was 4 % of a busy SyncService).
        if tracing_enabled():
            HTTPXClientInstrumentor.instrument_client(self.http)
        # The project's quota, one budget per API; this process uses one OAuth client, so one
        # project. Without a shared limiter, this process's own (right for one process only).
        self.quota = quota if quota is not None else LocalQuota(quota_shapes(settings))
        # Syncs of one account in this process refresh its token one at a time (the store's
        # guard does the same across processes).
        self._refresh_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    def refresh_lock(self, key: str) -> asyncio.Lock:
        lock = self._refresh_locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._refresh_locks[key] = lock
        return lock

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.quota.aclose()

    def session(
        self, credentials: StoredCredentials, tokens: TokenStore, *, deadline: float | None = None
    ) -> GoogleSession:
        return GoogleSession(self, credentials, tokens, deadline=deadline)


@dataclass(frozen=True, slots=True)
class StoredCredentials:
    """An account's tokens as stored, and an opaque version of them (the stored ciphertext of
    the refresh token): a failure is blamed on a grant only if it is still the stored one."""

    key: str  # whose tokens: the account id
    refresh_token: str
    access_token: str | None
    access_token_expires_at: datetime | None
    version: str

    def __repr__(self) -> str:  # never print a secret, even in a traceback
        return f"StoredCredentials(key={self.key!r}, expires_at={self.access_token_expires_at!r})"


class TokenGuard(Protocol):
    """Held while one process refreshes an account's token: no other holds it meanwhile."""

    current: StoredCredentials | None  # what is stored now (None: the account is gone)

    async def save(self, token: AccessToken) -> None: ...


class TokenStore(Protocol):
    """Where a session re-reads and stores an account's tokens."""

    def refresh_guard(self) -> contextlib.AbstractAsyncContextManager[TokenGuard]: ...


class GoogleSession:
    """One sync's conversation with Google on behalf of one account.

    `deadline` (the event loop's clock) bounds every wait: a retry or a Retry-After that would
    end after it is not waited for, and the error is raised instead.
    """

    def __init__(
        self,
        api: GoogleApi,
        credentials: StoredCredentials,
        tokens: TokenStore,
        *,
        deadline: float | None = None,
    ) -> None:
        self._api = api
        self._settings = api.settings
        self._credentials = credentials
        self._tokens = tokens
        self.deadline = deadline
        self.api_calls = 0
        self.token_refreshes = 0

    @property
    def credentials_version(self) -> str:
        """The version of the stored credentials this session last used."""
        return self._credentials.version

    # --- OAuth -------------------------------------------------------------------------

    def _token_is_fresh(self, credentials: StoredCredentials) -> bool:
        if not credentials.access_token:
            return False
        if credentials.access_token_expires_at is None:
            return True
        margin = self._settings.token_refresh_margin
        return credentials.access_token_expires_at - margin > datetime.now(UTC)

    async def _valid_access_token(self) -> str:
        if not self._token_is_fresh(self._credentials):
            await self._refresh(rejected=None)
        assert self._credentials.access_token is not None
        return self._credentials.access_token

    async def _refresh(self, rejected: str | None) -> None:
        """Gets a fresh access token: one that another sync (of this process or another)
        stored meanwhile if there is one, else a new one from Google. Concurrent syncs of one
        account refresh once, not once each."""
        async with (
            self._api.refresh_lock(self._credentials.key),
            self._tokens.refresh_guard() as guard,
        ):
            current = guard.current or self._credentials
            if current.access_token != rejected and self._token_is_fresh(current):
                self._credentials = current
                return
            # The stored refresh token, not this session's copy: the account may have been
            # reconnected since the sync began.
            self._credentials = current
            token = await self._request_token(current.refresh_token)
            self._credentials = dataclasses.replace(
                current,
                access_token=token.value,
                access_token_expires_at=token.expires_at,
                refresh_token=token.refresh_token or current.refresh_token,
            )
            self.token_refreshes += 1
            await guard.save(token)

    async def _request_token(self, refresh_token: str) -> AccessToken:
        settings = self._settings
        form = {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
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
            raise GoogleUnavailable(
                "Google's OAuth token endpoint answered 200 without a readable access_token; "
                "retry later",
                retry_after=DEFAULT_UNAVAILABLE_RETRY_AFTER,
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
        log.debug("access token refreshed (expires %s)", expires_at)
        return AccessToken(
            value=value, expires_at=expires_at, scope=body.get("scope"), refresh_token=rotated
        )

    # --- HTTP ----------------------------------------------------------------------------

    def _fits_deadline(self, delay: float) -> bool:
        if self.deadline is None:
            return True
        return asyncio.get_running_loop().time() + delay < self.deadline

    async def _send_with_retries(
        self,
        send: Callable[[], Awaitable[httpx.Response]],
        *,
        what: str,
        classify: Callable[[httpx.Response], GoogleError] = classify_api_error,
        api: GoogleApiName | None = None,
        expect_json: bool = False,
    ) -> httpx.Response:
        """Sends, retrying transient failures a bounded number of times, within the deadline.

        Returns the last response unless it was a transient failure with no retries left; the
        caller classifies other error responses. A 429 whose delay fits the in-call limit and
        the deadline is waited out too, and so is a 200 whose body is not whole JSON
        (`expect_json`). Each attempt at `api` takes a slot of its quota, within the deadline;
        the token endpoint (api None) takes none: it is OAuth's, not an API's quota.
        """
        settings = self._settings
        attempt = 0
        while True:
            failure: RetryableGoogleError
            try:
                if api is not None:
                    await self._quota_slot(api, what)
                self.api_calls += 1
                label = api.value if api is not None else metrics.OAUTH
                sent = time.perf_counter()
                try:
                    response = await send()
                except httpx.HTTPError:
                    metrics.GOOGLE_CALLS.labels(label, "transport_error").inc()
                    raise
                metrics.GOOGLE_SECONDS.labels(label).observe(time.perf_counter() - sent)
                metrics.GOOGLE_CALLS.labels(label, str(response.status_code)).inc()
                if response.status_code == 200:
                    if not expect_json or _json_object(response) is not None:
                        return response
                    failure = GoogleUnavailable(
                        f"Google answered {what} with a body that is not whole JSON; retry later",
                        retry_after=DEFAULT_UNAVAILABLE_RETRY_AFTER,
                        http_status=200,
                        url=what,
                    )
                else:
                    classified = classify(response)
                    if not isinstance(classified, RetryableGoogleError) or isinstance(
                        classified, PageTokenExpired
                    ):
                        return response
                    failure = classified
            except httpx.HTTPError as exc:
                failure = _transport_error(exc, what)
            if attempt >= settings.max_retries:
                raise failure
            backoff = settings.retry_base_delay.total_seconds() * (2**attempt)
            if isinstance(failure, QuotaExceeded):
                # Only a delay the server named is worth waiting for in-call; without one,
                # Google's advice (30 s) is for the queue to keep.
                if failure.server_delay is None:
                    raise failure
                delay = failure.server_delay
            else:
                # A delay the server asked for wins; otherwise exponential backoff with jitter
                # (GBP_RETRY_BASE_DELAY defaults to Google's advised 1 s after a 5xx).
                delay = max(failure.server_delay or 0.0, backoff * random.uniform(0.9, 1.1))
            if delay > settings.max_in_call_wait.total_seconds() or not self._fits_deadline(delay):
                raise failure
            attempt += 1
            log.info("retrying %s in %.2fs after: %s", what, delay, failure.message)
            await asyncio.sleep(delay)

    async def _quota_slot(self, api: GoogleApiName, what: str) -> None:
        """Waits for a slot of the deployment's quota; if none frees before the deadline, the
        sync answers as Google would for its own quota, with the wait as the delay."""
        try:
            await self._api.quota.acquire(api, deadline=self.deadline)
        except QuotaWaitTooLong as exc:
            raise QuotaExceeded(
                f"the deployment's {api.value} quota has no room before the deadline; "
                f"retry in {exc.retry_after:.1f}s",
                retry_after=max(exc.retry_after, 1.0),
                reason="QUOTA_WAIT_TOO_LONG",
                url=what,
            ) from None

    async def _call_json(
        self,
        url: str,
        api: GoogleApiName,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
    ) -> dict[str, Any]:
        """GET (or POST `body`) an API resource with the account's token: one refresh and
        retry on a 401."""

        def sender(token: str) -> Callable[[], Awaitable[httpx.Response]]:
            headers = {"authorization": f"Bearer {token}"}
            if body is None:
                return lambda: self._api.http.get(url, params=params, headers=headers)
            return lambda: self._api.http.post(url, json=body, headers=headers)

        token = await self._valid_access_token()
        response = await self._send_with_retries(sender(token), what=url, api=api, expect_json=True)
        if response.status_code == 401:
            await self._refresh(rejected=token)
            token = await self._valid_access_token()
            response = await self._send_with_retries(
                sender(token), what=url, api=api, expect_json=True
            )
        if response.status_code != 200:
            raise classify_api_error(response)
        parsed = _json_object(response)
        assert parsed is not None  # _send_with_retries returns a 200 only with a JSON object
        return parsed

    async def _pages(
        self,
        url: str,
        api: GoogleApiName,
        params: dict[str, Any] | None = None,
        *,
        body: dict[str, Any] | None = None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Every page of a list call, following nextPageToken to the end. A page token that
        Google no longer accepts restarts the listing once: the consumer sees the first pages
        again and must tolerate repeats (every consumer keys rows by Google's id)."""
        restarts = 0
        seen_tokens: set[str] = set()
        token: str | None = None
        while True:
            try:
                if body is None:
                    page_params = {**(params or {}), **({"pageToken": token} if token else {})}
                    page = await self._call_json(url, api, params=page_params)
                else:
                    page_body = {**body, **({"pageToken": token} if token else {})}
                    page = await self._call_json(url, api, body=page_body)
            except PageTokenExpired:
                if restarts >= 1 or token is None:
                    raise
                restarts += 1
                seen_tokens.clear()
                token = None
                continue
            yield page
            token = page.get("nextPageToken")
            if not token:
                return
            if token in seen_tokens:  # a server bug must not become an endless loop
                raise BadRequest(f"Google repeated a page token for {url}", url=url)
            seen_tokens.add(token)

    # --- Resources --------------------------------------------------------------------------

    async def list_accounts(self) -> list[dict[str, Any]]:
        """accounts.list: every account the grant can see."""
        url = f"{self._settings.endpoints.account_management_url}/v1/accounts"
        accounts: list[dict[str, Any]] = []
        pages = self._pages(url, GoogleApiName.ACCOUNT_MANAGEMENT, {"pageSize": ACCOUNTS_PAGE_SIZE})
        async for page in pages:
            accounts.extend(page.get("accounts") or ())
        return accounts

    async def list_locations(self, account: str) -> list[dict[str, Any]]:
        """accounts.locations.list: every location of `accounts/{id}`."""
        url = f"{self._settings.endpoints.business_information_url}/v1/{account}/locations"
        params = {"readMask": LOCATION_READ_MASK, "pageSize": LOCATIONS_PAGE_SIZE}
        locations: list[dict[str, Any]] = []
        async for page in self._pages(url, GoogleApiName.BUSINESS_INFORMATION, params):
            locations.extend(page.get("locations") or ())
        return locations

    def review_pages(self, account: str, location: str) -> AsyncGenerator[dict[str, Any], None]:
        """reviews.list pages, newest update first; the caller may stop early.

        `location` is `locations/{id}`; the v4 API wants `accounts/{a}/locations/{l}`.
        """
        url = f"{self._settings.endpoints.v4_url}/v4/{account}/{location}/reviews"
        params = {"pageSize": REVIEWS_PAGE_SIZE, "orderBy": "updateTime desc"}
        return self._pages(url, GoogleApiName.REVIEWS, params)

    def batch_review_pages(
        self, account: str, locations: Sequence[str]
    ) -> AsyncGenerator[dict[str, Any], None]:
        """locations:batchGetReviews pages over up to 50 locations at once, newest update first
        across all of them; each item is `{"name": "accounts/a/locations/l", "review": {...}}`.
        The caller may stop early."""
        if not 1 <= len(locations) <= BATCH_REVIEWS_MAX_LOCATIONS:
            raise ValueError(f"batchGetReviews takes 1..{BATCH_REVIEWS_MAX_LOCATIONS} locations")
        url = f"{self._settings.endpoints.v4_url}/v4/{account}/locations:batchGetReviews"
        body = {
            "locationNames": [f"{account}/{location}" for location in locations],
            "pageSize": REVIEWS_PAGE_SIZE,
            "orderBy": "updateTime desc",
        }
        return self._pages(url, GoogleApiName.REVIEWS, body=body)


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    """The response's JSON object, or None if its body is not one (truncated, HTML...)."""
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
