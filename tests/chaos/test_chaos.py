"""Fault injection against real processes: `make chaos`.

Each scenario starts its own database and server, drives them with real
clients (threads and raw sockets), breaks something, bounds its own time,
and asserts what clients saw and what the database holds.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from bson import ObjectId
from pymongo import MongoClient

from app.embedded_db import EmbeddedDatabase, free_port
from scripts.devserver import ServerProcess, call, start_hypercorn, stop, wait_ready

pytestmark = pytest.mark.chaos

CREDENTIALS = {"username": "chaos", "password": "chaos password"}


@dataclass
class Server:
    port: int
    database: EmbeddedDatabase
    database_name: str


@pytest.fixture
def database(tmp_path: Path) -> Iterator[EmbeddedDatabase]:
    server = EmbeddedDatabase(str(tmp_path / "db"))
    server.start()
    yield server
    server.stop()


def start_api(database: EmbeddedDatabase, workers: int = 2) -> tuple[Server, ServerProcess]:
    name = f"chaos_{uuid.uuid4().hex[:8]}"
    port = free_port()
    process = start_hypercorn(
        port,
        {
            "APP_ENV": "testing",
            "LOG_LEVEL": "INFO",
            "MONGO_URI": database.uri,
            "MONGO_DB": name,
            "MONGO_SERVER_SELECTION_TIMEOUT_MS": "1000",
            "MONGO_OPERATION_TIMEOUT_MS": "2000",
        },
        workers,
    )
    wait_ready(port, process)
    return Server(port, database, name), process


def token(server: Server) -> str:
    call(server.port, "POST", "/api/v1/auth/register", CREDENTIALS)
    status, body = call(server.port, "POST", "/api/v1/auth/login", CREDENTIALS)
    assert status == 200, body
    return str(body["access_token"])


def test_database_dies_under_write_load_and_comes_back(database: EmbeddedDatabase) -> None:
    server, process = start_api(database)
    access = token(server)
    outcomes: list[tuple[int, float, str | None]] = []
    stop_writing = threading.Event()

    def writer() -> None:
        while not stop_writing.is_set():
            started = time.monotonic()
            try:
                status, body = call(server.port, "POST", "/api/v1/todos", {"title": "w"}, access)
            except OSError:
                status, body = -1, None
            todo_id = body.get("id") if status == 201 and isinstance(body, dict) else None
            outcomes.append((status, time.monotonic() - started, todo_id))

    try:
        threads = [threading.Thread(target=writer) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(2)
        assert database.process is not None
        database.process.kill()  # SIGKILL: no clean shutdown
        database.process.wait()
        outage_started = len(outcomes)
        time.sleep(3)
        database.start()  # same port, same files
        time.sleep(4)
        stop_writing.set()
        for thread in threads:
            thread.join(timeout=10)
    finally:
        output = stop(process)

    statuses = [status for status, _, _ in outcomes]
    assert 500 not in statuses, output[-3000:]
    assert 503 in statuses[outage_started:], "the outage was not seen"
    assert set(statuses) <= {201, 503}, set(statuses)
    assert max(elapsed for _, elapsed, _ in outcomes) < 3.0
    assert statuses[-1] == 201, "the service did not recover without a restart"
    created = [todo_id for status, _, todo_id in outcomes if status == 201]
    with MongoClient(database.uri) as client:
        stored = client[server.database_name]["todos"]
        for todo_id in created:
            assert stored.count_documents({"_id": ObjectId(todo_id)}) == 1, todo_id


def test_sigterm_under_load_finishes_in_flight_requests(database: EmbeddedDatabase) -> None:
    server, process = start_api(database, workers=1)
    access = token(server)
    results: list[int] = []
    started = threading.Barrier(9)

    def client() -> None:
        started.wait()
        for _ in range(40):
            try:
                results.append(call(server.port, "GET", "/api/v1/todos", None, access)[0])
            except OSError:
                results.append(-1)  # refused: the server is going away
                return

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    started.wait()
    time.sleep(0.3)
    began = time.monotonic()
    output = stop(process)
    took = time.monotonic() - began
    for thread in threads:
        thread.join(timeout=10)
    assert process.returncode == 0, output[-2000:]
    assert took < 8 + 2  # the graceful timeout, plus start-up slack
    assert "database client closed" in output
    answered = [status for status in results if status != -1]
    assert answered and set(answered) == {200}, set(results)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


def test_hostile_clients_do_not_starve_others(database: EmbeddedDatabase) -> None:
    server, process = start_api(database, workers=1)
    idle: list[socket.socket] = []
    try:
        for _ in range(500):
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        drip = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        drip.sendall(
            b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        idle.append(drip)

        for _ in range(5):
            began = time.monotonic()
            assert call(server.port, "GET", "/healthz")[0] == 200
            assert call(server.port, "POST", "/api/v1/auth/register", CREDENTIALS)[0] in {201, 409}
            assert time.monotonic() - began < 1.0
            drip.sendall(b" ")

        status, body = call(server.port, "POST", "/api/v1/auth/login", {"x": "y" * 70_000})
        assert (status, body["code"]) == (413, "payload_too_large")
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as huge:
            huge.sendall(
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
            )
            reply = huge.recv(200)
        assert reply.startswith(b"HTTP/1.1 4"), reply[:40]  # refused, not served
    finally:
        for connection in idle:
            connection.close()
        stop(process)


def test_many_writers_on_one_todo(database: EmbeddedDatabase) -> None:
    server, process = start_api(database)
    try:
        access = token(server)
        status, todo = call(server.port, "POST", "/api/v1/todos", {"title": "contended"}, access)
        assert status == 201
        path = f"/api/v1/todos/{todo['id']}"

        def conditional_patch(index: int) -> int:
            return call(
                server.port,
                "PATCH",
                path,
                {"notes": f"writer {index}"},
                access,
                {"If-Match": '"1"'},
            )[0]

        with ThreadPoolExecutor(max_workers=50) as pool:
            statuses = list(pool.map(conditional_patch, range(50)))
        assert sorted(statuses) == [200] + [412] * 49

        def unconditional_patch(index: int) -> int:
            return call(server.port, "PATCH", path, {"tags": [f"t{index}"]}, access)[0]

        with ThreadPoolExecutor(max_workers=50) as pool:
            statuses = list(pool.map(unconditional_patch, range(50)))
        assert statuses == [200] * 50
        final = call(server.port, "GET", path, None, access)[1]
        assert final["version"] == 2 + 50  # every accepted PATCH counted once

        call(server.port, "POST", "/api/v1/auth/register", {**CREDENTIALS, "username": "rot"})
        refresh = call(
            server.port, "POST", "/api/v1/auth/login", {**CREDENTIALS, "username": "rot"}
        )[1]["refresh_token"]
        with ThreadPoolExecutor(max_workers=50) as pool:
            statuses = list(
                pool.map(
                    lambda _: call(server.port, "POST", "/api/v1/auth/refresh", None, refresh)[0],
                    range(50),
                )
            )
        assert statuses.count(200) == 1
        assert set(statuses) == {200, 401}
    finally:
        stop(process)
