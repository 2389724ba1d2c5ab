"""The MongoDB extension: the only module that knows which async driver runs.

The client is created in ``before_serving`` (it binds to the event loop, so
it cannot exist at import or factory time) and closed in ``after_serving``;
``db`` commands open and close it themselves. The collections' options and
indexes are the migrations' business (``app/migrations``), not each worker's.
PyMongo's ``AsyncMongoClient`` (Motor's successor) is the default driver;
``MONGO_DRIVER=motor`` selects Motor. Both raise PyMongo's exceptions, so
the rest of the app needs no driver-specific code.

Every request gets one database budget (``REQUEST_DEADLINE_MS``), opened
when its view starts and shared by all of its operations through
``pymongo.timeout()``. A per-operation bound alone lets a request with two
operations take twice as long (4.6 s seen for a 2.5 s bound); a client that
gave up on it would retry a write that was in fact answered late.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar, cast

import pymongo
from pymongo import WriteConcern
from pymongo.errors import ConnectionFailure, PyMongoError
from quart import Quart, Response, current_app

from . import metrics
from .errors import ApiError, handle_unexpected, problem_response

logger = logging.getLogger(__name__)
Dispatch = TypeVar("Dispatch", bound=Callable[..., Awaitable[Any]])

#: The current request's deadline (``time.monotonic()``). Context-local like
#: pymongo's own (each request runs in its own task), not on ``g``:
#: concurrent requests may share an app context.
_DEADLINE: ContextVar[float | None] = ContextVar("request_database_deadline", default=None)


#: The shard key of each collection a sharded cluster shards (all hashed; docs/scaling.md
#: says why, and how to shard). Every command on them names its key, so each goes to one
#: shard (tests/test_shard_targeting.py). ``users`` stays unsharded: it is small, and
#: sharding it by either of its identities (``_id``, ``username_key``) would send the
#: lookups by the other to every shard and forbid the unique name index.
SHARD_KEYS: dict[str, tuple[str, ...]] = {
    "todos": ("owner",),
    "sessions": ("user_id",),
    "idempotency_keys": ("_id",),
    "rate_limits": ("_id",),
    "stream_tickets": ("_id",),
}


async def aggregate(collection: Any, pipeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run ``pipeline`` and return every document: Motor's ``aggregate`` returns
    the cursor, PyMongo's async client a coroutine of it. ``to_list`` takes each
    batch at once (``async for`` awaits once per document)."""
    cursor = collection.aggregate(pipeline)
    if asyncio.iscoroutine(cursor):
        cursor = await cursor
    documents: list[dict[str, Any]] = await cursor.to_list(None)
    return documents


def is_unavailable(error: BaseException) -> bool:
    """True when a driver error means "the database cannot be reached now"."""
    return isinstance(error, ConnectionFailure) or (
        isinstance(error, PyMongoError) and error.timeout
    )


def _unavailable() -> ApiError:
    return ApiError(
        503,
        "service_unavailable",
        "The database is unavailable; try again shortly.",
        headers={"Retry-After": "1"},
    )


def _log_late_outcome(view: asyncio.Future[Any]) -> None:
    """How a view that outlived its answer ended: expected failures quietly."""
    if view.cancelled():
        return
    error = view.exception()
    if error is None or is_unavailable(error) or isinstance(error, ApiError):
        logger.debug("a view ended after its answer: %r", error)
    else:
        logger.error("a view failed after its answer", exc_info=error)


@dataclass
class _Connection:
    """Per-app state: each app (one per test) has its own client."""

    client: Any = None
    database: Any = None
    schema_ready: bool = False
    background: asyncio.Task[None] | None = None


