"""Idempotency-Key on POST /api/v1/todos: every rule of issue 11, on the driver under test."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from bson import ObjectId
from quart import Quart

from app import idempotency, todo_service
from app.clock import utcnow
from app.extensions import mongo
from app.models.todos import TodoCreate
from tests.conftest import TODO_DOCS, Api

TODOS = "/api/v1/todos"
KEY = "8e03978e-40d5-43e8-bc93-6894a57f9324"


async def post(
    api: Api, headers: dict[str, str], body: Any, key: str | None = KEY, **extra: str
) -> Any:
    if key is not None:
        headers = {**headers, "Idempotency-Key": key}
    return await api.client.post(TODOS, json=body, headers={**headers, **extra})


async def code(response: Any) -> str:
    assert response.mimetype == "application/problem+json"
    value: str = (await response.get_json())["code"]
    return value


async def todo_count(db: Any) -> int:
    return int(await db["todos"].count_documents(TODO_DOCS))


async def opcounters(db: Any) -> dict[str, int]:
    status = await db.client.admin.command("serverStatus")
    return {name: int(status["opcounters"][name]) for name in ("insert", "query", "update")}


async def test_a_repeat_gets_the_same_todo_marked_as_replayed(api: Api, db: Any) -> None:
    headers = await api.headers()
    first = await post(api, headers, {"title": "Buy milk", "tags": ["home"]})
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    todo = await first.get_json()

    again = await post(api, headers, {"title": "Buy milk", "tags": ["home"]})
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == f"{TODOS}/{todo['id']}"
    assert again.headers["ETag"] == '"1"'
    assert await again.get_json() == todo

    assert await db["todos"].count_documents({"title": "Buy milk"}) == 1
    record = await db["idempotency_keys"].find_one({"_id.key": KEY})
    assert record["completed"] is True
    assert record["resource_id"] == ObjectId(todo["id"])
    assert record["resource_id"] == idempotency.resource_id(
        record["_id"]["owner"], KEY, record["claimed_at"]
    )


async def test_an_equivalent_body_is_the_same_request(api: Api, db: Any) -> None:
    headers = await api.headers()
    first = await post(
        api, headers, {"title": "Call", "tags": ["Home"], "due_at": "2026-12-01T10:00:00+01:00"}
    )
    again = await post(
        api,
        headers,
        {"due_at": "2026-12-01T09:00:00Z", "tags": ["home"], "title": "  Call "},
    )
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (await again.get_json())["id"] == (await first.get_json())["id"]
    assert await todo_count(db) == 1


async def test_the_same_key_with_another_body_is_422(api: Api, db: Any) -> None:
    headers = await api.headers()
    assert (await post(api, headers, {"title": "Buy milk"})).status_code == 201
    reused = await post(api, headers, {"title": "Buy bread"})
    assert reused.status_code == 422
    assert await code(reused) == "idempotency_key_reused"
    assert (await reused.get_json())["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    assert await todo_count(db) == 1


async def test_a_replay_shows_the_todo_as_it_is_now(api: Api) -> None:
    headers = await api.headers()
    todo = await (await post(api, headers, {"title": "Buy milk"})).get_json()
    changed = await api.client.patch(
        f"{TODOS}/{todo['id']}", json={"completed": True}, headers=headers
    )
    assert changed.status_code == 200

    again = await post(api, headers, {"title": "Buy milk"})
    assert again.status_code == 201
    assert again.headers["ETag"] == '"2"'
    assert again.headers["Idempotent-Replayed"] == "true"
    body = await again.get_json()
    assert (body["id"], body["completed"], body["version"]) == (todo["id"], True, 2)


async def test_a_replay_after_the_todo_was_deleted_is_404_and_creates_nothing(
    api: Api, db: Any
) -> None:
    headers = await api.headers()
    todo = await (await post(api, headers, {"title": "Buy milk"})).get_json()
    assert (await api.client.delete(f"{TODOS}/{todo['id']}", headers=headers)).status_code == 204

    again = await post(api, headers, {"title": "Buy milk"})
    assert again.status_code == 404
    assert await code(again) == "not_found"
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await todo_count(db) == 0


async def test_another_users_identical_key_is_unrelated(api: Api, db: Any) -> None:
    alice = await post(api, await api.headers("alice"), {"title": "Buy milk"})
    bob = await post(api, await api.headers("bob"), {"title": "Buy milk"})
    assert (alice.status_code, bob.status_code) == (201, 201)
    assert "Idempotent-Replayed" not in bob.headers
    assert (await alice.get_json())["id"] != (await bob.get_json())["id"]
    assert await todo_count(db) == 2


async def test_a_key_is_remembered_for_a_day_then_it_is_new_again(api: Api, db: Any) -> None:
    headers = await api.headers()
    first = await (await post(api, headers, {"title": "Buy milk"})).get_json()
    record = await db["idempotency_keys"].find_one({"_id.key": KEY})
    assert record["expires_at"] - record["claimed_at"] == timedelta(hours=24)
    indexes = await db["idempotency_keys"].index_information()
    assert indexes["expires_at_ttl"]["expireAfterSeconds"] == 0

    # A day later (the TTL sweep may not have run yet): a different body is fine too.
    await db["idempotency_keys"].update_one(
        {"_id": record["_id"]}, {"$set": {"expires_at": utcnow() - timedelta(seconds=1)}}
    )
    renewed = await post(api, headers, {"title": "Buy bread"})
    assert renewed.status_code == 201
    assert "Idempotent-Replayed" not in renewed.headers
    second = await renewed.get_json()
    assert second["id"] != first["id"]
    assert await todo_count(db) == 2


@pytest.mark.settings(IDEMPOTENCY_KEY_TTL_SECONDS=60)
async def test_the_key_lifetime_is_a_setting(api: Api, db: Any) -> None:
    assert (await post(api, await api.headers(), {"title": "Buy milk"})).status_code == 201
    record = await db["idempotency_keys"].find_one({"_id.key": KEY})
    assert record["expires_at"] - record["claimed_at"] == timedelta(seconds=60)


async def test_concurrent_first_requests_create_exactly_one_todo(api: Api, db: Any) -> None:
    headers = await api.headers()
    responses = await asyncio.gather(*(post(api, headers, {"title": "Buy milk"}) for _ in range(4)))
    created = [
        r for r in responses if r.status_code == 201 and "Idempotent-Replayed" not in r.headers
    ]
    assert len(created) == 1, [(r.status_code, dict(r.headers)) for r in responses]
    todo_id = (await created[0].get_json())["id"]
    for response in responses:
        if response is created[0]:
            continue
        if response.status_code == 409:
            assert await code(response) == "idempotency_key_in_progress"
            assert response.headers["Retry-After"] == "1"
        else:
            assert response.status_code == 201
            assert response.headers["Idempotent-Replayed"] == "true"
            assert (await response.get_json())["id"] == todo_id
    assert await todo_count(db) == 1


async def claim_in_another_request(app: Quart, owner: ObjectId, title: str) -> idempotency.Claim:
    """What a first attempt does before its insert: claim the key (and then stall)."""
    async with app.app_context():
        with mongo.budget():
            body = TodoCreate.model_validate({"title": title})
            return await idempotency.begin(owner, KEY, idempotency.fingerprint(body))


async def test_a_repeat_while_the_first_attempt_runs_is_409_until_its_lease_ends(
    app: Quart, api: Api, db: Any
) -> None:
    headers = await api.headers()
    me = await (await api.client.get("/api/v1/auth/me", headers=headers)).get_json()
    claim = await claim_in_another_request(app, ObjectId(me["id"]), "Buy milk")

    busy = await post(api, headers, {"title": "Buy milk"})
    assert busy.status_code == 409
    assert await code(busy) == "idempotency_key_in_progress"
    assert busy.headers["Retry-After"] == "1"
    assert await todo_count(db) == 0

    # The first attempt's budget ran out without an insert: a repeat carries on.
    await db["idempotency_keys"].update_one(
        {"_id": claim.record["_id"]}, {"$set": {"lease_until": utcnow()}}
    )
    carried_on = await post(api, headers, {"title": "Buy milk"})
    assert carried_on.status_code == 201
    assert (await carried_on.get_json())["id"] == str(claim.resource_id)
    assert await todo_count(db) == 1
    assert (await db["idempotency_keys"].find_one({"_id": claim.record["_id"]}))["completed"]


async def test_a_first_attempt_that_wrote_but_never_answered_is_replayed(
    app: Quart, api: Api, db: Any
) -> None:
    """The insert was applied, then the deadline ran out or the connection dropped."""
    headers = await api.headers()
    me = await (await api.client.get("/api/v1/auth/me", headers=headers)).get_json()
    owner = ObjectId(me["id"])
    claim = await claim_in_another_request(app, owner, "Buy milk")
    async with app.app_context():
        await todo_service.create(
            owner, TodoCreate.model_validate({"title": "Buy milk"}), claim.resource_id
        )

    again = await post(api, headers, {"title": "Buy milk"})
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (await again.get_json())["id"] == str(claim.resource_id)
    assert await todo_count(db) == 1
    # Recorded as done now, so deleting the todo later can never be undone by a retry.
    assert (await db["idempotency_keys"].find_one({"_id": claim.record["_id"]}))["completed"]


@pytest.mark.parametrize(
    "key",
    ["", "a" * 256, "caf\u00e9", "two words", "tab\tinside"],
    ids=["empty", "too-long", "non-ascii", "space", "control"],
)
async def test_a_malformed_key_is_422_at_the_header(api: Api, db: Any, key: str) -> None:
    response = await post(api, await api.headers(), {"title": "Buy milk"}, key=key)
    assert response.status_code == 422
    body = await response.get_json()
    assert body["code"] == "validation_failed"
    assert body["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    assert await todo_count(db) == 0


async def test_two_key_header_lines_are_422(api: Api) -> None:
    headers = await api.headers()
    response = await api.client.post(
        TODOS,
        json={"title": "Buy milk"},
        headers=[*headers.items(), ("Idempotency-Key", "a"), ("Idempotency-Key", "b")],
    )
    assert response.status_code == 422
    assert (await response.get_json())["errors"][0]["loc"] == ["header", "Idempotency-Key"]


async def test_the_longest_key_and_a_quoted_key_are_accepted(api: Api) -> None:
    headers = await api.headers()
    for key in ["~" * 255, f'"{KEY}"']:
        first = await post(api, headers, {"title": "Buy milk"}, key=key)
        again = await post(api, headers, {"title": "Buy milk"}, key=key)
        assert (first.status_code, again.status_code) == (201, 201)
        assert (await again.get_json())["id"] == (await first.get_json())["id"]


async def test_without_a_key_nothing_changes_and_nothing_is_added(api: Api, db: Any) -> None:
    headers = await api.headers()
    before = await opcounters(db)
    response = await post(api, headers, {"title": "Buy milk"}, key=None)
    after = await opcounters(db)
    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response.headers
    # One query (the session check) and the create's one write command (the quota
    # counter's update and the todo's upsert): no key lookup or record.
    assert after["query"] - before["query"] == 1
    # (an engine counts the update command once, or each of its two statements)
    assert after["update"] - before["update"] in (1, 2)
    assert after["insert"] - before["insert"] == 0
    assert await db["idempotency_keys"].count_documents({}) == 0
    assert (await post(api, headers, {"title": "Buy milk"}, key=None)).status_code == 201
    assert await db["todos"].count_documents({"title": "Buy milk"}) == 2


@pytest.mark.settings(CORS_ORIGINS="https://app.example")
async def test_cors_allows_the_key_and_exposes_the_replay_header(api: Api) -> None:
    preflight = await api.client.options(
        TODOS,
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
        },
    )
    allowed = preflight.headers["Access-Control-Allow-Headers"].lower()
    assert "idempotency-key" in allowed
    headers = {**(await api.headers()), "Origin": "https://app.example"}
    await post(api, headers, {"title": "Buy milk"})
    again = await post(api, headers, {"title": "Buy milk"})
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" in again.headers["Access-Control-Expose-Headers"]


async def test_the_openapi_document_declares_the_key_and_its_answers(api: Api) -> None:
    spec = await (await api.client.get("/openapi.json")).get_json()
    create = spec["paths"]["/api/v1/todos"]["post"]
    [key] = [p for p in create["parameters"] if p["name"] == "Idempotency-Key"]
    assert key["in"] == "header"
    assert key["schema"]["pattern"] == "^[\\x21-\\x7e]{1,255}$"
    assert "idempotency_key_reused" in key["description"]
    created = create["responses"]["201"]
    assert created["headers"]["Idempotent-Replayed"] == {
        "$ref": "#/components/headers/Idempotent-Replayed"
    }
    assert {"404", "409", "422"} <= set(create["responses"])
    conflict = spec["components"]["responses"][create["responses"]["409"]["$ref"].split("/")[-1]]
    assert "idempotency_key_in_progress" in conflict["description"]
    invalid = spec["components"]["responses"][create["responses"]["422"]["$ref"].split("/")[-1]]
    assert "idempotency_key_reused" in invalid["description"]


@pytest.mark.settings(TODOS_PER_USER=1)
async def test_a_refused_create_frees_its_key(api: Api, db: Any) -> None:
    headers = await api.headers()
    first = await (await post(api, headers, {"title": "One"}, key="first")).get_json()
    refused = await post(api, headers, {"title": "Two"})
    assert refused.status_code == 409
    assert await code(refused) == "quota_exceeded"
    assert await db["idempotency_keys"].count_documents({"_id.key": KEY}) == 0

    assert (await api.client.delete(f"{TODOS}/{first['id']}", headers=headers)).status_code == 204
    retried = await post(api, headers, {"title": "Two"})
    assert retried.status_code == 201
    assert "Idempotent-Replayed" not in retried.headers
    assert await todo_count(db) == 1
