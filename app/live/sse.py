"""Server-Sent Events framing and the event ids this API issues.

An id is ``<seconds>.<increment>.<resume token>.<minted>.<signature>``: the
change's cluster time (which orders events the same way on every worker),
the change stream's resume token (where a reconnecting client's replay
starts), when the position came to be (wall-clock seconds), and an HMAC of
all that under a key derived from the app's secret. A replay reads the
database's change history from the id's position on, for every user, so
only an id this API signed, and young enough (``EVENTS_REPLAY_MAX_MINUTES``),
is replayed from; anything else in ``Last-Event-ID`` gets ``reset`` without
a read.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from typing import Any

import orjson
from bson.timestamp import Timestamp

EVENT_ID = re.compile(
    r"([0-9]{1,10})\.([0-9]{1,10})\.([0-9A-Fa-f]{2,1024})\.([0-9]{1,10})\.([0-9a-f]{32})"
)
ORIGIN = Timestamp(0, 0)  # a position before every change
SIGNATURE_BYTES = 16


@dataclass(frozen=True)
class Position:
    """Where a stream stands: the last change's cluster time and resume token."""

    cluster_time: Timestamp
    token: dict[str, Any]
    #: When an ORIGIN position (a change stream's start, before any change) came to be.
    opened_at: int = 0

    @property
    def minted_at(self) -> int:
        """Wall-clock seconds when the position came to be: what its age is measured from."""
        return self.cluster_time.time or self.opened_at


class EventIds:
    """Signs the ids this API hands out, and takes back only its own, young enough."""

    __slots__ = ("_key", "_max_age")

    def __init__(self, secret: str, max_age_seconds: float) -> None:
        self._key = hashlib.sha256(b"event-id:" + secret.encode()).digest()
        self._max_age = max_age_seconds

    def _signature(self, body: str) -> str:
        digest = hmac.new(self._key, body.encode(), hashlib.sha256).digest()
        return digest[:SIGNATURE_BYTES].hex()

    def of(self, position: Position) -> str:
        time_ = position.cluster_time
        body = f"{time_.time}.{time_.inc}.{position.token['_data']}.{position.minted_at}"
        return f"{body}.{self._signature(body)}"

    def parse(self, text: str) -> Position | None:
        """The position of an id this API signed within the replay window; else None."""
        match = EVENT_ID.fullmatch(text.strip())
        if match is None:
            return None
        seconds, increment, token, minted, signature = match.groups()
        body = f"{seconds}.{increment}.{token}.{minted}"
        if not hmac.compare_digest(signature, self._signature(body)):
            return None
        if time.time() - int(minted) > self._max_age:
            return None
        if int(seconds) >= 2**32 or int(increment) >= 2**32:
            return None
        opened_at = int(minted) if int(seconds) == 0 else 0  # only an ORIGIN position has one
        return Position(Timestamp(int(seconds), int(increment)), {"_data": token}, opened_at)


def event(name: str, data: Any, event_id: str | None) -> bytes:
    """One event: ``id:`` (when known), ``event:`` and a one-line JSON ``data:``."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\n".encode() + b"data: " + orjson.dumps(data) + b"\n\n"


def retry(milliseconds: int) -> bytes:
    return f"retry: {milliseconds}\n\n".encode()


HEARTBEAT = b": heartbeat\n\n"
