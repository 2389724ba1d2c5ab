"""One client's event stream: replay after ``Last-Event-ID``, then live events.

A worker holds thousands of open streams and nearly all of them are idle,
so an idle stream keeps no coroutine or timer of its own: the response's
ASGI task waits for the client to leave, the worker's alarms (alarms.py)
wake it for heartbeats and its token's expiry, and a writer task exists only
while its mailbox has something to send. How the response leaves Quart to
be written here is in handoff.py.

The stream registers with the worker's hub before it replays, so nothing
that happens meanwhile is missed; events are sent only past the last
position sent, so nothing is sent twice (the replay and the hub overlap, and
a client may resume here from a worker that was ahead of this one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from datetime import datetime
from types import TracebackType
from typing import Any

from hypercorn.typing import ASGISendCallable
from pymongo.errors import PyMongoError
from quart import current_app

from ..clock import utcnow
from ..security import CurrentUser, session_revoked
from ..stores import changes, sessions
from . import sse
from .changes import Ended, TodoEvent, route
from .hub import Hub, Message

logger = logging.getLogger(__name__)

HEARTBEAT = Message("heartbeat", sse.HEARTBEAT)


def hub() -> Hub:
    """The current app's hub (one per app, so one per worker)."""
    live_hub: Hub = current_app.extensions["live"]
    return live_hub


async def open_stream(caller: CurrentUser, last_event_id: str | None) -> EventStream:
    """Register the caller's stream with the hub (401 if the session just closed)."""
    live_hub = hub()
    stream = EventStream(live_hub, caller, last_event_id)
    await live_hub.subscribe(stream)
    try:
        # A logout between the route's session check and the registration
        # would otherwise go unseen: the hub may have passed its delete.
        if await sessions.find_open(caller.session_id, caller.id) is None:
            raise session_revoked()
    except BaseException:
        stream.close()
        raise
    return stream


