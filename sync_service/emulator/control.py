"""The emulator's control API (`/__control/...`, JSON): what tests, benchmarks and demos use to
change the world, inject faults and read statistics over HTTP. Each route is one call on
`EmulatorState`; a name that does not exist is 404, a bad value 400 `{"error": ...}`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from sync_service.emulator.state import EmulatorState, Fault, NotFoundError


class ControlApi:
    """Routes under `/__control`, bound to one state."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    def routes(self) -> list[web.RouteDef]:
        base = "/__control"
        loc = base + "/accounts/{account}/locations/{location}"
        return [
            web.get(base + "/state", self._state),
            web.post(base + "/reset", self._reset),
            web.post(base + "/accounts", self._add_account),
            web.post(base + "/accounts/{account}/locations", self._add_location),
            web.patch(loc, self._edit_location),
            web.delete(loc, self._delete_location),
            web.post(loc + "/reviews", self._add_review),
            web.patch(loc + "/reviews/{review}", self._edit_review),
            web.delete(loc + "/reviews/{review}", self._delete_review),
            web.post(base + "/grants", self._add_grant),
            web.post(base + "/tokens/revoke", self._revoke),
            web.post(base + "/tokens/expire", self._expire),
            web.post(base + "/oauth-client", self._oauth_client),
            web.post(base + "/faults", self._add_fault),
            web.delete(base + "/faults", self._clear_faults),
            web.post(base + "/hooks", self._add_hook),
            web.delete(base + "/hooks", self._clear_hooks),
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

    @staticmethod
    def _run(action: Callable[[], Any]) -> web.Response:
        try:
            result = action()
        except NotFoundError as exc:
            return web.json_response({"error": str(exc.args[0])}, status=404)
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if result is None:
            return web.json_response({"ok": True})
        return web.json_response(result)

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.summary())

    async def _reset(self, request: web.Request) -> web.Response:
        return self._run(self.state.reset)

    async def _add_account(self, request: web.Request) -> web.Response:
        body = await self._json(request)

        def add() -> dict[str, Any]:
            name, token = self.state.add_account(
                name=body.get("accountName"),
                locations=int(body.get("locations", 0)),
                reviews_per_location=int(body.get("reviewsPerLocation", 0)),
                type=str(body.get("type", "PERSONAL")),
            )
            return {"name": name, "refreshToken": token}

        return self._run(add)

    async def _add_location(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        account = request.match_info["account"]
        return self._run(
            lambda: self.state.add_location(
                account,
                title=body.get("title"),
                reviews=int(body.get("reviews", 0)),
                kind=str(body.get("kind", "verified")),
            )
        )

    async def _edit_location(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        m = request.match_info
        return self._run(lambda: self.state.edit_location(m["account"], m["location"], **body))

    async def _delete_location(self, request: web.Request) -> web.Response:
        m = request.match_info
        return self._run(lambda: self.state.delete_location(m["account"], m["location"]))

    async def _add_review(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        m = request.match_info
        return self._run(
            lambda: self.state.add_review(
                m["account"],
                m["location"],
                star_rating=body.get("starRating"),
                comment=body.get("comment"),
                reviewer_name=body.get("reviewerName"),
                anonymous=bool(body.get("anonymous", False)),
            )
        )

    async def _edit_review(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        m = request.match_info
        return self._run(
            lambda: self.state.edit_review(
                m["account"],
                m["location"],
                m["review"],
                comment=body.get("comment"),
                star_rating=body.get("starRating"),
                reply_comment=body.get("replyComment"),
            )
        )

    async def _delete_review(self, request: web.Request) -> web.Response:
        m = request.match_info
        return self._run(lambda: self.state.delete_review(m["account"], m["location"], m["review"]))

    async def _add_grant(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        return self._run(lambda: {"refreshToken": self.state.add_grant(body["accounts"])})

    async def _revoke(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        return self._run(lambda: self.state.revoke_refresh_token(str(body["refreshToken"])))

    async def _expire(self, request: web.Request) -> web.Response:
        return self._run(self.state.expire_access_tokens)

    async def _oauth_client(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        return self._run(
            lambda: self.state.require_client(str(body["clientId"]), str(body["clientSecret"]))
        )

    async def _add_fault(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        return self._run(lambda: {"id": self.state.add_fault(Fault.from_json(body)).id})

    async def _clear_faults(self, request: web.Request) -> web.Response:
        return self._run(self.state.clear_faults)

    async def _add_hook(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        return self._run(lambda: {"id": self.state.add_hook_from_json(body).id})

    async def _clear_hooks(self, request: web.Request) -> web.Response:
        return self._run(self.state.clear_hooks)
