"""Paging edge cases: page boundaries, repeated parameters, cursors from elsewhere."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest
from itsdangerous import URLSafeSerializer
from quart import Quart

from app.cursors import SALT
from tests.conftest import Api
from tests.test_todos_listing import TODOS, expected_order, list_page, seed, walk


async def test_a_full_last_page_has_no_next_cursor(api: Api) -> None:
    headers = await api.headers()
    todos = await seed(api, headers, 4)
    exact = await list_page(api, headers, limit=4)
    assert len(exact["items"]) == 4 and exact["next_cursor"] is None
    first = await list_page(api, headers, limit=2)
    second = await list_page(api, headers, limit=2, cursor=first["next_cursor"])
    assert second["next_cursor"] is None
    ids = [t["id"] for t in first["items"] + second["items"]]
    assert ids == expected_order(todos, "-created_at")
    assert await list_page(api, await api.headers("bob")) == {"items": [], "next_cursor": None}


async def test_one_per_page_and_the_largest_page(api: Api) -> None:
    headers = await api.headers()
    todos = await seed(api, headers, 5)
    assert [t["id"] for t in await walk(api, headers, limit=1, sort="due_at")] == expected_order(
        todos, "due_at"
    )
    assert len((await list_page(api, headers, limit=100))["items"]) == 5


async def test_deleting_the_todo_a_cursor_points_at_loses_nothing(api: Api) -> None:
    headers = await api.headers()
    todos = await seed(api, headers, 6)
    first = await list_page(api, headers, limit=3, sort="created_at")
    anchor = first["items"][-1]["id"]
    assert (await api.client.delete(f"{TODOS}/{anchor}", headers=headers)).status_code == 204
    rest = await list_page(api, headers, limit=10, sort="created_at", cursor=first["next_cursor"])
    assert [t["id"] for t in first["items"] + rest["items"]] == expected_order(todos, "created_at")


async def test_filters_and_search_page_under_the_due_sort(api: Api) -> None:
    headers = await api.headers()
    todos = await seed(api, headers, 16)
    seen = await walk(
        api, headers, sort="-due_at", completed="false", tag="odd", q="TODO 1", limit=2
    )
    wanted = [
        t
        for t in todos
        if not t["completed"] and "odd" in t["tags"] and "todo 1" in t["title"].lower()
    ]
    assert wanted and [t["id"] for t in seen] == expected_order(wanted, "-due_at")


@pytest.mark.parametrize(
    "query",
    [
        "completed=true&completed=false",
        "tag=a&tag=a",
        "q=x&q=y",
        "sort=due_at&sort=due_at",
        "due_after=2026-01-01T00:00:00Z&due_after=2026-01-02T00:00:00Z",
        "tag[]=home",
        "limit[]=5",
        "cursor=abc&cursor=abc",
        "completed",
        "Limit=5",
    ],
)
async def test_repeated_list_and_unknown_parameters_are_422(api: Api, query: str) -> None:
    response = await api.client.get(f"{TODOS}?{query}", headers=await api.headers())
    assert response.status_code == 422
    body = await response.get_json()
    assert body["code"] == "validation_failed"
    assert all(error["loc"][0] == "query" for error in body["errors"])


@pytest.mark.parametrize(
    "payload",
    ["x", [], ["a", "b"], ["a", "not a date", "6543c0ffee6543c0ffee6543"], {"a": 1}],
)
async def test_signed_cursors_of_the_wrong_shape_are_422(
    api: Api, app: Quart, payload: Any
) -> None:
    cursor = URLSafeSerializer(app.config["JWT_SECRET_KEY"], salt=SALT).dumps(payload)
    response = await api.client.get(
        f"{TODOS}?{urlencode({'cursor': cursor})}", headers=await api.headers()
    )
    assert response.status_code == 422
    assert ["query", "cursor"] in [e["loc"] for e in (await response.get_json())["errors"]]


async def test_a_cursor_signed_with_another_key_is_422(api: Api) -> None:
    headers = await api.headers()
    await seed(api, headers, 3)
    real = (await list_page(api, headers, limit=1))["next_cursor"]
    payload = URLSafeSerializer("x").loads_unsafe(real)[1]  # readable, not forgeable
    forged = URLSafeSerializer("another-key-0123456789abcdef0123", salt=SALT).dumps(payload)
    response = await api.client.get(f"{TODOS}?{urlencode({'cursor': forged})}", headers=headers)
    assert response.status_code == 422
    assert ["query", "cursor"] in [e["loc"] for e in (await response.get_json())["errors"]]


@pytest.mark.parametrize(
    "changed",
    [
        {"q": "todo 2"},
        {"due_before": "2027-01-01T00:00:01Z"},
        {"due_after": "2025-01-01T00:00:00Z"},
    ],
)
async def test_a_cursor_is_bound_to_search_and_due_bounds(
    api: Api, changed: dict[str, str]
) -> None:
    headers = await api.headers()
    await seed(api, headers, 8)
    params = {"q": "todo", "due_before": "2027-01-01T00:00:00Z", "limit": 1}
    cursor = (await list_page(api, headers, **params))["next_cursor"]
    assert cursor
    same_instant = {**params, "due_before": "2027-01-01T01:00:00+01:00", "limit": 3}
    assert (await list_page(api, headers, **same_instant, cursor=cursor))["items"]
    query = urlencode({**params, **changed, "cursor": cursor})
    response = await api.client.get(f"{TODOS}?{query}", headers=headers)
    assert response.status_code == 422
    assert ["query", "cursor"] in [e["loc"] for e in (await response.get_json())["errors"]]


async def test_listing_works_while_the_sort_index_is_missing(api: Api, db: Any) -> None:
    headers = await api.headers()
    todos = await seed(api, headers, 5)
    await db["todos"].drop_index("owner_created_at_asc")
    seen = await walk(api, headers, limit=2)
    assert [t["id"] for t in seen] == expected_order(todos, "-created_at")
