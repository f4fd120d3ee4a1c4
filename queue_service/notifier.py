"""Waking long-polling pickers as soon as a job is ready, and no more of them than there are jobs.

A notification is only a hint: a woken picker re-runs its pick, and a picker that hears
nothing still re-checks every fallback interval. On PostgreSQL the driver's listener LISTENs
on `gmbsync_jobs`, so a job enqueued through any replica wakes pickers on every replica; on
SQLite (one process) the driver calls `notify()` directly after its commit. Either way the
notification says how many jobs became ready, and `notify(n)` wakes at most n waiting pickers,
longest waiting first: a hundred idle pickers do not all run a pick for one new job.

Jobs also become ready with no notification: a delayed or retried job when its `scheduled_at`
comes, a lease when it expires. Those are found by the fallback check, which is shared by the
whole process: every fallback interval one waiting picker, the longest waiting, is woken to
look (`wait(..., fallback=...)`), rather than every picker looking on its own timer. A picker
woken so that finds jobs passes the check on to the next waiting picker (`pass_on`), so a
burst of due jobs is taken by as many pickers as it needs at once. Eight idle workers cost one
pick per interval, not eight.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Iterator


class Ticket:
    """One picker's subscription: set when the picker should look (again). `by_fallback` says
    the last wake-up was the shared fallback check, not a notification."""

    __slots__ = ("_event", "by_fallback")

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.by_fallback = False


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
        self._fallback: asyncio.Task[None] | None = None
        self.closed = False
        #: Fallback checks made so far (a waiting picker woken by the shared timer).
        self.fallback_checks = 0

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

    async def wait(self, ticket: Ticket, seconds: float, *, fallback: float | None = None) -> bool:
        """Waits until the ticket is woken or `seconds` pass; True when woken. A ticket marked
        while its picker was looking returns at once. With `fallback` (seconds), the process's
        shared fallback check runs while anyone waits, waking one waiting picker per interval."""
        event = ticket._event
        ticket.by_fallback = False
        if fallback is not None and not self.closed:
            self._start_fallback(fallback)
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

    def pass_on(self) -> None:
        """A picker woken by the fallback check found jobs: there may be more, so the next
        waiting picker looks too (and passes it on in turn if it finds some)."""
        if self._waiting:
            ticket = self._waiting.popleft()
            ticket.by_fallback = True
            ticket._event.set()

    def close(self) -> None:
        """Shutdown: every waiting picker wakes and returns what it has (nothing) at once."""
        self.closed = True
        if self._fallback is not None:
            self._fallback.cancel()
        self.notify()

    def _start_fallback(self, interval: float) -> None:
        if self._fallback is None or self._fallback.done():
            self._fallback = asyncio.get_running_loop().create_task(
                self._fallback_checks(interval), name="pick-fallback"
            )

    async def _fallback_checks(self, interval: float) -> None:
        """Every `interval`, wakes the longest-waiting picker; ends once nobody waits."""
        while not self.closed:
            await asyncio.sleep(interval)
            if not self._waiting:
                return
            self.fallback_checks += 1
            self.pass_on()
