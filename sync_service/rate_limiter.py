"""A client-side limiter that keeps one Google Cloud project under its request quota.

Google counts requests per project per minute, and every sync of a process shares the project,
so one limiter is shared by all of them. It is a sliding window over *completion* times: a slot
is held from the moment a request is sent until `window` after its response arrived. Google (or
the emulator) stamps a request somewhere between our send and our receipt, so counting from the
receipt is never more generous than the server's own count, whatever the network delay: a
limiter that counted from the send could be one request over when an early request was slow.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator


class RateLimiter:
    """At most `limit` requests in any `window` seconds, in flight ones included."""

    def __init__(self, limit: int, window: float) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("limit must be >= 1 and window > 0")
        self.limit = limit
        self.window = window
        self._in_flight = 0
        self._completed: collections.deque[float] = collections.deque()
        # Waiters queue on the lock in arrival order, so no sync starves another.
        self._turn = asyncio.Lock()
        self._released = asyncio.Event()
        self.waits = 0  # how many acquisitions had to wait: observability and tests

    def _prune(self, now: float) -> None:
        horizon = now - self.window
        while self._completed and self._completed[0] <= horizon:
            self._completed.popleft()

    async def acquire(self) -> None:
        """Waits for a free slot and takes it; pair with `release()`."""
        async with self._turn:
            waited = False
            while True:
                now = time.monotonic()
                self._prune(now)
                if self._in_flight + len(self._completed) < self.limit:
                    self._in_flight += 1
                    if waited:
                        self.waits += 1
                    return
                waited = True
                self._released.clear()
                # Wake when the oldest completion leaves the window, or a request completes
                # (which may free nothing yet, but lets the next wake-up time be recomputed).
                timeout = self._completed[0] + self.window - now if self._completed else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._released.wait(), timeout)

    def release(self) -> None:
        """Marks one request done now; its slot frees `window` seconds later."""
        self._in_flight -= 1
        self._completed.append(time.monotonic())
        self._released.set()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Holds one slot for the duration of one HTTP request."""
        await self.acquire()
        try:
            yield
        finally:
            self.release()
