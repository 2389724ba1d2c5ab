"""Migrations: recorded once, one upgrade at a time, and an exact recount beside live writes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any

import pytest
from bson import ObjectId
from quart import Quart

from app import create_app, migrations
from app.clock import utcnow
from app.embedded_db import EmbeddedDatabase, free_port
from app.extensions import mongo
from app.migrations import Migration, UpgradeBusy, schema
from app.stores.todos import TODOS_ONLY, due_key
from scripts.devserver import ROOT, start_hypercorn, stop
from tests.conftest import Api

RECOUNT = "0001-recount-todo-counters"


async def test_the_app_upgrades_itself_at_start_in_testing(db: Any) -> None:
    records = {record["_id"] async for record in db[migrations.RECORDS].find()}
    assert records == {step.id for step in migrations.steps()}
    assert RECOUNT in records
    indexes = {index["name"] async for index in await _list_indexes(db["todos"])}
    assert {"owner_created_at_asc", "owner_updated_at_asc", "owner_due_key_asc"} <= indexes
    assert await db[migrations.LOCK].count_documents({}) == 0  # released


async def _list_indexes(collection: Any) -> Any:
    cursor = collection.list_indexes()
    return await cursor if asyncio.iscoroutine(cursor) else cursor


async def test_status_lists_applied_and_pending(app: Quart, db: Any) -> None:
    await db[migrations.RECORDS].delete_one({"_id": RECOUNT})
    async with app.app_context():
        steps, unknown = await migrations.status()
        assert await migrations.pending() == [RECOUNT]
    assert [(step.id, step.applied_at is None) for step in steps] == [
        (f"schema-{schema.fingerprint()}", False),
        (RECOUNT, True),
    ]
    assert unknown == []


async def test_a_changed_schema_declaration_is_a_pending_step(
    app: Quart, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(
        schema.COLLECTION_OPTIONS, "sessions", {"changeStreamPreAndPostImages": {"enabled": True}}
    )
    async with app.app_context():
        assert await migrations.pending() == [f"schema-{schema.fingerprint()}"]
        assert await migrations.upgrade() == [f"schema-{schema.fingerprint()}"]
        assert await migrations.pending() == []


async def test_concurrent_upgrades_apply_each_migration_once(
    app: Quart, settings: dict[str, Any], db: Any
) -> None:
    """Two upgrades with clients of their own (as two release jobs would be) start together."""

    async def slow_step() -> None:
        await mongo.db["applications"].update_one(
            {"_id": "slow"}, {"$inc": {"count": 1}}, upsert=True
        )
        await asyncio.sleep(0.5)  # long enough for the other upgrade to try meanwhile

    steps = [Migration("test-slow", "counts how often it runs", slow_step)]
    other = await create_app(settings)
    async with other.test_app():

        async def upgrade_in(each: Quart) -> list[str]:
            async with each.app_context():
                return await migrations.upgrade(wait_seconds=10, migrations=steps)

        results = await asyncio.gather(upgrade_in(app), upgrade_in(other))
    assert sorted(results) == [[], ["test-slow"]]
    assert (await db["applications"].find_one({"_id": "slow"}))["count"] == 1
    assert await db[migrations.RECORDS].count_documents({"_id": "test-slow"}) == 1
    assert await db[migrations.LOCK].count_documents({}) == 0


async def test_a_live_lock_makes_an_upgrade_wait_then_give_up(app: Quart, db: Any) -> None:
    lease = {"holder": "elsewhere", "expires_at": utcnow() + timedelta(seconds=60)}
    await db[migrations.LOCK].insert_one({"_id": migrations.LOCK_ID, **lease})
    async with app.app_context():
        with pytest.raises(UpgradeBusy):
            await migrations.upgrade(wait_seconds=0.5)
    assert (await db[migrations.LOCK].find_one())["holder"] == "elsewhere"  # not taken


async def test_an_expired_lock_is_taken_over(app: Quart, db: Any) -> None:
    await db[migrations.RECORDS].delete_one({"_id": RECOUNT})
    lease = {"holder": "crashed", "expires_at": utcnow() - timedelta(seconds=1)}
    await db[migrations.LOCK].insert_one({"_id": migrations.LOCK_ID, **lease})
    async with app.app_context():
        assert await migrations.upgrade(wait_seconds=0.5) == [RECOUNT]


def _legacy_todo(owner: ObjectId, number: int) -> dict[str, Any]:
    """A todo as stored before counting began: nothing counted it."""
    now = utcnow()
    return {
        "_id": ObjectId(),
        "owner": owner,
        "title": f"legacy {number}",
        "notes": "",
        "completed": number % 2 == 0,
        "completed_at": now if number % 2 == 0 else None,
        "due_at": None,
        "due_key": due_key(None),
        "priority": "normal",
        "tags": [],
        "created_at": now,
        "updated_at": now,
        "version": 1,
    }


async def _counts(db: Any, owners: list[ObjectId]) -> list[tuple[int, int]]:
    """(counter, stored todos) per owner."""
    pairs = []
    for owner in owners:
        counter = await db["todos"].find_one({"_id": f"count:{owner}"})
        stored = await db["todos"].count_documents({"owner": owner, **TODOS_ONLY})
        pairs.append((counter["count"] if counter else 0, stored))
    return pairs


@pytest.mark.settings(REQUEST_DEADLINE_MS=1000, TODOS_PER_USER=1000)
async def test_recount_is_exact_while_creates_and_deletes_run_beside_it(
    app: Quart, api: Api, db: Any
) -> None:
    users = ["ann", "bob", "cyd", "dee"]
    headers = [await api.headers(name) for name in users]
    owners = []
    for auth in headers:
        me = await api.client.get("/api/v1/auth/me", headers=auth)
        owners.append(ObjectId((await me.get_json())["id"]))
    for index, (owner, auth) in enumerate(zip(owners, headers, strict=True)):
        for _ in range(3):  # counted todos
            response = await api.client.post("/api/v1/todos", json={"title": "t"}, headers=auth)
            assert response.status_code == 201
        await db["todos"].insert_many([_legacy_todo(owner, n) for n in range(5 + index * 7)])
    await db["todos"].delete_one({"_id": f"count:{owners[3]}"})  # legacy todos, no counter yet
    # A counter as a version before shard keys wrote it: without its owner.
    await db["todos"].update_one({"_id": f"count:{owners[2]}"}, {"$unset": {"owner": ""}})
    before = await _counts(db, owners)
    assert all(counter < stored for counter, stored in before)
    await db[migrations.RECORDS].delete_one({"_id": RECOUNT})

    statuses: list[int] = []
    running = True

    async def write(auth: dict[str, str], seed: int) -> None:
        """Create, then delete one at a time and clear completed now and then."""
        step = seed
        while running or step < seed + 12:
            step += 1
            created = await api.client.post(
                "/api/v1/todos", json={"title": "w", "completed": step % 3 == 0}, headers=auth
            )
            statuses.append(created.status_code)
            if step % 2 == 0:
                todo_id = (await created.get_json())["id"]
                deleted = await api.client.delete(f"/api/v1/todos/{todo_id}", headers=auth)
                statuses.append(deleted.status_code)
            if step % 5 == 0:
                page = await api.client.get("/api/v1/todos?limit=5", headers=auth)
                for todo in (await page.get_json())["items"][:2]:
                    gone = await api.client.delete(f"/api/v1/todos/{todo['id']}", headers=auth)
                    statuses.append(gone.status_code)
            if step % 7 == 0:
                cleared = await api.client.delete("/api/v1/todos?completed=true", headers=auth)
                statuses.append(cleared.status_code)

    writers = [asyncio.create_task(write(auth, n * 100)) for n in range(2) for auth in headers]
    await asyncio.sleep(0.2)
    async with app.app_context():
        assert await migrations.upgrade() == [RECOUNT]
    running = False
    await asyncio.gather(*writers)

    assert set(statuses) <= {201, 204, 200, 404}, statuses  # never 409, 503 or 500
    assert statuses.count(201) > 50
    after = await _counts(db, owners)
    assert all(counter == stored for counter, stored in after), after
    assert await db["todos"].count_documents({"recount_until": {"$exists": True}}) == 0
    assert await db["todos"].count_documents({"deleting": {"$gt": 0}}) == 0


@pytest.mark.slow
def test_two_upgrade_commands_at_once_and_status(database_uri: str) -> None:
    env = {
        **os.environ,
        "APP_ENV": "production",
        "MONGO_URI": database_uri,
        "MONGO_DB": f"test_{ObjectId()}",
        "JWT_SECRET_KEY": "3f9a0c7e51b24d68a1e0f5c2b7d94e3a6c1f8b05",
    }
    command = [sys.executable, "-m", "app", "db"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
        )

    pending = run("status")
    assert pending.returncode == 1
    assert pending.stdout.count("pending") == 2
    upgrades = [
        subprocess.Popen(
            [*command, "upgrade"], env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=120)[0] for process in upgrades]
    assert [process.returncode for process in upgrades] == [0, 0]
    assert sorted("applied 2" in output for output in outputs) == [False, True], outputs
    current = run("status")
    assert current.returncode == 0
    assert "pending" not in current.stdout
    assert RECOUNT in current.stdout


def test_the_command_without_a_database_says_so_in_one_line() -> None:
    env = {**os.environ, "APP_ENV": "testing", "MONGO_URI": ""}
    result = subprocess.run(
        [sys.executable, "-m", "app", "db", "upgrade"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 78
    assert result.stderr.strip().count("\n") == 0
    assert "MONGO_URI" in result.stderr


@pytest.mark.slow
def test_a_worker_refuses_an_older_schema_once_the_database_answers() -> None:
    """The master could not check (no database yet): the worker checks when it can."""
    database = EmbeddedDatabase(":memory:")
    env = {
        "APP_ENV": "production",
        "MONGO_URI": database.uri,
        "MONGO_DB": "not_upgraded",
        "JWT_SECRET_KEY": "3f9a0c7e51b24d68a1e0f5c2b7d94e3a6c1f8b05",
        "MONGO_SERVER_SELECTION_TIMEOUT_MS": "500",
    }
    server = start_hypercorn(free_port(), env, workers=1)
    try:
        deadline = time.monotonic() + 30
        while "Running on" not in server.output():
            assert time.monotonic() < deadline and server.poll() is None, server.output()
            time.sleep(0.1)
        assert "the workers check the schema when it answers" in server.output()
        database.start()
        server.wait(timeout=30)
    finally:
        stop(server)
        database.stop()
    [line] = [line for line in server.output().splitlines() if "refusing to start" in line]
    assert "python -m app db upgrade" in line
    assert "Traceback" not in server.output()
