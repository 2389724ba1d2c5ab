"""Todo bodies: strict types, bounds, normalisation, and what is stored."""

from __future__ import annotations

from typing import Any

import pytest
from bson import ObjectId

from app.stores.todos import NO_DUE_DATE
from tests.conftest import TODO_DOCS, Api
from tests.test_todos import TODOS, create

STORED_FIELDS = {
    "_id",
    "owner",
    "title",
    "notes",
    "completed",
    "completed_at",
    "due_at",
    "due_key",
    "priority",
    "tags",
    "created_at",
    "updated_at",
    "version",
}


async def stored(db: Any, todo_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = await db["todos"].find_one({"_id": ObjectId(todo_id)})
    return doc


async def test_the_stored_document_belongs_to_the_caller(api: Api, db: Any) -> None:
    headers = await api.headers()
    me = await (await api.client.get("/api/v1/auth/me", headers=headers)).get_json()
    todo = await create(api, headers)
    doc = await stored(db, todo["id"])
    assert set(doc) == STORED_FIELDS
    assert doc["owner"] == ObjectId(me["id"])
    assert doc["due_at"] is None and doc["due_key"] == NO_DUE_DATE


async def test_bounds_are_inclusive_and_counted_after_trimming(api: Api) -> None:
    headers = await api.headers()
    todo = await create(api, headers, title=f"  {'x' * 200}\n", notes="n" * 10_000)
    assert todo["title"] == "x" * 200 and len(todo["notes"]) == 10_000


async def test_due_at_is_normalised_to_utc_and_truncated(api: Api, db: Any) -> None:
    headers = await api.headers()
    todo = await create(api, headers, due_at="2026-12-01T09:00:00.9999+05:30")
    assert todo["due_at"] == "2026-12-01T03:30:00.999Z"
    path = f"{TODOS}/{todo['id']}"
    patched = await api.client.patch(path, json={"due_at": "2026-12-02t10:00:00z"}, headers=headers)
    assert (await patched.get_json())["due_at"] == "2026-12-02T10:00:00.000Z"
    doc = await stored(db, todo["id"])
    assert doc["due_key"] == doc["due_at"]
    await api.client.patch(path, json={"due_at": None}, headers=headers)
    doc = await stored(db, todo["id"])
    assert doc["due_at"] is None and doc["due_key"] == NO_DUE_DATE


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"title": 5}, ["body", "title"]),
        ({"title": ["x"]}, ["body", "title"]),
        ({"title": None}, ["body", "title"]),
        ({"title": "ok", "notes": None}, ["body", "notes"]),
        ({"title": "ok", "priority": None}, ["body", "priority"]),
        ({"title": "ok", "priority": "HIGH"}, ["body", "priority"]),
        ({"title": "ok", "tags": None}, ["body", "tags"]),
        ({"title": "ok", "tags": [1]}, ["body", "tags", "0"]),
        ({"title": "ok", "tags": [""]}, ["body", "tags", "0"]),
        ({"title": "ok", "tags": [{"$ne": ""}]}, ["body", "tags", "0"]),
        ({"title": "ok", "completed": None}, ["body", "completed"]),
        ({"title": "ok", "completed": 0}, ["body", "completed"]),
        ({"title": "ok", "due_at": True}, ["body", "due_at"]),
        ({"title": "ok", "due_at": "2026-12-01T09:00Z"}, ["body", "due_at"]),
        ({"title": "ok", "due_at": "2026-02-30T09:00:00Z"}, ["body", "due_at"]),
        ({"title": "ok", "due_at": {"$date": "2026-12-01T09:00:00Z"}}, ["body", "due_at"]),
        ({"title": "ok", "created_at": "2026-12-01T09:00:00Z"}, ["body", "created_at"]),
        ({"title": "ok", "completed_at": None}, ["body", "completed_at"]),
        ({"title": "ok", "owner": "6543c0ffee6543c0ffee6543"}, ["body", "owner"]),
        ({"title": "ok", "_id": "6543c0ffee6543c0ffee6543"}, ["body", "_id"]),
    ],
)
async def test_create_refuses_wrong_types_and_fields(
    api: Api, db: Any, body: dict[str, Any], loc: list[str]
) -> None:
    response = await api.client.post(TODOS, json=body, headers=await api.headers())
    assert response.status_code == 422
    assert loc in [error["loc"] for error in (await response.get_json())["errors"]]
    assert await db["todos"].count_documents(TODO_DOCS) == 0


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"notes": None}, ["body", "notes"]),
        ({"priority": None}, ["body", "priority"]),
        ({"priority": "urgent"}, ["body", "priority"]),
        ({"completed": "false"}, ["body", "completed"]),
        ({"due_at": 0}, ["body", "due_at"]),
        ({"tags": ["ok", "not ok"]}, ["body", "tags", "1"]),
        ({"colour": "red"}, ["body", "colour"]),
        ({"id": "6543c0ffee6543c0ffee6543"}, ["body", "id"]),
        ({"version": 9}, ["body", "version"]),
        ({"title": {"$gt": ""}}, ["body", "title"]),
        ({"$set": {"owner": "someone"}}, ["body", "$set"]),
        ({"$where": "1"}, ["body", "$where"]),
    ],
)
async def test_patch_refuses_wrong_types_and_fields(
    api: Api, db: Any, body: dict[str, Any], loc: list[str]
) -> None:
    headers = await api.headers()
    todo = await create(api, headers)
    before = await stored(db, todo["id"])
    response = await api.client.patch(f"{TODOS}/{todo['id']}", json=body, headers=headers)
    assert response.status_code == 422
    assert loc in [error["loc"] for error in (await response.get_json())["errors"]]
    assert await stored(db, todo["id"]) == before


async def test_patch_lower_cases_and_deduplicates_tags(api: Api) -> None:
    headers = await api.headers()
    todo = await create(api, headers, tags=["keep"])
    tags = ["Home", "HOME", "x-1", "a_b", *[f"T{i}" for i in range(17)], "t0"]
    response = await api.client.patch(f"{TODOS}/{todo['id']}", json={"tags": tags}, headers=headers)
    assert response.status_code == 200
    assert (await response.get_json())["tags"] == [
        "home",
        "x-1",
        "a_b",
        *[f"t{i}" for i in range(17)],
    ]
    too_many = await api.client.patch(
        f"{TODOS}/{todo['id']}", json={"tags": [f"t{i}" for i in range(21)]}, headers=headers
    )
    assert too_many.status_code == 422


async def test_a_patch_that_changes_nothing_still_bumps_version_and_updated_at(
    api: Api, db: Any
) -> None:
    headers = await api.headers()
    todo = await create(api, headers, completed=True)
    response = await api.client.patch(
        f"{TODOS}/{todo['id']}", json={"completed": True, "title": "Buy milk"}, headers=headers
    )
    updated = await response.get_json()
    assert updated["version"] == 2 and updated["updated_at"] >= todo["updated_at"]
    assert updated["completed_at"] == todo["completed_at"] == todo["created_at"]
    doc = await stored(db, todo["id"])
    assert doc["version"] == 2
