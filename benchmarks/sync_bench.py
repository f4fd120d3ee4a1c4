"""How long a sync of 1 account x 10 locations x 200 reviews takes against the emulator, and
how many HTTP calls it costs.

Starts the Google emulator (no added latency) and a SyncApp on port 0 over a fresh PostgreSQL
database (created on TEST_DATABASE_URL's server, dropped afterwards), connects the account and
runs a full sync over gRPC, then the same full sync again (nothing new: the idempotent path),
then, after one new review, an incremental sync (what periodic syncs mostly are).

    python -m benchmarks.sync_bench
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from typing import Any

import grpc
from cryptography.fernet import Fernet

from gmbsync.sync.v1 import sync_service_pb2 as pb
from gmbsync.sync.v1 import sync_service_pb2_grpc as pb_grpc
from migrations.scratch import scratch_database
from service_runtime.auth import AuthSettings
from sync_service.app import SyncApp
from sync_service.emulator import EmulatorServer
from sync_service.settings import GoogleEndpoints, GoogleSettings, SyncSettings

LOCATIONS, REVIEWS = 10, 200
_TRIGGER_SECRET = "bench-trigger-secret"


async def run_sync_benchmark() -> dict[str, Any]:
    """Runs the benchmark; returns the figures of the first and of a repeated full sync."""
    with scratch_database("gmbsync_bench_sync") as url:
        return await _measure(url)


async def _measure(url: str) -> dict[str, Any]:
    emulator = EmulatorServer(
        seed=1, accounts=1, locations_per_account=LOCATIONS, reviews_per_location=REVIEWS
    )
    app: SyncApp | None = None
    try:
        await emulator.start()
        app = SyncApp(
            SyncSettings(
                listen_addr="127.0.0.1:0",
                database_url=url,
                auth=AuthSettings(jwt_secret="", trigger_secret=_TRIGGER_SECRET),
                google=GoogleSettings(
                    endpoints=GoogleEndpoints.rooted(emulator.url),
                    client_id="bench-client",
                    client_secret="bench-secret",
                    request_timeout=timedelta(seconds=30),
                    # The sync's own speed, not the quota's pace (benchmarks.quota_bench).
                    quota_per_window=100_000,
                ),
                token_encryption_keys=(Fernet.generate_key().decode(),),
            )
        )
        port = await app.start()
        metadata = (("x-trigger-secret", _TRIGGER_SECRET),)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.SyncServiceStub(channel)
            connected = await stub.ConnectAccount(
                pb.ConnectAccountRequest(
                    user_id="00000000-0000-4000-8000-00000000be01",
                    account_name="Benchmark",
                    google_account_id="accounts/1",
                    refresh_token="emulator-refresh-token-1",
                ),
                metadata=metadata,
            )
            request = pb.SyncAccountRequest(
                account_id=connected.account.id, sync_type=pb.SYNC_TYPE_FULL
            )
            figures: dict[str, Any] = {"locations": LOCATIONS, "reviews_per_location": REVIEWS}
            runs = (
                ("first_full_sync", pb.SYNC_TYPE_FULL),
                ("repeat_full_sync", pb.SYNC_TYPE_FULL),
                ("incremental_sync_after_one_new_review", pb.SYNC_TYPE_INCREMENTAL),
            )
            for label, sync_type in runs:
                if sync_type == pb.SYNC_TYPE_INCREMENTAL:
                    location = next(iter(emulator.state.account("1").locations))
                    emulator.state.add_review("1", location, comment="new since the last sync")
                request.sync_type = sync_type
                requests_before = sum(emulator.state.stats.requests.values())
                started = time.perf_counter()
                result = await stub.SyncAccount(request, metadata=metadata, timeout=120)
                wall = time.perf_counter() - started
                figures[label] = {
                    "wall_seconds": round(wall, 3),
                    "server_seconds": round(result.duration.ToTimedelta().total_seconds(), 3),
                    "http_calls": result.api_calls,
                    "emulator_requests": sum(emulator.state.stats.requests.values())
                    - requests_before,
                    "reviews_added": result.reviews_added,
                    "reviews_updated": result.reviews_updated,
                    "locations_synced": result.locations_synced,
                }
        return figures
    finally:
        if app is not None:
            await app.stop(grace=1.0)
        await emulator.stop()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run_sync_benchmark()), indent=2))