class EventStream:
    """A registered stream: what the hub offers it, and how it is written."""

    __slots__ = (
        "_cut",
        "_expires_at",
        "_finished",
        "_hub",
        "_last_event_id",
        "_live",
        "_mailbox",
        "_send",
        "_sent",
        "_task",
        "_writer",
        "session_id",
        "user_id",
    )

    def __init__(self, live_hub: Hub, caller: CurrentUser, last_event_id: str | None) -> None:
        self.user_id = caller.id
        self.session_id = caller.session_id
        self._hub = live_hub
        self._expires_at: datetime = caller.token_expires_at
        self._last_event_id = last_event_id
        # Bounded by EVENTS_QUEUE_SIZE; a list, since an empty deque takes about 600 bytes.
        self._mailbox: list[Message] = []
        self._sent = _Sent(live_hub.position, live_hub.ids)
        self._send: ASGISendCallable | None = None
        self._task: asyncio.Task[Any] | None = None  # the response's task
        self._writer: asyncio.Task[None] | None = None
        self._live = False  # replay done: the writer sends what arrives
        self._finished = False  # ended, cut or closed: nothing more is sent
        self._cut = False

    # -- what the hub (and the alarm) offer ---------------------------------

    def offer(self, message: Message) -> None:
        """Queue ``message``; a full mailbox means a client that stopped reading: cut it."""
        if self._finished:
            return
        if len(self._mailbox) >= self._hub.app.config["EVENTS_QUEUE_SIZE"]:
            logger.info("event stream of user %s dropped: not reading", self.user_id)
            self._hub.metrics.event_streams_dropped.inc()
            self._cut_off()
            return
        self._mailbox.append(message)
        self._start_writer()

    def _cut_off(self) -> None:
        """End the response unfinished: the server then closes the connection."""
        self._finished = self._cut = True
        if self._task is not None:
            self._task.cancel()  # the response's task; see __exit__

    def _start_writer(self) -> None:
        if self._live and self._writer is None and self._mailbox and not self._finished:
            self._writer = asyncio.get_running_loop().create_task(self._write_mailbox())

    def wake(self) -> None:
        """The alarm: a heartbeat every EVENTS_HEARTBEAT_SECONDS, or the token's expiry."""
        if self._finished:
            return
        if utcnow() >= self._expires_at:
            self.offer(Message("expired"))
            return
        self.offer(HEARTBEAT)
        self._set_alarm()

    def _set_alarm(self) -> None:
        """The next heartbeat (up to a second early) or the expiry (up to a second late)."""
        now = asyncio.get_running_loop().time()
        heartbeat = math.floor(now + self._hub.app.config["EVENTS_HEARTBEAT_SECONDS"])
        expiry = math.ceil(now + (self._expires_at - utcnow()).total_seconds())
        self._hub.alarms.at(min(heartbeat, expiry), self)

    # -- the response (see handoff.py) ---------------------------------------
    #
    # The response's task runs, in its own frame to save one per stream:
    #
    #     with stream:
    #         if await stream.start(send):
    #             while (await receive())["type"] != "http.disconnect":
    #                 pass
    #
    # The server says ``http.disconnect`` when the client leaves, and also
    # once a response that ended has been sent. Leaving the block before the
    # stream has ended leaves the response unfinished, and the server then
    # closes the connection: that is how a client that stopped reading is cut.

    def __enter__(self) -> EventStream:
        self._task = asyncio.current_task()
        return self

    async def start(self, send: ASGISendCallable) -> bool:
        """Send ``retry:`` and the replay, then let the writer send what arrives.

        False when the stream was cut before it could start.
        """
        self._send = send
        if self._finished:
            return False
        await self._write(sse.retry(self._hub.app.config["EVENTS_RETRY_MS"]))
        last_event_id, self._last_event_id = self._last_event_id, None  # not kept for hours
        if last_event_id is not None:
            await self._replay(last_event_id)
        self._live = True
        self._set_alarm()
        self._start_writer()
        return True

    def __exit__(
        self,
        error_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        """Close the stream; a cut, or a replay that lost its database, ends it quietly."""
        self.close()
        if isinstance(error, asyncio.CancelledError) and self._cut:
            assert self._task is not None
            self._task.uncancel()
            return True
        if isinstance(error, PyMongoError):  # the client resumes later with Last-Event-ID
            logger.warning("event stream replay failed: %s", type(error).__name__)
            return True
        return False

    def close(self) -> None:
        """Leave the hub and stop the writer (idempotent); a pending alarm finds it finished."""
        self._finished = True
        self._hub.unsubscribe(self)
        if self._writer is not None:
            self._writer.cancel()
        # The alarm holds the stream up to a heartbeat longer: not the server's objects.
        self._send = None

    async def _write_mailbox(self) -> None:
        try:
            while self._mailbox and not self._finished:
                message = self._mailbox.pop(0)
                frame = self._sent.frame_for(message)
                if frame is not None:
                    await self._write(frame)
                    if message.kind == "event":
                        self._hub.metrics.delivered_live.inc()
                if self._sent.ended:
                    await self._end()
        except Exception:  # nobody awaits this task: say it here, and cut the stream
            logger.exception("event stream of user %s failed", self.user_id)
            self._cut_off()
        finally:
            self._writer = None

    async def _write(self, frame: bytes) -> None:
        assert self._send is not None
        await self._send({"type": "http.response.body", "body": frame, "more_body": True})

    async def _end(self) -> None:
        """Finish the response; the server then says ``http.disconnect`` to the response's task."""
        self._finished = True
        assert self._send is not None
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    # -- the replay ----------------------------------------------------------

    async def _replay(self, last_event_id: str) -> None:
        """Every change of the caller after ``last_event_id`` up to now, or one ``reset``.

        Only an id this API signed and young enough is replayed from, and only
        while the worker has a replay slot free: anything else is ``reset``
        (the client refetches) without a read of the history.
        """
        position = self._hub.ids.parse(last_event_id)
        slots = self._hub.replay_slots
        if position is None or slots.locked():
            await self._write(self._hub.reset_frame())
            return
        self._sent.last = position
        try:
            async with slots, self._hub.app.app_context():  # the replay reads the database
                await self._write_changes_since(position)
        except PyMongoError as error:  # opening or reading: the position may be gone
            if not changes.cannot_resume(error):
                raise
            await self._write(self._hub.reset_frame())
            self._sent.last = None

    async def _write_changes_since(self, position: sse.Position) -> None:
        """The caller's changes from the database's history after ``position``, until caught up."""
        stream = await changes.open_stream(position.token, self.user_id, self.session_id)
        try:
            while not self._finished:
                change = await stream.try_next()
                if change is None:
                    return  # caught up: the hub's events follow
                frame = self._replayed(change)
                if frame is not None:
                    await self._write(frame)
                if self._sent.ended:
                    await self._end()
        finally:
            with contextlib.suppress(PyMongoError):
                await stream.close()

    def _replayed(self, change: dict[str, Any]) -> bytes | None:
        routed = route(change)
        position = sse.Position(change["clusterTime"], change["_id"])
        if isinstance(routed, TodoEvent) and routed.owner == self.user_id:
            frame = sse.event(routed.name, routed.data, self._sent.ids.of(position))
            sent = self._sent.frame_for(Message("event", frame, position))
            if sent is not None:
                self._hub.metrics.delivered_replay.inc()
            return sent
        if isinstance(routed, Ended) and getattr(self, routed.field) == routed.value:
            self._sent.last = position
            return self._sent.frame_for(Message("revoked"))
        return None


class _Sent:
    """What this stream has sent so far, so nothing goes out twice."""

    __slots__ = ("ended", "ids", "last", "start")

    def __init__(self, start: sse.Position | None, ids: sse.EventIds) -> None:
        self.start = start  # the hub's position when the stream opened
        self.ids = ids
        self.last: sse.Position | None = None
        self.ended = False

    def event_id(self) -> str | None:
        """The id for an event that is not a change: the position the client has reached."""
        position = self.last or self.start
        return self.ids.of(position) if position is not None else None

    def frame_for(self, message: Message) -> bytes | None:
        if message.kind == "event":
            assert message.position is not None
            if self.last is not None and message.position.cluster_time <= self.last.cluster_time:
                return None
            self.last = message.position
            return message.frame
        if message.kind == "heartbeat":
            return message.frame
        if message.kind == "reset":
            self.last = None
            return message.frame
        self.ended = True
        return sse.event(message.kind, {}, self.event_id())
