"""Todos: create, read, update, delete; ownership, validation, ETags."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from bson import ObjectId

from tests.conftest import TODO_DOCS, Api

TODOS = "/api/v1/todos"
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


async def create(api: Api, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
    response = await api.client.post(TODOS, json={"title": "Buy milk", **fields}, headers=headers)
    assert response.status_code == 201, await response.get_data(as_text=True)
    body: dict[str, Any] = await response.get_json()
    return body


async def problem_code(response: Any) -> str:
    assert response.mimetype == "application/problem+json"
    code: str = (await response.get_json())["code"]
    return code


async def test_create_returns_the_todo_with_location_and_etag(api: Api, db: Any) -> None:
    headers = await api.headers()
    response = await api.client.post(
        TODOS,
        json={
            "title": "  Buy milk  ",
            "tags": ["Home", "home", "errands"],
            "due_at": "2026-12-01T10:00:00.123456+01:00",
        },
        headers=headers,
    )
    assert response.status_code == 201
    todo = await response.get_json()
    assert set(todo) == {
        "id",
        "title",
        "notes",
        "completed",
        "completed_at",
        "due_at",
        "priority",
        "tags",
        "created_at",
        "updated_at",
        "version",
    }
    assert re.fullmatch(r"[0-9a-f]{24}", todo["id"])
    assert todo["title"] == "Buy milk"
    assert todo["notes"] == ""
    assert todo["completed"] is False and todo["completed_at"] is None
    assert todo["due_at"] == "2026-12-01T09:00:00.123Z"
    assert todo["priority"] == "normal"
    assert todo["tags"] == ["home", "errands"]
    assert TIMESTAMP.fullmatch(todo["created_at"]) and todo["created_at"] == todo["updated_at"]
    assert todo["version"] == 1
    assert response.headers["Location"] == f"{TODOS}/{todo['id']}"
    assert response.headers["ETag"] == '"1"'
    stored = await db["todos"].find_one({"_id": ObjectId(todo["id"])})
    assert stored["title"] == "Buy milk" and stored["tags"] == ["home", "errands"]
    assert stored["owner"] is not None


async def test_create_completed_sets_completed_at_to_created_at(api: Api) -> None:
    todo = await create(api, await api.headers(), completed=True, priority="high")
    assert todo["completed_at"] == todo["created_at"]
    assert todo["priority"] == "high"


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({}, ["body", "title"]),
        ({"title": "   "}, ["body", "title"]),
        ({"title": "x" * 201}, ["body", "title"]),
        ({"title": {"$gt": ""}}, ["body", "title"]),
        ({"title": "ok", "notes": "n" * 10_001}, ["body", "notes"]),
        ({"title": "ok", "priority": "urgent"}, ["body", "priority"]),
        ({"title": "ok", "completed": "true"}, ["body", "completed"]),
        ({"title": "ok", "completed": 1}, ["body", "completed"]),
        ({"title": "ok", "tags": ["a b"]}, ["body", "tags", "0"]),
        ({"title": "ok", "tags": ["x" * 33]}, ["body", "tags", "0"]),
        ({"title": "ok", "tags": [f"t{i}" for i in range(21)]}, ["body", "tags"]),
        ({"title": "ok", "tags": "home"}, ["body", "tags"]),
        ({"title": "ok", "due_at": "2026-12-01"}, ["body", "due_at"]),
        ({"title": "ok", "due_at": "2026-12-01T09:00:00"}, ["body", "due_at"]),
        ({"title": "ok", "due_at": 1764579600}, ["body", "due_at"]),
        ({"title": "ok", "colour": "red"}, ["body", "colour"]),
        ({"title": "ok", "version": 3}, ["body", "version"]),
        ({"title": "ok", "id": "6543c0ffee6543c0ffee6543"}, ["body", "id"]),
        ({"title": "ok", "$where": "1"}, ["body", "$where"]),
    ],
)
async def test_create_rejects_invalid_bodies(
    api: Api, db: Any, body: dict[str, Any], loc: list[str]
) -> None:
    response = await api.client.post(TODOS, json=body, headers=await api.headers())
    assert response.status_code == 422
    assert await problem_code(response) == "validation_failed"
    errors = (await response.get_json())["errors"]
    assert loc in [error["loc"] for error in errors]
    assert await db["todos"].count_documents(TODO_DOCS) == 0


async def test_twenty_tags_after_deduplication_are_fine(api: Api) -> None:
    tags = [f"t{i}" for i in range(20)] + ["T0", "t1"]
    todo = await create(api, await api.headers(), tags=tags)
    assert todo["tags"] == [f"t{i}" for i in range(20)]


async def test_title_length_counts_code_points(api: Api) -> None:
    todo = await create(api, await api.headers(), title="é" * 200)
    assert len(todo["title"]) == 200


async def test_get_returns_the_todo_and_etag(api: Api) -> None:
    headers = await api.headers()
    todo = await create(api, headers)
    response = await api.client.get(f"{TODOS}/{todo['id']}", headers=headers)
    assert response.status_code == 200
    assert await response.get_json() == todo
    assert response.headers["ETag"] == '"1"'


@pytest.mark.parametrize("value", ['"1"', 'W/"1"', '"7", "1"', "*"])
async def test_if_none_match_gives_304(api: Api, value: str) -> None:
    headers = await api.headers()
    todo = await create(api, headers)
    response = await api.client.get(
        f"{TODOS}/{todo['id']}", headers={**headers, "If-None-Match": value}
    )
    assert response.status_code == 304
    assert response.headers["ETag"] == '"1"'
    assert await response.get_data() == b""


async def test_if_none_match_with_another_version_gives_200(api: Api) -> None:
    headers = await api.headers()
    todo = await create(api, headers)
    response = await api.client.get(
        f"{TODOS}/{todo['id']}", headers={**headers, "If-None-Match": '"2"'}
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    "todo_id",
    ["nope", "6543C0FFEE6543C0FFEE6543", "6543c0ffee6543c0ffee654", "6543c0ffee6543c0ffee6543"],
)
async def test_malformed_or_absent_ids_are_404(api: Api, todo_id: str) -> None:
    headers = await api.headers()
    for method in ["GET", "PATCH", "DELETE"]:
        response = await api.client.open(
            f"{TODOS}/{todo_id}", method=method, headers=headers, json={"title": "x"}
        )
        assert response.status_code == 404, method
        assert await problem_code(response) == "not_found"


async def test_trailing_slash_is_404(api: Api) -> None:
    response = await api.client.get(f"{TODOS}/", headers=await api.headers())
    assert response.status_code == 404


async def test_precedence_401_then_malformed_id_then_422(api: Api) -> None:
    no_auth = await api.client.patch(f"{TODOS}/bad", json={"colour": 1})
    assert no_auth.status_code == 401
    headers = await api.headers()
    malformed = await api.client.patch(f"{TODOS}/bad", json={"colour": 1}, headers=headers)
    assert malformed.status_code == 404
    absent = f"{TODOS}/{ObjectId()}"
    invalid = await api.client.patch(absent, json={"colour": 1}, headers=headers)
    assert invalid.status_code == 422
    missing = await api.client.patch(
        absent, json={"title": "x"}, headers={**headers, "If-Match": '"9"'}
    )
    assert missing.status_code == 404


async def test_other_users_todos_do_not_exist_for_you(api: Api, db: Any) -> None:
    alice = await api.headers("alice")
    bob = await api.headers("bob")
    todo = await create(api, alice, completed=True)
    path = f"{TODOS}/{todo['id']}"
    assert (await api.client.get(path, headers=bob)).status_code == 404
    assert (await api.client.patch(path, json={"title": "mine"}, headers=bob)).status_code == 404
    assert (
        await api.client.patch(path, json={"title": "x"}, headers={**bob, "If-Match": "*"})
    ).status_code == 404
    assert (await api.client.delete(path, headers=bob)).status_code == 404
    listing = await (await api.client.get(TODOS, headers=bob)).get_json()
    assert listing == {"items": [], "next_cursor": None}
    cleared = await api.client.delete(f"{TODOS}?completed=true", headers=bob)
    assert await cleared.get_json() == {"deleted": 0}
    stored = await db["todos"].find_one({"_id": ObjectId(todo["id"])})
    assert stored["title"] == "Buy milk" and stored["version"] == 1


async def test_patch_changes_fields_and_bumps_version(api: Api, db: Any) -> None:
    headers = await api.headers()
    todo = await create(api, headers, due_at="2026-12-01T09:00:00Z", tags=["a"])
    path = f"{TODOS}/{todo['id']}"
    response = await api.client.patch(
        path, json={"title": " New ", "tags": ["B", "b"], "notes": "n"}, headers=headers
    )
    assert response.status_code == 200
    updated = await response.get_json()
    assert updated["title"] == "New" and updated["tags"] == ["b"] and updated["notes"] == "n"
    assert updated["due_at"] == "2026-12-01T09:00:00.000Z"
    assert updated["version"] == 2 and response.headers["ETag"] == '"2"'
    assert updated["created_at"] == todo["created_at"]
    assert updated["updated_at"] >= todo["updated_at"]
    cleared = await (
        await api.client.patch(path, json={"due_at": None}, headers=headers)
    ).get_json()
    assert cleared["due_at"] is None and cleared["version"] == 3
    same = await (await api.client.patch(path, json={"notes": "n"}, headers=headers)).get_json()
    assert same["version"] == 4  # every accepted PATCH bumps the version
    stored = await db["todos"].find_one({"_id": ObjectId(todo["id"])})
    assert stored["version"] == 4 and stored["due_at"] is None
    assert await (await api.client.get(path, headers=headers)).get_json() == same


async def test_completed_at_follows_completed(api: Api) -> None:
    headers = await api.headers()
    todo = await create(api, headers)
    path = f"{TODOS}/{todo['id']}"
    done = await (
        await api.client.patch(path, json={"completed": True}, headers=headers)
    ).get_json()
    assert done["completed"] is True and done["completed_at"] == done["updated_at"]
    again = await (
        await api.client.patch(path, json={"completed": True}, headers=headers)
    ).get_json()
    assert again["completed_at"] == done["completed_at"]
    undone = await (
        await api.client.patch(path, json={"completed": False}, headers=headers)
    ).get_json()
    assert undone["completed_at"] is None


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({}, ["body"]),
        ({"title": None}, ["body", "title"]),
        ({"completed": None}, ["body", "completed"]),
        ({"tags": None}, ["body", "tags"]),
        ({"completed_at": None}, ["body", "completed_at"]),
        ({"updated_at": "2026-12-01T09:00:00Z"}, ["body", "updated_at"]),
        ({"title": ""}, ["body", "title"]),
    ],
)
async def test_patch_rejects_invalid_bodies(
    api: Api, db: Any, body: dict[str, Any], loc: list[str]
) -> None:
    headers = await api.headers()
    todo = await create(api, headers)
    response = await api.client.patch(f"{TODOS}/{todo['id']}", json=body, headers=headers)
    assert response.status_code == 422
    assert loc in [error["loc"] for error in (await response.get_json())["errors"]]
    assert (await db["todos"].find_one({"_id": ObjectId(todo["id"])}))["version"] == 1


async def test_patch_if_match(api: Api) -> None:
    headers = await api.headers()
    todo = await create(api, headers)
    path = f"{TODOS}/{todo['id']}"
    stale = await api.client.patch(
        path, json={"title": "x"}, headers={**headers, "If-Match": '"2", "3"'}
    )
    assert stale.status_code == 412
    assert await problem_code(stale) == "version_conflict"
    assert stale.headers["ETag"] == '"1"'
    weak = await api.client.patch(
        path, json={"title": "x"}, headers={**headers, "If-Match": 'W/"1"'}
    )
    assert weak.status_code == 412
    listed = await api.client.patch(
        path, json={"title": "x"}, headers={**headers, "If-Match": '"5", "1"'}
    )
    assert listed.status_code == 200
    star = await api.client.patch(path, json={"title": "y"}, headers={**headers, "If-Match": "*"})
    assert star.status_code == 200 and star.headers["ETag"] == '"3"'


async def test_concurrent_patches_with_same_if_match_one_wins(api: Api, db: Any) -> None:
    headers = await api.headers()
    todo = await create(api, headers)
    path = f"{TODOS}/{todo['id']}"
    responses = await asyncio.gather(
        *(
            api.client.patch(path, json={"title": f"t{i}"}, headers={**headers, "If-Match": '"1"'})
            for i in range(2)
        )
    )
    assert sorted(r.status_code for r in responses) == [200, 412]
    assert (await db["todos"].find_one({"_id": ObjectId(todo["id"])}))["version"] == 2


async def test_concurrent_patches_without_if_match_lose_nothing(api: Api) -> None:
    headers = await api.headers()
    todo = await create(api, headers)
    path = f"{TODOS}/{todo['id']}"
    responses = await asyncio.gather(
        api.client.patch(path, json={"title": "new title"}, headers=headers),
        api.client.patch(path, json={"notes": "new notes"}, headers=headers),
        api.client.patch(path, json={"priority": "high"}, headers=headers),
    )
    assert [r.status_code for r in responses] == [200, 200, 200]
    final = await (await api.client.get(path, headers=headers)).get_json()
    assert (final["title"], final["notes"], final["priority"]) == ("new title", "new notes", "high")
    assert final["version"] == 4


async def test_delete(api: Api, db: Any) -> None:
    headers = await api.headers()
    todo = await create(api, headers)
    path = f"{TODOS}/{todo['id']}"
    stale = await api.client.delete(path, headers={**headers, "If-Match": '"2"'})
    assert stale.status_code == 412 and stale.headers["ETag"] == '"1"'
    response = await api.client.delete(path, headers={**headers, "If-Match": '"1"'})
    assert response.status_code == 204
    assert await response.get_data() == b""
    assert await db["todos"].count_documents(TODO_DOCS) == 0
    assert (await api.client.delete(path, headers=headers)).status_code == 404
    assert (await api.client.get(path, headers=headers)).status_code == 404


async def test_clear_completed(api: Api, db: Any) -> None:
    alice = await api.headers("alice")
    bob = await api.headers("bob")
    await create(api, alice, completed=True)
    await create(api, alice, completed=True)
    kept = await create(api, alice)
    await create(api, bob, completed=True)
    response = await api.client.delete(f"{TODOS}?completed=true", headers=alice)
    assert response.status_code == 200
    assert await response.get_json() == {"deleted": 2}
    assert await db["todos"].count_documents(TODO_DOCS) == 2
    remaining = await (await api.client.get(TODOS, headers=alice)).get_json()
    assert [todo["id"] for todo in remaining["items"]] == [kept["id"]]


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?completed=false",
        "?completed=true&tag=x",
        "?completed=TRUE",
        "?completed=true&completed=true",
    ],
)
async def test_clear_completed_takes_exactly_completed_true(api: Api, db: Any, query: str) -> None:
    headers = await api.headers()
    await create(api, headers, completed=True)
    response = await api.client.delete(f"{TODOS}{query}", headers=headers)
    assert response.status_code == 422
    assert (await response.get_json())["errors"][0]["loc"][0] == "query"
    assert await db["todos"].count_documents(TODO_DOCS) == 1


async def test_todos_need_a_token(api: Api) -> None:
    for method, path in [("GET", TODOS), ("POST", TODOS), ("DELETE", TODOS), ("GET", f"{TODOS}/x")]:
        response = await api.client.open(path, method=method)
        assert response.status_code == 401
        assert await problem_code(response) == "token_missing"


async def test_unreadable_if_match_tags_match_nothing(api: Api) -> None:
    headers = await api.headers()
    todo = await create(api, headers)
    response = await api.client.delete(
        f"{TODOS}/{todo['id']}", headers={**headers, "If-Match": '"#\'", ""'}
    )
    assert response.status_code == 412
    assert response.headers["ETag"] == '"1"'


@pytest.mark.parametrize(
    "due_at", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "9999-12-31T23:59:59.999Z"]
)
async def test_due_dates_outside_the_range_are_422(api: Api, due_at: str) -> None:
    response = await api.client.post(
        TODOS, json={"title": "edge", "due_at": due_at}, headers=await api.headers()
    )
    assert response.status_code == 422
    assert ["body", "due_at"] in [e["loc"] for e in (await response.get_json())["errors"]]


async def test_the_latest_due_date_still_sorts_before_no_due_date(api: Api) -> None:
    headers = await api.headers()
    undated = await create(api, headers)
    latest = await create(api, headers, due_at="9999-12-31T23:59:59.998Z")
    page = await (await api.client.get(f"{TODOS}?sort=due_at", headers=headers)).get_json()
    assert [t["id"] for t in page["items"]] == [latest["id"], undated["id"]]


@pytest.mark.parametrize(
    ("due_at", "stored"),
    [
        ("0028-03-04T05:33:45.49+03:53", "0028-03-04T01:40:45.490Z"),  # found by fuzzing
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000Z"),
        ("0999-12-31T23:59:59.999-00:00", "0999-12-31T23:59:59.999Z"),
    ],
)
async def test_early_years_come_back_as_rfc_3339_with_four_digits(
    api: Api, due_at: str, stored: str
) -> None:
    headers = await api.headers()
    todo = await create(api, headers, due_at=due_at)
    assert todo["due_at"] == stored
    fetched = await (await api.client.get(f"{TODOS}/{todo['id']}", headers=headers)).get_json()
    assert fetched["due_at"] == stored
