"""`python -m sync_service`: serve SyncService until SIGTERM or SIGINT, then exit 0.

Configuration comes from the environment (see sync_service/settings.py and
docs/sync-service.md); a bad value stops the process with one line naming the variable.
"""

from __future__ import annotations

import argparse
import sys

from service_runtime.cli import (
    COLLECTOR_VARIABLE,
    DATABASE_VARIABLE,
    EVENT_LOOP_VARIABLE,
    TRACING_VARIABLES,
    parser_with_environment,
    variables_read,
)
from service_runtime.serving import service_main
from sync_service.app import SyncApp
from sync_service.settings import SyncSettings


def parser() -> argparse.ArgumentParser:
    """No options: `--help` lists the environment variables, and nothing is served or written
    (the development key file is made only when serving)."""
    return parser_with_environment(
        "python -m sync_service",
        __doc__ or "",
        lambda: [
            DATABASE_VARIABLE,
            *variables_read(SyncSettings.from_env),
            EVENT_LOOP_VARIABLE,
            COLLECTOR_VARIABLE,
            *TRACING_VARIABLES,
        ],
    )


if __name__ == "__main__":
    parser().parse_args()
    sys.exit(service_main("sync_service", "sync-service", SyncSettings.from_env, SyncApp))
