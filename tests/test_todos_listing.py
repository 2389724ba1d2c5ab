"""Listing: filters, sorts, keyset paging and cursors."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import pytest
from bson import ObjectId

from app import create_app
from app.models.todos import ListQuery
from app.stores.todos import list_pipeline
from tests.conftest import Api

TODOS = "/api/v1/todos"
SORTS = ["created_at", "-created_at", "updated_at", "-updated_at", "due_at", "-due_at"]


async def seed(api: Api, headers: dict[str, str], count: int) -> list[dict[str, Any]]:
    """Todos with repeated and missing due dates, so sorts have ties and nulls."""
    todos = []
    for i in range(count):
        due = None if i % 4 == 0 else f"2026-12-{1 + i % 3:02d}T09:00:00Z"
        response = await api.client.post(
            TODOS,
            json={
                "title": f"todo {i}",
                "due_at": due,
                "completed": i % 2 == 0,
                "tags": ["even"] if i % 2 == 0 else ["odd"],
            },
            headers=headers,
        )
        assert response.status_code == 201
        todos.append(await response.get_json())
    return todos


async def list_page(api: Api, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    response = await api.client.get(f"{TODOS}?{urlencode(params)}", headers=headers)
    assert response.status_code == 200, await response.get_data(as_text=True)
    body: dict[str, Any] = await response.get_json()
    return body


async def walk(api: Api, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    """Every page from the first to the last."""
    seen: list[dict[str, Any]] = []
    page = await list_page(api, headers, **params)
    while True:
        seen += page["items"]
        if page["next_cursor"] is None:
            return seen
        page = await list_page(api, headers, **params, cursor=page["next_cursor"])


def expected_order(todos: list[dict[str, Any]], sort: str) -> list[str]:
    field = sort.lstrip("-")
    descending = sort.startswith("-")

    def key(todo: dict[str, Any]) -> tuple[Any, ...]:
        value = todo[field]
        if field == "due_at":  # null is the greatest value
            return (value is None, value or "", todo["id"])
        return (value, todo["id"])

    return [todo["id"] for todo in sorted(todos, key=key, reverse=descending)]


async def test_default_listing_is_newest_first_limit_20(api: Api) -> None:
    headers = await api.headers()
    todos = await seed(api, headers, 22)
    page = await list_page(api, headers)
    assert len(page["items"]) == 20
    assert [t["id"] for t in page["items"]] == expected_order(todos, "-created_at")[:20]
    assert isinstance(page["next_cursor"], str)


@pytest.mark.parametrize("sort", SORTS)
async def test_paging_walks_every_todo_once_in_order(api: Api, sort: str) -> None:
    headers = await api.headers()
    todos = await seed(api, headers, 13)
    seen = await walk(api, headers, sort=sort, limit=3)
    assert [t["id"] for t in seen] == expected_order(todos, sort)


@pytest.mark.parametrize("sort", SORTS)
async def test_paging_while_todos_come_and_go(api: Api, sort: str) -> None:
    headers = await api.headers()
    todos = await seed(api, headers, 12)
    deleted = {todos[5]["id"], todos[9]["id"]}
    seen: list[str] = []
    page = await list_page(api, headers, sort=sort, limit=4)
    step = 0
    while True:
        seen += [t["id"] for t in page["items"]]
        if page["next_cursor"] is None:
            break
        if step == 0:  # between pages: others are created and deleted
            await seed(api, headers, 2)
            for todo_id in deleted:
                assert (
                    await api.client.delete(f"{TODOS}/{todo_id}", headers=headers)
                ).status_code == 204
        step += 1
        page = await list_page(api, headers, sort=sort, limit=4, cursor=page["next_cursor"])
    assert len(seen) == len(set(seen)), "a todo was listed twice"
    survivors = {t["id"] for t in todos} - deleted
    assert survivors <= set(seen), "a todo that existed throughout was skipped"


async def test_filters_combine_with_paging(api: Api) -> None:
    headers = await api.headers()
    todos = await seed(api, headers, 12)
    done = await walk(api, headers, completed="true", limit=2)
    assert {t["id"] for t in done} == {t["id"] for t in todos if t["completed"]}
    odd = await walk(api, headers, tag="ODD", limit=5)
    assert {t["id"] for t in odd} == {t["id"] for t in todos if "odd" in t["tags"]}
    due_window = await walk(
        api, headers, due_after="2026-12-01T09:00:00Z", due_before="2026-12-03T09:00:00Z", limit=2
    )  # exclusive bounds: only the 2nd of December
    assert {t["id"] for t in due_window} == {
        t["id"] for t in todos if t["due_at"] == "2026-12-02T09:00:00.000Z"
    }
    undated_excluded = await walk(api, headers, due_before="2027-01-01T00:00:00Z")
    assert all(t["due_at"] is not None for t in undated_excluded)
    assert len(undated_excluded) == sum(t["due_at"] is not None for t in todos)


async def test_q_matches_title_or_notes_literally(api: Api) -> None:
    headers = await api.headers()
    titles = ["Call Mr. Smith", "a.b c", "axb", "price (USD)", "50% off", "star*"]
    for title in titles:
        await api.client.post(TODOS, json={"title": title}, headers=headers)
    await api.client.post(TODOS, json={"title": "other", "notes": "ask about A.B"}, headers=headers)

    async def titles_for(q: str) -> set[str]:
        return {t["title"] for t in (await list_page(api, headers, q=q))["items"]}

    assert await titles_for("a.b") == {"a.b c", "other"}
    assert await titles_for("(") == {"price (USD)"}
    assert await titles_for("*") == {"star*"}
    assert await titles_for(".*") == set()
    assert await titles_for("MR.") == {"Call Mr. Smith"}
    assert await titles_for("%") == {"50% off"}


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"limit": "0"}, ["query", "limit"]),
        ({"limit": "101"}, ["query", "limit"]),
        ({"limit": "2.5"}, ["query", "limit"]),
        ({"limit": "abc"}, ["query", "limit"]),
        ({"limit": "-1"}, ["query", "limit"]),
        ({"limit": "+5"}, ["query", "limit"]),
        ({"completed": "True"}, ["query", "completed"]),
        ({"completed": "1"}, ["query", "completed"]),
        ({"tag": "a b"}, ["query", "tag"]),
        ({"q": ""}, ["query", "q"]),
        ({"q": "x" * 201}, ["query", "q"]),
        ({"sort": "title"}, ["query", "sort"]),
        ({"due_before": "2026-12-01"}, ["query", "due_before"]),
        ({"due_after": "tomorrow"}, ["query", "due_after"]),
        ({"colour": "red"}, ["query", "colour"]),
        ({"cursor": ""}, ["query", "cursor"]),
        ({"cursor": "garbage"}, ["query", "cursor"]),
    ],
)
async def test_invalid_queries_are_422(api: Api, params: dict[str, str], loc: list[str]) -> None:
    response = await api.client.get(f"{TODOS}?{urlencode(params)}", headers=await api.headers())
    assert response.status_code == 422
    body = await response.get_json()
    assert body["code"] == "validation_failed"
    assert loc in [error["loc"] for error in body["errors"]]


async def test_a_parameter_given_twice_is_422(api: Api) -> None:
    response = await api.client.get(f"{TODOS}?limit=5&limit=6", headers=await api.headers())
    assert response.status_code == 422


async def test_limit_may_change_between_pages(api: Api) -> None:
    headers = await api.headers()
    todos = await seed(api, headers, 7)
    first = await list_page(api, headers, limit=2)
    rest = await list_page(api, headers, limit=10, cursor=first["next_cursor"])
    ids = [t["id"] for t in first["items"] + rest["items"]]
    assert ids == expected_order(todos, "-created_at")
    assert rest["next_cursor"] is None


async def test_cursor_is_bound_to_sort_filters_and_user(api: Api) -> None:
    alice = await api.headers("alice")
    bob = await api.headers("bob")
    await seed(api, alice, 7)  # three odd ones: two pages of two
    cursor = (await list_page(api, alice, limit=2, tag="odd"))["next_cursor"]
    assert cursor
    for params, headers in [
        ({"tag": "odd", "sort": "created_at"}, alice),
        ({"tag": "even"}, alice),
        ({}, alice),
        ({"tag": "odd", "completed": "false"}, alice),
        ({"tag": "odd"}, bob),
        ({"tag": "odd", "cursor_tamper": True}, alice),
    ]:
        query = {k: v for k, v in params.items() if k != "cursor_tamper"}
        value = (
            cursor[:-2] + ("AA" if cursor[-2:] != "AA" else "BB")
            if "cursor_tamper" in params
            else cursor
        )
        response = await api.client.get(
            f"{TODOS}?{urlencode({**query, 'cursor': value})}", headers=headers
        )
        assert response.status_code == 422, params
        assert ["query", "cursor"] in [e["loc"] for e in (await response.get_json())["errors"]]
    ok = await api.client.get(
        f"{TODOS}?{urlencode({'tag': 'odd', 'cursor': cursor})}", headers=alice
    )
    assert ok.status_code == 200


@pytest.mark.parametrize("sort", SORTS)
@pytest.mark.parametrize(
    "params",
    [{}, {"tag": "home"}, {"completed": "true", "q": "milk", "due_before": "2027-01-01T00:00:00Z"}],
)
@pytest.mark.parametrize("with_cursor", [False, True])
async def test_every_list_shape_reads_through_an_owner_index(
    db: Any, sort: str, params: dict[str, str], with_cursor: bool
) -> None:
    """The page's plan starts from an owner-prefixed index, never a collection scan:
    on SecantusDB that bounds a page to the owner's todos (see list_pipeline)."""
    owner = ObjectId()
    query = ListQuery.model_validate({"sort": sort, **params})
    after = (datetime(2026, 1, 1, tzinfo=UTC), ObjectId()) if with_cursor else None
    pipeline = list_pipeline(owner, query.filters(), query.sort, after, 21)
    plan = await db.command("aggregate", "todos", pipeline=pipeline, explain=True)
    planner = plan.get("queryPlanner") or plan["stages"][0]["$cursor"]["queryPlanner"]
    stages = _stages(planner["winningPlan"])
    scans = [stage for stage in stages if stage.get("stage") == "IXSCAN"]
    assert scans, stages
    assert all(next(iter(scan["keyPattern"])) == "owner" for scan in scans), stages
    assert "COLLSCAN" not in {stage.get("stage") for stage in stages}


