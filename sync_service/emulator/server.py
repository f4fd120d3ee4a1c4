"""The emulator's HTTP face (aiohttp): Google's paths, JSON shapes, limits and error bodies.

Served under one root, as `GBP_API_ROOT` expects:
  POST /token                                          OAuth 2.0 refresh (form-encoded)
  GET  /v1/accounts                                    Account Management accounts.list
  GET  /v1/accounts/{a}/locations                      Business Information locations.list
  GET  /v4/accounts/{a}/locations/{l}/reviews          v4 reviews.list
  POST /v4/accounts/{a}/locations:batchGetReviews      v4 batchGetReviews
  /__control/...                                       test control (`control.py`)

Each API request goes through: added latency and injected faults, then the bearer token, then
the quota of its API for the token's project (a sliding window, like the client's limiter),
then the account check (the grant must see the account), then the handler.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from sync_service.emulator.control import ControlApi
from sync_service.emulator.data import (
    LOCATION_FIELDS,
    STARS,
    AccountType,
    LocationKind,
    ReadMaskError,
    Review,
    apply_mask,
    parse_read_mask,
)
from sync_service.emulator.errors import (
    api_fault,
    bad_request,
    failed_precondition,
    google_error,
    not_found,
    permission_denied,
    quota_error,
    token_error,
    token_fault,
    unauthenticated,
)
from sync_service.emulator.state import (
    AccessGrant,
    Api,
    EmulatorState,
    Endpoint,
    Fault,
    FaultKind,
    Location,
    NotFoundError,
)

__all__ = ["LOCATION_FIELDS", "EmulatorServer", "PageTokens", "google_error"]

log = logging.getLogger(__name__)

ACCOUNTS_DEFAULT_PAGE, ACCOUNTS_MAX_PAGE = 20, 20
LOCATIONS_DEFAULT_PAGE, LOCATIONS_MAX_PAGE = 10, 100
REVIEWS_DEFAULT_PAGE, REVIEWS_MAX_PAGE = 50, 50
BATCH_MAX_LOCATIONS = 50
REVIEW_ORDERS = ("updateTime desc", "rating", "rating desc")
_ACCOUNT_FILTER = re.compile(r'^\s*type\s*=\s*"?([A-Z_]+)"?\s*$')
_LOCATION_NAME = re.compile(r"^accounts/([^/]+)/locations/([^/]+)$")
# batchGetReviews body fields; proto JSON accepts the lowerCamel and the original names.
_BATCH_FIELDS = {
    "locationNames": "location_names",
    "pageSize": "page_size",
    "pageToken": "page_token",
    "orderBy": "order_by",
    "ignoreRatingOnlyReviews": "ignore_rating_only_reviews",
}
_BATCH_KEYS = {**{k: k for k in _BATCH_FIELDS}, **{v: k for k, v in _BATCH_FIELDS.items()}}


class PageTokens:
    """Opaque page tokens bound to the list they page through (a token of another list, or a
    forged one, is INVALID_ARGUMENT, as with Google)."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, scope: str, offset: int) -> str:
        digest = hmac.new(self._secret, f"{scope}|{offset}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:9]).decode()

    def issue(self, scope: str, offset: int) -> str:
        raw = f"{offset}.{self._mac(scope, offset)}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def read(self, scope: str, token: str) -> int | None:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            offset_text, mac = raw.split(".", 1)
            offset = int(offset_text)
        except (ValueError, UnicodeDecodeError):
            return None
        if offset < 0 or not hmac.compare_digest(mac, self._mac(scope, offset)):
            return None
        return offset


def _page_size(raw: str | int | None, default: int, maximum: int) -> int | None:
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool):
        return None
    try:
        value = int(raw)
    except (TypeError, ValueError):
        return None
    if value < 0:
        return None
    # How Google treats a pageSize above its maximum is not documented: the emulator caps it.
    return min(value or default, maximum)


def _order(reviews: list[tuple[str, str, Review]], order: str) -> None:
    """Sorts (account, location, review) in place in Google's order for `orderBy`."""
    if order == "updateTime desc":
        reviews.sort(key=lambda item: item[2].order_key(), reverse=True)
    else:
        reviews.sort(key=lambda item: (STARS.index(item[2].star_rating), item[2].review_id))
        if order == "rating desc":
            reviews.reverse()


