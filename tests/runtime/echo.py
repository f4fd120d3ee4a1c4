"""A tiny service on the shared runtime, for tests of what every service gets from it.

`/test.Echo/WhoAmI` answers with the caller's user id (or role) as text, after every call in
flight has arrived, so that concurrent calls are truly in the handler at the same time;
`/test.Echo/Boom` raises.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc

from service_runtime.auth import USER, AuthInterceptor, AuthSettings, current_principal
from service_runtime.serving import GrpcServer, ServiceRegistration

SERVICE = "test.Echo"
WHO_AM_I = f"/{SERVICE}/WhoAmI"
BOOM = f"/{SERVICE}/Boom"
POLICY = {WHO_AM_I: USER, BOOM: USER}


class Echo:
    def __init__(self) -> None:
        # WhoAmI waits until this many calls are in the handler at once (1: no waiting).
        self.together = 1
        self._arrived = 0
        self._all_here = asyncio.Event()

    async def who_am_i(self, _request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        self._arrived += 1
        if self._arrived >= self.together:
            self._all_here.set()
        await asyncio.wait_for(self._all_here.wait(), 30)
        principal = current_principal()
        return str(principal.user_id or principal.role.value).encode()

    async def boom(self, _request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        raise RuntimeError("the handler failed")

    def register(self, server: grpc.aio.Server) -> None:
        handlers = {
            "WhoAmI": grpc.unary_unary_rpc_method_handler(self.who_am_i),
            "Boom": grpc.unary_unary_rpc_method_handler(self.boom),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


@asynccontextmanager
async def echo_server(
    settings: AuthSettings | None, **server_options: Any
) -> AsyncIterator[tuple[Echo, grpc.aio.Channel, AuthInterceptor | None]]:
    """An Echo server behind AuthInterceptor (none if `settings` is None) and a channel to it."""
    echo = Echo()
    auth = AuthInterceptor(settings, POLICY) if settings is not None else None
    server = GrpcServer(
        listen_addr="127.0.0.1:0",
        services=[ServiceRegistration(SERVICE, echo.register)],
        interceptors=[auth] if auth is not None else [],
        **server_options,
    )
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield echo, channel, auth
    finally:
        await server.stop(0.5)


async def call(channel: grpc.aio.Channel, method: str, metadata: Any = ()) -> bytes:
    return await channel.unary_unary(method)(b"", metadata=metadata, timeout=30)
