"""Fault injection for live updates: `make chaos`.

The database is killed and restarted under open streams and continuing
writes; the server is stopped with 100 streams open. Each stream is read by
its own thread, as a browser tab would read it.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import pytest

from app.embedded_db import EmbeddedDatabase
from scripts.devserver import call, stop
from scripts.sse_client import Event, EventStream, StreamClosed
from tests.chaos.test_chaos import database, start_api

pytestmark = pytest.mark.chaos

__all__ = ["database"]  # the fixture, shared with the other scenarios


@dataclass
class Reader:
    """A thread that reads one stream until told to stop; records what it saw."""

    stream: EventStream
    owner: str
    events: list[Event] = field(default_factory=list)
    closed_by_server: bool = False
    stopping: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            try:  # heartbeats come every 15 s, so 60 s of silence is a failure
                self.events.append(self.stream.next(timeout=60))
            except StreamClosed:
                self.closed_by_server = not self.stopping.is_set()
                return

    def finish(self) -> None:
        """Stop reading: shut the socket under the reading thread."""
        self.stopping.set()
        sock = self.stream.connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        assert self.thread is not None
        self.thread.join(timeout=5)
        self.stream.close()


def users(port: int, count: int) -> dict[str, str]:
    """``count`` fresh users: access token by username."""
    tokens = {}
    for _ in range(count):
        credentials = {"username": f"live{uuid.uuid4().hex[:10]}", "password": "chaos password"}
        assert call(port, "POST", "/api/v1/auth/register", credentials)[0] == 201
        status, body = call(port, "POST", "/api/v1/auth/login", credentials)
        assert status == 200, body
        tokens[credentials["username"]] = body["access_token"]
    return tokens


def open_readers(port: int, tokens: dict[str, str], per_user: int) -> list[Reader]:
    readers = []
    for owner, token in tokens.items():
        for _ in range(per_user):
            stream = EventStream(port, token)
            assert stream.status == 200, stream.body
            reader = Reader(stream, owner)
            reader.start()
            readers.append(reader)
    return readers


def test_streams_survive_a_database_crash_with_every_write_once(
    database: EmbeddedDatabase,
) -> None:
    server, process = start_api(database)
    tokens = users(server.port, 5)
    readers = open_readers(server.port, tokens, per_user=10)  # 50 streams
    acknowledged: dict[str, list[str]] = {owner: [] for owner in tokens}
    outcomes: Counter[int] = Counter()
    stop_writing = threading.Event()

    def writer(seed: int) -> None:
        chooser = random.Random(seed)
        while not stop_writing.is_set():
            owner = chooser.choice(list(tokens))
            try:
                status, body = call(
                    server.port, "POST", "/api/v1/todos", {"title": "w"}, tokens[owner]
                )
            except OSError:
                status, body = -1, None
            outcomes[status] += 1
            if status == 201:
                acknowledged[owner].append(body["id"])
            time.sleep(0.02)

    writers = [threading.Thread(target=writer, args=(seed,)) for seed in range(4)]
    try:
        for thread in writers:
            thread.start()
        time.sleep(2)
        assert database.process is not None
        database.process.kill()  # SIGKILL: no clean shutdown
        database.process.wait()
        time.sleep(3)
        database.start()  # same port, same files
        time.sleep(5)
        stop_writing.set()
        for thread in writers:
            thread.join(timeout=10)
        time.sleep(3)  # the last events on their way
        for reader in readers:
            reader.finish()
    finally:
        output = stop(process)

    assert outcomes[503] > 0, f"the outage was not seen: {outcomes}"
    assert set(outcomes) <= {201, 503}, outcomes
    assert not [reader for reader in readers if reader.closed_by_server], output[-3000:]
    resets = 0
    for reader in readers:
        names = [event.name for event in reader.events]
        if "reset" in names:
            resets += 1
            continue
        created = [event.data["id"] for event in reader.events if event.name == "created"]
        assert len(created) == len(set(created)), "an event arrived twice"
        missing = set(acknowledged[reader.owner]) - set(created)
        assert not missing, f"{len(missing)} acknowledged writes never arrived"
    print(
        f"database crash: {sum(outcomes.values())} writes ({dict(outcomes)}), "
        f"{len(readers)} streams, {resets} reset"
    )


def test_sigterm_with_100_streams_sends_shutdown_to_all_and_exits_in_time(
    database: EmbeddedDatabase,
) -> None:
    server, process = start_api(database)
    tokens = users(server.port, 10)
    readers = open_readers(server.port, tokens, per_user=10)  # 100 streams
    began = time.monotonic()
    process.terminate()
    deadline = began + 10
    while any(reader.thread and reader.thread.is_alive() for reader in readers):
        assert time.monotonic() < deadline, "streams still open after SIGTERM"
        time.sleep(0.05)
    streams_ended = time.monotonic() - began
    process.wait(timeout=10)
    exited = time.monotonic() - began
    for reader in readers:
        reader.finish()
    output = process.output()
    assert process.returncode == 0, output[-2000:]
    assert [reader.events[-1].name if reader.events else None for reader in readers] == [
        "shutdown"
    ] * 100
    assert exited < 8, f"exit took {exited:.2f} s, past the graceful timeout"
    assert "database client closed" in output
    print(f"SIGTERM with 100 streams: all ended in {streams_ended:.2f} s, exit in {exited:.2f} s")
