"""`python -m queue_service`: serve QueueService on QUEUE_LISTEN_ADDR until SIGTERM/SIGINT.

With QUEUE_PROCESSES=N (PostgreSQL), N processes serve the same address under a supervisor.
"""

from __future__ import annotations

import sys

from queue_service.app import QueueApp
from queue_service.settings import QueueSettings
from service_runtime.serving import service_main

if __name__ == "__main__":
    sys.exit(
        service_main(
            "queue_service",
            "queue-service",
            QueueSettings.from_env,
            QueueApp,
            processes=lambda settings: settings.processes,
            grace=lambda settings: settings.grace_period.total_seconds(),
        )
    )
