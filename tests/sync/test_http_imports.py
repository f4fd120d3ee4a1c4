"""A request to Google through the service's client imports nothing: a failed import is
retried on every call.

httpcore asks `import sniffio` on every request (several times); when the module is missing
Python searches the whole path again each time, because failed imports are not cached. That
was about 5 % of SyncService's CPU in a sync, until sniffio became a dependency.
"""

from __future__ import annotations

import asyncio
import importlib.abc
import sys
from collections.abc import Sequence
from types import ModuleType

from sync_service.http_transport import GoogleHttpClient

_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class _ImportRecorder(importlib.abc.MetaPathFinder):
    """Sees every import that reaches the path search (a module not yet in sys.modules)."""

    def __init__(self) -> None:
        self.searched: list[str] = []

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> None:
        self.searched.append(fullname)
        return None


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(_RESPONSE)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionResetError):
        pass
    writer.close()


async def test_repeated_requests_search_for_no_module() -> None:
    server = await asyncio.start_server(_answer, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    recorder = _ImportRecorder()
    try:
        async with GoogleHttpClient() as client:
            await client.get(url)  # the first request may import what httpx loads lazily
            sys.meta_path.insert(0, recorder)
            try:
                for _ in range(5):
                    assert (await client.get(url)).json() == {}
            finally:
                sys.meta_path.remove(recorder)
    finally:
        server.close()
        await server.wait_closed()

    assert recorder.searched == []
