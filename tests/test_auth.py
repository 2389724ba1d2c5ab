"""Accounts: register, log in, me, password change, account deletion."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from bson import ObjectId

from app import create_app
from tests.conftest import PASSWORD, SESSION_DOCS, TODO_DOCS, Api, bearer

AUTH = "/api/v1/auth"


async def problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, await response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = await response.get_json()
    assert body["code"] == code
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    return body


async def test_register_creates_an_account_with_an_argon2id_hash(api: Api, db: Any) -> None:
    response = await api.client.post(
        f"{AUTH}/register", json={"username": "Alice", "password": PASSWORD}
    )
    assert response.status_code == 201
    body = await response.get_json()
    assert set(body) == {"id", "username", "created_at"}
    assert re.fullmatch(r"[0-9a-f]{24}", body["id"])
    assert body["username"] == "Alice"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["created_at"])
    stored = await db["users"].find_one({"_id": ObjectId(body["id"])})
    assert stored["password_hash"].startswith("$argon2id$")
    assert PASSWORD not in str(stored)


async def test_usernames_are_unique_without_regard_to_case(api: Api, db: Any) -> None:
    await api.register("Alice")
    response = await api.client.post(
        f"{AUTH}/register", json={"username": "aLICE", "password": PASSWORD}
    )
    await problem(response, 409, "username_taken")
    assert await db["users"].count_documents({}) == 1
    me = await api.client.get(
        f"{AUTH}/me", headers=bearer((await api.login("ALICE"))["access_token"])
    )
    assert (await me.get_json())["username"] == "Alice"  # shown as first registered


async def test_concurrent_registrations_of_one_name_create_one_account(api: Api, db: Any) -> None:
    responses = await asyncio.gather(
        *(
            api.client.post(f"{AUTH}/register", json={"username": name, "password": PASSWORD})
            for name in ["racer", "RACER"]
        )
    )
    assert sorted(r.status_code for r in responses) == [201, 409]
    assert await db["users"].count_documents({}) == 1


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"username": "ab", "password": PASSWORD}, ["body", "username"]),
        ({"username": "a" * 33, "password": PASSWORD}, ["body", "username"]),
        ({"username": "al ice", "password": PASSWORD}, ["body", "username"]),
        ({"username": "alice!", "password": PASSWORD}, ["body", "username"]),
        ({"username": "alice", "password": "short77"}, ["body", "password"]),
        ({"username": "alice", "password": "p" * 129}, ["body", "password"]),
        ({"username": "Alice123", "password": "aLICE123"}, ["body"]),
        ({"username": {"$ne": None}, "password": PASSWORD}, ["body", "username"]),
        ({"username": "alice", "password": {"$gt": ""}}, ["body", "password"]),
        ({"username": "alice", "password": 12345678}, ["body", "password"]),
        ({"username": "alice"}, ["body", "password"]),
        ({"username": "alice", "password": PASSWORD, "colour": "red"}, ["body", "colour"]),
    ],
)
async def test_register_rejects_invalid_bodies(
    api: Api, db: Any, body: dict[str, Any], loc: list[str]
) -> None:
    response = await api.client.post(f"{AUTH}/register", json=body)
    problem_body = await problem(response, 422, "validation_failed")
    assert loc in [error["loc"] for error in problem_body["errors"]]
    assert await db["users"].count_documents({}) == 0


async def test_password_length_counts_code_points(api: Api) -> None:
    await api.register("emoji", "🙂" * 8)  # 8 code points, 32 bytes
    await api.login("emoji", "🙂" * 8)
    response = await api.client.post(
        f"{AUTH}/register", json={"username": "emoji2", "password": "🙂" * 7}
    )
    await problem(response, 422, "validation_failed")


async def test_register_needs_a_json_object(api: Api) -> None:
    for data in [b"", b"[]", b'"x"', b"42", b"null"]:
        response = await api.client.post(
            f"{AUTH}/register", data=data, headers={"Content-Type": "application/json"}
        )
        await problem(response, 422, "validation_failed")


async def test_login_returns_a_token_pair(api: Api) -> None:
    await api.register()
    tokens = await api.login()
    assert set(tokens) == {
        "access_token",
        "refresh_token",
        "token_type",
        "expires_in",
        "device_token",
    }
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 900
    me = await api.client.get(f"{AUTH}/me", headers=bearer(tokens["access_token"]))
    assert me.status_code == 200
    assert (await me.get_json())["username"] == "alice"


async def test_unknown_user_and_wrong_password_look_the_same(api: Api) -> None:
    await api.register()
    bodies = []
    for username, password in [("alice", "wrong password"), ("nobody", "wrong password")]:
        response = await api.client.post(
            f"{AUTH}/login", json={"username": username, "password": password}
        )
        body = await problem(response, 401, "invalid_credentials")
        bodies.append({k: v for k, v in body.items() if k != "request_id"})
    assert bodies[0] == bodies[1]


@pytest.mark.parametrize("username", ["x", "has space", "a" * 200, "$ne"])
async def test_login_with_an_impossible_username_is_401(api: Api, username: str) -> None:
    response = await api.client.post(
        f"{AUTH}/login", json={"username": username, "password": PASSWORD}
    )
    await problem(response, 401, "invalid_credentials")


@pytest.mark.parametrize(
    "body",
    [
        {"username": "alice"},
        {"username": "alice", "password": PASSWORD, "remember": True},
        {"username": {"$ne": None}, "password": PASSWORD},
        {"username": "alice", "password": {"$gt": ""}},
        {"username": "a" * 257, "password": PASSWORD},
    ],
)
async def test_login_checks_the_body_shape(api: Api, body: dict[str, Any]) -> None:
    await api.register()
    response = await api.client.post(f"{AUTH}/login", json=body)
    await problem(response, 422, "validation_failed")


async def test_password_change_closes_every_session(api: Api, db: Any) -> None:
    await api.register()
    first = await api.login()
    second = await api.login()
    response = await api.client.post(
        f"{AUTH}/password",
        json={"current_password": PASSWORD, "new_password": "a brand new one"},
        headers=bearer(first["access_token"]),
    )
    assert response.status_code == 204
    assert await db["sessions"].count_documents(SESSION_DOCS) == 0
    for tokens in [first, second]:
        me = await api.client.get(f"{AUTH}/me", headers=bearer(tokens["access_token"]))
        await problem(me, 401, "token_revoked")
        refreshed = await api.client.post(
            f"{AUTH}/refresh", headers=bearer(tokens["refresh_token"])
        )
        await problem(refreshed, 401, "token_revoked")
    old = await api.client.post(f"{AUTH}/login", json={"username": "alice", "password": PASSWORD})
    await problem(old, 401, "invalid_credentials")
    await api.login("alice", "a brand new one")


async def test_password_change_errors(api: Api) -> None:
    headers = await api.headers()
    wrong = await api.client.post(
        f"{AUTH}/password",
        json={"current_password": "not it at all", "new_password": "a brand new one"},
        headers=headers,
    )
    await problem(wrong, 401, "invalid_credentials")
    for new_password in ["short", "ALICE"]:
        response = await api.client.post(
            f"{AUTH}/password",
            json={"current_password": PASSWORD, "new_password": new_password},
            headers=headers,
        )
        await problem(response, 422, "validation_failed")
    same_as_name = await api.client.post(
        f"{AUTH}/password",
        json={"current_password": PASSWORD, "new_password": "ALICE"},
        headers=headers,
    )
    await problem(same_as_name, 422, "validation_failed")
    assert (await api.client.get(f"{AUTH}/me", headers=headers)).status_code == 200


async def test_delete_account_removes_user_todos_and_sessions(api: Api, db: Any) -> None:
    tokens = await api.user_tokens("alice")
    bob = await api.headers("bob")
    headers = bearer(tokens["access_token"])
    await api.client.post("/api/v1/todos", json={"title": "mine"}, headers=headers)
    await api.client.post("/api/v1/todos", json={"title": "bob's"}, headers=bob)
    wrong = await api.client.delete(f"{AUTH}/me", json={"password": "nope nope"}, headers=headers)
    await problem(wrong, 401, "invalid_credentials")
    response = await api.client.delete(f"{AUTH}/me", json={"password": PASSWORD}, headers=headers)
    assert response.status_code == 204
    assert await db["users"].count_documents({"username_key": "alice"}) == 0
    assert await db["todos"].count_documents(TODO_DOCS) == 1  # only bob's
    assert await db["sessions"].count_documents({"username": "alice"}) == 0
    await problem(await api.client.get(f"{AUTH}/me", headers=headers), 401, "token_revoked")
    await problem(
        await api.client.post(f"{AUTH}/refresh", headers=bearer(tokens["refresh_token"])),
        401,
        "token_revoked",
    )
    # The name is free again, and the new account starts empty.
    again = await api.headers("alice")
    listing = await (await api.client.get("/api/v1/todos", headers=again)).get_json()
    assert listing["items"] == []


async def test_delete_account_needs_a_password_body(api: Api) -> None:
    headers = await api.headers()
    response = await api.client.delete(f"{AUTH}/me", headers=headers)
    await problem(response, 422, "validation_failed")
    extra = await api.client.delete(
        f"{AUTH}/me", json={"password": PASSWORD, "force": True}, headers=headers
    )
    await problem(extra, 422, "validation_failed")


async def test_old_hashes_are_upgraded_at_login(
    api: Api, db: Any, settings: dict[str, Any]
) -> None:
    await api.register("alice")  # hashed with the testing parameters (t=1)
    old = (await db["users"].find_one({"username_key": "alice"}))["password_hash"]
    stronger = await create_app({**settings, "ARGON2_TIME_COST": 2})
    async with stronger.test_app():
        await Api(stronger.test_client()).login("alice")
    new = (await db["users"].find_one({"username_key": "alice"}))["password_hash"]
    assert "t=1," in old and "t=2," in new
    await api.login("alice")  # the upgraded hash still verifies
