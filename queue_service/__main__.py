"""`python -m queue_service`: serve QueueService on QUEUE_LISTEN_ADDR until SIGTERM/SIGINT.

With QUEUE_PROCESSES=N (PostgreSQL), N processes serve the same address under a supervisor.
"""

from __future__ import annotations

import argparse
import sys

from queue_service.app import QueueApp
from queue_service.settings import QueueSettings
from service_runtime.cli import (
    COLLECTOR_VARIABLE,
    DATABASE_VARIABLE,
    EVENT_LOOP_VARIABLE,
    TRACING_VARIABLES,
    parser_with_environment,
    variables_read,
)
from service_runtime.serving import service_main


def parser() -> argparse.ArgumentParser:
    """No options: `--help` lists the environment variables, and nothing is served."""
    return parser_with_environment(
        "python -m queue_service",
        __doc__ or "",
        lambda: [
            DATABASE_VARIABLE,
            *variables_read(QueueSettings.from_env),
            EVENT_LOOP_VARIABLE,
            COLLECTOR_VARIABLE,
            *TRACING_VARIABLES,
        ],
    )


if __name__ == "__main__":
    parser().parse_args()
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
