"""Live updates against the real server: hypercorn with two workers, a real database.

Each stream is a real HTTP connection read as EventSource reads it; which
worker holds a connection is read from /proc, so "a write on one worker
reaches a stream on the other" is checked, not assumed.
"""

from __future__ import annotations

import http.client
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from bson.timestamp import Timestamp
from pymongo import MongoClient

from app.embedded_db import EmbeddedDatabase, free_port
from app.live.sse import EventIds, Position
from scripts.devserver import ServerProcess, call, start_hypercorn, stop, wait_ready
from scripts.sse_client import Event, EventStream, StreamClosed, serving_worker
from tests.test_server import descendants

pytestmark = pytest.mark.slow

PASSWORD = "live updates pw"


@contextmanager
def api_server(
    database_uri: str, env: dict[str, str] | None = None, workers: int = 2
) -> Iterator[tuple[int, ServerProcess, str]]:
    """hypercorn as the container runs it, on a fresh database; yields (port, process, db)."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    port = free_port()
    process = start_hypercorn(
        port,
        {
            "APP_ENV": "testing",
            "LOG_LEVEL": "INFO",
            "MONGO_URI": database_uri,
            "MONGO_DB": name,
            **(env or {}),
        },
        workers,
    )
    try:
        wait_ready(port, process)
        yield port, process, name
    finally:
        stop(process)


@pytest.fixture(scope="module")
def server(database_uri: str) -> Iterator[tuple[int, ServerProcess, str]]:
    settings = {"EVENTS_MAX_STREAMS_PER_USER": "3", "REGISTRATIONS_PER_ADDRESS": "1000"}
    with api_server(database_uri, settings) as running:
        yield running


@pytest.fixture
def port(server: tuple[int, ServerProcess, str]) -> int:
    return server[0]


def user(port: int) -> dict[str, Any]:
    """A fresh user: name, password, tokens and id."""
    credentials = {"username": f"u{uuid.uuid4().hex[:12]}", "password": PASSWORD}
    status, body = call(port, "POST", "/api/v1/auth/register", credentials)
    assert status == 201, body
    status, tokens = call(port, "POST", "/api/v1/auth/login", credentials)
    assert status == 200, tokens
    return {**credentials, **tokens, "id": body["id"]}


def open_stream(port: int, token: str, **options: Any) -> EventStream:
    stream = EventStream(port, token, **options)
    assert stream.status == 200, stream.body
    return stream


def streams_on_both_workers(
    port: int, process: ServerProcess, token: str
) -> tuple[EventStream, EventStream]:
    """Open streams until two are held by different workers; close the rest."""
    workers = descendants(process.pid)
    held: dict[int, EventStream] = {}
    for _ in range(40):
        stream = open_stream(port, token)
        worker = serving_worker(port, stream.local_port, workers)
        if worker in held:
            stream.close()
        else:
            held[worker] = stream
        if len(held) == 2:
            first, second = held.values()
            return first, second
    raise AssertionError("every stream landed on the same worker")


def create(port: int, token: str, title: str = "milk", **fields: Any) -> dict[str, Any]:
    status, todo = call(port, "POST", "/api/v1/todos", {"title": title, **fields}, token)
    assert status == 201, todo
    return dict(todo)


def test_stream_headers_and_retry_line(port: int) -> None:
    alice = user(port)
    stream = open_stream(port, alice["access_token"])
    try:
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.headers["cache-control"] == "no-store"
        assert stream.headers["x-accel-buffering"] == "no"
        create(port, alice["access_token"])
        assert stream.next().name == "created"
        assert stream.retry == 2000  # the retry: line came before the first event
    finally:
        stream.close()


def test_every_change_reaches_streams_on_both_workers_with_exact_payloads(
    server: tuple[int, ServerProcess, str],
) -> None:
    port, process, _ = server
    alice = user(port)
    token = alice["access_token"]
    streams = streams_on_both_workers(port, process, token)
    try:
        todo = create(port, token, "Buy milk", tags=["home"], due_at="2026-12-01T10:00:00Z")
        status, patched = call(
            port, "PATCH", f"/api/v1/todos/{todo['id']}", {"completed": True}, token
        )
        assert status == 200
        other = create(port, token, "done too", completed=True)
        assert call(port, "DELETE", "/api/v1/todos?completed=true", None, token) == (
            200,
            {"deleted": 2},
        )
        kept = create(port, token, "kept")
        assert call(port, "DELETE", f"/api/v1/todos/{kept['id']}", None, token)[0] == 204
        for stream in streams:
            events = stream.take(7)
            assert [(event.name, event.data) for event in events[:3]] == [
                ("created", todo),
                ("updated", patched),
                ("created", other),
            ]
            cleared = {
                (event.name, event.data["id"], event.data["version"]) for event in events[3:5]
            }
            assert cleared == {("deleted", todo["id"], 2), ("deleted", other["id"], 1)}
            assert [(event.name, event.data) for event in events[5:]] == [
                ("created", kept),
                ("deleted", {"id": kept["id"], "version": 1}),
            ]
            ids = [event.id for event in events]
            assert all(ids) and len(set(ids)) == 7
        assert [event.id for event in streams[0].take(0)] == []
    finally:
        for stream in streams:
            stream.close()


def test_another_users_changes_never_arrive(port: int) -> None:
    alice, bob = user(port), user(port)
    stream = open_stream(port, bob["access_token"])
    try:
        for index in range(5):
            create(port, alice["access_token"], f"alice {index}")
        mine = create(port, bob["access_token"], "bob's")
        event = stream.next()
        assert (event.name, event.data) == ("created", mine)
        with pytest.raises(TimeoutError):
            stream.next(timeout=0.5)
    finally:
        stream.close()


def test_last_event_id_resumes_without_loss_or_repeats(port: int) -> None:
    alice = user(port)
    token = alice["access_token"]
    first = open_stream(port, token)
    seen = create(port, token, "seen")
    event = first.next()
    assert event.data == seen
    first.close()

    missed = [create(port, token, f"missed {index}") for index in range(3)]
    resumed = open_stream(port, token, last_event_id=event.id)
    try:
        replayed = resumed.take(3)
        assert [(e.name, e.data) for e in replayed] == [("created", todo) for todo in missed]
        live = create(port, token, "live")
        assert resumed.next().data == live
        with pytest.raises(TimeoutError):
            resumed.next(timeout=0.5)  # nothing twice
    finally:
        resumed.close()

    # The id of the last replayed event resumes exactly after it, too.
    again = open_stream(port, token, last_event_id=replayed[1].id)
    try:
        assert [e.data for e in again.take(2)] == [missed[2], live]
    finally:
        again.close()


@pytest.mark.parametrize(
    "last_event_id",
    [
        "not an id",
        "1.1.00",  # well-formed, but no token the database issued
        "1796134431.37." + "43" * 30,
    ],
)
def test_an_id_this_api_did_not_issue_gives_reset_then_live_events(
    port: int, last_event_id: str
) -> None:
    alice = user(port)
    stream = open_stream(port, alice["access_token"], last_event_id=last_event_id)
    try:
        reset = stream.next()
        assert (reset.name, reset.data) == ("reset", {})
        assert reset.id
        todo = create(port, alice["access_token"])
        created = stream.next()
        assert (created.name, created.data) == ("created", todo)
        assert created.id != reset.id
    finally:
        stream.close()


def test_a_position_older_than_the_history_gives_reset(tmp_path: Path) -> None:
    database = EmbeddedDatabase(":memory:", options=["--oplog-max-entries", "100"])
    uri = database.start()
    try:
        with api_server(uri) as (port, _, name):
            alice = user(port)
            stream = open_stream(port, alice["access_token"])
            create(port, alice["access_token"], "old")
            old = stream.next()
            stream.close()
            with MongoClient(uri) as client:  # push the position out of the oplog
                client[name]["filler"].insert_many([{"n": n} for n in range(1200)])
            resumed = open_stream(port, alice["access_token"], last_event_id=old.id)
            try:
                assert resumed.next().name == "reset"
                todo = create(port, alice["access_token"], "new")
                assert resumed.next().data == todo
            finally:
                resumed.close()
    finally:
        database.stop()


def ends_with(stream: EventStream, name: str) -> Event:
    """The stream's next event is ``name``, and then the server closes it.

    The read timeout only keeps a broken stream from hanging the suite; how
    fast endings arrive is measured by the chaos scenarios, not asserted here.
    """
    event = stream.next(timeout=15)
    assert event.name == name, event
    with pytest.raises(StreamClosed):
        stream.next(timeout=15)
    return event


@pytest.mark.parametrize("action", ["logout", "password", "refresh_reuse", "delete_account"])
def test_closing_the_session_ends_the_stream_with_revoked(port: int, action: str) -> None:
    alice = user(port)
    token = alice["access_token"]
    stream = open_stream(port, token)
    try:
        create(port, token)
        assert stream.next().name == "created"
        if action == "logout":
            assert call(port, "POST", "/api/v1/auth/logout", None, token)[0] == 204
        elif action == "password":
            body = {"current_password": PASSWORD, "new_password": "another long pw"}
            assert call(port, "POST", "/api/v1/auth/password", body, token)[0] == 204
        elif action == "refresh_reuse":
            refresh = alice["refresh_token"]
            assert call(port, "POST", "/api/v1/auth/refresh", None, refresh)[0] == 200
            assert call(port, "POST", "/api/v1/auth/refresh", None, refresh)[0] == 401
        else:
            body = {"password": PASSWORD}
            assert call(port, "DELETE", "/api/v1/auth/me", body, token)[0] == 204
        revoked = ends_with(stream, "revoked")
        assert revoked.data == {}
        assert revoked.id
    finally:
        stream.close()
    again = EventStream(port, token)
    assert (again.status, again.body["code"]) == (401, "token_revoked")


def test_a_stream_ends_only_its_own_session(port: int) -> None:
    alice = user(port)
    status, other = call(
        port, "POST", "/api/v1/auth/login", {"username": alice["username"], "password": PASSWORD}
    )
    assert status == 200
    kept = open_stream(port, other["access_token"])
    ended = open_stream(port, alice["access_token"])
    try:
        assert call(port, "POST", "/api/v1/auth/logout", None, alice["access_token"])[0] == 204
        ends_with(ended, "revoked")
        todo = create(port, other["access_token"])
        assert kept.next().data == todo
    finally:
        kept.close()
        ended.close()


def test_no_token_or_a_bad_one_is_401_before_the_stream_starts(port: int) -> None:
    missing = EventStream(port)
    assert (missing.status, missing.body["code"]) == (401, "token_missing")
    assert missing.headers["content-type"] == "application/problem+json"
    bad = EventStream(port, "not.a.token")
    assert (bad.status, bad.body["code"]) == (401, "token_invalid")
    refresh = EventStream(port, user(port)["refresh_token"])
    assert (refresh.status, refresh.body["code"]) == (401, "token_wrong_type")


def test_past_the_per_user_cap_a_worker_answers_429(server: tuple[int, ServerProcess, str]) -> None:
    port, process, _ = server
    alice = user(port)
    workers = descendants(process.pid)
    per_worker: dict[int, int] = {}
    opened: list[EventStream] = []
    refused = 0
    try:
        for _ in range(12):
            stream = EventStream(port, alice["access_token"])
            opened.append(stream)
            worker = serving_worker(port, stream.local_port, workers)
            if per_worker.get(worker, 0) < 3:
                assert stream.status == 200, stream.body
                per_worker[worker] = per_worker.get(worker, 0) + 1
            else:
                assert (stream.status, stream.body["code"]) == (429, "rate_limited")
                assert int(stream.headers["retry-after"]) >= 1
                refused += 1
        assert refused >= 12 - 6
        # Another user is not affected by alice's streams.
        assert EventStream(port, user(port)["access_token"]).status == 200
    finally:
        for stream in opened:
            stream.close()
    # Closed streams free their places (the worker sees the disconnect).
    deadline = time.monotonic() + 5
    while True:
        again = EventStream(port, alice["access_token"])
        again.close()
        if again.status == 200 or time.monotonic() > deadline:
            break
    assert again.status == 200


def test_tickets_work_once_and_never_appear_in_the_log(
    server: tuple[int, ServerProcess, str],
) -> None:
    port, process, _ = server
    alice = user(port)
    status, body = call(port, "POST", "/api/v1/todos/events/tickets", None, alice["access_token"])
    assert status == 200
    assert body["expires_in"] == 30 and len(body["ticket"]) >= 32
    query = f"?ticket={body['ticket']}"
    stream = EventStream(port, query=query)
    try:
        assert stream.status == 200
        todo = create(port, alice["access_token"])
        assert stream.next().data == todo
    finally:
        stream.close()
    used = EventStream(port, query=query)
    assert (used.status, used.body["code"]) == (401, "token_invalid")
    assert body["ticket"] not in process.output()
    assert "GET /api/v1/todos/events 200" in process.output()


def test_a_ticket_is_refused_after_logout(port: int) -> None:
    alice = user(port)
    token = alice["access_token"]
    ticket = call(port, "POST", "/api/v1/todos/events/tickets", None, token)[1]["ticket"]
    assert call(port, "POST", "/api/v1/auth/logout", None, token)[0] == 204
    refused = EventStream(port, query=f"?ticket={ticket}")
    assert (refused.status, refused.body["code"]) == (401, "token_revoked")


def test_tickets_need_a_bearer_token(port: int) -> None:
    assert call(port, "POST", "/api/v1/todos/events/tickets")[0] == 401
    unknown = EventStream(port, query="?ticket=" + "x" * 43)
    assert (unknown.status, unknown.body["code"]) == (401, "token_invalid")


def test_expiry_of_token_and_ticket(database_uri: str) -> None:
    env = {"JWT_ACCESS_TOKEN_EXPIRES": "3", "EVENTS_TICKET_SECONDS": "1"}
    with api_server(database_uri, env) as (port, _, _):
        alice = user(port)
        stream = open_stream(port, alice["access_token"])
        try:
            todo = create(port, alice["access_token"])
            assert stream.next().data == todo
            expired = ends_with(stream, "expired")
            assert expired.data == {}
        finally:
            stream.close()

        fresh = call(
            port,
            "POST",
            "/api/v1/auth/login",
            {"username": alice["username"], "password": PASSWORD},
        )[1]["access_token"]
        ticket = call(port, "POST", "/api/v1/todos/events/tickets", None, fresh)[1]["ticket"]
        time.sleep(1.5)
        late = EventStream(port, query=f"?ticket={ticket}")
        assert (late.status, late.body["code"]) == (401, "token_invalid")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise LookupError(pid)


def test_a_client_that_does_not_read_is_disconnected(database_uri: str) -> None:
    with api_server(database_uri, {"EVENTS_QUEUE_SIZE": "8"}) as (port, process, name):
        alice = user(port)
        stream = open_stream(port, alice["access_token"], receive_buffer=4096)
        worker = serving_worker(port, stream.local_port, descendants(process.pid))
        reader = open_stream(port, alice["access_token"])  # reads all along
        read: list[Event] = []
        reading = threading.Thread(target=lambda: read.extend(reader.take(800, timeout=20)))
        reading.start()
        before = rss_kib(worker)
        notes = "n" * 10_000
        now = datetime.now(UTC)
        with MongoClient(database_uri) as client:
            todos = client[name]["todos"]
            for batch in range(8):  # 800 events of ~10 KB: far more than any socket buffers
                todos.insert_many(
                    [
                        {
                            "owner": ObjectId(alice["id"]),
                            "title": f"t{batch}-{n}",
                            "notes": notes,
                            "completed": False,
                            "completed_at": None,
                            "due_at": None,
                            "priority": "normal",
                            "tags": [],
                            "created_at": now,
                            "updated_at": now,
                            "version": 1,
                        }
                        for n in range(100)
                    ]
                )
        reading.join(timeout=30)
        assert len(read) == 800  # a burst does not overflow a client that reads
        reader.close()
        time.sleep(1)
        grown = rss_kib(worker) - before
        received = 0
        with pytest.raises(StreamClosed):
            while True:  # read what was buffered: then the server's close
                stream.next(timeout=10)
                received += 1
        print(f"slow reader: {received} events received, worker grew {grown} KiB")
        assert received < 800
        assert grown < 20_000, f"worker grew by {grown} KiB"
        # The worker still serves, and a fresh stream works.
        again = open_stream(port, alice["access_token"])
        again.close()


def test_no_change_streams_is_503_and_the_rest_works() -> None:
    database = EmbeddedDatabase(":memory:", options=["--standalone"])
    uri = database.start()
    try:
        with api_server(uri, workers=1) as (port, _, _):
            alice = user(port)
            refused = EventStream(port, alice["access_token"])
            assert refused.status == 503
            assert refused.body["code"] == "live_updates_unavailable"
            assert "replica set" in refused.body["detail"]
            assert refused.headers["retry-after"] == "60"
            create(port, alice["access_token"])
    finally:
        database.stop()


def test_sigterm_sends_shutdown_to_every_stream_and_exits_cleanly(database_uri: str) -> None:
    with api_server(database_uri) as (port, process, _):
        alice = user(port)
        streams = [open_stream(port, alice["access_token"]) for _ in range(6)]
        process.terminate()
        for stream in streams:
            ends_with(stream, "shutdown")
        process.wait(timeout=30)
    assert process.returncode == 0
    # Ended by the app as SIGTERM came (hypercorn would cut them, with no event,
    # at the graceful timeout):
    assert "shutting down: ending" in process.output()


def test_a_worker_whose_position_left_the_history_resets_streams_and_rechecks_sessions(
    tmp_path: Path,
) -> None:
    """The workers are frozen (SIGSTOP) while the database restarts and its oplog
    moves on: resuming fails, so every stream gets reset, and a session deleted
    meanwhile (a deletion the history no longer holds) still ends its stream."""
    database = EmbeddedDatabase(str(tmp_path / "db"), options=["--oplog-max-entries", "100"])
    uri = database.start()
    try:
        with api_server(uri, workers=1) as (port, process, name):
            alice, bob = user(port), user(port)
            kept = open_stream(port, alice["access_token"])
            closed = open_stream(port, bob["access_token"])
            workers = descendants(process.pid)
            for pid in workers:
                os.kill(pid, signal.SIGSTOP)
            try:
                assert database.process is not None
                database.process.kill()
                database.process.wait()
                database.start()
                with MongoClient(uri) as client:
                    client[name]["sessions"].delete_many({"user_id": ObjectId(bob["id"])})
                    client[name]["filler"].insert_many([{"n": n} for n in range(1200)])
            finally:
                for pid in workers:
                    os.kill(pid, signal.SIGCONT)
            assert kept.next(timeout=15).name == "reset"
            assert closed.next(timeout=15).name == "reset"
            ends_with(closed, "revoked")
            todo = create(port, alice["access_token"], "after")
            assert kept.next(timeout=10).data == todo
            kept.close()
    finally:
        database.stop()


# Abuse resistance (contract 1.2): ids that cannot be forged, tickets spent only when served,
# and a credential change that ends streams even when it is cut short.


@pytest.mark.parametrize(
    "forged",
    [
        "1.1." + "82" * 40 + ".1.0123456789abcdef0123456789abcdef",  # a replay of all history
        "{seconds}.1." + "82" * 40 + ".{seconds}." + "0" * 32,  # fresh, but unsigned
    ],
)
def test_a_forged_last_event_id_gets_reset_without_a_replay(port: int, forged: str) -> None:
    alice = user(port)
    forged = forged.format(seconds=int(time.time()))
    stream = open_stream(port, alice["access_token"], last_event_id=forged)
    try:
        reset = stream.next()
        assert (reset.name, reset.data) == ("reset", {})
        todo = create(port, alice["access_token"])
        assert stream.next().data == todo
    finally:
        stream.close()


def test_event_ids_are_signed_and_expire() -> None:
    ids = EventIds("a secret of the app", max_age_seconds=60)
    now = int(time.time())
    fresh = Position(Timestamp(now, 3), {"_data": "82ab"})
    assert ids.parse(ids.of(fresh)) == fresh
    assert EventIds("another secret", 60).parse(ids.of(fresh)) is None
    tampered = ids.of(fresh).replace(f"{now}.3.", f"{now}.2.", 1)
    assert ids.parse(tampered) is None
    old = Position(Timestamp(now - 61, 1), {"_data": "82ab"})
    assert ids.parse(ids.of(old)) is None
    started = Position(Timestamp(0, 0), {"_data": "82ab"}, opened_at=now)  # no change yet
    assert ids.parse(ids.of(started)) == started


def test_a_ticket_is_spent_only_by_a_request_that_is_served(port: int) -> None:
    alice = user(port)
    ticket = call(port, "POST", "/api/v1/todos/events/tickets", None, alice["access_token"])[1]
    query = f"?ticket={ticket['ticket']}"
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("HEAD", "/api/v1/todos/events" + query)
    head = connection.getresponse()
    head.read()
    assert head.status == 401
    invalid = EventStream(port, query=query + "&colour=red")
    assert (invalid.status, invalid.body["code"]) == (422, "validation_failed")
    served = EventStream(port, query=query)
    try:
        assert served.status == 200
    finally:
        served.close()
    spent = EventStream(port, query=query)
    assert (spent.status, spent.body["code"]) == (401, "token_invalid")


def test_a_raised_credential_floor_ends_the_users_streams(
    server: tuple[int, ServerProcess, str], database_uri: str
) -> None:
    """A password change cut short after its first step still ends every stream."""
    port, _, name = server
    alice = user(port)
    stream = open_stream(port, alice["access_token"])
    try:
        with MongoClient(database_uri) as client:
            client[name]["sessions"].update_one(
                {"_id": f"epoch:{alice['id']}", "user_id": ObjectId(alice["id"])},
                {"$max": {"min_epoch": 1}, "$set": {"pending_until": datetime.now(UTC)}},
                upsert=True,
            )
        ends_with(stream, "revoked")
    finally:
        stream.close()
    again = EventStream(port, alice["access_token"])
    assert (again.status, again.body["code"]) == (401, "token_revoked")
