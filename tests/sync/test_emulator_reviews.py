"""Reviews as a real sync meets them: times with 0 to 9 fractional digits, a listing that
changes between two pages, and batchGetReviews across locations."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from sync_service.models import parse_rfc3339
from tests.sync.emulator_http import auth, running, token, violation

_FRACTION = re.compile(r":\d{2}(?:\.(\d+))?Z$")


def _digits(value: str) -> int:
    found = _FRACTION.search(value)
    assert found, value
    return len(found.group(1) or "")


async def _all_reviews(
    http: httpx.AsyncClient, access: str, account: str, location: str
) -> list[dict[str, Any]]:
    reviews: list[dict[str, Any]] = []
    params: dict[str, Any] = {}
    while True:
        response = await http.get(
            f"/v4/accounts/{account}/locations/{location}/reviews",
            params=params,
            headers=auth(access),
        )
        assert response.status_code == 200, response.text
        body = response.json()
        reviews += body.get("reviews", [])
        if "nextPageToken" not in body:
            return reviews
        params = {"pageToken": body["nextPageToken"]}


# --- Times ----------------------------------------------------------------------------------------


async def test_review_times_have_0_3_6_or_9_digits_fixed_per_review_and_exact():
    async with running() as (server, http):  # the default world: 1 account x 3 x 20
        access = await token(http)
        locations = list(server.state.account("1").locations)
        docs = [
            (location, doc)
            for location in locations
            for doc in await _all_reviews(http, access, "1", location)
        ]

    seen = set()
    replies = set()
    for location, doc in docs:
        review = server.state.review("1", location, doc["reviewId"])
        times = [doc["createTime"], doc["updateTime"]]
        if "reviewReply" in doc:
            times.append(doc["reviewReply"]["updateTime"])
            replies.add(_digits(doc["reviewReply"]["updateTime"]))
        # One precision per review, whichever of its times.
        assert {_digits(t) for t in times} == {review.precision}
        seen.add(review.precision)
        # The written instant is the held one (a parser keeps microseconds).
        assert parse_rfc3339(doc["updateTime"]) == review.update_time
        assert parse_rfc3339(doc["createTime"]) == review.create_time
    assert len(docs) == 60
    assert seen == {0, 3, 6, 9}
    assert len(replies) >= 2


async def test_edits_move_update_time_forward_at_every_precision():
    async with running(accounts=1, locations_per_account=1, reviews_per_location=0) as (
        server,
        http,
    ):
        location = next(iter(server.state.account("1").locations))
        by_precision: dict[int, str] = {}
        while len(by_precision) < 4:
            doc = server.state.add_review("1", location, comment="first")
            review = server.state.review("1", location, doc["reviewId"])
            by_precision.setdefault(review.precision, doc["reviewId"])
        for precision, review_id in by_precision.items():
            path = f"/__control/accounts/1/locations/{location}/reviews/{review_id}"
            added = server.state.review("1", location, review_id).to_json("1", location)
            # Three edits within far less than a second: each must still move the time on.
            edits = [
                (await http.patch(path, json={"comment": f"edit {n}"})).json() for n in range(3)
            ]
            replies = [
                (await http.patch(path, json={"replyComment": f"reply {n}"})).json()
                for n in range(2)
            ]
            times = [parse_rfc3339(d["updateTime"]) for d in [added, *edits]]
            assert times == sorted(set(times)), precision
            assert all(_digits(d["updateTime"]) == precision for d in edits)
            reply_times = [parse_rfc3339(d["reviewReply"]["updateTime"]) for d in replies]
            assert reply_times[0] < reply_times[1], precision
            # A reply does not move the review's own updateTime.
            assert replies[-1]["updateTime"] == edits[-1]["updateTime"]


# --- A listing that changes between two pages -----------------------------------------------------


async def _pages(
    http: httpx.AsyncClient, access: str, location: str, count: int
) -> list[dict[str, Any]]:
    pages: list[dict[str, Any]] = []
    params: dict[str, Any] = {}
    for _ in range(count):
        response = await http.get(
            f"/v4/accounts/1/locations/{location}/reviews", params=params, headers=auth(access)
        )
        assert response.status_code == 200, response.text
        pages.append(response.json())
        params = {"pageToken": pages[-1].get("nextPageToken")}
    return pages


def _ids(page: dict[str, Any]) -> list[str]:
    return [r["reviewId"] for r in page.get("reviews", [])]


async def test_a_review_edited_after_page_one_jumps_to_the_head_and_shifts_later_pages():
    async with running(accounts=1, locations_per_account=1, reviews_per_location=120) as (
        server,
        http,
    ):
        location = next(iter(server.state.account("1").locations))
        access = await token(http)
        before = [i for page in await _pages(http, access, location, 3) for i in _ids(page)]
        edited = before[75]  # on page 2
        hook = await http.post(
            "/__control/hooks",
            json={
                "match": f"locations/{location}/reviews",
                "afterPage": 1,
                "action": "edit_review",
                "accountId": "1",
                "locationId": location,
                "reviewId": edited,
                "comment": "Changed my mind",
            },
        )
        during = await _pages(http, access, location, 3)
        after = await _pages(http, access, location, 1)

    assert hook.status_code == 200 and hook.json()["id"] == 1
    seen = [i for page in during for i in _ids(page)]
    # Page 1 was built before the edit; the offset tokens then read a list whose head is new.
    assert _ids(during[0]) == before[:50]
    assert _ids(during[1])[0] == before[49]  # read twice: everything moved down by one
    assert edited not in seen  # and the edited review is read on no page at all
    assert len(seen) == 120 and len(set(seen)) == 119
    head = after[0]["reviews"][0]
    assert head["reviewId"] == edited and head["comment"] == "Changed my mind"
    newest = max(parse_rfc3339(r["updateTime"]) for r in after[0]["reviews"][1:])
    assert parse_rfc3339(head["updateTime"]) > newest
    assert server.state.hooks == []  # it ran once and is gone
    assert server.state.review("1", location, edited).comment == "Changed my mind"


async def test_a_review_deleted_after_page_one_makes_the_next_page_skip_one():
    async with running(accounts=1, locations_per_account=1, reviews_per_location=100) as (
        server,
        http,
    ):
        location = next(iter(server.state.account("1").locations))
        access = await token(http)
        before = [i for page in await _pages(http, access, location, 2) for i in _ids(page)]
        calls: list[str] = []

        def delete_first() -> None:
            calls.append("ran")
            server.state.delete_review("1", location, before[0])

        server.state.after_page(location, 1, delete_first)
        during = await _pages(http, access, location, 2)

    assert calls == ["ran"]
    assert _ids(during[0]) == before[:50]
    assert _ids(during[1]) == before[51:]  # before[50] moved onto page 1: never read
    assert "nextPageToken" not in during[1]


async def test_a_hook_counts_pages_of_the_current_listing_only():
    async with running(accounts=1, locations_per_account=2, reviews_per_location=60) as (
        server,
        http,
    ):
        first, other = list(server.state.account("1").locations)
        access = await token(http)
        fired: list[int] = []
        server.state.after_page(f"locations/{first}/", 2, lambda: fired.append(1))
        await _pages(http, access, first, 1)  # page 1
        await _pages(http, access, other, 2)  # another location: not counted
        await _pages(http, access, first, 1)  # a new listing: page 1 again
        assert fired == []
        await _pages(http, access, first, 2)  # pages 1 and 2 of a third listing
        assert fired == [1]
        await _pages(http, access, first, 2)
        assert fired == [1]


async def test_the_hooks_control_api_refuses_what_cannot_run():
    async with running(accounts=1, locations_per_account=1, reviews_per_location=2) as (
        server,
        http,
    ):
        location = next(iter(server.state.account("1").locations))
        review = next(iter(server.state.location("1", location).reviews))
        base = {"match": location, "accountId": "1", "locationId": location}
        bad_action = await http.post("/__control/hooks", json={**base, "action": "explode"})
        no_review = await http.post(
            "/__control/hooks", json={**base, "action": "delete_review", "reviewId": "nope"}
        )
        no_location = await http.post(
            "/__control/hooks", json={**base, "action": "add_review", "locationId": "42"}
        )
        page_zero = await http.post(
            "/__control/hooks", json={**base, "action": "add_review", "afterPage": 0}
        )
        added = await http.post(
            "/__control/hooks",
            json={**base, "action": "delete_review", "reviewId": review, "afterPage": 3},
        )
        hooks_before = (await http.get("/__control/state")).json()["hooks"]
        cleared = await http.delete("/__control/hooks")

    assert bad_action.status_code == 400
    assert no_review.status_code == 404 and no_location.status_code == 404
    assert page_zero.status_code == 400
    assert added.status_code == 200 and hooks_before == 1
    assert cleared.status_code == 200 and server.state.hooks == []


async def test_an_add_review_hook_puts_a_new_review_at_the_head():
    async with running(accounts=1, locations_per_account=1, reviews_per_location=60) as (
        server,
        http,
    ):
        location = next(iter(server.state.account("1").locations))
        access = await token(http)
        await http.post(
            "/__control/hooks",
            json={
                "match": location,
                "afterPage": 1,
                "action": "add_review",
                "accountId": "1",
                "locationId": location,
                "comment": "Arrived mid-listing",
                "starRating": 2,
            },
        )
        during = await _pages(http, access, location, 2)
        after = await _pages(http, access, location, 1)

    assert during[0]["totalReviewCount"] == 60 and during[1]["totalReviewCount"] == 61
    assert after[0]["reviews"][0]["comment"] == "Arrived mid-listing"
    assert after[0]["reviews"][0]["starRating"] == "TWO"


# --- batchGetReviews --------------------------------------------------------------------------------

BATCH = "/v4/accounts/1/locations:batchGetReviews"


async def _batch(
    http: httpx.AsyncClient, access: str, body: Any, account: int = 1
) -> httpx.Response:
    return await http.post(
        f"/v4/accounts/{account}/locations:batchGetReviews", json=body, headers=auth(access)
    )


@pytest.fixture
async def world() -> Any:
    async with running(accounts=2, locations_per_account=3, reviews_per_location=20) as pair:
        yield pair


async def test_batch_get_reviews_merges_locations_newest_first_in_pages_of_50(world: Any):
    server, http = world
    access = await token(http)
    locations = list(server.state.account("1").locations)
    names = [f"accounts/1/locations/{loc}" for loc in locations]

    first = await _batch(http, access, {"locationNames": names, "pageSize": 200})
    second = await _batch(
        http, access, {"locationNames": names, "pageToken": first.json()["nextPageToken"]}
    )
    single = await _all_reviews(http, access, "1", locations[1])

    assert first.status_code == 200 and second.status_code == 200
    items = first.json()["locationReviews"] + second.json()["locationReviews"]
    assert len(first.json()["locationReviews"]) == 50 and len(items) == 60
    assert "nextPageToken" not in second.json()
    times = [parse_rfc3339(item["review"]["updateTime"]) for item in items]
    assert times == sorted(times, reverse=True)
    assert {item["name"] for item in items} == set(names)
    # Each item is the review as reviews.list writes it, under its location's name.
    from_batch = {i["review"]["reviewId"]: i for i in items if i["name"] == names[1]}
    assert {r["reviewId"]: r for r in single} == {k: v["review"] for k, v in from_batch.items()}
    assert all(i["review"]["name"].startswith(i["name"] + "/reviews/") for i in items)
    stats = server.state.stats
    assert stats.requests["batch_reviews"] == 2 and stats.requests["reviews"] == 1
    assert [c[0] for c in stats.calls if c[1] == BATCH] == ["batch_reviews", "batch_reviews"]


async def test_batch_get_reviews_orders_by_rating_and_skips_rating_only_reviews(world: Any):
    server, http = world
    access = await token(http)
    names = [f"accounts/1/locations/{loc}" for loc in server.state.account("1").locations]
    held = [r for loc in server.state.account("1").locations.values() for r in loc.reviews.values()]

    by_rating = await _batch(http, access, {"locationNames": names, "orderBy": "rating"})
    worst_first = [i["review"]["starRating"] for i in by_rating.json()["locationReviews"]]
    best = await _batch(
        http, access, {"location_names": names, "order_by": "rating desc", "page_size": 50}
    )
    text_only = {"locationNames": names, "ignoreRatingOnlyReviews": True}
    with_text = await _batch(http, access, text_only)
    rest = await _batch(http, access, {**text_only, "pageToken": with_text.json()["nextPageToken"]})

    order = ["ONE", "TWO", "THREE", "FOUR", "FIVE"]
    assert [order.index(s) for s in worst_first] == sorted(order.index(s) for s in worst_first)
    assert best.json()["locationReviews"][0]["review"]["starRating"] == max(
        (r.star_rating for r in held), key=order.index
    )
    commented = [i["review"] for page in (with_text, rest) for i in page.json()["locationReviews"]]
    assert len(commented) == sum(1 for r in held if r.comment) < len(held)
    assert all(r.get("comment") for r in commented)


async def test_batch_get_reviews_refuses_bad_location_lists(world: Any):
    server, http = world
    access = await token(http)
    own = [f"accounts/1/locations/{loc}" for loc in server.state.account("1").locations]
    foreign = f"accounts/2/locations/{next(iter(server.state.account('2').locations))}"

    for _ in range(47):
        server.state.add_location("1")
    fifty = [f"accounts/1/locations/{loc}" for loc in server.state.account("1").locations]

    at_limit = await _batch(http, access, {"locationNames": fifty})
    too_many = await _batch(http, access, {"locationNames": [*fifty, "accounts/1/locations/9"]})
    empty = await _batch(http, access, {"locationNames": []})
    missing = await _batch(http, access, {})
    not_strings = await _batch(http, access, {"locationNames": [1, 2]})
    malformed = await _batch(http, access, {"locationNames": ["locations/1"]})
    other_account = await _batch(http, access, {"locationNames": [own[0], foreign]})
    unknown = await _batch(http, access, {"locationNames": [own[0], "accounts/1/locations/42"]})

    assert len(fifty) == 50 and at_limit.status_code == 200
    for response in (empty, missing, too_many, not_strings, malformed, other_account):
        assert violation(response)["field"] == "location_names"
    assert "50" in violation(too_many)["description"]
    assert foreign in violation(other_account)["description"]
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == "Requested entity was not found."


async def test_batch_get_reviews_refuses_locations_without_reviews_naming_them(world: Any):
    server, http = world
    access = await token(http)
    verified = f"accounts/1/locations/{next(iter(server.state.account('1').locations))}"
    named = {}
    for kind in ("unverified", "suspended", "duplicate"):
        location_id = server.state.add_location("1", kind=kind)["name"].removeprefix("locations/")
        named[kind] = f"accounts/1/locations/{location_id}"
    closed = server.state.add_location("1", kind="closed", reviews=2)["name"]

    answers = {
        kind: await _batch(http, access, {"locationNames": [verified, name]})
        for kind, name in named.items()
    }
    with_closed = await _batch(
        http, access, {"locationNames": [verified, f"accounts/1/{closed}"], "pageSize": 50}
    )

    for kind, response in answers.items():
        error = response.json()["error"]
        assert response.status_code == 400, kind
        assert error["status"] == "FAILED_PRECONDITION", kind
        assert named[kind] in error["message"], kind
    assert "not verified" in answers["unverified"].json()["error"]["message"]
    assert "duplicate" in answers["duplicate"].json()["error"]["message"]
    assert with_closed.status_code == 200
    assert len(with_closed.json()["locationReviews"]) == 22


async def test_batch_page_tokens_are_bound_to_the_request(world: Any):
    server, http = world
    access = await token(http)
    names = [f"accounts/1/locations/{loc}" for loc in server.state.account("1").locations]
    first = await _batch(http, access, {"locationNames": names})
    page_token = first.json()["nextPageToken"]

    forged = await _batch(http, access, {"locationNames": names, "pageToken": "MTAwLmFiYw"})
    fewer = await _batch(http, access, {"locationNames": names[:2], "pageToken": page_token})
    reordered = await _batch(http, access, {"locationNames": names[::-1], "pageToken": page_token})
    other_order = await _batch(
        http, access, {"locationNames": names, "pageToken": page_token, "orderBy": "rating"}
    )
    same = await _batch(http, access, {"locationNames": names, "pageToken": page_token})
    listing_token = await http.get(
        f"/v4/accounts/1/locations/{names[0].rsplit('/', 1)[1]}/reviews",
        params={"pageToken": page_token},
        headers=auth(access),
    )

    for response in (forged, fewer, reordered, other_order, listing_token):
        assert violation(response)["field"] == "page_token"
    assert same.status_code == 200 and len(same.json()["locationReviews"]) == 10


async def test_batch_get_reviews_refuses_bad_bodies_and_foreign_accounts(world: Any):
    server, http = world
    access = await token(http)
    names = [f"accounts/1/locations/{next(iter(server.state.account('1').locations))}"]

    not_json = await http.post(BATCH, content=b"{nope", headers=auth(access))
    not_object = await _batch(http, access, ["a"])
    unknown_field = await _batch(http, access, {"locationNames": names, "locations": names})
    bad_order = await _batch(http, access, {"locationNames": names, "orderBy": "newest"})
    bad_size = await _batch(http, access, {"locationNames": names, "pageSize": -1})
    bool_size = await _batch(http, access, {"locationNames": names, "pageSize": True})
    bad_flag = await _batch(http, access, {"locationNames": names, "ignoreRatingOnlyReviews": 1})
    capped = await _batch(http, access, {"locationNames": names, "pageSize": "7"})
    foreign = await _batch(http, access, {"locationNames": names}, account=2)
    no_token = await http.post(BATCH, json={"locationNames": names})

    assert not_json.status_code == 400 and not_object.status_code == 400
    assert "Invalid JSON payload" in not_json.json()["error"]["message"]
    assert unknown_field.status_code == 400
    assert '"locations"' in unknown_field.json()["error"]["message"]
    assert violation(bad_order)["field"] == "order_by"
    assert violation(bad_size)["field"] == "page_size"
    assert violation(bool_size)["field"] == "page_size"
    assert violation(bad_flag)["field"] == "ignore_rating_only_reviews"
    assert capped.status_code == 200 and len(capped.json()["locationReviews"]) == 7
    assert foreign.status_code == 403
    assert no_token.status_code == 401


async def test_reviews_faults_hit_batch_calls_and_batch_faults_only_them(world: Any):
    server, http = world
    access = await token(http)
    location = next(iter(server.state.account("1").locations))
    body = {"locationNames": [f"accounts/1/locations/{location}"]}
    listing = f"/v4/accounts/1/locations/{location}/reviews"

    server.state.inject("unavailable", count=2, endpoint="reviews")
    by_reviews_fault = [
        (await _batch(http, access, body)).status_code,
        (await http.get(listing, headers=auth(access))).status_code,
    ]
    server.state.inject("internal", count=1, endpoint="batch_reviews")
    listed = await http.get(listing, headers=auth(access))
    batched = await _batch(http, access, body)

    assert by_reviews_fault == [503, 503]
    assert listed.status_code == 200
    assert batched.status_code == 500 and server.state.faults == []
