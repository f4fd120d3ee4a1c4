"""The emulator's HTTP face (aiohttp): Google's paths, JSON shapes, limits and error bodies.

Served under one root, as `GBP_API_ROOT` expects:
  POST /token                                          OAuth 2.0 refresh (form-encoded)
  GET  /v1/accounts                                    Account Management accounts.list
  GET  /v1/accounts/{a}/locations                      Business Information locations.list
  GET  /v4/accounts/{a}/locations/{l}/reviews          v4 reviews.list
  /__control/...                                       test control (see `_control_routes`)

Each API request goes through: added latency and injected faults, then the bearer token, then
the per-project quota (a sliding window, like the client's limiter), then the handler.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
from typing import Any

from aiohttp import web

from sync_service.emulator.state import (
    STARS,
    EmulatorState,
    Endpoint,
    Fault,
    FaultKind,
    NotFoundError,
)

log = logging.getLogger(__name__)

ACCOUNTS_MAX_PAGE = 20
LOCATIONS_DEFAULT_PAGE, LOCATIONS_MAX_PAGE = 10, 100
REVIEWS_DEFAULT_PAGE, REVIEWS_MAX_PAGE = 50, 50
LOCATION_FIELDS = {
    "name",
    "title",
    "storeCode",
    "languageCode",
    "phoneNumbers",
    "categories",
    "storefrontAddress",
    "websiteUri",
    "openInfo",
    "metadata",
}
REVIEW_ORDERS = ("updateTime desc", "rating", "rating desc")
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


def google_error(
    status: int,
    message: str,
    *,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An AIP-193 error body, as Google's JSON APIs send them."""
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": _STATUS_NAMES.get(status, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    return web.json_response({"error": error}, status=status, headers=headers)


def _error_info(reason: str, **metadata: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": reason,
        "domain": "googleapis.com",
    }
    if metadata:
        info["metadata"] = metadata
    return info


def _quota_error(service: str, project: str, limit: int) -> web.Response:
    return google_error(
        429,
        f"Quota exceeded for quota metric 'Requests' and limit 'Requests per minute' of "
        f"service '{service}' for consumer 'project_number:{project}'.",
        details=[
            _error_info(
                "RATE_LIMIT_EXCEEDED",
                service=service,
                quota_limit="DefaultRequestsPerMinutePerProject",
                quota_limit_value=str(limit),
                quota_unit="1/min/{project}",
            )
        ],
    )


def _services(endpoint: Endpoint) -> str:
    return {
        Endpoint.ACCOUNTS: "mybusinessaccountmanagement.googleapis.com",
        Endpoint.LOCATIONS: "mybusinessbusinessinformation.googleapis.com",
        Endpoint.REVIEWS: "mybusiness.googleapis.com",
    }.get(endpoint, "oauth2.googleapis.com")


def _fault_response(fault: Fault, endpoint: Endpoint, project: str, quota: int) -> web.Response:
    headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else None
    if endpoint is Endpoint.TOKEN and fault.kind not in (FaultKind.UNAVAILABLE, FaultKind.INTERNAL):
        # The OAuth endpoint speaks its own error shape.
        return web.json_response(
            {"error": "invalid_grant", "error_description": "Token has been expired or revoked."},
            status=400,
        )
    if fault.kind is FaultKind.EXPIRED_TOKEN:
        return google_error(
            401,
            "Request had invalid authentication credentials. Expected OAuth 2 access token, "
            "login cookie or other valid authentication credential.",
            details=[_error_info("ACCESS_TOKEN_EXPIRED", service=_services(endpoint))],
        )
    if fault.kind is FaultKind.RATE_LIMIT:
        response = _quota_error(_services(endpoint), project, quota)
        if headers:
            response.headers.update(headers)
        return response
    if fault.kind is FaultKind.QUOTA_ZERO:
        return _quota_error(_services(endpoint), project, 0)
    if fault.kind is FaultKind.PERMISSION_DENIED:
        return google_error(403, "The caller does not have permission")
    if fault.kind is FaultKind.NOT_FOUND:
        return google_error(404, "Requested entity was not found.")
    if fault.kind is FaultKind.INTERNAL:
        return google_error(500, "Internal error encountered.", headers=headers)
    return google_error(503, "The service is currently unavailable.", headers=headers)


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


