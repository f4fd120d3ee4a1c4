"""Accounts of several types seen through one grant, and a quota window per Google API."""

from __future__ import annotations

import httpx
import pytest

from sync_service.emulator import EmulatorState
from tests.sync.emulator_http import auth, running, token, violation


async def _grant(http: httpx.AsyncClient, accounts: list[str]) -> str:
    response = await http.post("/__control/grants", json={"accounts": accounts})
    assert response.status_code == 200, response.text
    return response.json()["refreshToken"]


async def test_accounts_carry_their_type_and_role():
    async with running(accounts=1, locations_per_account=0) as (_, http):
        group = await http.post(
            "/__control/accounts", json={"accountName": "Shops", "type": "LOCATION_GROUP"}
        )
        bad = await http.post("/__control/accounts", json={"type": "FAMILY"})
        grant = await _grant(http, ["accounts/1", group.json()["name"]])
        listed = await http.get("/v1/accounts", headers=auth(await token(http, grant)))
        state = (await http.get("/__control/state")).json()

    assert group.status_code == 200 and group.json()["name"] == "accounts/2"
    assert bad.status_code == 400
    personal, shops = listed.json()["accounts"]
    assert (personal["type"], personal["role"]) == ("PERSONAL", "PRIMARY_OWNER")
    assert (shops["type"], shops["role"], shops["accountName"]) == (
        "LOCATION_GROUP",
        "OWNER",
        "Shops",
    )
    assert [a["type"] for a in state["accounts"]] == ["PERSONAL", "LOCATION_GROUP"]
    assert state["grants"] == [
        {"refreshToken": grant, "accounts": ["accounts/1", "accounts/2"], "revoked": False}
    ]


async def test_a_grant_sees_exactly_its_accounts():
    async with running(accounts=3, locations_per_account=1, reviews_per_location=2) as (
        server,
        http,
    ):
        grant = await _grant(http, ["accounts/1", "3"])
        access = await token(http, grant)
        own = await token(http, 2)
        listed = await http.get("/v1/accounts", headers=auth(access))
        statuses = {}
        for n in (1, 2, 3):
            location = next(iter(server.state.account(str(n)).locations))
            locations = await http.get(
                f"/v1/accounts/{n}/locations", params={"readMask": "name"}, headers=auth(access)
            )
            reviews = await http.get(
                f"/v4/accounts/{n}/locations/{location}/reviews", headers=auth(access)
            )
            batch = await http.post(
                f"/v4/accounts/{n}/locations:batchGetReviews",
                json={"locationNames": [f"accounts/{n}/locations/{location}"]},
                headers=auth(access),
            )
            statuses[n] = (locations.status_code, reviews.status_code, batch.status_code)
        own_listed = await http.get("/v1/accounts", headers=auth(own))
        unknown = await http.post("/__control/grants", json={"accounts": ["accounts/9"]})
        not_a_list = await http.post("/__control/grants", json={"accounts": "accounts/1"})
        revoked = await http.post("/__control/tokens/revoke", json={"refreshToken": grant})
        after_revoke = await http.get("/v1/accounts", headers=auth(access))

    assert grant == "emulator-grant-1"
    assert [a["name"] for a in listed.json()["accounts"]] == ["accounts/1", "accounts/3"]
    assert statuses == {1: (200, 200, 200), 2: (403, 403, 403), 3: (200, 200, 200)}
    # A user's own refresh token still sees that user's account only.
    assert [a["name"] for a in own_listed.json()["accounts"]] == ["accounts/2"]
    assert unknown.status_code == 404 and not_a_list.status_code == 400
    assert revoked.status_code == 200 and after_revoke.status_code == 401


def test_grants_in_process_accept_bare_ids_and_reset_forgets_them():
    state = EmulatorState(accounts=3, locations_per_account=0)

    first = state.add_grant(["2", "accounts/3", "2"])
    second = state.add_grant([])
    access = state.issue_access_token(first, "c", "s")
    grant = state.access_grant(access)
    state.reset()

    assert (first, second) == ("emulator-grant-1", "emulator-grant-2")
    assert grant is not None and grant.account_ids == ["2", "3"] and grant.account_id == "2"
    assert grant.sees("3") and not grant.sees("1")
    assert first not in state.refresh_grants
    assert state.add_grant(["1"]) == "emulator-grant-1"


