"""Abuse resistance (contract 1.2): known devices, bounded hashing, changes that complete.

Each test reproduces a finding of the second adversarial review through the
real app and database. The client address is the TCP peer (rule 12), set
per request through the test client's ASGI scope.
"""

from __future__ import annotations

import asyncio
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from bson import ObjectId
from pymongo import MongoClient
from quart import Quart

from app.clock import utcnow
from app.embedded_db import EmbeddedDatabase
from config import PROJECT_ROOT
from tests.conftest import PASSWORD, SESSION_DOCS, Api, bearer
from tests.test_auth import problem
from tests.test_hardening import (
    NEW_PASSWORD,
    SLOW_HASH,
    from_address,
    hypercorn_setting,
    login_body,
)

AUTH = "/api/v1/auth"
TODOS = "/api/v1/todos"
WRONG = "wrong password"


async def login(api: Api, body: dict[str, Any], address: str = "203.0.113.1") -> Any:
    return await api.client.post(f"{AUTH}/login", json=body, **from_address(address))


# 1. Known devices (rule 10b): failures others cause never lock a known device out.


async def test_the_owner_of_a_known_device_logs_in_while_an_attacker_holds_every_limit(
    api: Api, db: Any
) -> None:
    """The review's scenario: 10 wrong passwords from each of 20 addresses."""
    await api.register("alice")
    device_token = (await (await login(api, login_body())).get_json())["device_token"]
    for i in range(20):
        for _ in range(10):
            await problem(
                await login(api, login_body("alice", WRONG), f"198.51.100.{i}"),
                401,
                "invalid_credentials",
            )
    counter = await db["rate_limits"].find_one({"_id": "login-failures:user:alice"})
    assert counter["count"] == 200  # rule 10's per-username limit is reached
    # Without the device token the owner is locked out, from a new address or the attacker's ...
    for address in ["203.0.113.50", "198.51.100.3"]:
        response = await login(api, login_body(), address)
        await problem(response, 429, "rate_limited")
        assert int(response.headers["Retry-After"]) >= 1
    # ... with it they log in, from anywhere.
    for address in ["203.0.113.50", "198.51.100.3"]:
        response = await login(api, {**login_body(), "device_token": device_token}, address)
        assert response.status_code == 200, await response.get_data(as_text=True)
        tokens = await response.get_json()
        me = await api.client.get(f"{AUTH}/me", headers=bearer(tokens["access_token"]))
        assert me.status_code == 200
        device_token = tokens["device_token"]


async def test_a_device_token_is_opaque_bound_to_its_user_and_renewed(api: Api) -> None:
    await api.register("alice")
    await api.register("bob")
    first = (await api.login("alice"))["device_token"]
    second = (await api.login("alice"))["device_token"]
    assert first != second  # each login without one is a new device
    assert "alice" not in first and len(first) < 100
    renewed = await login(api, {**login_body(), "device_token": first})
    assert renewed.status_code == 200
    again = (await renewed.get_json())["device_token"]  # the same device, renewed
    assert again[:22] == first[:22] and again[:22] != second[:22]


@pytest.mark.settings(LOGIN_FAILURES_PER_DEVICE=3)
async def test_failures_with_a_device_token_count_against_that_device_only(
    api: Api, db: Any
) -> None:
    await api.register("alice")
    device_token = (await api.login("alice"))["device_token"]
    wrong = {**login_body("alice", WRONG), "device_token": device_token}
    for _ in range(3):
        await problem(await login(api, wrong), 401, "invalid_credentials")
    # The device is now locked, even with the right password ...
    right = {**login_body(), "device_token": device_token}
    await problem(await login(api, right), 429, "rate_limited")
    # ... and rule 10's counters saw none of it: the owner logs in without the token.
    counters = db["rate_limits"].find({"_id": {"$regex": "^login-failures:(user|addr)"}})
    assert [counter["count"] async for counter in counters] == [0, 0, 0]
    assert (await login(api, login_body())).status_code == 200


