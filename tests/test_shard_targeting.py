"""Every command on a sharded collection names its shard key: the data model is shard-ready.

docs/scaling.md says which collections a sharded cluster shards and on which key
(``SHARD_KEYS`` in app/db.py). There, a find, update or delete whose filter has no
equality on the shard key is sent to every shard, and an upsert without the whole
key is refused (before MongoDB 7.0) or turned into a two-phase broadcast. So this
runs an acceptance run of the auth, todo and events routes, records every command
the app sends through a PyMongo command listener, and fails on each command on a
sharded collection that does not name its key, but for the short, reasoned
allow-list below. A unique index must start with the shard key, or a sharded
collection cannot have it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pymongo import monitoring
from quart import Quart

from app import create_app
from app.db import SHARD_KEYS
from app.migrations.schema import INDEXES
from app.stores.todos import COUNTERS_WITHOUT_OWNER, OPEN_COUNTERS, TODOS_ONLY
from tests.conftest import PASSWORD, Api, bearer

TODOS = "/api/v1/todos"
AUTH = "/api/v1/auth"

#: Filters that may go to every shard, by (collection, command), and why.
DELIBERATE_BROADCASTS: dict[tuple[str, str], list[dict[str, Any]]] = {
    # The upgrade's recount (app/migrations/recount.py), once per database: counters an
    # earlier version wrote get their owner, and it finds every owner with todos or an
    # open counter. Which owners those are is what it looks for.
    ("todos", "update"): [COUNTERS_WITHOUT_OWNER],
    ("todos", "aggregate"): [TODOS_ONLY],
    ("todos", "find"): [OPEN_COUNTERS],
}

#: Commands that carry no filter of their own (a cursor's next batch) or are not reads
#: or writes of documents.
NOT_FILTERED = {
    "getMore",
    "killCursors",
    "listIndexes",
    "createIndexes",
    "dropIndexes",
    "create",
    "collMod",
    "drop",
    "dropDatabase",
    "listCollections",
    "ping",
    "hello",
    "isMaster",
    "endSessions",
    "buildInfo",
}


def names_key(condition: dict[str, Any], field_name: str) -> bool:
    """True when ``condition`` holds an equality on ``field_name`` (alone or in an $and)."""
    if field_name in condition:
        value = condition[field_name]
        if not isinstance(value, dict) or not value:
            return True
        operators = [key for key in value if key.startswith("$")]
        return not operators or set(operators) == {"$eq"}
    return any(names_key(part, field_name) for part in condition.get("$and", []))


def untargeted(command: dict[str, Any]) -> list[str]:
    """Why each part of ``command`` would go to every shard (empty: it is targeted,
    or a deliberate broadcast)."""
    name = next(iter(command))
    collection = command[name]
    key = SHARD_KEYS.get(collection) if isinstance(collection, str) else None
    if key is None or name in NOT_FILTERED:
        return []
    conditions: list[tuple[str, dict[str, Any]]] = []
    if name == "find":
        conditions.append(("filter", command.get("filter", {})))
    elif name in {"findAndModify", "count", "distinct"}:
        conditions.append(("query", command.get("query", {})))
    elif name == "update":
        conditions += [("upsert" if u.get("upsert") else "q", u["q"]) for u in command["updates"]]
    elif name == "delete":
        conditions += [("q", d["q"]) for d in command["deletes"]]
    elif name == "aggregate":
        first = command["pipeline"][0] if command["pipeline"] else {}
        conditions.append(("$match", first.get("$match", {})))
    elif name == "insert":
        return [
            f"insert of a document without {field_name}"
            for document in command["documents"]
            for field_name in key
            if field_name not in document
        ]
    else:
        return [f"{name} is not checked"]
    allowed = DELIBERATE_BROADCASTS.get((collection, name), [])
    return [
        f"{name} {where} {condition} lacks {field_name}"
        for where, condition in conditions
        for field_name in key
        if not names_key(condition, field_name) and condition not in allowed
    ]


@dataclass
class Recorder(monitoring.CommandListener):
    """Every command sent to one database, as (collection, command) pairs."""

    database: str | None = None
    commands: list[dict[str, Any]] = field(default_factory=list)

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.database_name == self.database:
            self.commands.append(dict(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


_RECORDER = Recorder()


@pytest.fixture
def recorder(settings: dict[str, Any]) -> Iterator[Recorder]:
    """Records the test database's commands; registered once, before any app's client.

    PyMongo's global listeners reach every client created afterwards, Motor's
    included; this one keeps only the database of the test that uses it.
    """
    if _RECORDER not in monitoring._LISTENERS.command_listeners:
        monitoring.register(_RECORDER)
    _RECORDER.database, _RECORDER.commands = settings["MONGO_DB"], []
    yield _RECORDER
    _RECORDER.database = None


def test_the_check_finds_untargeted_commands() -> None:
    """The checker itself: each of these would reach every shard."""
    assert untargeted({"find": "sessions", "filter": {"_id": "s"}})
    assert untargeted(
        {"update": "todos", "updates": [{"q": {"_id": "count:x"}, "u": {}, "upsert": True}]}
    )
    assert untargeted({"delete": "todos", "deletes": [{"q": {"owner": {"$in": [1, 2]}}}]})
    assert untargeted({"aggregate": "todos", "pipeline": [{"$sort": {"created_at": 1}}]})
    assert untargeted({"insert": "sessions", "documents": [{"_id": "s"}]})
    assert not untargeted({"find": "todos", "filter": {"_id": 1, "owner": 2}})
    assert not untargeted({"find": "users", "filter": {"username_key": "a"}})  # not sharded
    assert not untargeted(
        {"findAndModify": "idempotency_keys", "query": {"_id": {"owner": 1, "key": "k"}}}
    )


async def read_until(connection: Any, marker: bytes, received: bytes = b"") -> bytes:
    while marker not in received:
        received += await asyncio.wait_for(connection.receive(), timeout=10)
    return received


async def live_updates(app: Quart, api: Api, headers: dict[str, str]) -> None:
    """A stream that sees a create, one resumed with Last-Event-ID, one opened by ticket."""
    client = api.client
    async with client.request(f"{TODOS}/events", headers=headers) as connection:
        await connection.send_complete()
        await read_until(connection, b"retry:")
        created = await client.post(TODOS, json={"title": "live"}, headers=headers)
        assert created.status_code == 201
        received = await read_until(connection, b"event: created")
        await connection.disconnect()
    match = re.search(rb"id: (\S+)", received)
    assert match is not None
    resumed = {**headers, "Last-Event-ID": match.group(1).decode()}
    async with client.request(f"{TODOS}/events", headers=resumed) as connection:
        await connection.send_complete()
        await read_until(connection, b"retry:")
        await connection.disconnect()
    ticket = await (await client.post(f"{TODOS}/events/tickets", headers=headers)).get_json()
    async with client.request(f"{TODOS}/events?ticket={ticket['ticket']}") as connection:
        await connection.send_complete()
        await read_until(connection, b"retry:")
        await connection.disconnect()


@pytest.mark.settings(SESSIONS_PER_USER=2, TODOS_PER_USER=4, LOGIN_FAILURES_PER_USERNAME=3)
async def test_every_command_of_an_acceptance_run_names_its_shard_key(
    recorder: Recorder, app: Quart, api: Api
) -> None:
    client = api.client
    first_tokens = await api.user_tokens("alice")
    await api.login("alice")
    await api.login("alice")  # a third session: the oldest closes (SESSIONS_PER_USER=2)
    closed = await client.get(f"{AUTH}/me", headers=bearer(first_tokens["access_token"]))
    assert closed.status_code == 401
    bob = await api.headers("bob")

    tokens = await api.login("alice")
    spent = bearer(tokens["refresh_token"])
    assert (await client.post(f"{AUTH}/refresh", headers=spent)).status_code == 200
    assert (await client.post(f"{AUTH}/refresh", headers=spent)).status_code == 401  # reuse
    alice = bearer((await api.login("alice"))["access_token"])
    assert (await client.get(f"{AUTH}/me", headers=alice)).status_code == 200

    # Todos: create (once with a key, its replay and a reuse), read, change, list, delete.
    created = await client.post(TODOS, json={"title": "a", "tags": ["x"]}, headers=alice)
    assert created.status_code == 201
    path = f"{TODOS}/{(await created.get_json())['id']}"
    keyed = {**alice, "Idempotency-Key": "k-1"}
    first = await client.post(TODOS, json={"title": "b"}, headers=keyed)
    replay = await client.post(TODOS, json={"title": "b"}, headers=keyed)
    reuse = await client.post(TODOS, json={"title": "c"}, headers=keyed)
    assert (first.status_code, replay.status_code, reuse.status_code) == (201, 201, 422)
    assert (await client.get(path, headers=alice)).status_code == 200
    assert (await client.get(path, headers=bob)).status_code == 404
    done = await client.patch(path, json={"completed": True}, headers={**alice, "If-Match": '"1"'})
    assert done.status_code == 200
    stale = await client.patch(path, json={"title": "z"}, headers={**alice, "If-Match": '"1"'})
    assert stale.status_code == 412
    assert (await client.get(f"{TODOS}?sort=-due_at&tag=x", headers=alice)).status_code == 200
    page = await (await client.get(f"{TODOS}?limit=1&q=b", headers=alice)).get_json()
    assert (await client.get(f"{TODOS}?limit=1&sort=-created_at", headers=alice)).status_code == 200
    listed = await (await client.get(f"{TODOS}?limit=1", headers=alice)).get_json()
    after = await client.get(f"{TODOS}?limit=1&cursor={listed['next_cursor']}", headers=alice)
    assert page["items"] and after.status_code == 200
    for title in ("d", "e"):
        assert (await client.post(TODOS, json={"title": title}, headers=alice)).status_code == 201
    over = await client.post(TODOS, json={"title": "f"}, headers={**alice, "Idempotency-Key": "k2"})
    assert over.status_code == 409  # the quota of 4; the key is given back
    cleared = await client.delete(f"{TODOS}?completed=true", headers=alice)
    assert await cleared.get_json() == {"deleted": 1}
    second = f"{TODOS}/{(await first.get_json())['id']}"
    assert (await client.delete(second, headers={**alice, "If-Match": '"1"'})).status_code == 204
    assert (await client.delete(second, headers=alice)).status_code == 404

    await live_updates(app, api, alice)

    # Failed logins up to the limit, a password change, a logout, an account deletion.
    for _ in range(4):
        await client.post(f"{AUTH}/login", json={"username": "bob", "password": "wrong password"})
    changed = await client.post(
        f"{AUTH}/password",
        json={"current_password": PASSWORD, "new_password": "another long pw"},
        headers=alice,
    )
    assert changed.status_code == 204
    alice = bearer((await api.login("alice", "another long pw"))["access_token"])
    assert (await client.post(f"{AUTH}/logout", headers=bob)).status_code == 204
    gone = await client.delete(f"{AUTH}/me", json={"password": "another long pw"}, headers=alice)
    assert gone.status_code == 204

    commands = recorder.commands
    sent = {next(iter(command)) for command in commands}
    assert {"find", "update", "insert", "delete", "aggregate", "findAndModify"} <= sent
    failures = [reason for command in commands for reason in untargeted(command)]
    assert not failures, "\n".join(failures)


async def test_unique_indexes_start_with_the_shard_key(db: Any) -> None:
    """As declared, and as the database has them once the app has started."""
    for collection, models in INDEXES.items():
        key = SHARD_KEYS.get(collection)
        for model in models:
            document = model.document
            if key is not None and document.get("unique"):
                assert tuple(document["key"])[: len(key)] == key, (collection, document["name"])
    for collection, key in SHARD_KEYS.items():
        cursor = db[collection].list_indexes()
        if asyncio.iscoroutine(cursor):
            cursor = await cursor
        for index in await cursor.to_list(None):
            if index.get("unique") and index["name"] != "_id_":
                assert tuple(index["key"])[: len(key)] == key, (collection, index["name"])


async def test_a_counter_written_without_its_owner_is_adopted(
    api: Api, db: Any, settings: dict[str, Any]
) -> None:
    """Counters from before they carried ``owner``: a create adopts its owner's (an
    earlier version may still write them during a rolling upgrade), and the
    upgrade's recount gives all of them their owner."""
    headers = await api.headers("alice")
    assert (await api.client.post(TODOS, json={"title": "a"}, headers=headers)).status_code == 201
    counter_id = (await db["todos"].find_one({"_id": {"$regex": "^count:"}}))["_id"]
    await db["todos"].update_one({"_id": counter_id}, {"$unset": {"owner": ""}})
    assert (await api.client.post(TODOS, json={"title": "b"}, headers=headers)).status_code == 201
    counter = await db["todos"].find_one({"_id": counter_id})
    assert counter["count"] == 2 and str(counter["owner"]) == counter_id.removeprefix("count:")

    await db["todos"].update_one({"_id": counter_id}, {"$unset": {"owner": ""}})
    await db["schema_migrations"].delete_many({})  # a database of a version before
    restarted = await create_app(settings)  # testing: it upgrades at start
    async with restarted.test_app():
        pass
    counter = await db["todos"].find_one({"_id": counter_id})
    assert counter["count"] == 2 and str(counter["owner"]) == counter_id.removeprefix("count:")
