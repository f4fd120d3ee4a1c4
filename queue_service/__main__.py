"""`python -m queue_service`: serve QueueService on QUEUE_LISTEN_ADDR until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import sys

from queue_service.app import QueueApp
from queue_service.settings import QueueSettings
from service_runtime.config import ConfigError
from service_runtime.serving import configure_logging
from service_runtime.telemetry import configure_tracing, shutdown_tracing


def main() -> int:
    try:
        settings = QueueSettings.from_env()
    except ConfigError as exc:
        print(f"queue_service: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    configure_tracing("queue-service")
    try:
        asyncio.run(QueueApp(settings).run_until_signal())
    finally:
        shutdown_tracing()
    return 0


if __name__ == "__main__":
    sys.exit(main())
