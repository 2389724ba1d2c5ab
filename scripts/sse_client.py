"""A small blocking Server-Sent Events client for the tests, chaos scenarios and bench.

It speaks HTTP/1.1 through ``http.client`` (which undoes the chunked
encoding) and parses the stream as a browser's EventSource does: fields up
to a blank line make one event; comment lines are counted as heartbeats.
"""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EVENTS_PATH = "/api/v1/todos/events"


@dataclass(frozen=True)
class Event:
    name: str
    id: str | None
    data: Any


class StreamClosed(Exception):
    """The server ended the stream."""


class EventStream:
    """One open ``GET /api/v1/todos/events``; ``status`` tells whether it was accepted."""

    def __init__(
        self,
        port: int,
        token: str | None = None,
        *,
        last_event_id: str | None = None,
        query: str = "",
        timeout: float = 10.0,
        receive_buffer: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.port = port
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:  # before connecting, so the window stays small
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        raw.settimeout(timeout)
        raw.connect(("127.0.0.1", port))
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.connection.sock = raw
        self.local_port: int = raw.getsockname()[1]
        headers = {"Accept": "text/event-stream", **(headers or {})}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self.connection.request("GET", EVENTS_PATH + query, headers=headers)
        self.response = self.connection.getresponse()
        self.status = self.response.status
        self.headers = {name.lower(): value for name, value in self.response.getheaders()}
        self.body: Any = None
        if self.status != 200:
            self.body = json.loads(self.response.read() or b"null")
        self.retry: int | None = None
        self.heartbeats = 0
        self.last_id: str | None = None

    def next(self, timeout: float | None = None) -> Event:
        """The next event; raises StreamClosed at the end, TimeoutError when none comes.

        After a TimeoutError the stream cannot be read any more (a socket
        file object refuses reads once one timed out): use it as a last check.
        """
        if timeout is not None:
            assert self.connection.sock is not None
            self.connection.sock.settimeout(timeout)
        fields: dict[str, str] = {}
        data: list[str] = []
        while True:
            try:
                raw = self.response.readline()
            except (http.client.IncompleteRead, ConnectionError) as error:
                raise StreamClosed from error
            except TimeoutError:
                raise
            except OSError as error:  # the socket was shut under us
                raise StreamClosed from error
            if not raw:
                raise StreamClosed
            line = raw.decode().rstrip("\n").rstrip("\r")
            if line.startswith(":"):
                self.heartbeats += 1
                continue
            if line == "":
                if "event" in fields or data:
                    event_id = fields.get("id")
                    if event_id is not None:
                        self.last_id = event_id
                    return Event(
                        fields.get("event", "message"), event_id, json.loads("\n".join(data))
                    )
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "retry":
                self.retry = int(value)
            elif name == "data":
                data.append(value)
            else:
                fields[name] = value

    def take(self, count: int, timeout: float = 10.0) -> list[Event]:
        return [self.next(timeout) for _ in range(count)]

    def close(self) -> None:
        self.connection.close()


def serving_worker(port: int, local_port: int, worker_pids: set[int]) -> int:
    """The worker process holding the server side of the client connection from ``local_port``.

    Found from /proc: the kernel's TCP table gives the socket's inode, and
    exactly one worker has a file descriptor on it.
    """
    wanted = (port, local_port)
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        local, remote = parts[1], parts[2]
        if (int(local.split(":")[1], 16), int(remote.split(":")[1], 16)) == wanted:
            inode = parts[9]
            break
    if inode is None:
        raise LookupError("connection not found")
    target = f"socket:[{inode}]"
    for pid in worker_pids:
        for descriptor in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if str(descriptor.readlink()) == target:
                    return pid
            except OSError:
                continue
    raise LookupError("no worker holds the connection")
