"""Several instances behind the shipped nginx configuration: `make cluster-test`.

Two hypercorn instances (two workers each) share one database behind nginx,
configured with deploy/nginx exactly as deployed (scripts/cluster.py starts
them). Every request goes through the proxy; which instance served it is
read from nginx's access log (by request id), so "through one instance,
seen on the other" is checked, not assumed. Outcomes are asserted, never
timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import MongoClient

from app.embedded_db import free_port
from scripts.cluster import FAIL_TIMEOUT_SECONDS, Cluster, Proxy, new_cluster, upstream_server
from scripts.devserver import ROOT, call
from scripts.sse_client import Event, EventStream, StreamClosed
from tests.test_server import all_gone, descendants

pytestmark = pytest.mark.cluster

PASSWORD = "cluster test pw"
DATABASE = "cluster_test"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = new_cluster(
        tmp_path_factory.mktemp("cluster"),
        {
            "APP_ENV": "testing",
            "LOG_LEVEL": "INFO",
            "EMBEDDED_DB_PATH": ":memory:",
            "MONGO_DB": DATABASE,
            # Every test logs in from 127.0.0.1; the limit under test is another one.
            "LOGIN_ATTEMPTS_PER_ADDRESS": "10000",
        },
    )
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def database(cluster: Cluster) -> Iterator[Any]:
    with MongoClient(cluster.env["MONGO_URI"]) as client:
        yield client[DATABASE]


def new_user(port: int) -> tuple[str, str]:
    """A fresh user through the proxy: (username, access token)."""
    username = f"u{uuid.uuid4().hex[:12]}"
    credentials = {"username": username, "password": PASSWORD}
    assert call(port, "POST", "/api/v1/auth/register", credentials)[0] == 201
    status, body = call(port, "POST", "/api/v1/auth/login", credentials)
    assert status == 200, body
    return username, body["access_token"]


def served_by(proxy: Proxy) -> dict[str, str]:
    """Which instance (upstream address) served each request, by request id."""
    served = {}
    for line in proxy.access_log.read_text().splitlines():
        request_id = re.search(r"request_id=(\S+)", line)
        upstream = re.search(r"upstream=(\S+)", line)
        if request_id and upstream:
            served[request_id.group(1)] = upstream.group(1)
    return served


def tagged(port: int, method: str, path: str, token: str, body: Any = None) -> tuple[int, str]:
    """One request with a fresh X-Request-ID; returns (status, that id)."""
    request_id = uuid.uuid4().hex
    status, _ = call(port, method, path, body, token, {"X-Request-ID": request_id})
    return status, request_id


def test_logout_through_one_instance_revokes_at_once_on_the_other(cluster: Cluster) -> None:
    port = cluster.proxy.http_port
    _, token = new_user(port)
    assert call(port, "GET", "/api/v1/auth/me", token=token)[0] == 200
    status, logout = tagged(port, "POST", "/api/v1/auth/logout", token)
    assert status == 204
    after = [tagged(port, "GET", "/api/v1/auth/me", token) for _ in range(4)]
    assert [status for status, _ in after] == [401] * 4
    served = served_by(cluster.proxy)
    assert {served[request_id] for _, request_id in after} - {served[logout]}, (
        "no request after the logout reached the other instance"
    )


def test_a_stream_receives_a_change_written_through_the_other_instance(cluster: Cluster) -> None:
    port = cluster.proxy.http_port
    _, token = new_user(port)
    request_id = uuid.uuid4().hex
    stream = EventStream(port, token, headers={"X-Request-ID": request_id})
    assert stream.status == 200
    assert stream.headers["x-request-id"] == request_id
    creates = []
    for number in range(4):
        create_id = uuid.uuid4().hex
        headers = {"X-Request-ID": create_id}
        status, todo = call(port, "POST", "/api/v1/todos", {"title": f"t{number}"}, token, headers)
        assert status == 201
        creates.append((create_id, todo["id"]))
    received = [event.data["id"] for event in stream.take(4)]
    stream.close()
    assert received == [todo_id for _, todo_id in creates]
    time.sleep(0.5)  # nginx logs the stream when it ends
    served = served_by(cluster.proxy)
    assert {served[create_id] for create_id, _ in creates} - {served[request_id]}, (
        "no create reached an instance other than the stream's"
    )


def test_spoofed_forwarded_for_does_not_escape_per_address_limits(
    cluster: Cluster, database: Any
) -> None:
    """TRUSTED_PROXY_COUNT=1: the last X-Forwarded-For entry, the one nginx adds, is the key.

    Failed logins count per (username, address), 10 by default. Each attempt
    claims another address; the client connects from 127.0.0.23 (any
    loopback address reaches the proxy), so the counter must be that one.
    """
    port = cluster.proxy.http_port
    username, _ = new_user(port)
    wrong = json.dumps({"username": username, "password": "wrong password"})
    right = json.dumps({"username": username, "password": PASSWORD})
    statuses = []
    for number in range(12):
        connection = http.client.HTTPConnection(
            "127.0.0.1", port, timeout=30, source_address=("127.0.0.23", 0)
        )
        connection.request(
            "POST",
            "/api/v1/auth/login",
            right if number == 11 else wrong,
            {"Content-Type": "application/json", "X-Forwarded-For": f"203.0.113.{number}"},
        )
        statuses.append(connection.getresponse().status)
        connection.close()
    assert statuses == [401] * 10 + [429, 429]
    counters = {
        document["_id"]: document["count"]
        for document in database["rate_limits"].find({"_id": {"$regex": f":{username}"}})
        if document["count"] > 0  # the registering login from 127.0.0.1 was given back
    }
    assert counters == {
        f"login-failures:user-addr:{username}:127.0.0.23": 10,
        f"login-failures:user:{username}": 10,
    }


def test_more_than_six_streams_share_one_http2_connection(cluster: Cluster) -> None:
    """What a browser does with eight tabs open: EventSource over HTTP/2, one connection."""
    _, token = new_user(cluster.proxy.http_port)
    origin = f"https://localhost:{cluster.proxy.https_port}"
    streams = 8
    tls = ssl.create_default_context(cafile=str(cluster.proxy.certificate))

    async def scenario() -> tuple[list[str], list[list[str]]]:
        headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        events = f"{origin}/api/v1/todos/events"
        # One connection at most: without multiplexing the second stream would wait forever.
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(http2=True, verify=tls, limits=limits, timeout=30) as client:
            opened: list[httpx.Response] = []
            for _ in range(streams):
                request = client.build_request("GET", events, headers=headers)
                opened.append(await client.send(request, stream=True))
            versions = [response.http_version for response in opened]
            assert [response.status_code for response in opened] == [200] * streams
            created = await client.post(
                f"{origin}/api/v1/todos", json={"title": "everywhere"}, headers=headers
            )
            assert created.status_code == 201
            seen = await asyncio.gather(*(created_ids(response, 1) for response in opened))
            for response in opened:
                await response.aclose()
            return versions, [[created.json()["id"]], *seen]

    versions, (expected, *seen) = asyncio.run(scenario())
    assert versions == ["HTTP/2"] * streams
    assert seen == [expected] * streams
    time.sleep(0.5)
    stream_lines = [
        line for line in cluster.proxy.access_log.read_text().splitlines() if "/events " in line
    ][-streams:]
    connections = {re.search(r"connection=(\d+)", line).group(1) for line in stream_lines}  # type: ignore[union-attr]
    assert len(connections) == 1, stream_lines
    assert all("HTTP/2.0" in line for line in stream_lines)


async def created_ids(response: httpx.Response, count: int) -> list[str]:
    """The ids of the first ``count`` ``created`` events of an open stream."""
    ids: list[str] = []
    event = None
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: ") and event == "created":
            ids.append(json.loads(line.removeprefix("data: "))["id"])
            if len(ids) == count:
                return ids
    return ids


class BlackHole:
    """A port that takes requests and drops each without answering; counts them by method."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.methods: Counter[str] = Counter()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = connection.recv(65536)
                    if not chunk:
                        break
                    head += chunk
                if head:
                    self.methods[head.split(b" ", 1)[0].decode()] += 1

    def close(self) -> None:
        self.listener.close()


