"""Log lines as text (the default) or as JSON objects, one per line (LOG_FORMAT=json), and
BurstLog, for conditions that recur.

JSON lines are for log shippers (Loki, Elasticsearch, Cloud Logging): each has `time` (UTC,
ISO 8601), `level`, `logger`, `message`, `process_index` for a supervised copy, and `exc_info`
with the traceback when there is one. Every message is formatted before it is written, so a
field is never a template with its arguments apart.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import UTC, datetime

from service_runtime.config import ConfigError, Env
from service_runtime.processes import PROCESS_INDEX_VAR

LOG_FORMATS = ("text", "json")
# Loggers that say at INFO what this project's own modules already say better: httpx logs
# every HTTP request it sends (the Google client logs failures, retries and refreshes).
QUIET_LOGGERS = ("httpx", "httpcore")


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def __init__(self, process_index: str | None = None) -> None:
        super().__init__()
        self._process_index = process_index

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._process_index is not None:
            entry["process_index"] = self._process_index
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class BurstLog:
    """Logs a recurring condition once per burst: the first occurrence at once, then at most
    one line per `window` seconds while it goes on, saying how many were not logged.

    An outage answers hundreds of requests the same way; an operator needs to know it began,
    that it is still going on, and when it ended (no more lines), not every request.
    """

    def __init__(self, logger: logging.Logger, window: float = 10.0) -> None:
        self._log = logger
        self._window = window
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        self.log(logging.WARNING, key, message, *args)

    def log(self, level: int, key: str, message: str, *args: object) -> None:
        """Logs at `level`, once per burst of `key` (see the class docstring)."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._window:
            self._quiet[key] = self._quiet.get(key, 0) + 1
            return
        quiet = self._quiet.pop(key, 0)
        self._last[key] = now
        suffix = (
            f" ({quiet} more like it in the last {now - last:.0f} s)"
            if quiet and last is not None
            else ""
        )
        self._log.log(level, message + suffix, *args)


def log_format_from_env(env: Env | None = None) -> str:
    """LOG_FORMAT: `text` (default) or `json`; anything else is a ConfigError."""
    value = (env or Env()).str("LOG_FORMAT", "text").strip().lower()
    if value not in LOG_FORMATS:
        raise ConfigError(f"LOG_FORMAT={value!r}: use text or json")
    return value


def configure_logging(level: str = "INFO", log_format: str | None = None) -> None:
    """Sets up the root logger once per process: `level`, and the format LOG_FORMAT names
    (unless given). Raises ConfigError for a bad LOG_FORMAT before changing anything."""
    fmt = log_format or log_format_from_env()
    if fmt not in LOG_FORMATS:
        raise ConfigError(f"LOG_FORMAT={fmt!r}: use text or json")
    # Copies of one service under a supervisor say which copy wrote a line.
    index = os.environ.get(PROCESS_INDEX_VAR)
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter(index))
    else:
        where = f" [process {index}]" if index is not None else ""
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s %(name)s{where}: %(message)s")
        )
    logging.basicConfig(level=level.upper(), handlers=[handler])
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
