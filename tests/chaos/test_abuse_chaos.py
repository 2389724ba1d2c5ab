"""Abuse against real processes (`make chaos`): forged event ids, one heavy user, idle sockets.

Each scenario starts its own database and server, measures what the review
measured (database CPU from /proc, latencies as clients see them), prints the
figures, and asserts the bounds the product promises on this machine.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import statistics
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from bson import ObjectId
from pymongo import MongoClient

from app.embedded_db import EmbeddedDatabase, free_port
from app.stores.todos import due_key
from scripts.devserver import call, process_tree_cpu_seconds, start_hypercorn, stop, wait_ready
from scripts.sse_client import EventStream
from tests.chaos.test_chaos import database, start_api

pytestmark = pytest.mark.chaos

__all__ = ["database"]  # the fixture, shared with the other scenarios


def signed_in(port: int, username: str) -> str:
    credentials = {"username": username, "password": "abuse password"}
    assert call(port, "POST", "/api/v1/auth/register", credentials)[0] == 201
    status, body = call(port, "POST", "/api/v1/auth/login", credentials)
    assert status == 200, body
    return str(body["access_token"])


def cpu_seconds(database: EmbeddedDatabase) -> float:
    assert database.process is not None
    return process_tree_cpu_seconds(database.process.pid)


def test_forged_event_ids_cost_the_database_nothing(database: EmbeddedDatabase) -> None:
    """10 concurrent streams resuming from a forged id at the start of a long history."""
    server, process = start_api(database)
    try:
        # Ten readers (one user's concurrent requests are bounded: rule 10c).
        readers = [signed_in(server.port, f"reader{number}") for number in range(10)]
        stream = EventStream(server.port, readers[0])
        call(server.port, "POST", "/api/v1/todos", {"title": "seen"}, readers[0])
        genuine = stream.next()
        stream.close()
        with MongoClient(database.uri) as client:  # a history of 5,000 changes of another user
            todos = client[server.database_name]["todos"]
            other = ObjectId()
            for _ in range(10):
                todos.insert_many([{"owner": other, "title": "t"} for _ in range(500)])
        token = genuine.id.split(".")[2]  # a real resume token, at sequence 1
        forged_ids = [
            f"1.1.{token}",  # the shape ids had before they were signed
            f"1.1.{token}.{int(time.time())}.{'0' * 32}",  # today's shape, signed by nobody
        ]
        time.sleep(1)
        before = cpu_seconds(database)
        results: list[str] = []

        def resume(reader: str, forged: str) -> None:
            forged_stream = EventStream(server.port, reader, last_event_id=forged)
            try:
                results.append(forged_stream.next(timeout=20).name)
            finally:
                forged_stream.close()

        threads = [
            threading.Thread(target=resume, args=(reader, forged_ids[number % 2]))
            for number, reader in enumerate(readers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        spent_ms = (cpu_seconds(database) - before) * 1000
    finally:
        stop(process)
    print(f"10 forged Last-Event-IDs: {dict(Counter(results))}, database CPU {spent_ms:.0f} ms")
    assert results == ["reset"] * 10
    assert spent_ms < 100


def seed_heavy_user(database: EmbeddedDatabase, database_name: str, owner_id: str) -> None:
    """3,000 todos of 10 KB notes, written straight to the database."""
    owner = ObjectId(owner_id)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    chooser = random.Random(3)
    with MongoClient(database.uri) as client:
        todos = client[database_name]["todos"]
        for batch in range(15):
            documents = []
            for number in range(200):
                created = start + timedelta(seconds=batch * 200 + number)
                documents.append(
                    {
                        "_id": ObjectId(),
                        "owner": owner,
                        "title": f"todo {batch * 200 + number}",
                        "notes": "".join(chooser.choices("abcdefgh ", k=10_000)),
                        "completed": False,
                        "completed_at": None,
                        "due_at": None,
                        "due_key": due_key(None),
                        "priority": "normal",
                        "tags": [],
                        "created_at": created,
                        "updated_at": created,
                        "version": 1,
                    }
                )
            todos.insert_many(documents)


@pytest.mark.xfail(
    strict=True,
    reason=(
        "Not met on SecantusDB: it cannot stop an index walk at a limit, and fetches every "
        "todo of the owner under its one storage lock (about 30 us each), so each heavy "
        "search holds the lock ~100 ms and the light user's 2 ms list waits behind it "
        "(docs/security.md, Fairness). On MongoDB a page examines at most LIST_SCAN_LIMIT."
    ),
)
def test_one_heavy_user_searching_does_not_starve_another(database: EmbeddedDatabase) -> None:
    """The review's scenario: four concurrent searches over 3,000 todos of 10 KB notes."""
    server, process = start_api(database, settings={"USER_CONCURRENT_REQUESTS": "4"})
    try:
        heavy = signed_in(server.port, "heavy")
        light = signed_in(server.port, "light")
        me = call(server.port, "GET", "/api/v1/auth/me", None, heavy)[1]
        seed_heavy_user(database, server.database_name, me["id"])
        for number in range(10):
            call(server.port, "POST", "/api/v1/todos", {"title": f"light {number}"}, light)
        stop_searching = threading.Event()
        heavy_statuses: Counter[int] = Counter()

        def search() -> None:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            while not stop_searching.is_set():
                connection.request(
                    "GET", "/api/v1/todos?q=nomatch", headers={"Authorization": f"Bearer {heavy}"}
                )
                response = connection.getresponse()
                response.read()
                heavy_statuses[response.status] += 1

        searchers = [threading.Thread(target=search) for _ in range(4)]
        for searcher in searchers:
            searcher.start()
        time.sleep(2)
        latencies: list[float] = []
        light_statuses: Counter[int] = Counter()
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        finish = time.monotonic() + 15
        while time.monotonic() < finish:
            began = time.monotonic()
            connection.request("GET", "/api/v1/todos", headers={"Authorization": f"Bearer {light}"})
            response = connection.getresponse()
            response.read()
            latencies.append((time.monotonic() - began) * 1000)
            light_statuses[response.status] += 1
            time.sleep(0.05)
        stop_searching.set()
        for searcher in searchers:
            searcher.join(timeout=60)
    finally:
        stop(process)
    median = statistics.median(latencies)
    print(
        f"light user's GET /todos during 4 heavy searches: {len(latencies)} requests, "
        f"p50 {median:.1f} ms, p90 {statistics.quantiles(latencies, n=10)[-1]:.1f} ms, "
        f"max {max(latencies):.1f} ms, {dict(light_statuses)}; heavy: {dict(heavy_statuses)}"
    )
    assert set(light_statuses) == {200}
    assert median < 50


