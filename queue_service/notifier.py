"""Waking long-polling pickers as soon as a job is ready, and no more of them than there are jobs.

A notification is only a hint: a woken picker re-runs its pick, and a picker that hears
nothing still re-checks every fallback interval. On PostgreSQL the driver's listener LISTENs
on `gmbsync_jobs`, so a job enqueued through any replica wakes pickers on every replica; on
SQLite (one process) the driver calls `notify()` directly after its commit. Either way the
notification says how many jobs became ready, and `notify(n)` wakes at most n waiting pickers,
longest waiting first: a hundred idle pickers do not all run a pick for one new job.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Iterator


class Ticket:
    """One picker's subscription: set when the picker should look (again)."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = asyncio.Event()


class JobSignal:
    """Wake-ups for pickers, who subscribe *before* they look, so that none is lost.

    A subscribed picker is either looking (running its pick) or waiting. `notify(n)` wakes at
    most n waiting pickers, and marks every looking picker, whose pick may have run before the
    new jobs committed: if that pick finds nothing, the picker looks once more instead of
    waiting. `notify()` without a count, and `close()`, wake everyone.
    """

    def __init__(self) -> None:
        self._looking: set[Ticket] = set()
        self._waiting: collections.deque[Ticket] = collections.deque()
        self.closed = False

    @property
    def waiting(self) -> int:
        """How many pickers are waiting for a notification right now."""
        return len(self._waiting)

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[Ticket]:
        """A ticket for one picker, looking from now until it waits or leaves."""
        ticket = Ticket()
        self._looking.add(ticket)
        try:
            yield ticket
        finally:
            self._looking.discard(ticket)
            with contextlib.suppress(ValueError):
                self._waiting.remove(ticket)

    async def wait(self, ticket: Ticket, seconds: float) -> bool:
        """Waits until the ticket is woken or `seconds` pass; True when woken. A ticket marked
        while its picker was looking returns at once."""
        event = ticket._event
        if not event.is_set():
            self._looking.discard(ticket)
            self._waiting.append(ticket)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), seconds)
            finally:
                with contextlib.suppress(ValueError):
                    self._waiting.remove(ticket)
                self._looking.add(ticket)
        woken = event.is_set()
        event.clear()
        return woken

    def notify(self, count: int | None = None) -> None:
        """`count` jobs became ready (None: an unknown number): wakes at most that many
        waiting pickers, longest waiting first, and makes every looking picker look again."""
        for ticket in self._looking:
            ticket._event.set()
        woken = len(self._waiting) if count is None else min(count, len(self._waiting))
        for _ in range(woken):
            self._waiting.popleft()._event.set()

    def close(self) -> None:
        """Shutdown: every waiting picker wakes and returns what it has (nothing) at once."""
        self.closed = True
        self.notify()
