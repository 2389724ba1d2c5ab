"""The MongoDB extension: the only module that knows which async driver runs.

The client is created in ``before_serving`` (it binds to the event loop, so
it cannot exist at import or factory time) and closed in ``after_serving``.
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
from pymongo import ASCENDING, DESCENDING, IndexModel, WriteConcern
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError
from quart import Quart, Response, current_app

from .errors import ApiError, handle_unexpected, problem_response

logger = logging.getLogger(__name__)
Dispatch = TypeVar("Dispatch", bound=Callable[..., Awaitable[Any]])

#: The current request's deadline (``time.monotonic()``). Context-local like
#: pymongo's own (each request runs in its own task), not on ``g``:
#: concurrent requests may share an app context.
_DEADLINE: ContextVar[float | None] = ContextVar("request_database_deadline", default=None)


#: Indexes per collection. ``create_indexes`` is idempotent, so every worker
#: may run it at start. Todos: one (owner, sort field, _id) index per sort,
#: which MongoDB walks either way, so it serves both directions of a sort
#: and, with the owner's other conditions checked on the way, every filter.
#: SecantusDB uses one of them to find the owner's todos. No (owner, tags)
#: index: each index costs every write (and SecantusDB every query's plan);
#: measured on SecantusDB, dropping it made inserts, point reads, updates and
#: pages 10-18 % cheaper.
INDEXES: dict[str, list[IndexModel]] = {
    "users": [IndexModel([("username_key", ASCENDING)], unique=True, name="username_key_unique")],
    "sessions": [
        IndexModel(
            [("user_id", ASCENDING), ("refreshed_at", DESCENDING)], name="user_id_refreshed_at"
        ),
        IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=0, name="expires_at_ttl"),
    ],
    "rate_limits": [
        IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=0, name="expires_at_ttl")
    ],
    "stream_tickets": [
        IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=0, name="expires_at_ttl")
    ],
    "idempotency_keys": [
        IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=0, name="expires_at_ttl")
    ],
    "todos": [
        IndexModel(
            [("owner", ASCENDING), (sort_field, ASCENDING), ("_id", ASCENDING)],
            name=f"owner_{sort_field}_asc",
        )
        for sort_field in ("created_at", "updated_at", "due_key")
    ],
}

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

#: Indexes earlier versions created, dropped at start: the descending twins of
#: the sort indexes (MongoDB walks an index either way) and the tags index.
RETIRED_INDEXES = {
    "todos": [f"owner_{field}_desc" for field in ("created_at", "updated_at", "due_key")]
    + ["owner_tags"]
}

#: Data earlier versions wrote, brought up to date at start (every worker runs it; a
#: no-op once done): the todos' quota counters (``count:<owner>``) get the ``owner``
#: field, the collection's shard key, which every counter command now names.
COUNTERS_WITHOUT_OWNER = {"_id": {"$regex": "^count:"}, "owner": {"$exists": False}}
OWNER_FROM_COUNTER_ID = [{"$set": {"owner": {"$toObjectId": {"$substrCP": ["$_id", 6, 24]}}}}]

#: The server's codes for dropping an index of a missing collection, or a missing index.
NOTHING_TO_DROP = {26, 27}


async def aggregate(collection: Any, pipeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run ``pipeline`` and return every document: Motor's ``aggregate`` returns
    the cursor, PyMongo's async client a coroutine of it. ``to_list`` takes each
    batch at once (``async for`` awaits once per document)."""
    cursor = collection.aggregate(pipeline)
    if asyncio.iscoroutine(cursor):
        cursor = await cursor
    documents: list[dict[str, Any]] = await cursor.to_list(None)
    return documents


#: Options of collections that must be created explicitly. ``todos`` keeps
#: pre-images, so a change stream's delete event still names the todo's owner
#: and version (MongoDB 6.0+ and SecantusDB alike).
COLLECTION_OPTIONS: dict[str, dict[str, Any]] = {
    "todos": {"changeStreamPreAndPostImages": {"enabled": True}},
}
NAMESPACE_EXISTS = 48


