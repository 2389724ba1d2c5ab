"""Schema migrations: applied by ``db upgrade`` as a release step, checked by every worker.

The steps, in order: the collections' options and indexes as declared in
``schema.py`` (one step per declaration, named by its fingerprint), then the
data migrations of ``DATA_MIGRATIONS``. Each step is idempotent and is
recorded once in ``schema_migrations`` when it has been applied; an upgrade
applies the steps not recorded yet. A lock document with a lease
(``schema_lock``) lets one upgrade run at a time: another one waits for it,
then finds nothing left to do. The holder renews the lease while it works and
stops before its next step if it ever lost it.

In production workers only check that every step is recorded and refuse to
serve an older schema; in development and testing the app upgrades by itself
when it starts, so ``make run`` and the tests need no extra step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pymongo.errors import DuplicateKeyError, PyMongoError
from quart import Quart, current_app

from ..clock import utcnow
from ..extensions import mongo
from . import recount, schema

logger = logging.getLogger(__name__)

RECORDS = "schema_migrations"
LOCK = "schema_lock"
LOCK_ID = "upgrade"
LEASE_SECONDS = 60
WAIT_SECONDS = 600
POLL_SECONDS = 0.25
RETRY_SECONDS = 1.0
#: A worker that finds the schema behind exits with this (EX_DATAERR: the data
#: is older than the code; run the upgrade, then start again); the hypercorn
#: master does the same before any worker starts (app/serving.py).
EXIT_SCHEMA_BEHIND = 65


@dataclass(frozen=True)
class Migration:
    id: str
    description: str
    apply: Callable[[], Awaitable[None]]


#: Data migrations, in the order they apply. Never reorder, rename or remove
#: one that has shipped: its id is what the database records.
DATA_MIGRATIONS = [
    Migration(
        "0001-recount-todo-counters",
        "Recount every owner's todos into the quota counter (todos stored before "
        "counting began were not counted)",
        recount.recount_todo_counters,
    ),
]


def steps() -> list[Migration]:
    """Every step this version needs, in order."""
    return [
        Migration(
            f"schema-{schema.fingerprint()}",
            "Collection options and indexes as declared in app/migrations/schema.py",
            schema_step,
        ),
        *DATA_MIGRATIONS,
    ]


async def schema_step() -> None:
    await schema.ensure(mongo.db)


class SchemaBehind(Exception):
    """The database lacks steps this version needs."""

    def __init__(self, pending: list[str]) -> None:
        super().__init__(
            f"the database schema is older than this version (pending: {', '.join(pending)}); "
            "run `python -m app db upgrade` first"
        )
        self.pending = pending


class UpgradeBusy(Exception):
    """Another upgrade held the lock for longer than this one would wait."""


class LockLost(Exception):
    """This upgrade's lease ran out and another upgrade may have taken over."""


@dataclass
class UpgradeLock:
    """The one-at-a-time lock: a document whose lease its holder renews."""

    lease_seconds: float = LEASE_SECONDS
    holder: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
    )
    lost: bool = False
    _renewal: asyncio.Task[None] | None = None

    @staticmethod
    def _collection() -> Any:
        return mongo.db[LOCK]

    async def _take(self) -> bool:
        now = utcnow()
        try:
            await self._collection().update_one(
                {"_id": LOCK_ID, "$or": [{"expires_at": {"$lte": now}}, {"holder": self.holder}]},
                {
                    "$set": {
                        "holder": self.holder,
                        "acquired_at": now,
                        "expires_at": now + timedelta(seconds=self.lease_seconds),
                    }
                },
                upsert=True,
            )
        except DuplicateKeyError:  # a live lease of another holder: the filter missed
            return False
        return True

    async def acquire(self, wait_seconds: float) -> None:
        """Take the lock, waiting up to ``wait_seconds`` for another holder; then renew it."""
        give_up_at = time.monotonic() + wait_seconds
        announced = False
        while not await self._take():
            if time.monotonic() >= give_up_at:
                raise UpgradeBusy(f"another upgrade still holds the lock after {wait_seconds:g} s")
            if not announced:
                logger.info("another upgrade holds the lock; waiting for it")
                announced = True
            await asyncio.sleep(POLL_SECONDS)
        self._renewal = asyncio.create_task(self._renew())

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                result = await self._collection().update_one(
                    {"_id": LOCK_ID, "holder": self.holder},
                    {"$set": {"expires_at": utcnow() + timedelta(seconds=self.lease_seconds)}},
                )
            except PyMongoError:
                continue  # the lease outlasts a few failed renewals
            if result.matched_count == 0:
                self.lost = True
                return

    def check(self) -> None:
        if self.lost:
            raise LockLost("the upgrade lock's lease ran out; run the upgrade again")

    async def release(self) -> None:
        if self._renewal is not None:
            self._renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewal
        await self._collection().delete_one({"_id": LOCK_ID, "holder": self.holder})