def test_idempotent_requests_go_to_another_instance_and_a_post_never_does(
    cluster: Cluster, database: Any, tmp_path: Path
) -> None:
    """A second proxy whose upstream also lists an instance that drops every request.

    ``max_fails=0`` keeps nginx sending to it, one request in two. A GET it
    dropped is retried on the real instance; a POST it dropped is not (the
    client sees the proxy's 503 and nothing is created).
    """
    hole = BlackHole()
    real = cluster.instances[0].port
    proxy = Proxy(tmp_path, [f"127.0.0.1:{hole.port} max_fails=0", upstream_server(real)])
    proxy.start()
    try:
        _, token = new_user(cluster.proxy.http_port)  # a POST: not through this proxy
        reads = [call(proxy.http_port, "GET", "/api/v1/todos", token=token) for _ in range(10)]
        creates = [
            call(proxy.http_port, "POST", "/api/v1/todos", {"title": f"once {n}"}, token)
            for n in range(10)
        ]
    finally:
        proxy.stop()
        hole.close()
    assert [status for status, _ in reads] == [200] * 10
    assert hole.methods["GET"] > 0
    statuses = Counter(status for status, _ in creates)
    assert set(statuses) <= {201, 503}
    assert statuses[503] == hole.methods["POST"] > 0
    refused = next(body for status, body in creates if status == 503)
    assert refused["code"] == "service_unavailable"
    titles = [todo["title"] for todo in database["todos"].find({"title": {"$regex": "^once "}})]
    assert sorted(titles) == sorted(body["title"] for status, body in creates if status == 201)


