"""`python -m sync_service`: serve SyncService until SIGTERM or SIGINT, then exit 0.

Configuration comes from the environment (see sync_service/settings.py and
docs/sync-service.md); a bad value stops the process with one line naming the variable.
"""

from __future__ import annotations

import sys

from service_runtime.serving import service_main
from sync_service.app import SyncApp
from sync_service.settings import SyncSettings

if __name__ == "__main__":
    sys.exit(service_main("sync_service", "sync-service", SyncSettings.from_env, SyncApp))