def test_idle_connections_do_not_stop_a_new_client(tmp_path: Path) -> None:
    """2,000 connections that send nothing, against a worker started with 1,024 open files."""
    database = EmbeddedDatabase(str(tmp_path / "db"))
    database.start()
    port = free_port()
    process = start_hypercorn(
        port,
        {"APP_ENV": "testing", "LOG_LEVEL": "INFO", "MONGO_URI": database.uri},
        workers=1,
        open_files=1024,
    )
    idle: list[socket.socket] = []
    try:
        wait_ready(port, process)
        for _ in range(2000):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        slowest = 0.0
        for _ in range(5):
            began = time.monotonic()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            assert response.status == 200
            assert response.getheader("Server") is None  # no version banner
            response.read()
            connection.close()
            slowest = max(slowest, time.monotonic() - began)
        time.sleep(6)  # past the 5 s keep-alive: the idle sockets were closed by the server
        closed = 0
        for connection in idle:
            connection.settimeout(0.01)
            with contextlib.suppress(TimeoutError, OSError):
                closed += connection.recv(1) == b""
    finally:
        for connection in idle:
            connection.close()
        output = stop(process)
        database.stop()
    print(
        f"2,000 idle connections: a new client served in {slowest * 1000:.0f} ms at worst; "
        f"{closed} idle ones closed by the server after the keep-alive timeout"
    )
    assert slowest < 1.0, output[-2000:]
    assert "open-file limit raised from 1024" in output
    assert closed >= 1900