# -- the rolling restart ------------------------------------------------------


@dataclass
class Reader:
    """An EventSource through the proxy: reconnects with Last-Event-ID whenever the stream ends."""

    port: int
    token: str
    events: list[Event] = field(default_factory=list)
    connections: int = 0
    refused: list[int] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    stream: EventStream | None = None
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        last_id: str | None = None
        while not self.stopping.is_set():
            try:
                self.stream = EventStream(self.port, self.token, last_event_id=last_id, timeout=30)
            except OSError:
                time.sleep(0.2)
                continue
            if self.stream.status != 200:
                self.refused.append(self.stream.status)
                time.sleep(0.5)
                continue
            self.connections += 1
            while not self.stopping.is_set():
                try:
                    event = self.stream.next(timeout=30)
                except (StreamClosed, TimeoutError, OSError):
                    break
                self.events.append(event)
                last_id = self.stream.last_id
            self.stream.close()
            time.sleep(0.1)  # EventSource waits `retry:` ms; a short wait keeps the test quick

    def finish(self) -> None:
        self.stopping.set()
        if self.stream is not None and self.stream.connection.sock is not None:
            with contextlib.suppress(OSError):
                self.stream.connection.sock.shutdown(socket.SHUT_RDWR)
        assert self.thread is not None
        self.thread.join(timeout=40)


