"""The typed view of a job's result keeps what it can read and never fails the reply."""

from __future__ import annotations

from queue_service.convert import sync_result_to_pb


def test_counts_stored_as_floats_come_back_as_integers():
    typed = sync_result_to_pb({"reviews_added": 250.0, "api_calls": 7, "duration_seconds": 1.5})
    assert typed is not None
    assert (typed.reviews_added, typed.api_calls) == (250, 7)
    assert typed.duration.ToMilliseconds() == 1500


def test_values_of_the_wrong_kind_are_left_out():
    typed = sync_result_to_pb(
        {
            "reviews_added": 2.5,  # not a whole number
            "reviews_updated": True,  # a bool is not a count
            "reviews_removed": float("nan"),
            "locations_synced": 2**70,  # beyond int64
            "api_calls": "7",
            "duration_seconds": 1e30,
            "locations_skipped": 1,
        }
    )
    assert typed is not None
    assert typed.locations_skipped == 1
    assert typed.reviews_added == typed.reviews_updated == typed.reviews_removed == 0
    assert typed.locations_synced == typed.api_calls == 0
    assert not typed.HasField("duration")


def test_a_result_without_known_keys_has_no_typed_view():
    assert sync_result_to_pb({}) is None
    assert sync_result_to_pb({"note": "by hand", "api_calls": "many"}) is None
