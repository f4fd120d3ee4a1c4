"""Waking long-polling pickers as soon as a job is ready.

A notification is only a hint: a woken picker re-runs its pick, and a picker that hears
nothing still re-checks every fallback interval. On PostgreSQL the driver's listener LISTENs
on `gmbsync_jobs`, so a job enqueued through any replica wakes pickers on every replica; on
SQLite (one process) the driver calls `notify()` directly after its commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger(__name__)


class JobSignal:
    """A broadcast that a picker subscribes to *before* it looks, so no wake-up is lost.

    `ticket()` returns the current generation's event; `notify()` sets it and starts a new
    generation. A picker that takes a ticket, finds nothing and then waits on the ticket
    returns at once if a job arrived in between.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.closed = False

    def ticket(self) -> asyncio.Event:
        """The event of the current generation, to take before looking for jobs."""
        return self._event

    def notify(self, count: int | None = None) -> None:
        """Wakes the pickers waiting on the current generation."""
        event, self._event = self._event, asyncio.Event()
        event.set()

    def close(self) -> None:
        """Shutdown: every waiting picker wakes and returns what it has (nothing) at once."""
        self.closed = True
        self.notify()


async def wait_for_ticket(ticket: asyncio.Event, seconds: float) -> bool:
    """Waits until the ticket's generation is notified or `seconds` pass."""
    if ticket.is_set():
        return True
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ticket.wait(), seconds)
    return ticket.is_set()
