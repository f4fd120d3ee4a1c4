"""Store operations that survive a connection found dead: run once more on a fresh connection.

A database restart, a terminated backend or a dropped network link kills pooled connections;
the first statement on one fails and SQLAlchemy invalidates the pool. An operation safe to run
twice is then retried once, so the caller never sees the stale connection's death.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


def retried_on_disconnect(
    operation: Callable[P, Awaitable[R]],
) -> Callable[P, Awaitable[R]]:
    """Runs a store operation once more, on a fresh connection, when its connection was found
    dead (a database restart, a terminated backend, a dropped network link).

    SQLAlchemy marks such an error `connection_invalidated` and invalidates the whole pool, so
    the retry checks out a new connection instead of the next stale one; if the database is
    still away, the retry fails at connect and the error goes up (UNAVAILABLE to the client).

    Only for operations that are safe to run twice. A connection can die after the database
    committed but before the answer arrived, so a retry may meet its own first attempt's work:
    - reads change nothing;
    - enqueues are guarded by the one-active-job-per-account index: the retry finds the job
      the first attempt made and reports it as a duplicate, never a second job;
    - every lease-guarded change (extend, complete, fail, release, report) needs the current
      lease token, which the first attempt's commit cleared or changed, so the retry is refused
      (FAILED_PRECONDITION, as a client's own retry would be) and cannot apply twice;
    - a pick leases other jobs; the first attempt's jobs, whose tokens never reached the worker,
      are taken over when their lease runs out, exactly as without the retry;
    - recovery and pruning act only on rows still in the state they look for.
    Not retried: cancelling and retrying a job, and starting or finishing a worker run, whose
    second run would answer wrongly (or start a second run); their callers retry UNAVAILABLE.
    """

    @functools.wraps(operation)
    async def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await operation(*args, **kwargs)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            log.info(
                "%s: database connection lost (%s); retrying once on a fresh connection",
                operation.__name__,
                str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__,
            )
        return await operation(*args, **kwargs)

    return run
