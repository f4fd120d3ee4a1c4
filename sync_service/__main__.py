"""`python -m sync_service`: serve SyncService until SIGTERM or SIGINT, then exit 0.

Configuration comes from the environment (see sync_service/settings.py and
docs/sync-service.md); a bad value stops the process with one line naming the variable.
"""

from __future__ import annotations

import asyncio
import sys

from service_runtime.config import ConfigError
from service_runtime.serving import configure_logging
from service_runtime.telemetry import configure_tracing, shutdown_tracing
from sync_service.app import SyncApp
from sync_service.settings import SyncSettings


def main() -> int:
    try:
        settings = SyncSettings.from_env()
    except ConfigError as exc:
        print(f"sync_service: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    configure_tracing("sync-service")
    try:
        asyncio.run(SyncApp(settings).run_until_signal())
    finally:
        shutdown_tracing()
    return 0


if __name__ == "__main__":
    sys.exit(main())
