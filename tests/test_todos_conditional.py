"""Conditional requests on one todo: ETag, If-Match (strong) and If-None-Match (weak)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from bson import ObjectId
from werkzeug.datastructures import Headers

from tests.conftest import TODO_DOCS, Api
from tests.test_todos import TODOS, create, problem_code


async def test_the_etag_is_the_same_on_post_get_and_patch_for_a_version(api: Api) -> None:
    headers = await api.headers()
    created = await api.client.post(TODOS, json={"title": "x"}, headers=headers)
    path = created.headers["Location"]
    assert path == f"{TODOS}/{(await created.get_json())['id']}"
    fetched = await api.client.get(path, headers=headers)
    assert created.headers["ETag"] == fetched.headers["ETag"] == '"1"'
    patched = await api.client.patch(path, json={"notes": "n"}, headers=headers)
    refetched = await api.client.get(path, headers=headers)
    assert patched.headers["ETag"] == refetched.headers["ETag"] == '"2"'


@pytest.mark.parametrize(
    "value",
    [
        '"01"',  # strong comparison is character by character
        "1",  # not an entity tag: unquoted
        'W/"1"',  # weak tags never match under If-Match
        '"1,2"',  # one tag with a comma in it
        '"1" "2"',  # not a list
        "",  # an empty list names no version
    ],
)
async def test_if_match_that_does_not_name_the_version_exactly_is_412(
    api: Api, db: Any, value: str
) -> None:
    headers = await api.headers()
    todo = await create(api, headers)
    path = f"{TODOS}/{todo['id']}"
    for method in ["PATCH", "DELETE"]:
        response = await api.client.open(
            path, method=method, json={"title": "x"}, headers={**headers, "If-Match": value}
        )
        assert response.status_code == 412, (method, value)
        assert await problem_code(response) == "version_conflict"
        assert response.headers["ETag"] == '"1"'
    stored = await db["todos"].find_one({"_id": ObjectId(todo["id"])})
    assert stored["version"] == 1 and stored["title"] == "Buy milk"


@pytest.mark.parametrize("value", ["1", '"7", 2', "W/1", ""])
async def test_a_malformed_if_match_is_412_saying_tags_are_quoted(api: Api, value: str) -> None:
    headers = await api.headers()
    todo = await create(api, headers)
    response = await api.client.patch(
        f"{TODOS}/{todo['id']}", json={"notes": "n"}, headers={**headers, "If-Match": value}
    )
    assert response.status_code == 412
    body = await response.get_json()
    assert body["code"] == "version_conflict"
    assert body["detail"].startswith('Entity tags in If-Match must be quoted, e.g. If-Match: "1"')
    assert response.headers["ETag"] == '"1"'


async def test_a_well_formed_stale_if_match_says_the_todo_changed(api: Api) -> None:
    headers = await api.headers()
    todo = await create(api, headers)
    response = await api.client.delete(
        f"{TODOS}/{todo['id']}", headers={**headers, "If-Match": '"2", W/"1"'}
    )
    assert response.status_code == 412
    assert (await response.get_json())["detail"] == (
        "The todo has changed since the version named in If-Match."
    )


@pytest.mark.parametrize("value", ['"1"', ' "7" ,"1" ', 'W/"1", "1"', "*", " * "])
async def test_if_match_naming_the_version_or_star_lets_a_delete_through(
    api: Api, db: Any, value: str
) -> None:
    headers = await api.headers()
    todo = await create(api, headers)
    response = await api.client.delete(
        f"{TODOS}/{todo['id']}", headers={**headers, "If-Match": value}
    )
    assert response.status_code == 204
    assert await db["todos"].count_documents(TODO_DOCS) == 0


async def test_repeated_if_match_lines_form_one_list(api: Api) -> None:
    headers = await api.headers()
    todo = await create(api, headers)
    combined = Headers(headers)
    combined.add("If-Match", '"7"')
    combined.add("If-Match", '"1"')
    response = await api.client.patch(
        f"{TODOS}/{todo['id']}", json={"title": "y"}, headers=combined
    )
    assert response.status_code == 200


@pytest.mark.parametrize("value", ['"01"', "1", '"2"', ""])
async def test_if_none_match_that_does_not_name_the_version_gives_the_todo(
    api: Api, value: str
) -> None:
    headers = await api.headers()
    todo = await create(api, headers)
    response = await api.client.get(
        f"{TODOS}/{todo['id']}", headers={**headers, "If-None-Match": value}
    )
    assert response.status_code == 200
    assert await response.get_json() == todo


async def test_304_carries_the_etag_and_nothing_else(api: Api) -> None:
    headers = await api.headers()
    todo = await create(api, headers)
    path = f"{TODOS}/{todo['id']}"
    await api.client.patch(path, json={"title": "v2"}, headers=headers)
    stale = await api.client.get(path, headers={**headers, "If-None-Match": '"1"'})
    assert stale.status_code == 200 and stale.headers["ETag"] == '"2"'
    # The raw ASGI reply: the test client's Response object would add a Content-Type.
    async with api.client.request(
        path, method="GET", headers={**headers, "If-None-Match": 'W/"1", W/"2"'}
    ) as connection:
        await connection.send_complete()
        body = await connection.receive()
    assert connection.status_code == 304
    assert connection.headers is not None
    assert connection.headers["ETag"] == '"2"'
    assert "Content-Type" not in connection.headers
    assert body == b""


async def test_absent_or_foreign_todos_are_404_before_304_or_412(api: Api) -> None:
    alice = await api.headers("alice")
    bob = await api.headers("bob")
    todo = await create(api, alice)
    for path in [f"{TODOS}/{todo['id']}", f"{TODOS}/{ObjectId()}"]:
        for method, header, value in [
            ("GET", "If-None-Match", "*"),
            ("GET", "If-None-Match", '"1"'),
            ("PATCH", "If-Match", '"9"'),
            ("PATCH", "If-Match", "*"),
            ("DELETE", "If-Match", '"9"'),
            ("DELETE", "If-Match", "*"),
        ]:
            response = await api.client.open(
                path, method=method, json={"title": "x"}, headers={**bob, header: value}
            )
            assert response.status_code == 404, (path, method, value)
            assert await problem_code(response) == "not_found"


async def test_a_stale_if_match_is_checked_after_the_body(api: Api) -> None:
    headers = await api.headers()
    todo = await create(api, headers)
    response = await api.client.patch(
        f"{TODOS}/{todo['id']}", json={"title": ""}, headers={**headers, "If-Match": '"9"'}
    )
    assert response.status_code == 422


async def test_concurrent_deletes_with_the_same_if_match_delete_once(api: Api, db: Any) -> None:
    headers = await api.headers()
    todo = await create(api, headers)
    path = f"{TODOS}/{todo['id']}"
    responses = await asyncio.gather(
        *(api.client.delete(path, headers={**headers, "If-Match": '"1"'}) for _ in range(2))
    )
    assert sorted(r.status_code for r in responses) == [204, 404]
    assert await db["todos"].count_documents(TODO_DOCS) == 0


async def test_a_patch_racing_a_delete_is_applied_or_404(api: Api, db: Any) -> None:
    headers = await api.headers()
    todo = await create(api, headers)
    path = f"{TODOS}/{todo['id']}"
    patched, deleted = await asyncio.gather(
        api.client.patch(path, json={"title": "late"}, headers=headers),
        api.client.delete(path, headers=headers),
    )
    assert deleted.status_code == 204
    assert patched.status_code in {200, 404}
    assert await db["todos"].count_documents(TODO_DOCS) == 0
