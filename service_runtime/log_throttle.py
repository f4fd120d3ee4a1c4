"""Keeps a down trace collector from flooding the logs.

The OTLP exporter logs every failed export and every retry: with Jaeger gone, a line every few
seconds per process, burying everything else. `LogThrottle` lets the first record of each kind
through, then at most one per `every` (five minutes by default), and that one says how many
were held back. Nothing is lost silently, and the logs stay readable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta

# The loggers of the OTLP gRPC exporter's retries and failures.
EXPORTER_LOGGERS = ("opentelemetry.exporter.otlp.proto.grpc.exporter",)
DEFAULT_EVERY = timedelta(minutes=5)


class LogThrottle(logging.Filter):
    """Passes one record per (level, message template) every `every` seconds."""

    def __init__(
        self, every: timedelta = DEFAULT_EVERY, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self._every = every.total_seconds()
        self._clock = clock
        self._last: dict[tuple[int, str], float] = {}
        self._held: dict[tuple[int, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.levelno, str(record.msg))
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._every:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like this held back since the last one)"
        return True


def throttle_exporter_logs(every: timedelta = DEFAULT_EVERY) -> None:
    """Installs one `LogThrottle` on each OTLP exporter logger (again is a no-op)."""
    for name in EXPORTER_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, LogThrottle) for f in logger.filters):
            logger.addFilter(LogThrottle(every))
