"""Server-Sent Events framing and the event ids this API issues.

An id is ``<seconds>.<increment>.<resume token>``: the change's cluster time
(which orders events the same way on every worker) and the change stream's
resume token (where a reconnecting client's replay starts). Anything else in
``Last-Event-ID`` is not an id this API issued.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson
from bson.timestamp import Timestamp

EVENT_ID = re.compile(r"([0-9]{1,10})\.([0-9]{1,10})\.([0-9A-Fa-f]{2,1024})")
ORIGIN = Timestamp(0, 0)  # a position before every change


@dataclass(frozen=True)
class Position:
    """Where a stream stands: the last change's cluster time and resume token."""

    cluster_time: Timestamp
    token: dict[str, Any]

    @property
    def event_id(self) -> str:
        return f"{self.cluster_time.time}.{self.cluster_time.inc}.{self.token['_data']}"


def parse_event_id(text: str) -> Position | None:
    match = EVENT_ID.fullmatch(text.strip())
    if match is None:
        return None
    seconds, increment, token = match.groups()
    if int(seconds) >= 2**32 or int(increment) >= 2**32:
        return None
    return Position(Timestamp(int(seconds), int(increment)), {"_data": token})


def event(name: str, data: Any, event_id: str | None) -> bytes:
    """One event: ``id:`` (when known), ``event:`` and a one-line JSON ``data:``."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\n".encode() + b"data: " + orjson.dumps(data) + b"\n\n"


def retry(milliseconds: int) -> bytes:
    return f"retry: {milliseconds}\n\n".encode()


HEARTBEAT = b": heartbeat\n\n"