async def test_a_malformed_device_token_is_422(api: Api) -> None:
    await api.register("alice")
    for malformed in ["short", "has spaces in it, which no token has", "x" * 300, 42]:
        response = await login(api, {**login_body(), "device_token": malformed})
        body = await problem(response, 422, "validation_failed")
        assert body["errors"][0]["loc"] == ["body", "device_token"]


@pytest.mark.settings(LOGIN_FAILURES_PER_USERNAME=2, DEVICE_TOKEN_SECONDS=1)
async def test_unknown_expired_and_foreign_device_tokens_are_ignored(api: Api) -> None:
    await api.register("alice")
    await api.register("mallory")
    foreign = (await api.login("mallory"))["device_token"]
    expiring = (await api.login("alice"))["device_token"]
    await asyncio.sleep(1.1)
    for _ in range(2):
        await login(api, login_body("alice", WRONG), "198.51.100.1")
    unknown = "A" * 55
    for token in [foreign, expiring, unknown]:
        # Ignored as if absent: the per-username limit applies, no error names the token.
        response = await login(api, {**login_body(), "device_token": token})
        await problem(response, 429, "rate_limited")


@pytest.mark.settings(LOGIN_FAILURES_PER_USERNAME=2)
async def test_deleting_the_account_ends_its_device_tokens_a_password_change_does_not(
    api: Api,
) -> None:
    await api.register("alice")
    tokens = await api.login("alice")
    device_token = tokens["device_token"]
    changed = await api.client.post(
        f"{AUTH}/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=bearer(tokens["access_token"]),
    )
    assert changed.status_code == 204
    for _ in range(2):
        await login(api, login_body("alice", WRONG), "198.51.100.1")
    with_device = {**login_body("alice", NEW_PASSWORD), "device_token": device_token}
    kept = await login(api, with_device)
    assert kept.status_code == 200  # the password change left the device known
    deleted = await api.client.delete(
        f"{AUTH}/me",
        json={"password": NEW_PASSWORD},
        headers=bearer((await kept.get_json())["access_token"]),
    )
    assert deleted.status_code == 204
    await api.register("alice", NEW_PASSWORD)  # the same name, a new account
    await problem(await login(api, with_device), 429, "rate_limited")


# 2. Security changes complete, or leave no old session working.


async def old_sessions_working(api: Api, sessions: list[dict[str, Any]]) -> int:
    working = 0
    for tokens in sessions:
        me = await api.client.get(f"{AUTH}/me", headers=bearer(tokens["access_token"]))
        refreshed = await api.client.post(
            f"{AUTH}/refresh", headers=bearer(tokens["refresh_token"])
        )
        working += me.status_code == 200 or refreshed.status_code == 200
    return working


ROOMY = {
    "REQUEST_DEADLINE_MS": 30_000,
    "LOGIN_ATTEMPTS_PER_ADDRESS": 10_000,
    "REGISTRATIONS_PER_ADDRESS": 10_000,
}


async def cut_short(app: Quart, deadline_ms: int, call: Any) -> int:
    """Send ``call`` with a request deadline of ``deadline_ms``; wait for its view to end."""
    app.config["REQUEST_DEADLINE_MS"] = deadline_ms
    try:
        response = await call
    finally:
        app.config["REQUEST_DEADLINE_MS"] = ROOMY["REQUEST_DEADLINE_MS"]
    await asyncio.sleep(0.15 + deadline_ms / 1000)  # a view past its deadline runs out
    return int(response.status_code)


