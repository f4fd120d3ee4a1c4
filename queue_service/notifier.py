"""Waking long-polling pickers as soon as a job is ready.

A notification is only a hint: a woken picker re-runs its pick, and a picker that hears
nothing still re-checks every fallback interval. On PostgreSQL a dedicated connection LISTENs
on `gmbsync_jobs`, so a job enqueued through any replica wakes pickers on every replica; on
SQLite (one process) the store calls `notify()` directly after its commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg
from sqlalchemy.engine import make_url

from queue_service.store import NOTIFY_CHANNEL

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
        return self._event

    def notify(self) -> None:
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


def libpq_conninfo(database_url: str) -> str:
    """An SQLAlchemy PostgreSQL URL as a libpq URI that psycopg accepts."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class PostgresListener:
    """Relays NOTIFY gmbsync_jobs to a JobSignal; reconnects with backoff when the link drops."""

    def __init__(self, database_url: str, signal: JobSignal) -> None:
        self._conninfo = libpq_conninfo(database_url)
        self._signal = signal
        self.connected = asyncio.Event()

    async def run(self) -> None:
        backoff = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.connected.set()
                    backoff = 0.5
                    # Anything enqueued while we were not listening must be looked at now.
                    self._signal.notify()
                    async for _ in conn.notifies():
                        self._signal.notify()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the link dropped; pickers fall back to polling meanwhile
                log.warning(
                    "LISTEN %s lost (%s); reconnecting in %.1f s", NOTIFY_CHANNEL, exc, backoff
                )
            self.connected.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