class Mongo:
    """``init_app`` binds it; ``mongo.db`` is the current app's database."""

    def init_app(self, app: Quart) -> None:
        app.extensions["mongo"] = _Connection()
        app.before_serving(self.connect)
        app.after_serving(self.disconnect)
        # Flask's way of wrapping an app (as with ``wsgi_app``): every view runs
        # inside its request's database budget.
        app.dispatch_request = self._within_budget(app.dispatch_request)  # type: ignore[method-assign]
        app.register_error_handler(PyMongoError, self._handle_driver_error)

    @staticmethod
    def _state() -> _Connection:
        state: _Connection = current_app.extensions["mongo"]
        return state

    @property
    def db(self) -> Any:
        """The database of the app serving this request."""
        database = self._state().database
        if database is None:
            raise RuntimeError("the database client starts in before_serving")
        return database

    @contextmanager
    def budget(self) -> Iterator[float]:
        """One request's budget (seconds) for all of its database operations.

        ``pymongo.timeout`` keeps its deadline in context variables: PyMongo's
        async client reads them in the request's task, and Motor runs each
        operation in a worker thread inside a copy of the caller's context, so
        both drivers see it (tests/test_deadline.py checks each). When it is
        spent the next operation raises a timeout error: a 503, never a late
        success.
        """
        seconds: float = current_app.config["REQUEST_DEADLINE_MS"] / 1000
        token = _DEADLINE.set(time.monotonic() + seconds)
        try:
            with pymongo.timeout(seconds):
                yield seconds
        finally:
            _DEADLINE.reset(token)

    def _within_budget(self, dispatch: Dispatch) -> Dispatch:
        """Run each view inside its request's budget; answer 503 when it is spent.

        The budget opens when the view starts: after the body has arrived and
        passed its checks, so a slow upload does not spend it. The driver's
        own bound can overshoot: while no server is selectable it rechecks
        only every 0.5 s, and a loaded machine adds to that. So the answer is
        given at the deadline itself, while the view, which must not be
        cancelled (PyMongo's async client corrupts its topology lock when an
        operation is cancelled in server selection: 500s, then a hang at
        shutdown), runs out on its own: its next database operation fails, as
        the budget is spent. A write already sent may still land after the
        503, exactly as after a driver timeout: that is what
        ``Idempotency-Key`` is for.
        """

        @wraps(dispatch)
        async def dispatch_within_budget(*args: Any, **kwargs: Any) -> Any:
            with self.budget() as seconds:
                view = asyncio.ensure_future(dispatch(*args, **kwargs))  # copies this context
                try:
                    return await asyncio.wait_for(asyncio.shield(view), seconds)
                except TimeoutError:
                    if view.done():  # it ended as the deadline fell (or raised this itself)
                        return view.result()
                    logger.warning("request deadline spent")
                    metrics.count(lambda m: m.deadline_exceeded)
                    raise _unavailable() from None
                finally:
                    if not view.done():  # spent, or the client went away
                        view.add_done_callback(_log_late_outcome)

        return cast("Dispatch", dispatch_within_budget)

    @staticmethod
    def time_left() -> float:
        """Seconds left of the current request's database budget (0 when spent)."""
        deadline = _DEADLINE.get()
        if deadline is None:
            raise RuntimeError("no request budget is open")
        return max(0.0, deadline - time.monotonic())

    async def connect(self) -> None:
        """Create the current app's client (in ``before_serving``, or by a command)."""
        config = current_app.config
        if not config["MONGO_URI"]:
            raise RuntimeError(
                "MONGO_URI is not set. Start the server with `make run` or "
                "`hypercorn --config file:hypercorn_conf.py asgi:app`, which start "
                "the embedded database, or point MONGO_URI at MongoDB."
            )
        options: dict[str, Any] = {
            "serverSelectionTimeoutMS": config["MONGO_SERVER_SELECTION_TIMEOUT_MS"],
            "timeoutMS": config["MONGO_OPERATION_TIMEOUT_MS"],
            "tz_aware": True,
            "appname": "todo-api",
            "event_listeners": metrics.Metrics.listeners(current_app),
        }
        if config["MONGO_DRIVER"] == "pymongo":
            from pymongo import AsyncMongoClient

            client: Any = AsyncMongoClient(config["MONGO_URI"], **options)
        else:
            from motor.motor_asyncio import AsyncIOMotorClient

            client = AsyncIOMotorClient(config["MONGO_URI"], **options)
        state = self._state()
        state.client = client
        # A 201 must mean the write survives a crash: journaled writes.
        state.database = client.get_database(
            config["MONGO_DB"], write_concern=WriteConcern(w=1, j=True)
        )

    def set_schema_ready(self) -> None:
        """The schema is current (checked or upgraded): readiness may pass."""
        self._state().schema_ready = True

    def start_background(self, work: Awaitable[None]) -> None:
        """Run ``work`` beside serving; it is cancelled when the client closes."""
        self._state().background = asyncio.ensure_future(work)

    async def disconnect(self) -> None:
        state = self._state()
        if state.background is not None:
            state.background.cancel()
        if state.client is None:
            return
        result = state.client.close()
        if asyncio.iscoroutine(result):  # PyMongo's async close is a coroutine
            await result
        state.client = state.database = None
        logger.info("database client closed")

    async def watch(self, pipeline: list[dict[str, Any]], **options: Any) -> Any:
        """A change stream on the current app's database.

        PyMongo's ``watch()`` is a coroutine that runs the aggregate; Motor's
        returns a stream that would open on first use, and opens now when
        entered. Either way the stream is open on return (or the error is
        raised here), with ``try_next()``, ``resume_token`` and async ``close()``.
        """
        stream = self.db.watch(pipeline, **options)
        if asyncio.iscoroutine(stream):
            return await stream
        return await stream.__aenter__()

    async def is_ready(self, within_seconds: float) -> bool:
        """True when the schema is ready and a ping answers within ``within_seconds``.

        The wait also ends a little before the request's budget, so that the
        probe gives its own answer even when REQUEST_DEADLINE_MS is shorter.
        """
        state = self._state()
        if state.database is None or not state.schema_ready:
            return False
        try:
            async with asyncio.timeout(min(within_seconds, self.time_left() - 0.1)):
                await state.database.command("ping")
        except (TimeoutError, PyMongoError):
            metrics.current().database_reached(False)
            return False
        return True

    @staticmethod
    async def _handle_driver_error(error: PyMongoError) -> Response:
        if is_unavailable(error):
            logger.warning("database unavailable: %s", type(error).__name__)
            metrics.count(lambda m: m.database_unavailable)
            metrics.current().database_reached(False)
            return problem_response(_unavailable())
        return await handle_unexpected(error)
