"""How the Google client reports a Google that fails below HTTP: each failure of the transport
is a retryable GoogleUnavailable that says whether the request timed out or failed, never an
exception of the HTTP library that a sync would report as an internal error."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

import aiohttp
import httpx
import pytest

from sync_service import google_client as g
from sync_service.http_transport import GoogleTransport
from sync_service.settings import GoogleEndpoints, GoogleSettings

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

_LOCATIONS = b'{"locations": [{"name": "locations/1"}]}'


def _ok(body: bytes) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    return head.encode() + b"\r\n\r\n" + body


@contextlib.asynccontextmanager
async def _server(handler: Handler) -> AsyncIterator[str]:
    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await handler(reader, writer)
        writer.close()

    server = await asyncio.start_server(guarded, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 1)


class _Tokens:
    """A token store never asked: the session's access token is fresh."""

    def refresh_guard(self) -> contextlib.AbstractAsyncContextManager[g.TokenGuard]:
        raise AssertionError("the access token is fresh; nothing refreshes it")


async def _list_locations(root: str) -> list[dict]:
    settings = GoogleSettings(
        endpoints=GoogleEndpoints.rooted(root),
        request_timeout=timedelta(seconds=0.3),
        max_retries=0,
    )
    api = g.GoogleApi(settings)
    credentials = g.StoredCredentials("account", "refresh", "access", None, "v1")
    try:
        return await api.session(credentials, _Tokens()).list_locations("accounts/1")
    finally:
        await api.aclose()


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    await asyncio.sleep(5)


async def _hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")


async def _not_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
    await writer.drain()


async def _half_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(_ok(_LOCATIONS)[:-10])
    await writer.drain()


async def _stalled_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _half_body(reader, writer)
    await asyncio.sleep(5)


@pytest.mark.parametrize(
    ("handler", "outcome"),
    [
        (_silent, "timed out"),
        (_stalled_body, "timed out"),
        (_hang_up, "failed"),
        (_not_http, "failed"),
        (_half_body, "failed"),
    ],
    ids=["no answer", "body stalls", "hangs up", "not HTTP", "body cut short"],
)
async def test_a_transport_failure_is_a_retryable_google_unavailable(handler, outcome):
    async with _server(handler) as root:
        with pytest.raises(g.GoogleUnavailable) as raised:
            await _list_locations(root)

    assert f"locations {outcome}" in str(raised.value), raised.value
    assert raised.value.retry_after is not None


async def test_a_refused_connection_failed_and_did_not_time_out():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there

    with pytest.raises(g.GoogleUnavailable, match="locations failed: ConnectError"):
        await _list_locations(f"http://127.0.0.1:{port}")


async def test_a_proxy_named_by_the_environment_carries_the_requests(monkeypatch):
    request_lines: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request_lines.append((await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")[0])
        writer.write(_ok(_LOCATIONS))
        await writer.drain()

    async with _server(proxy) as proxy_url:
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        locations = await _list_locations("http://google.invalid")

    assert locations == [{"name": "locations/1"}]
    assert request_lines and request_lines[0].startswith(b"GET http://google.invalid/v1/accounts/1")


class _FailingSession:
    """Stands in for aiohttp's session: every request fails with `error`."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def request(self, **_options: object) -> _FailingSession:
        return self

    async def __aenter__(self) -> None:
        raise self.error


_KEY = aiohttp.client_reqrep.ConnectionKey("google", 443, True, True, None, None, None)


_FAILURES = [
    (aiohttp.ConnectionTimeoutError("connect"), httpx.ConnectTimeout),
    (aiohttp.SocketTimeoutError("read"), httpx.ReadTimeout),
    (TimeoutError(), httpx.TimeoutException),
    (aiohttp.ClientConnectorError(_KEY, OSError(111, "refused")), httpx.ConnectError),
    (aiohttp.ServerDisconnectedError(), httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError("cut short"), httpx.ReadError),
    (aiohttp.ClientOSError(104, "reset by peer"), httpx.NetworkError),
    (aiohttp.InvalidURL("http://"), httpx.TransportError),
]


@pytest.mark.parametrize(
    ("error", "expected"), _FAILURES, ids=[type(error).__name__ for error, _ in _FAILURES]
)
async def test_each_aiohttp_failure_is_the_httpx_exception_httpx_raises_for_it(error, expected):
    transport = GoogleTransport(client=lambda: _FailingSession(error))  # type: ignore[arg-type, return-value]
    request = httpx.Request("GET", "https://google/v1/accounts")

    with pytest.raises(httpx.TransportError) as raised:
        await transport.handle_async_request(request)

    assert type(raised.value) is expected
    assert raised.value.request is request
