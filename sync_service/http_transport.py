"""The HTTP transport of the calls to Google: httpx's API over aiohttp's connection pool.

httpx's own transport (httpcore on anyio) cost a busy SyncService about 0.6 ms more CPU per
request than aiohttp's pool, most of it in anyio's cancel scopes and locks and in a poll of each
pooled socket before reuse (docs/sync-service.md, "What a sync costs in HTTP").
`httpx_aiohttp` provides the transport, so the client keeps httpx's requests, responses,
timeouts and exceptions.

What this module adds is the exceptions: the library reports a refused connection and a server
that hung up as timeouts, and lets a malformed response out as an aiohttp error that no caller
of httpx expects. Here every failure of aiohttp becomes the httpx exception that httpx's own
transport raises for it, which the client classifies (timed out, or failed) and retries.
"""

from __future__ import annotations

import ssl
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport, HttpxAiohttpClient

# httpx's own default pool.
_DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)

# Most specific first: aiohttp's timeouts are also connection errors.
_EXCEPTIONS: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (TimeoutError, httpx.TimeoutException),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.ReadError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),
    (aiohttp.ClientOSError, httpx.NetworkError),
    (aiohttp.ClientError, httpx.TransportError),
)


def _httpx_error(exc: BaseException, request: httpx.Request) -> httpx.TransportError | None:
    """The httpx exception for a failure of aiohttp (or of the library's own mapping of one,
    judged by its cause); None if it is not aiohttp's."""
    cause = exc.__cause__ if isinstance(exc, httpx.TransportError) else exc
    for raised, mapped in _EXCEPTIONS:
        if isinstance(cause, raised):
            return mapped(str(cause) or type(cause).__name__, request=request)
    return None


class GoogleTransport(AiohttpTransport):
    """`AiohttpTransport` whose failures are the httpx exceptions httpx's transport raises."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except (httpx.TransportError, aiohttp.ClientError, TimeoutError) as exc:
            mapped = _httpx_error(exc, request)
            if mapped is None:
                raise
            raise mapped from exc


class GoogleHttpClient(HttpxAiohttpClient):
    """httpx's client with `GoogleTransport` for direct and proxied requests alike: a proxy
    that the environment names (HTTPS_PROXY, NO_PROXY...) is honoured as httpx honours it."""

    def _init_transport(
        self,
        verify: ssl.SSLContext | str | bool = True,
        cert: Any = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx.Limits = _DEFAULT_LIMITS,
        transport: httpx.AsyncBaseTransport | None = None,
        **options: Any,
    ) -> httpx.AsyncBaseTransport:
        if transport is not None:
            return transport
        return GoogleTransport(verify=verify, cert=cert, trust_env=trust_env, limits=limits)

    def _init_proxy_transport(
        self,
        proxy: httpx.Proxy,
        verify: ssl.SSLContext | str | bool = True,
        cert: Any = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx.Limits = _DEFAULT_LIMITS,
        **options: Any,
    ) -> httpx.AsyncBaseTransport:
        return GoogleTransport(
            verify=verify, cert=cert, trust_env=trust_env, limits=limits, proxy=proxy
        )