async def test_accounts_list_pages_by_twenty_and_filters_by_type():
    async with running(accounts=0, locations_per_account=0) as (server, http):
        names = []
        for n in range(25):
            kind = "LOCATION_GROUP" if n % 5 == 0 else "PERSONAL"
            names.append(server.state.add_account(type=kind)[0])
        access = await token(http, await _grant(http, names))
        first = (await http.get("/v1/accounts", headers=auth(access))).json()
        second = (
            await http.get(
                "/v1/accounts",
                params={"pageToken": first["nextPageToken"], "pageSize": 50},
                headers=auth(access),
            )
        ).json()
        groups = (
            await http.get(
                "/v1/accounts", params={"filter": "type=LOCATION_GROUP"}, headers=auth(access)
            )
        ).json()
        quoted = await http.get(
            "/v1/accounts", params={"filter": 'type = "ORGANIZATION"'}, headers=auth(access)
        )
        bad_filter = await http.get(
            "/v1/accounts", params={"filter": "type=NOPE"}, headers=auth(access)
        )
        # A page token of the unfiltered list does not page the filtered one.
        foreign_token = await http.get(
            "/v1/accounts",
            params={"filter": "type=LOCATION_GROUP", "pageToken": first["nextPageToken"]},
            headers=auth(access),
        )

    assert len(first["accounts"]) == 20 and len(second["accounts"]) == 5
    assert "nextPageToken" not in second
    assert [a["name"] for a in first["accounts"] + second["accounts"]] == names
    assert [a["name"] for a in groups["accounts"]] == [names[n] for n in range(0, 25, 5)]
    assert all(a["type"] == "LOCATION_GROUP" for a in groups["accounts"])
    assert quoted.status_code == 200 and quoted.json() == {}
    assert violation(bad_filter)["field"] == "filter"
    assert violation(foreign_token)["field"] == "page_token"


async def test_each_api_has_its_own_quota_window():
    async with running(
        accounts=1,
        locations_per_account=1,
        reviews_per_location=1,
        quota_per_minute=3,
        api_quotas={"reviews": 2},
    ) as (server, http):
        access = await token(http, client_id="760910906882-x.apps.googleusercontent.com")
        location = next(iter(server.state.account("1").locations))
        reviews_path = f"/v4/accounts/1/locations/{location}/reviews"
        batch_path = "/v4/accounts/1/locations:batchGetReviews"
        # reviews.list and batchGetReviews share the reviews API's window.
        reviews = [await http.get(reviews_path, headers=auth(access))]
        reviews.append(
            await http.post(
                batch_path,
                json={"locationNames": [f"accounts/1/locations/{location}"]},
                headers=auth(access),
            )
        )
        reviews.append(await http.get(reviews_path, headers=auth(access)))
        # The reviews API is exhausted; Business Information is not.
        locations = [
            await http.get(
                "/v1/accounts/1/locations", params={"readMask": "name"}, headers=auth(access)
            )
            for _ in range(4)
        ]
        accounts = await http.get("/v1/accounts", headers=auth(access))
        state = (await http.get("/__control/state")).json()

    assert [r.status_code for r in reviews] == [200, 200, 429]
    reviews_info = reviews[2].json()["error"]["details"][0]
    assert reviews_info["metadata"]["service"] == "mybusiness.googleapis.com"
    assert reviews_info["metadata"]["quota_limit_value"] == "2"
    assert "mybusiness.googleapis.com" in reviews[2].json()["error"]["message"]
    assert [r.status_code for r in locations] == [200, 200, 200, 429]
    locations_info = locations[3].json()["error"]["details"][0]["metadata"]
    assert locations_info["service"] == "mybusinessbusinessinformation.googleapis.com"
    assert locations_info["quota_limit_value"] == "3"
    assert accounts.status_code == 200
    stats = server.state.stats
    assert stats.quota_rejections == 2
    assert stats.quota_rejections_by_api == {"reviews": 1, "business_information": 1}
    assert stats.accepted_by_api == {
        "reviews": 2,
        "business_information": 3,
        "account_management": 1,
    }
    project = "760910906882-x.apps.googleusercontent.com"
    assert stats.peak_window_requests == {
        f"{project}/reviews": 2,
        f"{project}/business_information": 3,
        f"{project}/account_management": 1,
    }
    assert state["stats"]["quotaRejectionsByApi"] == {"reviews": 1, "business_information": 1}
    assert state["stats"]["acceptedByApi"]["business_information"] == 3
    assert state["stats"]["peakWindowRequests"][f"{project}/reviews"] == 2
    assert state["quotaPerWindowByApi"] == {
        "account_management": 3,
        "business_information": 3,
        "reviews": 2,
    }


async def test_a_rate_limit_fault_names_the_api_and_its_quota():
    async with running(accounts=1, locations_per_account=1, api_quotas={"reviews": 77}) as (
        server,
        http,
    ):
        server.state.inject("rate_limit", count=2, endpoint="api")
        access = await token(http)
        location = next(iter(server.state.account("1").locations))
        on_reviews = await http.get(
            f"/v4/accounts/1/locations/{location}/reviews", headers=auth(access)
        )
        on_accounts = await http.get("/v1/accounts", headers=auth(access))

    reviews_meta = on_reviews.json()["error"]["details"][0]["metadata"]
    accounts_meta = on_accounts.json()["error"]["details"][0]["metadata"]
    assert (reviews_meta["service"], reviews_meta["quota_limit_value"]) == (
        "mybusiness.googleapis.com",
        "77",
    )
    assert (accounts_meta["service"], accounts_meta["quota_limit_value"]) == (
        "mybusinessaccountmanagement.googleapis.com",
        "300",
    )


@pytest.mark.parametrize("quotas", [{"bogus": 1}, {"reviews": -1}, {"reviews": "ten"}])
def test_api_quotas_refuse_unknown_apis_and_bad_limits(quotas: dict):
    with pytest.raises(ValueError, match=r"bogus|reviews"):
        EmulatorState(api_quotas=quotas)