async def cut_points(api: Api, change: Any) -> list[int]:
    """Deadlines (ms) that cut a change anywhere: from before its first database
    operation to past its last, in steps of about a millisecond, twice over.

    The span is measured on this machine by running the change once in full.
    """
    await api.register("measure")
    tokens = await api.login("measure")
    began = time.monotonic()
    assert (await change(tokens["access_token"])).status_code == 204
    span = max(10, round((time.monotonic() - began) * 1000 * 1.3))
    points = list(range(1, span + 1, max(1, span // 35)))
    return points * 2


def change_password(api: Api) -> Any:
    async def change(access: str) -> Any:
        return await api.client.post(
            f"{AUTH}/password",
            json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
            headers=bearer(access),
        )

    return change


def delete_account(api: Api) -> Any:
    async def delete(access: str) -> Any:
        return await api.client.delete(
            f"{AUTH}/me", json={"password": PASSWORD}, headers=bearer(access)
        )

    return delete


async def cut_rounds(
    api: Api, app: Quart, change: Any
) -> AsyncIterator[tuple[str, list[dict[str, Any]], int, int]]:
    """For each cut point: a fresh user with two sessions, the change cut there.

    Yields the user's name, the sessions, the deadline and the answer's status.
    """
    for round_number, deadline_ms in enumerate(await cut_points(api, change)):
        name = f"user{round_number}"
        await api.register(name)
        sessions = [await api.login(name), await api.login(name)]
        status = await cut_short(app, deadline_ms, change(sessions[0]["access_token"]))
        yield name, sessions, deadline_ms, status


@pytest.mark.settings(**ROOMY)
async def test_a_password_change_cut_short_anywhere_leaves_no_old_session_working(
    api: Api, app: Quart
) -> None:
    seen: set[int] = set()
    async for name, sessions, deadline_ms, status in cut_rounds(api, app, change_password(api)):
        seen.add(status)
        assert status in {204, 503}, status
        working = await old_sessions_working(api, sessions)
        changed = (await login(api, login_body(name, NEW_PASSWORD))).status_code == 200
        if changed or status == 204:
            assert working == 0, (deadline_ms, status)
        else:
            # Cut before anything durable, or after voiding the sessions: never
            # some of them, and the old password still opens a working session.
            assert working in {0, 2}, (deadline_ms, status, working)
            assert (await login(api, login_body(name))).status_code == 200
    assert seen == {204, 503}  # both ends were reached


@pytest.mark.settings(**ROOMY)
async def test_an_account_deletion_cut_short_anywhere_leaves_no_old_session_working(
    api: Api, app: Quart, db: Any
) -> None:
    seen: set[int] = set()
    async for name, sessions, deadline_ms, status in cut_rounds(api, app, delete_account(api)):
        seen.add(status)
        working = await old_sessions_working(api, sessions)
        can_log_in = (await login(api, login_body(name))).status_code == 200
        if not can_log_in or status == 204:
            assert working == 0, (deadline_ms, status)
            # Whatever is left, registering the name again finishes it.
            await api.register(name)
            assert (await login(api, login_body(name))).status_code == 200
        else:
            assert working in {0, 2}, (deadline_ms, status, working)
    assert seen == {204, 503}


@pytest.mark.settings(**ROOMY)
async def test_a_refresh_reuse_cut_short_anywhere_closes_the_session_or_changes_nothing(
    api: Api, app: Quart
) -> None:
    async def reuse(spent: str) -> Any:
        return await api.client.post(f"{AUTH}/refresh", headers=bearer(spent))

    await api.register("measure")
    first = await api.login("measure")
    await reuse(first["refresh_token"])  # rotates: the token is spent now
    began = time.monotonic()
    await problem(await reuse(first["refresh_token"]), 401, "token_revoked")
    span = max(10, round((time.monotonic() - began) * 1000 * 1.3))
    seen: set[int] = set()
    for round_number, deadline_ms in enumerate(range(1, span + 1, max(1, span // 35))):
        tokens = await api.user_tokens(f"user{round_number}")
        newest = await (await reuse(tokens["refresh_token"])).get_json()
        status = await cut_short(app, deadline_ms, reuse(tokens["refresh_token"]))
        seen.add(status)
        assert status in {401, 503}, status
        working = await old_sessions_working(api, [newest])
        if status == 401:
            assert working == 0, deadline_ms  # the reuse closed the session
        elif working:
            # Cut before its one write: nothing happened, and presenting the
            # spent token again closes the session as usual.
            await problem(await reuse(tokens["refresh_token"]), 401, "token_revoked")
            assert await old_sessions_working(api, [newest]) == 0
    assert seen == {401, 503}


async def test_a_change_cut_short_after_voiding_the_sessions_locks_nobody_out(
    api: Api, db: Any
) -> None:
    user = await api.register("alice")
    old = await api.login("alice")
    floor = {"_id": f"epoch:{user['id']}", "user_id": ObjectId(user["id"])}
    # Voided, then the request died: its lease has run out.
    await db["sessions"].insert_one({**floor, "min_epoch": 1, "pending_until": utcnow()})
    assert await old_sessions_working(api, [old]) == 0
    fresh = await api.login("alice")  # the old password still stands
    assert await old_sessions_working(api, [fresh]) == 1
    # While a change may still be running, a login waits for it (401), as in a race.
    await db["sessions"].update_one(
        floor, {"$set": {"min_epoch": 2, "pending_until": utcnow() + timedelta(seconds=30)}}
    )
    await problem(await login(api, login_body()), 401, "invalid_credentials")
    assert await db["sessions"].count_documents({**SESSION_DOCS, "credential_epoch": 1}) == 1


async def test_two_refreshes_with_one_token_rotate_once_and_burn_the_session(api: Api) -> None:
    for round_number in range(5):
        tokens = await api.user_tokens(f"racer{round_number}")
        first, second = await asyncio.gather(
            *(
                api.client.post(f"{AUTH}/refresh", headers=bearer(tokens["refresh_token"]))
                for _ in range(2)
            )
        )
        statuses = sorted([first.status_code, second.status_code])
        assert statuses == [200, 401]
        winner = await (first if first.status_code == 200 else second).get_json()
        assert await old_sessions_working(api, [winner]) == 0


@pytest.mark.settings(JWT_REFRESH_TOKEN_EXPIRES=60, SESSION_MAX_SECONDS=3)
async def test_a_session_ends_at_its_absolute_lifetime_however_often_refreshed(
    api: Api,
) -> None:
    await api.register("alice")
    started = time.time()
    refresh = (await api.login("alice"))["refresh_token"]
    for _ in range(3):
        await asyncio.sleep(0.5)
        response = await api.client.post(f"{AUTH}/refresh", headers=bearer(refresh))
        assert response.status_code == 200
        refresh = (await response.get_json())["refresh_token"]
        claims = pyjwt.decode(refresh, options={"verify_signature": False})
        assert claims["exp"] <= started + 3 + 1  # never past the session's end
    await asyncio.sleep(max(0.0, started + 3.5 - time.time()))
    # The last refresh token would live a minute more; the session's end comes first.
    response = await api.client.post(f"{AUTH}/refresh", headers=bearer(refresh))
    assert response.status_code == 401


# 3. Bounded hashing (rule 10a 1.2).


async def open_sessions(api: Api, name: str, count: int) -> list[str]:
    """``count`` sessions of ``name``, each opened from its own address."""
    return [
        (await (await login(api, login_body(name), f"192.0.2.{i}")).get_json())["access_token"]
        for i in range(count)
    ]


@pytest.mark.settings(LOGIN_ATTEMPTS_PER_ADDRESS=5)
async def test_reauthentication_counts_toward_the_address_attempt_limit(api: Api) -> None:
    """The review's amplification: many sessions, one address, one hash each."""
    await api.register("alice")
    access_tokens = await open_sessions(api, "alice", 8)
    statuses = []
    for access in access_tokens:
        response = await api.client.post(
            f"{AUTH}/password",
            json={"current_password": WRONG, "new_password": NEW_PASSWORD},
            headers=bearer(access),
            **from_address("198.51.100.9"),
        )
        statuses.append(response.status_code)
    assert statuses == [401] * 5 + [429] * 3


@pytest.mark.settings(REAUTH_FAILURES_PER_USER=3)
async def test_wrong_passwords_count_per_user_across_sessions(api: Api) -> None:
    await api.register("alice")
    access_tokens = await open_sessions(api, "alice", 5)
    statuses = []
    for i, access in enumerate(access_tokens):
        response = await api.client.delete(
            f"{AUTH}/me",
            json={"password": WRONG},
            headers=bearer(access),
            **from_address(f"198.51.100.{i}"),
        )
        statuses.append(response.status_code)
    assert statuses == [401] * 3 + [429] * 2


@pytest.mark.settings(**SLOW_HASH, PASSWORD_HASH_SLOTS=1, PASSWORD_HASH_WAIT_MS=5)
async def test_a_burst_of_hashes_waits_briefly_for_a_slot_then_gets_503(api: Api) -> None:
    """The review's CPU scenario: 8 password checks at once on one process."""
    await api.register("alice")
    responses = await asyncio.gather(
        *(login(api, login_body(), f"198.51.100.{i}") for i in range(8))
    )
    statuses = [response.status_code for response in responses]
    assert 200 in statuses and 503 in statuses, statuses
    assert set(statuses) == {200, 503}
    for response in responses:
        if response.status_code == 503:
            await problem(response, 503, "service_unavailable")
            assert response.headers["Retry-After"] == "1"


@pytest.mark.settings(
    ARGON2_TIME_COST=3,
    ARGON2_MEMORY_COST=65536,
    ARGON2_PARALLELISM=4,
    REGISTRATIONS_PER_ADDRESS=100,
)
async def test_racing_registrations_of_one_name_cost_one_hash(api: Api, db: Any) -> None:
    """Production-strength hashing: 20 at once give one 201 and 19 x 409, no 503."""
    body = {"username": "popular", "password": PASSWORD}
    responses = await asyncio.gather(
        *(api.client.post(f"{AUTH}/register", json=body) for _ in range(20))
    )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] + [409] * 19
    for response in responses:
        if response.status_code == 409:
            await problem(response, 409, "username_taken")
    stored = await db["users"].find_one({"username_key": "popular"})
    assert stored["password_hash"].startswith("$argon2id$") and "claim_until" not in stored


async def test_a_claim_whose_request_died_is_taken_over(api: Api, db: Any) -> None:
    past, future = utcnow() - timedelta(seconds=1), utcnow() + timedelta(seconds=30)
    for name, claim_until in [("abandoned", past), ("held", future)]:
        await db["users"].insert_one(
            {
                "_id": ObjectId(),
                "username": name,
                "username_key": name,
                "password_hash": None,
                "credential_epoch": 0,
                "created_at": utcnow(),
                "claim_until": claim_until,
            }
        )
    # A claim holds no password: nobody logs in to it.
    await problem(await login(api, login_body("held")), 401, "invalid_credentials")
    await api.register("ABANDONED")
    assert (await login(api, login_body("abandoned"))).status_code == 200
    response = await api.client.post(
        f"{AUTH}/register", json={"username": "held", "password": PASSWORD}
    )
    await problem(response, 409, "username_taken")


# 7. The low and info findings.


async def test_long_entity_tags_are_no_500(api: Api) -> None:
    headers = await api.headers("alice")
    todo = await (
        await api.client.post(TODOS, json={"title": "tagged"}, headers=headers)
    ).get_json()
    path = f"{TODOS}/{todo['id']}"
    nines = '"' + "9" * 4301 + '"'
    patched = await api.client.patch(
        path, json={"title": "x"}, headers={**headers, "If-Match": nines}
    )
    await problem(patched, 412, "version_conflict")
    got = await api.client.get(path, headers={**headers, "If-None-Match": nines})
    assert got.status_code == 200
    deleted = await api.client.delete(path, headers={**headers, "If-Match": f"{nines}, W/{nines}"})
    await problem(deleted, 412, "version_conflict")


async def test_private_responses_vary_on_authorization(api: Api) -> None:
    headers = await api.headers("alice")
    created = await api.client.post(TODOS, json={"title": "mine"}, headers=headers)
    assert created.headers["Cache-Control"] == "private, no-cache"
    assert "Authorization" in created.headers["Vary"]
    todo = await created.get_json()
    got = await api.client.get(f"{TODOS}/{todo['id']}", headers=headers)
    assert "Authorization" in got.headers["Vary"]
    revalidated = await api.client.get(
        f"{TODOS}/{todo['id']}", headers={**headers, "If-None-Match": '"1"'}
    )
    assert revalidated.status_code == 304 and "Authorization" in revalidated.headers["Vary"]


@pytest.mark.settings(IDEMPOTENCY_KEYS_PER_USER=3)
async def test_idempotency_keys_are_bounded_per_user(api: Api, db: Any) -> None:
    alice, bob = await api.headers("alice"), await api.headers("bob")

    async def create(headers: dict[str, str], key: str) -> Any:
        return await api.client.post(
            TODOS, json={"title": key}, headers={**headers, "Idempotency-Key": key}
        )

    for key in ["k1", "k2", "k3"]:
        assert (await create(alice, key)).status_code == 201
    replay = await create(alice, "k2")  # a repeat is no new key
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
    response = await create(alice, "k4")
    await problem(response, 429, "rate_limited")
    assert int(response.headers["Retry-After"]) >= 1
    assert (await create(bob, "k4")).status_code == 201  # per user
    assert await db["idempotency_keys"].count_documents({}) == 4


def test_the_embedded_databases_files_are_private(tmp_path: Path) -> None:
    storage = tmp_path / "data"
    database = EmbeddedDatabase(str(storage))
    uri = database.start()
    try:
        with MongoClient(uri) as client:
            client["private"]["things"].insert_one({"secret": True})
    finally:
        database.stop()
    assert stat.S_IMODE(storage.stat().st_mode) == 0o700
    files = [path for path in storage.rglob("*") if path.is_file()]
    assert files
    assert all(stat.S_IMODE(path.stat().st_mode) & 0o077 == 0 for path in files), [
        (path.name, oct(path.stat().st_mode)) for path in files
    ]


def test_hypercorn_sends_no_banner_and_drops_idle_connections_in_seconds() -> None:
    assert hypercorn_setting("include_server_header") == "False"
    assert int(hypercorn_setting("keep_alive_timeout")) <= 10
    assert hypercorn_setting("keep_alive_timeout", {"KEEP_ALIVE_SECONDS": "3"}) == "3"


def test_the_open_file_limit_is_raised_to_the_hard_limit() -> None:
    script = (
        "import resource;"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE);"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard));"
        "from app.serving import raise_open_file_limit;"
        "raised = raise_open_file_limit();"
        "print(raised == hard == resource.getrlimit(resource.RLIMIT_NOFILE)[0], raised)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.split()[0] == "True", result.stdout + result.stderr


# 5. One user cannot starve others (rule 10c).


@pytest.mark.settings(**SLOW_HASH, USER_CONCURRENT_REQUESTS=2, PASSWORD_HASH_SLOTS=16)
async def test_a_users_share_of_concurrent_requests_is_bounded(api: Api, app: Quart) -> None:
    greedy = await api.headers("greedy")
    other = await api.headers("other")
    responses = await asyncio.gather(
        *(
            api.client.delete(f"{AUTH}/me", json={"password": WRONG}, headers=greedy)
            for _ in range(6)
        ),
        api.client.get(f"{AUTH}/me", headers=other),
    )
    *greedy_statuses, other_status = [response.status_code for response in responses]
    assert sorted(greedy_statuses) == [401, 401, 429, 429, 429, 429]
    assert other_status == 200
    for response in responses[:6]:
        if response.status_code == 429:
            await problem(response, 429, "rate_limited")
            assert response.headers["Retry-After"] == "1"
    assert app.extensions["user_shares"].in_flight == {}
    assert (await api.client.get(f"{AUTH}/me", headers=greedy)).status_code == 200


@pytest.mark.settings(LIST_SCAN_LIMIT=5)
async def test_a_filtered_page_examines_a_bounded_number_of_todos(api: Api) -> None:
    headers = await api.headers("alice")
    titles = [f"needle {i}" if i in {2, 8, 9} else f"hay {i}" for i in range(13)]
    for title in titles:
        assert (await api.client.post(TODOS, json={"title": title}, headers=headers)).status_code
    pages: list[list[str]] = []
    cursor = None
    while True:
        query = {"q": "needle", "limit": "2", "sort": "created_at"}
        if cursor is not None:
            query["cursor"] = cursor
        body = await (await api.client.get(TODOS, query_string=query, headers=headers)).get_json()
        pages.append([todo["title"] for todo in body["items"]])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    # Each page examined at most 5 todos: the needles come in short pages, none twice.
    assert pages == [["needle 2"], ["needle 8", "needle 9"], []]
