"""Locations as messy as Google's: kinds that show only in metadata and openInfo, reviews
refused for the unverified, suspended and duplicate ones, `--messy` seeding, nested readMask."""

from __future__ import annotations

import httpx
import pytest

from sync_service.emulator import EmulatorServer, EmulatorState
from tests.sync.emulator_http import auth, running, token, violation

FULL_MASK = "name,metadata,openInfo"


async def _locations(http: httpx.AsyncClient, access: str, mask: str, account: int = 1) -> list:
    response = await http.get(
        f"/v1/accounts/{account}/locations",
        params={"readMask": mask, "pageSize": 100},
        headers=auth(access),
    )
    assert response.status_code == 200, response.text
    return response.json()["locations"]


def _by_name(locations: list) -> dict:
    return {loc["name"]: loc for loc in locations}


async def _add(http: httpx.AsyncClient, kind: str, reviews: int = 0) -> str:
    response = await http.post(
        "/__control/accounts/1/locations", json={"kind": kind, "reviews": reviews}
    )
    assert response.status_code == 200, response.text
    return response.json()["name"].removeprefix("locations/")


async def test_each_kind_shows_only_through_metadata_and_open_info():
    async with running(accounts=1, locations_per_account=1, reviews_per_location=0) as (
        server,
        http,
    ):
        verified = next(iter(server.state.account("1").locations))
        ids = {kind: await _add(http, kind) for kind in ("unverified", "suspended", "duplicate")}
        ids["closed"] = await _add(http, "closed")
        found = _by_name(await _locations(http, await token(http), FULL_MASK))

    def doc(location_id: str) -> dict:
        return found[f"locations/{location_id}"]

    assert doc(verified)["metadata"]["hasVoiceOfMerchant"] is True
    assert doc(verified)["openInfo"] == {"status": "OPEN"}
    for kind in ("unverified", "suspended", "duplicate"):
        # Google leaves false fields out: no hasVoiceOfMerchant at all, and no made-up flags.
        assert "hasVoiceOfMerchant" not in doc(ids[kind])["metadata"], kind
        assert doc(ids[kind])["openInfo"] == {"status": "OPEN"}
    assert set(doc(ids["unverified"])["metadata"]) == {"placeId", "mapsUri"}
    assert set(doc(ids["suspended"])["metadata"]) == {"placeId", "mapsUri"}
    assert doc(ids["duplicate"])["metadata"]["duplicateLocation"] == f"locations/{verified}"
    assert doc(ids["closed"])["metadata"]["hasVoiceOfMerchant"] is True
    assert doc(ids["closed"])["openInfo"] == {"status": "CLOSED_PERMANENTLY"}


async def test_reviews_are_refused_for_unverified_suspended_and_duplicate_locations():
    async with running(accounts=1, locations_per_account=1, reviews_per_location=0) as (_, http):
        ids = {
            kind: await _add(http, kind, reviews=2)
            for kind in ("unverified", "suspended", "duplicate", "closed")
        }
        access = await token(http)
        answers = {
            kind: await http.get(
                f"/v4/accounts/1/locations/{ids[kind]}/reviews", headers=auth(access)
            )
            for kind in ids
        }

    assert answers["unverified"].status_code == 400
    assert answers["unverified"].json()["error"] == {
        "code": 400,
        "message": "Location is not verified.",
        "status": "FAILED_PRECONDITION",
    }
    assert answers["duplicate"].status_code == 400
    assert answers["duplicate"].json()["error"]["status"] == "FAILED_PRECONDITION"
    assert answers["duplicate"].json()["error"]["message"] == "Location is a duplicate."
    assert answers["suspended"].status_code == 403
    assert answers["suspended"].json()["error"] == {
        "code": 403,
        "message": "The caller does not have permission",
        "status": "PERMISSION_DENIED",
    }
    # A permanently closed shop is still verified: its reviews are served.
    assert answers["closed"].status_code == 200
    assert answers["closed"].json()["totalReviewCount"] == 2


async def test_editing_the_kind_changes_what_google_answers():
    async with running(accounts=1, locations_per_account=2, reviews_per_location=1) as (
        server,
        http,
    ):
        first, second = list(server.state.account("1").locations)
        access = await token(http)
        path = f"/v4/accounts/1/locations/{second}/reviews"
        before = await http.get(path, headers=auth(access))
        to_unverified = await http.patch(
            f"/__control/accounts/1/locations/{second}", json={"kind": "unverified"}
        )
        refused = await http.get(path, headers=auth(access))
        as_duplicate = server.state.edit_location("1", second, kind="duplicate")
        back = server.state.edit_location("1", second, kind="verified", title="Back again")
        served = await http.get(path, headers=auth(access))
        bad_kind = await http.patch(
            f"/__control/accounts/1/locations/{second}", json={"kind": "haunted"}
        )
        bad_add = await http.post("/__control/accounts/1/locations", json={"kind": "haunted"})

    assert before.status_code == 200
    assert to_unverified.status_code == 200
    assert "hasVoiceOfMerchant" not in to_unverified.json()["metadata"]
    assert refused.status_code == 400
    assert as_duplicate["metadata"]["duplicateLocation"] == f"locations/{first}"
    assert "duplicateLocation" not in back["metadata"] and back["title"] == "Back again"
    assert back["metadata"]["hasVoiceOfMerchant"] is True
    assert served.status_code == 200
    assert bad_kind.status_code == 400 and bad_add.status_code == 400
    assert len(server.state.account("1").locations) == 2  # the bad add added nothing


