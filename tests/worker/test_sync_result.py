"""The worker reports a sync's counts typed; QueueService stores exactly the JSON result the
worker's own view of them (`sync_result`, which it logs) describes."""

from __future__ import annotations

from google.protobuf import duration_pb2

from clients.worker.job import sync_result, sync_result_message
from gmbsync.sync.v1 import sync_service_pb2 as spb
from queue_service.requests import Violations, stored_sync_result


def test_the_typed_result_is_stored_as_the_workers_counts():
    response = spb.SyncAccountResponse(
        locations_synced=3,
        locations_removed=1,
        reviews_added=12,
        reviews_updated=2,
        reviews_removed=4,
        api_calls=9,
        duration=duration_pb2.Duration(seconds=2, nanos=345_678_000),
        locations_skipped=1,
        skipped_locations=[spb.SkippedLocation(location_id="locations/7", reason="refused")],
        locations_deletions_deferred=2,
        resumed=True,
    )
    violations = Violations()

    stored = stored_sync_result(violations, "sync_result", sync_result_message(response))

    violations.check()
    assert stored == sync_result(response)