async def applied() -> dict[str, datetime]:
    """The recorded steps and when each was applied."""
    records = mongo.db[RECORDS].find({}, {"applied_at": 1})
    return {record["_id"]: record["applied_at"] async for record in records}


async def pending() -> list[str]:
    done = await applied()
    return [step.id for step in steps() if step.id not in done]


async def upgrade(
    wait_seconds: float = WAIT_SECONDS,
    lease_seconds: float = LEASE_SECONDS,
    migrations: list[Migration] | None = None,
) -> list[str]:
    """Apply every pending step under the lock, recording each; return those applied."""
    lock = UpgradeLock(lease_seconds)
    await lock.acquire(wait_seconds)
    try:
        done = await applied()
        newly_applied = []
        for step in steps() if migrations is None else migrations:
            if step.id in done:
                continue
            lock.check()
            started = time.monotonic()
            await step.apply()
            lock.check()
            await mongo.db[RECORDS].insert_one(
                {
                    "_id": step.id,
                    "description": step.description,
                    "applied_at": utcnow(),
                    "seconds": round(time.monotonic() - started, 3),
                    "by": lock.holder,
                }
            )
            logger.info("migration applied: %s", step.id)
            newly_applied.append(step.id)
        return newly_applied
    finally:
        await lock.release()


@dataclass(frozen=True)
class StepStatus:
    id: str
    description: str
    applied_at: datetime | None


async def status() -> tuple[list[StepStatus], list[str]]:
    """This version's steps with when each was applied (None: pending), and the
    recorded steps this version does not know (applied by a newer one)."""
    done = await applied()
    known = steps()
    ids = {step.id for step in known}
    return (
        [StepStatus(step.id, step.description, done.get(step.id)) for step in known],
        sorted(set(done) - ids),
    )


# -- what a worker does at start ---------------------------------------------


def init_app(app: Quart) -> None:
    """Upgrade (development, testing) or check (production) when the app starts serving.

    Call it after ``mongo.init_app``: its ``before_serving`` needs the client.
    """
    app.before_serving(_prepare_schema)


async def _prepare_schema() -> None:
    production = current_app.config["APP_ENV"] == "production"
    try:
        await _check_schema() if production else await upgrade()
    except PyMongoError as error:
        # Serve anyway: requests answer 503 while the database is away and
        # /readyz stays "unavailable" until the schema is ready.
        logger.error("database unreachable at start (%s); retrying", type(error).__name__)
        mongo.start_background(_prepare_schema_until_done(production))
        return
    mongo.set_schema_ready()


async def _prepare_schema_until_done(production: bool) -> None:
    while True:
        await asyncio.sleep(RETRY_SECONDS)
        try:
            await _check_schema() if production else await upgrade()
        except PyMongoError:
            continue
        mongo.set_schema_ready()
        logger.info("database reachable again; schema ready")
        return


async def _check_schema() -> None:
    """Refuse to serve an older schema: one line, then the worker exits."""
    missing = await pending()
    if missing:
        logger.critical("refusing to start: %s", SchemaBehind(missing))
        for handler in logging.getLogger("app").handlers:
            handler.flush()
        sys.stdout.flush()
        os._exit(EXIT_SCHEMA_BEHIND)


def pending_in(uri: str, database: str, timeout_ms: int) -> list[str]:
    """The steps ``database`` lacks, read with a short-lived synchronous client
    (for the hypercorn master, which runs no event loop)."""
    from pymongo import MongoClient

    client: MongoClient[dict[str, Any]] = MongoClient(
        uri, serverSelectionTimeoutMS=timeout_ms, timeoutMS=timeout_ms, appname="todo-api-check"
    )
    try:
        done = set(client[database][RECORDS].distinct("_id"))
    finally:
        client.close()
    return [step.id for step in steps() if step.id not in done]