def test_messy_seeding_adds_one_location_of_each_other_kind_to_the_same_world():
    plain = EmulatorState(seed=5, accounts=2, locations_per_account=3, reviews_per_location=4)
    messy = EmulatorState(
        seed=5, accounts=2, locations_per_account=3, reviews_per_location=4, messy=True
    )

    for account_id in ("1", "2"):
        plain_locations = plain.account(account_id).locations
        messy_locations = messy.account(account_id).locations
        # The verified locations are the same ones, with the same reviews.
        for location_id, location in plain_locations.items():
            assert messy_locations[location_id].reviews.keys() == location.reviews.keys()
            assert messy_locations[location_id].kind == "verified"
        extra = [loc for lid, loc in messy_locations.items() if lid not in plain_locations]
        assert sorted(loc.kind.value for loc in extra) == [
            "closed",
            "duplicate",
            "suspended",
            "unverified",
        ]
        for location in extra:
            assert len(location.reviews) == (3 if location.kind == "closed" else 0)
            if location.kind == "duplicate":
                assert location.duplicate_of in plain_locations
    # What is added later is the same too.
    assert plain.add_account(locations=1) == messy.add_account(locations=1)
    assert list(plain.account("3").locations) == list(messy.account("3").locations)


def test_default_seeding_is_unchanged_by_the_new_kinds():
    state = EmulatorState()

    assert [len(a.locations) for a in state.accounts.values()] == [3]
    assert all(
        loc.kind == "verified" and len(loc.reviews) == 20
        for loc in state.account("1").locations.values()
    )
    assert state.summary()["messy"] is False


async def test_read_mask_paths_select_nested_fields_only():
    async with running(accounts=1, locations_per_account=2, reviews_per_location=0) as (_, http):
        access = await token(http)
        nested = await _locations(
            http,
            access,
            "name, metadata.placeId,openInfo.status,storefrontAddress.locality,regularHours",
        )
        whole = await _locations(http, access, "metadata.placeId,metadata")
        hours = await _locations(http, access, "regularHours.periods")

    assert len(nested) == 2
    for location in nested:
        assert set(location) == {
            "name",
            "metadata",
            "openInfo",
            "storefrontAddress",
            "regularHours",
        }
        assert set(location["metadata"]) == {"placeId"}
        assert location["metadata"]["placeId"].startswith("ChIJ")
        assert location["openInfo"] == {"status": "OPEN"}
        assert set(location["storefrontAddress"]) == {"locality"}
        periods = location["regularHours"]["periods"]
        assert periods[0]["openDay"] == "MONDAY" and periods[0]["closeDay"] == "MONDAY"
        assert periods[0]["closeTime"] == {"hours": 18}
        assert 7 <= periods[0]["openTime"]["hours"] <= 9
        assert {p["openDay"] for p in periods} >= {"MONDAY", "FRIDAY", "SATURDAY"}
    # A parent path selects the whole message, whatever sub-paths are named with it.
    for location in whole:
        assert set(location) == {"metadata"}
        assert {"placeId", "mapsUri", "hasVoiceOfMerchant"} <= set(location["metadata"])
    assert len(hours) == 2 and all(set(loc) == {"regularHours"} for loc in hours)


async def test_a_sub_field_that_is_not_set_leaves_its_message_out():
    async with running(accounts=1, locations_per_account=1, reviews_per_location=0) as (_, http):
        unverified = await _add(http, "unverified")
        found = _by_name(
            await _locations(http, await token(http), "name,metadata.hasVoiceOfMerchant")
        )

    assert found[f"locations/{unverified}"] == {"name": f"locations/{unverified}"}
    others = [loc for name, loc in found.items() if name != f"locations/{unverified}"]
    assert [loc["metadata"] for loc in others] == [{"hasVoiceOfMerchant": True}]


@pytest.mark.parametrize(
    "mask",
    ["metadata.nope", "title.text", "openInfo.status.more", "metadata.", "nope", "name,regular"],
)
async def test_read_mask_refuses_paths_that_name_no_field(mask: str):
    async with running(accounts=1, locations_per_account=1, reviews_per_location=0) as (_, http):
        response = await http.get(
            "/v1/accounts/1/locations",
            params={"readMask": mask},
            headers=auth(await token(http)),
        )

    found = violation(response)
    assert found["field"] == "read_mask"
    assert found["description"].startswith("Invalid field mask: ")
    assert found["description"].removeprefix("Invalid field mask: ") in mask


def test_the_server_passes_kind_and_messy_options_through():
    server = EmulatorServer(accounts=1, locations_per_account=1, reviews_per_location=0, messy=True)

    assert len(server.state.account("1").locations) == 5
