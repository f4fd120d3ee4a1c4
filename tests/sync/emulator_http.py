"""Helpers for the emulator's own tests: a running emulator, its OAuth tokens, bearer headers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

from sync_service.emulator import EmulatorServer


@contextlib.asynccontextmanager
async def running(**options: Any) -> AsyncIterator[tuple[EmulatorServer, httpx.AsyncClient]]:
    """An emulator on a free loopback port and an HTTP client rooted at it."""
    server = EmulatorServer(**options)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            yield server, client
    finally:
        await server.stop()


async def token(http: httpx.AsyncClient, refresh_token: str | int = 1, client_id: str = "c") -> str:
    """An access token for `emulator-refresh-token-n` (an int) or any refresh token."""
    if isinstance(refresh_token, int):
        refresh_token = f"emulator-refresh-token-{refresh_token}"
    response = await http.post(
        "/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": client_id,
            "client_secret": "s",
        },
    )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def auth(access_token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {access_token}"}


def violation(response: httpx.Response) -> dict[str, str]:
    """The one BadRequest field violation of a 400 answer."""
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    (detail,) = error["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    (found,) = detail["fieldViolations"]
    return found