async def test_indexes_are_one_per_sort_field(db: Any) -> None:
    """MongoDB walks an index either way, so no descending twins, and no tags
    index: each index costs every write."""
    names = {index["name"] async for index in await _list_indexes(db["todos"])}
    assert names == {
        "_id_",
        "owner_created_at_asc",
        "owner_updated_at_asc",
        "owner_due_key_asc",
    }


async def test_an_upgrade_drops_the_retired_indexes(settings: dict[str, Any], db: Any) -> None:
    """A database of a version before migrations were recorded: it has the old indexes."""
    await db["todos"].create_index(
        [("owner", 1), ("created_at", -1), ("_id", -1)], name="owner_created_at_desc"
    )
    await db["todos"].create_index([("owner", 1), ("tags", 1)], name="owner_tags")
    await db["schema_migrations"].delete_many({})
    restarted = await create_app(settings)  # testing: it upgrades at start
    async with restarted.test_app():
        names = {index["name"] async for index in await _list_indexes(db["todos"])}
    assert not names & {"owner_created_at_desc", "owner_tags"}
    assert "owner_created_at_asc" in names


async def _list_indexes(collection: Any) -> Any:
    """Motor returns the cursor, PyMongo's async client a coroutine of it."""
    cursor = collection.list_indexes()
    return await cursor if inspect.isawaitable(cursor) else cursor


def _stages(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for key in ("inputStage", "queryPlan"):
        if isinstance(plan.get(key), dict):
            found += _stages(plan[key])
    for child in plan.get("inputStages", []):
        found += _stages(child)
    return found