def test_a_rolling_restart_fails_no_read_loses_no_create_and_no_event(
    cluster: Cluster, database: Any
) -> None:
    """Each instance in turn gets SIGTERM under steady reads, retried creates and open
    streams, and is started again once it has exited; the next one goes once nginx's
    passive health check lets traffic back to it."""
    port = cluster.proxy.http_port
    users = dict(new_user(port) for _ in range(3))
    readers = {name: [Reader(port, token) for _ in range(3)] for name, token in users.items()}
    for reader in (reader for group in readers.values() for reader in group):
        reader.start()
    time.sleep(1)
    reads: Counter[int] = Counter()
    acknowledged: dict[str, tuple[str, str]] = {}  # Idempotency-Key -> (owner, todo id)
    attempts: Counter[int] = Counter()
    stop_load = threading.Event()

    def read_steadily(token: str) -> None:
        while not stop_load.is_set():
            try:
                status, _ = call(port, "GET", "/api/v1/todos?limit=5", token=token)
            except OSError:
                status = -1
            reads[status] += 1
            time.sleep(0.02)

    def create_steadily(owner: str, token: str) -> None:
        while not stop_load.is_set():
            key = uuid.uuid4().hex
            while True:  # the same key and body until it is acknowledged
                try:
                    status, body = call(
                        port,
                        "POST",
                        "/api/v1/todos",
                        {"title": key},
                        token,
                        {"Idempotency-Key": key},
                    )
                except OSError:
                    status, body = -1, None
                attempts[status] += 1
                if status == 201:
                    acknowledged[key] = (owner, body["id"])
                    break
                time.sleep(0.2)
            time.sleep(0.05)

    load = [
        threading.Thread(target=read_steadily, args=(token,), daemon=True)
        for token in users.values()
    ] + [
        threading.Thread(target=create_steadily, args=(owner, token), daemon=True)
        for owner, token in users.items()
    ]
    outputs = []
    try:
        for thread in load:
            thread.start()
        time.sleep(2)
        for number in range(len(cluster.instances)):
            outputs.append(cluster.stop_instance(number))
            time.sleep(1)
            cluster.start_instance(number)
            cluster.wait_instance(number)
            # Until nginx tries it again: stopping the other one sooner leaves none.
            time.sleep(FAIL_TIMEOUT_SECONDS + 1)
    finally:
        stop_load.set()
        for thread in load:
            thread.join(timeout=60)
        time.sleep(3)  # the last events on their way
        for reader in (reader for group in readers.values() for reader in group):
            reader.finish()

    assert all("database client closed" in output for output in outputs)
    assert set(reads) == {200}, reads
    assert set(attempts) <= {201, 503, 409, -1}, attempts
    stored = {
        todo["title"]: (todo["_id"], todo["owner"])
        for todo in database["todos"].find({"title": {"$in": list(acknowledged)}})
    }
    assert database["todos"].count_documents({"title": {"$in": list(acknowledged)}}) == len(
        acknowledged
    )
    assert {key: str(todo_id) for key, (todo_id, _) in stored.items()} == {
        key: todo_id for key, (_, todo_id) in acknowledged.items()
    }
    for owner, group in readers.items():
        mine = {todo_id for key, (who, todo_id) in acknowledged.items() if who == owner}
        for reader in group:
            names = [event.name for event in reader.events]
            assert "reset" not in names
            created = [event.data["id"] for event in reader.events if event.name == "created"]
            assert len(created) == len(set(created)), "an event arrived twice"
            assert mine <= set(created), f"{len(mine - set(created))} events missed"
            assert not reader.refused, reader.refused
    resumed = sum(reader.connections - 1 for group in readers.values() for reader in group)
    shutdowns = sum(
        event.name == "shutdown" for group in readers.values() for r in group for event in r.events
    )
    assert shutdowns > 0 and resumed >= shutdowns, (shutdowns, resumed)
    print(
        f"rolling restart: {sum(reads.values())} reads, {len(acknowledged)} creates "
        f"({dict(attempts)}), {resumed} stream reconnections"
    )


def test_make_cluster_serves_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    """`make cluster` in its own session, as a terminal runs it; Ctrl-C is SIGINT to the group."""
    http_port, https_port = free_port(), free_port()
    arguments = (
        f"--http-port {http_port} --https-port {https_port} --first-instance-port 0 "
        f"--run-dir {tmp_path / 'run'}"
    )
    env = {
        **os.environ,
        "APP_ENV": "testing",
        "EMBEDDED_DB_PATH": str(tmp_path / "db"),
        "MONGO_URI": "",
    }
    make = subprocess.Popen(
        [shutil.which("make") or "make", "cluster", f"CLUSTER_ARGS={arguments}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert make.poll() is None, make.stdout.read().decode() if make.stdout else ""
            assert time.monotonic() < deadline, "the cluster did not come up"
            try:
                if call(http_port, "GET", "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        started = descendants(make.pid)
        assert len(started) >= 1 + 2 * 3 + 2  # the script, 2 x (master + 2 workers), db, nginx
        _, token = new_user(http_port)
        tls = ssl.create_default_context(cafile=str(tmp_path / "run" / "tls" / "cert.pem"))
        with httpx.Client(http2=True, verify=tls) as client:
            me = client.get(
                f"https://localhost:{https_port}/api/v1/auth/me",
                headers={"Authorization": f"Bearer {token}"},
            )
        assert (me.status_code, me.http_version) == (200, "HTTP/2")
        os.killpg(make.pid, signal.SIGINT)
        output = make.communicate(timeout=60)[0].decode()
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
    assert "stopping the proxy, the instances and the database" in output, output
    assert all_gone(started, seconds=10), [pid for pid in started if Path(f"/proc/{pid}").exists()]
    for port in (http_port, https_port):
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