def _no_reviews_for(location: Location) -> web.Response | None:
    """reviews.list's answer for a location Google serves no reviews for, if it is one."""
    if location.kind is LocationKind.UNVERIFIED:
        return failed_precondition("Location is not verified.")
    if location.kind is LocationKind.DUPLICATE:
        return failed_precondition("Location is a duplicate.")
    if location.kind is LocationKind.SUSPENDED:
        return permission_denied()
    return None


def _truncated(response: web.Response) -> web.Response:
    text = response.text or ""
    return web.Response(status=200, text=text[: len(text) // 2], content_type="application/json")


class EmulatorServer:
    """The emulator as an aiohttp server; `state` is its world, open to tests."""

    def __init__(
        self,
        *,
        seed: int = 1,
        accounts: int = 1,
        locations_per_account: int = 3,
        reviews_per_location: int = 20,
        quota_per_minute: int = 300,
        quota_window: float = 60.0,
        token_lifetime: float = 3600.0,
        api_quotas: dict[str, int] | None = None,
        messy: bool = False,
    ) -> None:
        self.state = EmulatorState(
            seed=seed,
            accounts=accounts,
            locations_per_account=locations_per_account,
            reviews_per_location=reviews_per_location,
            quota_per_minute=quota_per_minute,
            quota_window=quota_window,
            token_lifetime=token_lifetime,
            api_quotas=api_quotas,
            messy=messy,
        )
        self._tokens = PageTokens(f"emulator-page-tokens-{seed}".encode())
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.app = self._build_app()

    @property
    def url(self) -> str:
        """The root to give the sync service as GBP_API_ROOT."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serves on host:port (0: any free port) and returns the bound port."""
        # Cancel a handler whose client went away (a sync that hit its deadline), and do not
        # wait a minute for slow (latency-injected) handlers when stopping.
        self._runner = web.AppRunner(
            self.app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        assert isinstance(
            server, asyncio.Server
        )  # aiohttp's TCPSite serves with loop.create_server
        self.port = server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _build_app(self) -> web.Application:
        app = web.Application()
        app.add_routes(
            [
                web.post("/token", self._token),
                web.get("/v1/accounts", self._accounts),
                web.get("/v1/accounts/{account}/locations", self._locations),
                web.get("/v4/accounts/{account}/locations/{location}/reviews", self._reviews),
                web.post("/v4/accounts/{account}/locations:batchGetReviews", self._batch_reviews),
                *ControlApi(self.state).routes(),
            ]
        )
        return app

    # --- Google's endpoints ----------------------------------------------------------------------

    async def _faults(
        self, endpoint: Endpoint, request: web.Request, *, page_token: bool = False
    ) -> Fault | None:
        self.state.stats.requests[endpoint.value] += 1
        latency, fault = self.state.faults_for(endpoint, request.path, page_token=page_token)
        if latency:
            await asyncio.sleep(latency)
        return fault

    def _record(self, endpoint: Endpoint, request: web.Request, response: web.Response) -> None:
        self.state.stats.calls.append((endpoint.value, request.path_qs, response.status))

    async def _token(self, request: web.Request) -> web.Response:
        response = await self._token_response(request)
        self._record(Endpoint.TOKEN, request, response)
        return response

    async def _token_response(self, request: web.Request) -> web.Response:
        fault = await self._faults(Endpoint.TOKEN, request)
        if fault is not None:
            return token_fault(fault)
        form = await request.post()
        if form.get("grant_type") != "refresh_token":
            return token_error(
                400,
                "unsupported_grant_type",
                "Invalid grant_type: " + str(form.get("grant_type")),
            )
        try:
            token = self.state.issue_access_token(
                str(form.get("refresh_token", "")),
                str(form.get("client_id", "")),
                str(form.get("client_secret", "")),
            )
        except PermissionError:
            return token_error(401, "invalid_client", "The OAuth client was not found.")
        except LookupError:
            return token_error(400, "invalid_grant", "Token has been expired or revoked.")
        return web.json_response(
            {
                "access_token": token,
                "expires_in": int(self.state.token_lifetime),
                "token_type": "Bearer",
                "scope": "https://www.googleapis.com/auth/business.manage",
            }
        )

    async def _api(
        self, endpoint: Endpoint, request: web.Request, body: Any = None
    ) -> web.Response:
        """The common path of every API call; `body`: batchGetReviews' parsed JSON."""
        if endpoint is Endpoint.BATCH_REVIEWS:
            page_token = isinstance(body, dict) and bool(body.get("pageToken"))
        else:
            page_token = bool(request.query.get("pageToken"))
        fault = await self._faults(endpoint, request, page_token=page_token)
        state = self.state
        api = Api.of(endpoint)
        header = request.headers.get("Authorization", "")
        grant = state.access_grant(header[7:]) if header.startswith("Bearer ") else None
        project = grant.project if grant else "unknown"
        if fault is not None and fault.kind is not FaultKind.TRUNCATED_BODY:
            response = api_fault(fault, endpoint, project, state.quota_for(api))
        elif grant is None:
            response = unauthenticated(endpoint)
        elif not state.admit(grant.project, api):
            response = quota_error(api, grant.project, state.quota_for(api))
        else:
            account = request.match_info.get("account")
            if account is not None and not grant.sees(account):
                response = permission_denied()
            else:
                try:
                    response = self._serve(endpoint, request, grant, body)
                except NotFoundError:
                    response = not_found()
            if fault is not None:  # truncated_body: the real answer, cut in half
                response = _truncated(response)
        self._record(endpoint, request, response)
        return response

    async def _accounts(self, request: web.Request) -> web.Response:
        return await self._api(Endpoint.ACCOUNTS, request)

    async def _locations(self, request: web.Request) -> web.Response:
        return await self._api(Endpoint.LOCATIONS, request)

    async def _reviews(self, request: web.Request) -> web.Response:
        return await self._api(Endpoint.REVIEWS, request)

    async def _batch_reviews(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        return await self._api(Endpoint.BATCH_REVIEWS, request, body)

    def _serve(
        self, endpoint: Endpoint, request: web.Request, grant: AccessGrant, body: Any
    ) -> web.Response:
        if endpoint is Endpoint.ACCOUNTS:
            return self._list_accounts(request, grant)
        account_id = request.match_info["account"]
        if endpoint is Endpoint.LOCATIONS:
            return self._list_locations(request, account_id)
        if endpoint is Endpoint.BATCH_REVIEWS:
            return self._batch_get_reviews(account_id, body)
        return self._list_reviews(request, account_id, request.match_info["location"])

    def _page(
        self,
        scope: str,
        items: Sequence[Any],
        key: str,
        *,
        size: str | int | None,
        token: str | None,
        default: int,
        maximum: int,
        extra: dict[str, Any] | None = None,
        render: Callable[[Any], dict[str, Any]] | None = None,
    ) -> web.Response:
        """One page of `items`; `render` writes an item as JSON (only those of the page, so a
        page of a long list costs what the page costs)."""
        page_size = _page_size(size, default, maximum)
        if page_size is None:
            return bad_request("page_size", "Invalid page size")
        offset = 0
        if token:
            read = self._tokens.read(scope, token)
            if read is None:
                return bad_request("page_token", "Invalid page token")
            offset = read
        page = list(items[offset : offset + page_size])
        if render is not None:
            page = [render(item) for item in page]
        body: dict[str, Any] = dict(extra or {})
        if page:  # empty lists are left out, as Google does
            body[key] = page
        if offset + page_size < len(items):
            body["nextPageToken"] = self._tokens.issue(scope, offset + page_size)
        return web.json_response(body)

    def _list_accounts(self, request: web.Request, grant: AccessGrant) -> web.Response:
        filter_text = request.query.get("filter", "")
        wanted: AccountType | None = None
        if filter_text:
            found = _ACCOUNT_FILTER.match(filter_text)
            if not found or found.group(1) not in AccountType.__members__:
                return bad_request("filter", f"Invalid filter: {filter_text[:60]}")
            wanted = AccountType(found.group(1))
        accounts = [self.state.accounts[a] for a in grant.account_ids if a in self.state.accounts]
        items = [a.to_json() for a in accounts if wanted is None or a.type is wanted]
        return self._page(
            f"accounts:{','.join(grant.account_ids)}:{wanted or ''}",
            items,
            "accounts",
            size=request.query.get("pageSize"),
            token=request.query.get("pageToken"),
            default=ACCOUNTS_DEFAULT_PAGE,
            maximum=ACCOUNTS_MAX_PAGE,
        )

    def _list_locations(self, request: web.Request, account_id: str) -> web.Response:
        mask = request.query.get("readMask", "")
        try:
            tree = parse_read_mask(mask)
        except ReadMaskError as exc:
            return bad_request("read_mask", f"Invalid field mask: {exc.args[0][:80]}")
        if not tree:
            return bad_request("read_mask", "Field is required")
        account = self.state.account(account_id)
        items = [apply_mask(loc.to_json(), tree) for loc in account.locations.values()]
        return self._page(
            f"locations:{account_id}:{mask}",
            items,
            "locations",
            size=request.query.get("pageSize"),
            token=request.query.get("pageToken"),
            default=LOCATIONS_DEFAULT_PAGE,
            maximum=LOCATIONS_MAX_PAGE,
        )

    def _list_reviews(
        self, request: web.Request, account_id: str, location_id: str
    ) -> web.Response:
        location = self.state.location(account_id, location_id)
        refused = _no_reviews_for(location)
        if refused is not None:
            return refused
        order = request.query.get("orderBy", "updateTime desc")
        if order not in REVIEW_ORDERS:
            return bad_request("order_by", f"Invalid orderBy: {order[:40]}")
        reviews = [(account_id, location_id, r) for r in location.reviews.values()]
        _order(reviews, order)
        extra: dict[str, Any] = {}
        if reviews:
            stars = [STARS.index(r.star_rating) + 1 for _, _, r in reviews]
            extra = {
                "averageRating": round(sum(stars) / len(stars), 1),
                "totalReviewCount": len(reviews),
            }
        token = request.query.get("pageToken")
        response = self._page(
            f"reviews:{account_id}:{location_id}:{order}",
            reviews,
            "reviews",
            size=request.query.get("pageSize"),
            token=token,
            default=REVIEWS_DEFAULT_PAGE,
            maximum=REVIEWS_MAX_PAGE,
            extra=extra,
            render=lambda item: item[2].to_json(item[0], item[1]),
        )
        if response.status == 200:
            # The page is built (its body is fixed): now a hook may change what comes next.
            self.state.reviews_page_built(request.path, page_token=bool(token))
        return response

    def _batch_get_reviews(self, account_id: str, body: Any) -> web.Response:
        if not isinstance(body, dict):
            return google_error(400, "Invalid JSON payload received. Unexpected token.")
        for key in body:
            if key not in _BATCH_KEYS:
                return google_error(
                    400,
                    f'Invalid JSON payload received. Unknown name "{key[:40]}": Cannot find field.',
                )
        fields = {_BATCH_KEYS[k]: v for k, v in body.items()}
        names = fields.get("locationNames")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return bad_request("location_names", "Location names must be a list of strings")
        if not 1 <= len(names) <= BATCH_MAX_LOCATIONS:
            return bad_request(
                "location_names",
                f"Between 1 and {BATCH_MAX_LOCATIONS} location names are required",
            )
        names = list(dict.fromkeys(names))  # a name given twice is read once
        order = fields.get("orderBy", "updateTime desc")
        if order not in REVIEW_ORDERS:
            return bad_request("order_by", f"Invalid orderBy: {str(order)[:40]}")
        ignore = fields.get("ignoreRatingOnlyReviews", False)
        if not isinstance(ignore, bool):
            return bad_request("ignore_rating_only_reviews", "Must be true or false")
        token = fields.get("pageToken")
        if token is not None and not isinstance(token, str):
            return bad_request("page_token", "Invalid page token")
        reviews: list[tuple[str, str, Review]] = []
        for name in names:
            found = _LOCATION_NAME.match(name)
            if not found:
                return bad_request("location_names", f"Invalid location name: {name[:80]}")
            if found.group(1) != account_id:
                return bad_request(
                    "location_names",
                    f"Location {name[:80]} does not belong to accounts/{account_id}",
                )
            location = self.state.location(account_id, found.group(2))  # NotFoundError: 404
            if location.kind is LocationKind.DUPLICATE:
                return failed_precondition(f"Location {name} is a duplicate.")
            if location.kind is LocationKind.SUSPENDED:
                return failed_precondition(f"Location {name} is suspended.")
            if not location.serves_reviews:
                return failed_precondition(f"Location {name} is not verified.")
            reviews.extend(
                (account_id, location.location_id, r)
                for r in location.reviews.values()
                if r.comment or not ignore
            )
        _order(reviews, order)
        return self._page(
            f"batch:{account_id}:{'|'.join(names)}:{order}:{ignore}",
            reviews,
            "locationReviews",
            size=fields.get("pageSize"),
            token=token,
            default=REVIEWS_DEFAULT_PAGE,
            maximum=REVIEWS_MAX_PAGE,
            render=lambda item: {
                "name": f"accounts/{item[0]}/locations/{item[1]}",
                "review": item[2].to_json(item[0], item[1]),
            },
        )
