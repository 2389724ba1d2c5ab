"""The real server, started the way the container starts it.

These tests run hypercorn as a subprocess with the project's config file,
so they check what unit tests cannot: worker processes, the pre-flight
refusal, the embedded database's lifecycle and a clean SIGTERM.
"""

from __future__ import annotations

import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.embedded_db import free_port
from scripts.devserver import call, start_hypercorn, stop, wait_ready

STRONG_SECRET = "3f9a0c7e51b24d68a1e0f5c2b7d94e3a6c1f8b05"

pytestmark = pytest.mark.slow


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (Linux /proc)."""
    found: set[int] = set()
    pending = [pid]
    while pending:
        parent = pending.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            children = (
                (task / "children").read_text().split() if (task / "children").exists() else []
            )
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    pending.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def all_gone(pids: set[int], seconds: float = 5) -> bool:
    """True once none of ``pids`` lives (helpers like multiprocessing's tracker exit last)."""
    deadline = time.monotonic() + seconds
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.fixture
def server_env(database_uri: str) -> Iterator[dict[str, str]]:
    yield {
        "APP_ENV": "testing",
        "LOG_LEVEL": "INFO",
        "MONGO_URI": database_uri,
        "MONGO_DB": f"test_{uuid.uuid4().hex[:16]}",
    }


def test_two_workers_serve_and_stop_cleanly_on_sigterm(server_env: dict[str, str]) -> None:
    port = free_port()
    server = start_hypercorn(port, server_env, workers=2)
    try:
        wait_ready(port, server, workers=2)
        workers = descendants(server.pid)
        assert len(workers) >= 2
        status, body = call(port, "GET", "/healthz")
        assert (status, body) == (200, {"status": "ok"})
    finally:
        output = stop(server)
    assert server.returncode == 0, output
    assert "GET /healthz 200" in output  # the app's access log line
    assert output.count("database client closed") == 2  # each worker's after_serving
    assert all_gone(workers)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"JWT_SECRET_KEY": STRONG_SECRET, "MONGO_URI": ""}, "MONGO_URI"),
        ({"JWT_SECRET_KEY": "weak", "MONGO_URI": "mongodb://127.0.0.1:1"}, "JWT_SECRET_KEY"),
        (
            {
                "JWT_SECRET_KEY": STRONG_SECRET,
                "MONGO_URI": "mongodb://127.0.0.1:1",
                "CORS_ORIGINS": "*",
            },
            "CORS_ORIGINS",
        ),
        (
            {
                "JWT_SECRET_KEY": STRONG_SECRET,
                "MONGO_URI": "mongodb://127.0.0.1:1",
                "JWT_ACCESS_TOKEN_EXPIRES": "0",
            },
            "JWT_ACCESS_TOKEN_EXPIRES",
        ),
    ],
)
def test_unsafe_production_settings_refuse_to_start(env: dict[str, str], named: str) -> None:
    server = start_hypercorn(free_port(), {"APP_ENV": "production", **env})
    server.wait(timeout=30)
    assert server.returncode == 78
    assert named in server.output()
    assert "Running on" not in server.output()


def test_embedded_database_keeps_data_and_leaves_nothing_behind(tmp_path: Path) -> None:
    env = {"APP_ENV": "development", "MONGO_URI": "", "EMBEDDED_DB_PATH": str(tmp_path / "db")}
    credentials = {"username": "persistent", "password": "long enough pw"}
    for attempt in range(2):  # the second start proves no lock or orphan was left
        port = free_port()
        server = start_hypercorn(port, env, workers=1)
        try:
            wait_ready(port, server)
            database_pid = next(
                pid
                for pid in descendants(server.pid)
                if "secantusd" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
            )
            if attempt == 0:
                assert call(port, "POST", "/api/v1/auth/register", credentials)[0] == 201
            else:  # registered before the restart: the name is still taken
                assert call(port, "POST", "/api/v1/auth/register", credentials)[0] == 409
                assert call(port, "POST", "/api/v1/auth/login", credentials)[0] == 200
        finally:
            output = stop(server)
        assert server.returncode == 0, output
        assert all_gone({database_pid})


def test_logout_and_login_limits_hold_across_server_processes(server_env: dict[str, str]) -> None:
    """Two servers (as two containers would be) share sessions and counters via MongoDB."""
    env = {**server_env, "LOGIN_FAILURES_PER_USERNAME": "4"}
    ports = [free_port(), free_port()]
    servers = [start_hypercorn(port, env, workers=1) for port in ports]
    try:
        for port, server in zip(ports, servers, strict=True):
            wait_ready(port, server)
        first, second = ports
        credentials = {"username": "shared", "password": "long enough pw"}
        assert call(first, "POST", "/api/v1/auth/register", credentials)[0] == 201
        status, tokens = call(second, "POST", "/api/v1/auth/login", credentials)
        assert status == 200
        assert call(first, "GET", "/api/v1/auth/me", token=tokens["access_token"])[0] == 200
        assert call(second, "POST", "/api/v1/auth/logout", token=tokens["access_token"])[0] == 204
        assert call(first, "GET", "/api/v1/auth/me", token=tokens["access_token"])[0] == 401

        wrong = {"username": "shared", "password": "wrong password"}
        for port in [first, second, first, second]:  # four failures, split across servers
            assert call(port, "POST", "/api/v1/auth/login", wrong)[0] == 401
        assert call(first, "POST", "/api/v1/auth/login", credentials)[0] == 429
        assert call(second, "POST", "/api/v1/auth/login", credentials)[0] == 429
    finally:
        for server in servers:
            stop(server)


def read_response(connection: socket.socket) -> bytes:
    """One whole HTTP/1.1 response with a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    declared = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
    assert declared is not None, head
    length = int(declared.group(1))
    while len(body) < length:
        body += connection.recv(4096)
    return head + b"\r\n\r\n" + body


def test_chunked_body_over_the_limit_is_413(server_env: dict[str, str]) -> None:
    """Judged by counting when there is no Content-Length, before auth and routing."""
    port = free_port()
    server = start_hypercorn(port, server_env, workers=1)
    try:
        wait_ready(port, server)
        body = b"{" + b" " * 70_000 + b"}"
        chunks = b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + 8192]), body[i : i + 8192])
            for i in range(0, len(body), 8192)
        )
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            connection.sendall(
                b"POST /api/v1/todos HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
            )
            reply = read_response(connection)
    finally:
        stop(server)
    assert reply.startswith(b"HTTP/1.1 413")
    assert b"application/problem+json" in reply and b"payload_too_large" in reply
