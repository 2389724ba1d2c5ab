"""One change stream per worker, fanned out in memory to that worker's subscribers.

The hub starts with its first subscriber and reads the database's change
stream until the worker stops. Each change is routed once: a todo event is
framed once and offered to the streams of its owner; a deleted session or
user ends the streams that belong to it. Offering never waits: each stream
has a bounded mailbox, and one that falls that far behind is disconnected
(it resumes with ``Last-Event-ID``) instead of growing the worker's memory.

When the database goes away the hub retries, and resumes its change stream
from the last position it saw, so nothing is lost or repeated. When that
position is gone from the database's history, every subscriber gets
``reset`` and the sessions behind the streams are checked again (their
deletion may have been in the lost history).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from pymongo.errors import PyMongoError
from quart import Quart

from ..errors import ApiError
from ..metrics import MetricSet
from ..stores import changes, sessions
from . import sse
from .alarms import Alarms
from .changes import Ended, TodoEvent, route
from .shutdown import wait_for_shutdown

logger = logging.getLogger(__name__)

RECONNECT_SECONDS = 1.0


class StreamInvalidated(Exception):
    """The change stream ended for good (its database or collection was dropped)."""


#: A standalone server stays one for a while: a client should not hammer it.
UNAVAILABLE_RETRY_AFTER = "60"


@dataclass(frozen=True)
class Message:
    """What a stream is offered: an event to send, a heartbeat, or why to stop."""

    kind: str  # "event", "heartbeat", "reset", or an ending: "revoked", "shutdown", "expired"
    frame: bytes = b""
    position: sse.Position | None = None


class Subscriber(Protocol):
    """An open stream as the hub sees it (app/live/stream.py's EventStream)."""

    user_id: Any
    session_id: Any

    def offer(self, message: Message) -> None:
        """Take ``message`` without waiting; a stream that cannot keep up cuts itself."""


def unavailable() -> ApiError:
    return ApiError(
        503,
        "live_updates_unavailable",
        "Live updates need change streams, which only a MongoDB replica set "
        "(or sharded cluster) offers; this database is a standalone server.",
        headers={"Retry-After": UNAVAILABLE_RETRY_AFTER},
    )


def _reason(error: Exception) -> str:
    """The ``reason`` label of a change stream's interruption."""
    if isinstance(error, StreamInvalidated):
        return "invalidated"
    if changes.history_lost(error):
        return "history_lost"
    if isinstance(error, PyMongoError):
        return "database_error"
    return "failed"


@dataclass(eq=False)
class Hub:
    app: Quart
    # A user's streams, at most EVENTS_MAX_STREAMS_PER_USER: a list is a quarter of a set's size.
    subscribers: dict[Any, list[Subscriber]] = field(default_factory=dict)
    position: sse.Position | None = None  # of the last change seen
    resume_token: dict[str, Any] | None = None  # where the stream resumes after an outage
    stopping: bool = False
    _task: asyncio.Task[None] | None = None
    _watcher: asyncio.Task[None] | None = None
    _opened: asyncio.Future[None] | None = None
    _reset_pending: bool = False
    _recheck: asyncio.Task[None] | None = None
    alarms: Alarms = field(default_factory=Alarms)  # the streams' heartbeats and expiries
    ids: sse.EventIds = field(init=False)  # signs the event ids this worker hands out
    #: Replays this worker runs at once (each reads the change history of every user).
    replay_slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        config = self.app.config
        self.ids = sse.EventIds(config["JWT_SECRET_KEY"], config["EVENTS_REPLAY_MAX_MINUTES"] * 60)
        self.replay_slots = asyncio.Semaphore(config["EVENTS_MAX_REPLAYS"])

    @property
    def metrics(self) -> MetricSet:
        metric_set: MetricSet = self.app.extensions["metrics"]
        return metric_set

    # -- subscribers -------------------------------------------------------

    async def subscribe(self, subscriber: Subscriber) -> None:
        """Register ``subscriber``; 429 past the per-user cap, 503 without change streams."""
        config = self.app.config
        if self.stopping:
            raise ApiError(
                503,
                "service_unavailable",
                "The server is shutting down.",
                headers={"Retry-After": "1"},
            )
        await self._start()
        # No await from the count to the registration: the cap holds under concurrency.
        streams = self.subscribers.setdefault(subscriber.user_id, [])
        if len(streams) >= config["EVENTS_MAX_STREAMS_PER_USER"]:
            self.metrics.rate_limit_refusals.labels("event-streams:user").inc()
            raise ApiError(
                429,
                "rate_limited",
                "Too many open event streams for this user.",
                # As long as EventSource waits before reconnecting (``retry:``).
                headers={"Retry-After": str(math.ceil(config["EVENTS_RETRY_MS"] / 1000))},
            )
        streams.append(subscriber)
        self.metrics.event_streams_open.inc()

    def unsubscribe(self, subscriber: Subscriber) -> None:
        streams = self.subscribers.get(subscriber.user_id)
        if streams is not None:
            with contextlib.suppress(ValueError):  # unsubscribing twice is harmless
                streams.remove(subscriber)
                self.metrics.event_streams_open.dec()
            if not streams:
                del self.subscribers[subscriber.user_id]

    def _everyone(self) -> list[Subscriber]:
        return [subscriber for streams in self.subscribers.values() for subscriber in streams]

    def shutdown(self) -> None:
        """Send ``shutdown`` to every stream; refuse new ones."""
        self.stopping = True
        for subscriber in self._everyone():
            subscriber.offer(Message("shutdown"))

    # -- the change stream -------------------------------------------------

    async def _start(self) -> None:
        """Start the worker's change stream if it is not running; wait until it is open."""
        if self._task is None or self._task.done():
            self._opened = asyncio.get_running_loop().create_future()
            # Tasks of the worker, not of the request that happens to start
            # them: a fresh context, or the request's database budget
            # (pymongo.timeout, app/db.py) would end the change stream with it.
            self._task = asyncio.create_task(self._run(self._opened), context=contextvars.Context())
            if self._watcher is None:
                self._watcher = asyncio.create_task(
                    self._shutdown_when_told(), context=contextvars.Context()
                )
        assert self._opened is not None
        await asyncio.shield(self._opened)

    async def _shutdown_when_told(self) -> None:
        await wait_for_shutdown()
        logger.info("shutting down: ending %d event streams", len(self._everyone()))
        self.shutdown()

    async def _run(self, opened: asyncio.Future[None]) -> None:
        async with self.app.app_context():
            while True:
                try:
                    await self._follow(opened)
                except asyncio.CancelledError:
                    if not opened.done():
                        opened.cancel()
                    raise
                except Exception as error:
                    if not opened.done():  # the first open failed: tell the subscriber
                        opened.set_exception(
                            unavailable() if changes.no_change_streams(error) else error
                        )
                        return
                    self.metrics.change_stream_interruptions.labels(_reason(error)).inc()
                    if isinstance(error, StreamInvalidated):
                        logger.warning("change stream invalidated; reopening from now")
                        self.resume_token = None
                        self._reset_pending = True
                        await asyncio.sleep(RECONNECT_SECONDS)
                    elif changes.history_lost(error):
                        logger.warning("change stream history lost (%s); resetting", error)
                        self.resume_token = None
                        self._reset_pending = True
                    elif isinstance(error, PyMongoError):
                        logger.warning("change stream interrupted: %s", type(error).__name__)
                        await asyncio.sleep(RECONNECT_SECONDS)
                    else:  # a bug must not end live updates for the worker's lifetime
                        logger.exception("change stream failed; reopening")
                        await asyncio.sleep(RECONNECT_SECONDS)

    async def _follow(self, opened: asyncio.Future[None]) -> None:
        stream = await changes.open_stream(self.resume_token)
        try:
            if self.position is None and stream.resume_token is not None:
                # No change seen yet: ids refer to where the stream began.
                self.position = sse.Position(sse.ORIGIN, stream.resume_token, int(time.time()))
            if not opened.done():
                opened.set_result(None)
            if self._reset_pending:
                self._reset_pending = False
                self._reset(stream.resume_token)
            while stream.alive:
                change = await stream.try_next()
                if change is None:
                    self.metrics.change_stream_lag.set(0)  # caught up
                else:
                    self._dispatch(change)
                    # A batch is read without suspending: let the streams take
                    # each event before the next, so a burst (clearing many
                    # todos) does not overflow a client that is reading.
                    await asyncio.sleep(0)
                self.resume_token = stream.resume_token
            # Invalidated (its database or collection was dropped): a dead
            # stream's try_next returns None at once, forever, so looping on
            # it would spin without yielding. There is nothing to resume.
            raise StreamInvalidated
        finally:
            with contextlib.suppress(PyMongoError):
                await stream.close()

    def _dispatch(self, change: dict[str, Any]) -> None:
        position = sse.Position(change["clusterTime"], change["_id"])
        self.position = position
        self.metrics.change_stream_lag.set(max(0.0, time.time() - change["clusterTime"].time))
        try:
            routed = route(change)
        except (KeyError, TypeError, ValueError):  # a document this API did not write
            logger.exception("change %s skipped", change.get("documentKey"))
            return
        if isinstance(routed, TodoEvent):
            streams = self.subscribers.get(routed.owner)
            if streams:
                frame = sse.event(routed.name, routed.data, self.ids.of(position))
                message = Message("event", frame, position)
                for subscriber in list(streams):
                    subscriber.offer(message)
        elif isinstance(routed, Ended):
            for subscriber in self._everyone():
                if getattr(subscriber, routed.field) == routed.value:
                    subscriber.offer(Message("revoked"))

    def reset_frame(self) -> bytes:
        """A ``reset`` event whose id is where the worker's change stream now stands."""
        position = self.position
        return sse.event("reset", {}, self.ids.of(position) if position is not None else None)

    def _reset(self, token: dict[str, Any] | None) -> None:
        """Tell every stream to refetch; then re-check the sessions behind them."""
        self.position = (
            sse.Position(sse.ORIGIN, token, int(time.time())) if token is not None else None
        )
        frame = self.reset_frame()
        for subscriber in self._everyone():
            subscriber.offer(Message("reset", frame))
        self._recheck = asyncio.create_task(self._revoke_closed_sessions())

    async def _revoke_closed_sessions(self) -> None:
        for subscriber in self._everyone():
            try:
                open_session = await sessions.find_open(subscriber.session_id, subscriber.user_id)
            except PyMongoError:
                return  # the database went away again; the next reset checks again
            if open_session is None:
                subscriber.offer(Message("revoked"))

    async def stop(self) -> None:
        """``after_serving``: end every stream, then the change stream."""
        self.shutdown()
        self.alarms.stop()
        await asyncio.sleep(0)  # let the streams take their last message
        for task in (self._task, self._watcher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, PyMongoError):
                    await task