def _page_size(raw: str | None, default: int, maximum: int) -> int | None:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        return None
    if value < 0:
        return None
    # How Google treats a pageSize above its maximum is not documented: the emulator caps it.
    return min(value or default, maximum)


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
    ) -> None:
        self.state = EmulatorState(
            seed=seed,
            accounts=accounts,
            locations_per_account=locations_per_account,
            reviews_per_location=reviews_per_location,
            quota_per_minute=quota_per_minute,
            quota_window=quota_window,
            token_lifetime=token_lifetime,
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
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
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
                *self._control_routes(),
            ]
        )
        return app

    # --- Google's endpoints ----------------------------------------------------------------------

    async def _faults(self, endpoint: Endpoint, request: web.Request) -> Fault | None:
        self.state.stats.requests[endpoint.value] += 1
        latency, fault = self.state.faults_for(endpoint, request.path)
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
            return _fault_response(fault, Endpoint.TOKEN, "", self.state.quota_per_minute)
        form = await request.post()
        if form.get("grant_type") != "refresh_token":
            return web.json_response(
                {
                    "error": "unsupported_grant_type",
                    "error_description": "Invalid grant_type: " + str(form.get("grant_type")),
                },
                status=400,
            )
        try:
            token = self.state.issue_access_token(
                str(form.get("refresh_token", "")),
                str(form.get("client_id", "")),
                str(form.get("client_secret", "")),
            )
        except PermissionError:
            return web.json_response(
                {"error": "invalid_client", "error_description": "The OAuth client was not found."},
                status=401,
            )
        except LookupError:
            return web.json_response(
                {
                    "error": "invalid_grant",
                    "error_description": "Token has been expired or revoked.",
                },
                status=400,
            )
        return web.json_response(
            {
                "access_token": token,
                "expires_in": int(self.state.token_lifetime),
                "token_type": "Bearer",
                "scope": "https://www.googleapis.com/auth/business.manage",
            }
        )

    async def _api(self, endpoint: Endpoint, request: web.Request) -> web.Response:
        """The common path of every API call."""
        fault = await self._faults(endpoint, request)
        state = self.state
        header = request.headers.get("Authorization", "")
        grant = state.access_grant(header[7:]) if header.startswith("Bearer ") else None
        project = grant.project if grant else "unknown"
        if fault is not None:
            response = _fault_response(fault, endpoint, project, state.quota_per_minute)
        elif grant is None:
            response = google_error(
                401,
                "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                "login cookie or other valid authentication credential.",
                details=[_error_info("ACCESS_TOKEN_EXPIRED", service=_services(endpoint))],
            )
        elif not state.admit(grant.project):
            response = _quota_error(_services(endpoint), grant.project, state.quota_per_minute)
        else:
            account = request.match_info.get("account")
            if account is not None and account != grant.account_id:
                response = google_error(403, "The caller does not have permission")
            else:
                try:
                    response = self._serve(endpoint, request, grant.account_id)
                except NotFoundError:
                    response = google_error(404, "Requested entity was not found.")
        self._record(endpoint, request, response)
        return response

    async def _accounts(self, request: web.Request) -> web.Response:
        return await self._api(Endpoint.ACCOUNTS, request)

    async def _locations(self, request: web.Request) -> web.Response:
        return await self._api(Endpoint.LOCATIONS, request)

    async def _reviews(self, request: web.Request) -> web.Response:
        return await self._api(Endpoint.REVIEWS, request)

    def _serve(self, endpoint: Endpoint, request: web.Request, account_id: str) -> web.Response:
        if endpoint is Endpoint.ACCOUNTS:
            items = [self.state.account(account_id).to_json()]
            return self._page(request, "accounts", items, "accounts", 20, ACCOUNTS_MAX_PAGE, {})
        if endpoint is Endpoint.LOCATIONS:
            return self._list_locations(request, account_id)
        return self._list_reviews(request, account_id, request.match_info["location"])

    def _page(
        self,
        request: web.Request,
        scope: str,
        items: list[dict[str, Any]],
        key: str,
        default: int,
        maximum: int,
        extra: dict[str, Any],
    ) -> web.Response:
        size = _page_size(request.query.get("pageSize"), default, maximum)
        if size is None:
            return _bad_request("page_size", "Invalid page size")
        offset = 0
        token = request.query.get("pageToken")
        if token:
            read = self._tokens.read(scope, token)
            if read is None:
                return _bad_request("page_token", "Invalid page token")
            offset = read
        page = items[offset : offset + size]
        body: dict[str, Any] = dict(extra)
        if page:  # empty lists are left out, as Google does
            body[key] = page
        if offset + size < len(items):
            body["nextPageToken"] = self._tokens.issue(scope, offset + size)
        return web.json_response(body)

    def _list_locations(self, request: web.Request, account_id: str) -> web.Response:
        mask = request.query.get("readMask", "")
        if not mask:
            return _bad_request("read_mask", "Field is required")
        fields = {f.strip() for f in mask.split(",") if f.strip()}
        unknown = fields - LOCATION_FIELDS
        if unknown:
            return _bad_request("read_mask", f"Invalid field mask: {sorted(unknown)[0]}")
        account = self.state.account(account_id)
        items = [
            {k: v for k, v in loc.to_json().items() if k in fields}
            for loc in account.locations.values()
        ]
        return self._page(
            request,
            f"locations:{account_id}:{mask}",
            items,
            "locations",
            LOCATIONS_DEFAULT_PAGE,
            LOCATIONS_MAX_PAGE,
            {},
        )

    def _list_reviews(
        self, request: web.Request, account_id: str, location_id: str
    ) -> web.Response:
        location = self.state.location(account_id, location_id)
        order = request.query.get("orderBy", "updateTime desc")
        if order not in REVIEW_ORDERS:
            return _bad_request("order_by", f"Invalid orderBy: {order[:40]}")
        reviews = list(location.reviews.values())
        if order == "updateTime desc":
            reviews.sort(key=lambda r: (r.update_time, r.review_id), reverse=True)
        else:
            reviews.sort(key=lambda r: (STARS.index(r.star_rating), r.review_id))
            if order == "rating desc":
                reviews.reverse()
        items = [r.to_json(account_id, location_id) for r in reviews]
        extra: dict[str, Any] = {}
        if reviews:
            stars = [STARS.index(r.star_rating) + 1 for r in reviews]
            extra = {
                "averageRating": round(sum(stars) / len(stars), 1),
                "totalReviewCount": len(reviews),
            }
        return self._page(
            request,
            f"reviews:{account_id}:{location_id}:{order}",
            items,
            "reviews",
            REVIEWS_DEFAULT_PAGE,
            REVIEWS_MAX_PAGE,
            extra,
        )

    # --- Control API -------------------------------------------------------------------------------

    def _control_routes(self) -> list[web.RouteDef]:
        base = "/__control"
        loc = base + "/accounts/{account}/locations/{location}"
        return [
            web.get(base + "/state", self._c_state),
            web.post(base + "/reset", self._c_reset),
            web.post(base + "/accounts", self._c_add_account),
            web.post(base + "/accounts/{account}/locations", self._c_add_location),
            web.patch(loc, self._c_edit_location),
            web.delete(loc, self._c_delete_location),
            web.post(loc + "/reviews", self._c_add_review),
            web.patch(loc + "/reviews/{review}", self._c_edit_review),
            web.delete(loc + "/reviews/{review}", self._c_delete_review),
            web.post(base + "/tokens/revoke", self._c_revoke),
            web.post(base + "/tokens/expire", self._c_expire),
            web.post(base + "/oauth-client", self._c_oauth_client),
            web.post(base + "/faults", self._c_add_fault),
            web.delete(base + "/faults", self._c_clear_faults),
        ]

    @staticmethod
    async def _json(request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        try:
            body = await request.json()
        except json.JSONDecodeError:
            raise web.HTTPBadRequest(text="body must be JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="body must be a JSON object")
        return body

    async def _control(self, action: Any) -> web.Response:
        try:
            result = action()
        except NotFoundError as exc:
            return web.json_response({"error": str(exc.args[0])}, status=404)
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if result is None:
            return web.json_response({"ok": True})
        return web.json_response(result)

    async def _c_state(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.summary())

    async def _c_reset(self, request: web.Request) -> web.Response:
        return await self._control(self.state.reset)

    async def _c_add_account(self, request: web.Request) -> web.Response:
        body = await self._json(request)

        def add() -> dict[str, Any]:
            name, token = self.state.add_account(
                name=body.get("accountName"),
                locations=int(body.get("locations", 0)),
                reviews_per_location=int(body.get("reviewsPerLocation", 0)),
            )
            return {"name": name, "refreshToken": token}

        return await self._control(add)

    async def _c_add_location(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        account = request.match_info["account"]
        return await self._control(
            lambda: self.state.add_location(
                account, title=body.get("title"), reviews=int(body.get("reviews", 0))
            )
        )

    async def _c_edit_location(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        m = request.match_info
        return await self._control(
            lambda: self.state.edit_location(m["account"], m["location"], **body)
        )

    async def _c_delete_location(self, request: web.Request) -> web.Response:
        m = request.match_info
        return await self._control(lambda: self.state.delete_location(m["account"], m["location"]))

    async def _c_add_review(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        m = request.match_info
        return await self._control(
            lambda: self.state.add_review(
                m["account"],
                m["location"],
                star_rating=body.get("starRating"),
                comment=body.get("comment"),
                reviewer_name=body.get("reviewerName"),
                anonymous=bool(body.get("anonymous", False)),
            )
        )

    async def _c_edit_review(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        m = request.match_info
        return await self._control(
            lambda: self.state.edit_review(
                m["account"],
                m["location"],
                m["review"],
                comment=body.get("comment"),
                star_rating=body.get("starRating"),
                reply_comment=body.get("replyComment"),
            )
        )

    async def _c_delete_review(self, request: web.Request) -> web.Response:
        m = request.match_info
        return await self._control(
            lambda: self.state.delete_review(m["account"], m["location"], m["review"])
        )

    async def _c_revoke(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        return await self._control(
            lambda: self.state.revoke_refresh_token(str(body["refreshToken"]))
        )

    async def _c_expire(self, request: web.Request) -> web.Response:
        return await self._control(self.state.expire_access_tokens)

    async def _c_oauth_client(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        return await self._control(
            lambda: self.state.require_client(str(body["clientId"]), str(body["clientSecret"]))
        )

    async def _c_add_fault(self, request: web.Request) -> web.Response:
        body = await self._json(request)

        def add() -> dict[str, Any]:
            fault = self.state.add_fault(Fault.from_json(body))
            return {"id": fault.id}

        return await self._control(add)

    async def _c_clear_faults(self, request: web.Request) -> web.Response:
        return await self._control(self.state.clear_faults)


def _bad_request(field: str, description: str) -> web.Response:
    return google_error(
        400,
        "Request contains an invalid argument.",
        details=[
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": field, "description": description}],
            }
        ],
    )
