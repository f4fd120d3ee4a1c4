"""The emulator speaks Google's shapes, limits and errors, and obeys its control API."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from sync_service.emulator import EmulatorServer
from sync_service.emulator.state import Endpoint
from sync_service.models import parse_rfc3339


@pytest.fixture
async def emulator() -> AsyncIterator[EmulatorServer]:
    server = EmulatorServer(seed=7, accounts=2, locations_per_account=120, reviews_per_location=0)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def http(emulator: EmulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=emulator.url) as client:
        yield client


async def _token(http: httpx.AsyncClient, n: int = 1, client_id: str = "c") -> str:
    response = await http.post(
        "/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": f"emulator-refresh-token-{n}",
            "client_id": client_id,
            "client_secret": "s",
        },
    )
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    return body["access_token"]


def _auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_the_same_seed_gives_the_same_world_and_another_seed_another():
    def world(seed: int) -> list:
        state = EmulatorServer(seed=seed, accounts=2, locations_per_account=2).state
        return [
            (
                loc.location_id,
                loc.title,
                sorted((r.review_id, r.comment) for r in loc.reviews.values()),
            )
            for account in state.accounts.values()
            for loc in account.locations.values()
        ]

    assert world(3) == world(3)
    assert world(3) != world(4)


async def test_locations_need_a_read_mask_and_get_only_its_fields(http: httpx.AsyncClient):
    token = await _token(http)

    missing = await http.get("/v1/accounts/1/locations", headers=_auth(token))
    masked = await http.get(
        "/v1/accounts/1/locations", params={"readMask": "name,title"}, headers=_auth(token)
    )

    assert missing.status_code == 400
    error = missing.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert error["details"][0]["fieldViolations"] == [
        {"field": "read_mask", "description": "Field is required"}
    ]
    assert masked.status_code == 200
    first = masked.json()["locations"][0]
    assert set(first) == {"name", "title"} and first["name"].startswith("locations/")


async def test_location_pages_are_capped_at_100_with_opaque_tokens_to_the_end(
    http: httpx.AsyncClient,
):
    token = await _token(http)
    params = {"readMask": "name", "pageSize": "500"}

    first = (await http.get("/v1/accounts/1/locations", params=params, headers=_auth(token))).json()
    second = (
        await http.get(
            "/v1/accounts/1/locations",
            params={**params, "pageToken": first["nextPageToken"]},
            headers=_auth(token),
        )
    ).json()
    forged = await http.get(
        "/v1/accounts/1/locations",
        params={**params, "pageToken": "MTAwLmFiYw"},
        headers=_auth(token),
    )

    assert len(first["locations"]) == 100
    assert len(second["locations"]) == 20 and "nextPageToken" not in second
    assert not first["nextPageToken"].isdigit()
    assert forged.status_code == 400


async def test_reviews_are_newest_first_capped_at_50_and_empty_fields_left_out(
    emulator: EmulatorServer, http: httpx.AsyncClient
):
    token = await _token(http)
    location = next(iter(emulator.state.account("1").locations))
    empty = (
        await http.get(f"/v4/accounts/1/locations/{location}/reviews", headers=_auth(token))
    ).json()
    for _ in range(60):
        emulator.state.add_review("1", location, comment="")

    page = (
        await http.get(
            f"/v4/accounts/1/locations/{location}/reviews",
            params={"pageSize": 200},
            headers=_auth(token),
        )
    ).json()

    assert empty == {}
    assert len(page["reviews"]) == 50 and page["totalReviewCount"] == 60
    # Times carry 0 to 9 fractional digits (fixed per review): only parsed ones compare.
    times = [parse_rfc3339(r["updateTime"]) for r in page["reviews"]]
    assert times == sorted(times, reverse=True)
    assert all("comment" not in r for r in page["reviews"])
    assert page["reviews"][0]["name"].startswith(f"accounts/1/locations/{location}/reviews/")


async def test_api_errors_have_googles_shapes(emulator: EmulatorServer, http: httpx.AsyncClient):
    token = await _token(http)

    no_token = await http.get("/v1/accounts")
    other_account = await http.get(
        "/v1/accounts/2/locations", params={"readMask": "name"}, headers=_auth(token)
    )
    no_location = await http.get("/v4/accounts/1/locations/42/reviews", headers=_auth(token))
    accounts = await http.get("/v1/accounts", headers=_auth(token))

    assert no_token.status_code == 401
    assert no_token.json()["error"]["details"][0]["reason"] == "ACCESS_TOKEN_EXPIRED"
    assert other_account.status_code == 403
    assert no_location.json()["error"] == {
        "code": 404,
        "message": "Requested entity was not found.",
        "status": "NOT_FOUND",
    }
    assert accounts.json()["accounts"][0]["name"] == "accounts/1"


async def test_the_token_endpoint_refuses_revoked_grants_and_unknown_clients(
    emulator: EmulatorServer, http: httpx.AsyncClient
):
    token = await _token(http, 2)
    revoke = await http.post(
        "/__control/tokens/revoke", json={"refreshToken": "emulator-refresh-token-2"}
    )
    refused = await http.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": "emulator-refresh-token-2"}
    )
    dead = await http.get("/v1/accounts", headers=_auth(token))
    await http.post("/__control/oauth-client", json={"clientId": "real", "clientSecret": "s"})
    wrong_client = await http.post(
        "/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": "emulator-refresh-token-1",
            "client_id": "other",
        },
    )

    assert revoke.status_code == 200
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    assert dead.status_code == 401  # revoking the grant kills its access tokens too
    assert wrong_client.status_code == 401 and wrong_client.json()["error"] == "invalid_client"


async def test_the_quota_is_per_project_and_answers_429_with_error_info():
    server = EmulatorServer(accounts=1, locations_per_account=0, quota_per_minute=3)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            a = await _token(client, client_id="project-a")
            b = await _token(client, client_id="project-b")
            statuses = [
                (await client.get("/v1/accounts", headers=_auth(a))).status_code for _ in range(4)
            ]
            other = await client.get("/v1/accounts", headers=_auth(b))
            over = await client.get("/v1/accounts", headers=_auth(a))
    finally:
        await server.stop()

    assert statuses == [200, 200, 200, 429]
    assert other.status_code == 200
    info = over.json()["error"]["details"][0]
    assert info["reason"] == "RATE_LIMIT_EXCEEDED"
    assert info["metadata"]["quota_limit_value"] == "3"
    assert server.state.stats.quota_rejections == 2


async def test_faults_by_count_and_by_rate_over_the_control_api(
    emulator: EmulatorServer, http: httpx.AsyncClient
):
    token = await _token(http)
    await http.post(
        "/__control/faults",
        json={"kind": "unavailable", "count": 2, "endpoint": "accounts", "retryAfter": 3},
    )
    first = [(await http.get("/v1/accounts", headers=_auth(token))) for _ in range(3)]
    await http.post("/__control/faults", json={"kind": "quota_zero", "rate": 0.5})
    pattern = [
        (await http.get("/v1/accounts", headers=_auth(token))).status_code for _ in range(20)
    ]
    await http.delete("/__control/faults")
    after = await http.get("/v1/accounts", headers=_auth(token))
    bad = await http.post("/__control/faults", json={"kind": "meteor"})

    assert [r.status_code for r in first] == [503, 503, 200]
    assert first[0].headers["retry-after"] == "3"
    assert set(pattern) == {200, 429} and 3 <= pattern.count(429) <= 17
    # The rate is drawn from the seeded generator: the same seed repeats the same pattern.
    twin = EmulatorServer(seed=7, accounts=1, locations_per_account=0)
    twin.state.inject("quota_zero", rate=0.5)
    twin_pattern = [
        429 if twin.state.faults_for(Endpoint.ACCOUNTS, "/v1/accounts")[1] else 200
        for _ in range(20)
    ]
    assert twin_pattern == pattern
    assert after.status_code == 200
    assert bad.status_code == 400


async def test_the_control_api_adds_edits_and_deletes_data(
    emulator: EmulatorServer, http: httpx.AsyncClient
):
    created = (
        await http.post("/__control/accounts/1/locations", json={"title": "New shop", "reviews": 2})
    ).json()
    location = created["name"].removeprefix("locations/")
    review = (
        await http.post(
            f"/__control/accounts/1/locations/{location}/reviews",
            json={"starRating": 1, "comment": "Meh", "reviewerName": "Zed"},
        )
    ).json()
    edited = (
        await http.patch(
            f"/__control/accounts/1/locations/{location}/reviews/{review['reviewId']}",
            json={"comment": "Better", "starRating": "FIVE", "replyComment": "Thanks!"},
        )
    ).json()
    deleted = await http.delete(
        f"/__control/accounts/1/locations/{location}/reviews/{review['reviewId']}"
    )
    missing = await http.delete(f"/__control/accounts/1/locations/{location}/reviews/nope")
    state = (await http.get("/__control/state")).json()

    assert created["title"] == "New shop"
    assert review["starRating"] == "ONE" and review["reviewer"]["displayName"] == "Zed"
    assert edited["comment"] == "Better" and edited["reviewReply"]["comment"] == "Thanks!"
    assert edited["updateTime"] > review["updateTime"]
    assert deleted.status_code == 200 and missing.status_code == 404
    assert len(emulator.state.location("1", location).reviews) == 2
    assert state["accounts"][0]["locations"] == 121