def is_unavailable(error: BaseException) -> bool:
    """True when a driver error means "the database cannot be reached now"."""
    return isinstance(error, ConnectionFailure) or (
        isinstance(error, PyMongoError) and error.timeout
    )


async def _drop_index(collection: Any, name: str) -> None:
    """Drop ``name`` if it exists (every worker tries; the first one wins)."""
    try:
        await collection.drop_index(name)
    except OperationFailure as error:
        if error.code not in NOTHING_TO_DROP:
            raise


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
    indexes_ready: bool = False
    index_task: asyncio.Task[None] | None = None


class Mongo:
    """``init_app`` binds it; ``mongo.db`` is the current app's database."""

    def init_app(self, app: Quart) -> None:
        app.extensions["mongo"] = _Connection()
        app.before_serving(self._connect)
        app.after_serving(self._disconnect)
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

    async def _connect(self) -> None:
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
        try:
            await self._ensure_indexes(state)
        except PyMongoError as error:
            # Serve anyway: requests answer 503 while the database is away and
            # /readyz stays "unavailable" until the indexes exist.
            logger.error("database unreachable at start (%s); retrying", type(error).__name__)
            state.index_task = asyncio.create_task(self._ensure_indexes_until_done(state))

    @staticmethod
    async def _ensure_collections(state: _Connection) -> None:
        """Create the collections that need options, or turn the options on.

        Every worker runs this at start, concurrently: a ``create`` that loses
        the race (or finds the collection from an earlier version) gets
        NamespaceExists and applies the options with ``collMod`` instead;
        both are idempotent.
        """
        for name, options in COLLECTION_OPTIONS.items():
            try:
                await state.database.command("create", name, **options)
            except OperationFailure as error:
                if error.code != NAMESPACE_EXISTS:
                    raise
                await state.database.command("collMod", name, **options)

    @classmethod
    async def _ensure_indexes(cls, state: _Connection) -> None:
        try:
            await cls._ensure_collections(state)
        except OperationFailure as error:
            # Only live updates need the options (a standalone server has no
            # change streams anyway); the rest of the API works without them.
            logger.warning("collection options not applied: %s", error)
        await asyncio.gather(
            *(state.database[name].create_indexes(models) for name, models in INDEXES.items())
        )
        await asyncio.gather(
            *(
                _drop_index(state.database[name], index)
                for name, indexes in RETIRED_INDEXES.items()
                for index in indexes
            )
        )
        await state.database["todos"].update_many(COUNTERS_WITHOUT_OWNER, OWNER_FROM_COUNTER_ID)
        state.indexes_ready = True

    async def _ensure_indexes_until_done(self, state: _Connection) -> None:
        while not state.indexes_ready:
            await asyncio.sleep(1)
            try:
                await self._ensure_indexes(state)
            except PyMongoError:
                continue
        logger.info("database reachable again; indexes ensured")

    async def _disconnect(self) -> None:
        state = self._state()
        if state.index_task is not None:
            state.index_task.cancel()
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
        """True when indexes exist and a ping answers within ``within_seconds``.

        The wait also ends a little before the request's budget, so that the
        probe gives its own answer even when REQUEST_DEADLINE_MS is shorter.
        """
        state = self._state()
        if state.database is None or not state.indexes_ready:
            return False
        try:
            async with asyncio.timeout(min(within_seconds, self.time_left() - 0.1)):
                await state.database.command("ping")
        except (TimeoutError, PyMongoError):
            return False
        return True

    @staticmethod
    async def _handle_driver_error(error: PyMongoError) -> Response:
        if is_unavailable(error):
            logger.warning("database unavailable: %s", type(error).__name__)
            return problem_response(_unavailable())
        return await handle_unexpected(error)
