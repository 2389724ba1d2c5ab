"""One client's event stream: replay after ``Last-Event-ID``, then live events.

The stream registers with the worker's hub before it replays, so nothing
that happens meanwhile is missed; events are sent only past the last
position sent, so nothing is sent twice (the replay and the hub overlap, and
a client may resume here from a worker that was ahead of this one).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import weakref
from collections.abc import AsyncIterator
from typing import Any

from pymongo.errors import PyMongoError
from quart import current_app

from ..clock import utcnow
from ..errors import unauthorized
from ..security import CurrentUser
from ..stores import changes, sessions
from . import sse
from .changes import Ended, TodoEvent, route
from .hub import Hub, Message, Subscriber


def hub() -> Hub:
    """The current app's hub (one per app, so one per worker)."""
    live_hub: Hub = current_app.extensions["live"]
    return live_hub


async def open_stream(caller: CurrentUser, last_event_id: str | None) -> AsyncIterator[bytes]:
    """Register the caller's stream and return its frames (401 if the session just closed)."""
    live_hub = hub()
    subscriber = await live_hub.subscribe(caller.id, caller.session_id)
    try:
        # A logout between the route's session check and the registration
        # would otherwise go unseen: the hub may have passed its delete.
        if await sessions.find_open(caller.session_id) is None:
            raise unauthorized("token_revoked", "The session has ended; log in again.")
    except BaseException:
        live_hub.unsubscribe(subscriber)
        raise
    frames = _frames(live_hub, subscriber, caller, last_event_id)
    # A client gone before the body starts leaves the generator unstarted, so
    # its ``finally`` never runs: unsubscribe when it is collected instead.
    weakref.finalize(frames, live_hub.unsubscribe, subscriber)
    return frames


async def _frames(
    live_hub: Hub, subscriber: Subscriber, caller: CurrentUser, last_event_id: str | None
) -> AsyncIterator[bytes]:
    # Frames are produced after the view returned, outside the request's
    # context; holding a copy of it for hours would cost each stream memory.
    config = live_hub.app.config
    subscriber.task = asyncio.current_task()
    sent = _Sent(live_hub.position)
    try:
        if subscriber.overflowed:
            return
        yield sse.retry(config["EVENTS_RETRY_MS"])
        if last_event_id is not None:
            async with live_hub.app.app_context():  # the replay reads the database
                async for replayed in _replay(subscriber, sent, last_event_id, live_hub):
                    yield replayed
                    if sent.ended:
                        return
        heartbeat = config["EVENTS_HEARTBEAT_SECONDS"]
        while True:
            until_expiry = (caller.token_expires_at - utcnow()).total_seconds()
            if until_expiry <= 0:
                yield sse.event("expired", {}, sent.event_id())
                return
            try:
                async with asyncio.timeout(min(heartbeat, math.ceil(until_expiry * 10) / 10)):
                    message = await subscriber.queue.get()
            except TimeoutError:
                yield sse.HEARTBEAT
                continue
            live = sent.frame_for(message)
            if live is not None:
                yield live
            if sent.ended:
                return
    finally:
        subscriber.task = None
        live_hub.unsubscribe(subscriber)


class _Sent:
    """What this stream has sent so far, so nothing goes out twice."""

    def __init__(self, start: sse.Position | None) -> None:
        self.start = start  # the hub's position when the stream opened
        self.last: sse.Position | None = None
        self.ended = False

    def event_id(self) -> str | None:
        """The id for an event that is not a change: the position the client has reached."""
        position = self.last or self.start
        return position.event_id if position is not None else None

    def frame_for(self, message: Message) -> bytes | None:
        if message.kind == "event":
            assert message.position is not None
            if self.last is not None and message.position.cluster_time <= self.last.cluster_time:
                return None
            self.last = message.position
            return message.frame
        if message.kind == "reset":
            self.last = None
            return message.frame
        self.ended = True
        return sse.event(message.kind, {}, self.event_id())


async def _replay(
    subscriber: Subscriber, sent: _Sent, last_event_id: str, live_hub: Hub
) -> AsyncIterator[bytes]:
    """Every change of the caller after ``last_event_id`` up to now, or one ``reset``."""
    position = sse.parse_event_id(last_event_id)
    if position is None:
        yield _reset_frame(live_hub)
        return
    sent.last = position
    try:
        async for frame in _changes_since(subscriber, sent, position):
            yield frame
    except PyMongoError as error:  # opening or reading: the position may be gone
        if not changes.cannot_resume(error):
            raise
        yield _reset_frame(live_hub)
        sent.last = None


async def _changes_since(
    subscriber: Subscriber, sent: _Sent, position: sse.Position
) -> AsyncIterator[bytes]:
    """The caller's frames from the database's history after ``position``, until caught up."""
    stream = await changes.open_stream(position.token)
    try:
        while True:
            change = await stream.try_next()
            if change is None:
                return  # caught up: the hub's events follow
            frame = _replayed(subscriber, sent, change)
            if frame is not None:
                yield frame
                if sent.ended:
                    return
    finally:
        with contextlib.suppress(PyMongoError):
            await stream.close()


def _replayed(subscriber: Subscriber, sent: _Sent, change: dict[str, Any]) -> bytes | None:
    routed = route(change)
    position = sse.Position(change["clusterTime"], change["_id"])
    if isinstance(routed, TodoEvent) and routed.owner == subscriber.user_id:
        return sent.frame_for(
            Message("event", sse.event(routed.name, routed.data, position.event_id), position)
        )
    if isinstance(routed, Ended) and getattr(subscriber, routed.field) == routed.value:
        sent.last = position
        return sent.frame_for(Message("revoked"))
    return None


def _reset_frame(live_hub: Hub) -> bytes:
    position = live_hub.position
    return sse.event("reset", {}, position.event_id if position is not None else None)
