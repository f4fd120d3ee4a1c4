"""Injected faults answer with Google's real codes and bodies: the OAuth endpoint's own error
names, disabled APIs, missing scopes, broken bodies and expired page tokens."""

from __future__ import annotations

import json

import httpx
import pytest

from sync_service.emulator import Fault
from tests.sync.emulator_http import auth, running, token, violation


async def _refresh(http: httpx.AsyncClient) -> httpx.Response:
    return await http.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": "emulator-refresh-token-1"},
    )


@pytest.mark.parametrize(
    ("kind", "status", "error"),
    [
        ("unavailable", 503, "temporarily_unavailable"),
        ("internal", 500, "internal_failure"),
        ("rate_limit", 429, "rate_limit_exceeded"),
        ("permission_denied", 403, "access_denied"),
        ("invalid_grant", 400, "invalid_grant"),
        ("invalid_client", 401, "invalid_client"),
        ("not_found", 400, "invalid_request"),
        ("service_disabled", 400, "invalid_request"),
    ],
)
async def test_token_faults_answer_with_the_oauth_error_names(kind: str, status: int, error: str):
    async with running(accounts=1, locations_per_account=0) as (server, http):
        added = await http.post(
            "/__control/faults",
            json={"kind": kind, "endpoint": "token", "count": 1, "retryAfter": 2},
        )
        failed = await _refresh(http)
        recovered = await _refresh(http)

    assert added.status_code == 200
    assert failed.status_code == status
    assert failed.json()["error"] == error and failed.json()["error_description"]
    assert failed.headers["retry-after"] == "2"
    assert recovered.status_code == 200
    assert server.state.stats.token_refreshes == 1


async def test_an_invalid_grant_fault_says_what_google_says():
    async with running(accounts=1, locations_per_account=0) as (server, http):
        server.state.inject("invalid_grant", endpoint="token", count=1)
        failed = await _refresh(http)

    assert failed.json() == {
        "error": "invalid_grant",
        "error_description": "Token has been expired or revoked.",
    }
    assert "retry-after" not in failed.headers


async def test_token_only_kinds_refuse_other_endpoints():
    async with running(accounts=1, locations_per_account=0) as (_, http):
        default_endpoint = await http.post("/__control/faults", json={"kind": "invalid_grant"})
        on_reviews = await http.post(
            "/__control/faults", json={"kind": "invalid_client", "endpoint": "reviews"}
        )
        unknown_endpoint = await http.post(
            "/__control/faults", json={"kind": "internal", "endpoint": "posts"}
        )

    assert default_endpoint.status_code == 400 and "token" in default_endpoint.json()["error"]
    assert on_reviews.status_code == 400 and unknown_endpoint.status_code == 400
    with pytest.raises(ValueError, match="token"):
        Fault(kind="invalid_grant")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("client_id", "number"),
    [("760910906882-abc.apps.googleusercontent.com", "760910906882"), ("c", "123")],
)
async def test_a_disabled_api_names_itself_and_the_project(client_id: str, number: str):
    async with running(accounts=1, locations_per_account=1) as (server, http):
        server.state.inject("service_disabled", endpoint="locations", count=1)
        access = await token(http, client_id=client_id)
        response = await http.get(
            "/v1/accounts/1/locations", params={"readMask": "name"}, headers=auth(access)
        )

    service = "mybusinessbusinessinformation.googleapis.com"
    url = f"https://console.developers.google.com/apis/api/{service}/overview?project={number}"
    error = response.json()["error"]
    assert response.status_code == 403 and error["status"] == "PERMISSION_DENIED"
    assert error["message"] == (
        f"My Business Business Information API has not been used in project {number} before "
        f"or it is disabled. Enable it by visiting {url} then retry."
    )
    assert error["details"] == [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "SERVICE_DISABLED",
            "domain": "googleapis.com",
            "metadata": {
                "service": service,
                "consumer": f"projects/{number}",
                "activationUrl": url,
            },
        }
    ]


async def test_insufficient_scopes_are_a_403_with_their_reason():
    async with running(accounts=1, locations_per_account=0) as (server, http):
        server.state.inject("scope_insufficient", endpoint="accounts", count=1)
        access = await token(http)
        refused = await http.get("/v1/accounts", headers=auth(access))
        allowed = await http.get("/v1/accounts", headers=auth(access))

    error = refused.json()["error"]
    assert refused.status_code == 403
    assert error["message"] == "Request had insufficient authentication scopes."
    assert error["details"][0]["reason"] == "ACCESS_TOKEN_SCOPE_INSUFFICIENT"
    assert (
        error["details"][0]["metadata"]["service"] == "mybusinessaccountmanagement.googleapis.com"
    )
    assert allowed.status_code == 200


async def test_a_truncated_body_is_the_first_half_of_the_real_answer():
    async with running(accounts=1, locations_per_account=2, reviews_per_location=5) as (
        server,
        http,
    ):
        location = next(iter(server.state.account("1").locations))
        path = f"/v4/accounts/1/locations/{location}/reviews"
        access = await token(http)
        server.state.inject("truncated_body", endpoint="reviews", count=1)
        cut = await http.get(path, headers=auth(access))
        whole = await http.get(path, headers=auth(access))

    assert cut.status_code == 200 and whole.status_code == 200
    assert len(whole.text) > 100
    assert cut.text == whole.text[: len(whole.text) // 2]
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut.text)
    # It was a real answer: it counted against the quota.
    assert server.state.stats.accepted_by_api["reviews"] == 2


async def test_not_json_answers_an_html_page():
    async with running(accounts=1, locations_per_account=0) as (server, http):
        server.state.inject("not_json", endpoint="accounts", count=1)
        access = await token(http)
        page = await http.get("/v1/accounts", headers=auth(access))

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.text.startswith("<html>") and page.text.endswith("</html>")
    assert server.state.stats.faults_injected == 1


async def test_page_token_expired_waits_for_a_request_with_a_page_token():
    async with running(accounts=1, locations_per_account=1, reviews_per_location=120) as (
        server,
        http,
    ):
        location = next(iter(server.state.account("1").locations))
        path = f"/v4/accounts/1/locations/{location}/reviews"
        batch_body = {"locationNames": [f"accounts/1/locations/{location}"]}
        access = await token(http)
        server.state.inject("page_token_expired", endpoint="reviews", count=2)
        first = await http.get(path, headers=auth(access))
        page_token = first.json()["nextPageToken"]
        expired = await http.get(path, params={"pageToken": page_token}, headers=auth(access))
        batch_first = await http.post(
            "/v4/accounts/1/locations:batchGetReviews", json=batch_body, headers=auth(access)
        )
        batch_expired = await http.post(
            "/v4/accounts/1/locations:batchGetReviews",
            json={**batch_body, "pageToken": batch_first.json()["nextPageToken"]},
            headers=auth(access),
        )
        again = await http.get(path, params={"pageToken": page_token}, headers=auth(access))

    assert first.status_code == 200 and batch_first.status_code == 200
    assert violation(expired) == {"field": "page_token", "description": "Page token expired"}
    assert expired.json()["error"]["message"] == "Request contains an invalid argument."
    assert violation(batch_expired)["field"] == "page_token"
    assert again.status_code == 200 and server.state.faults == []
