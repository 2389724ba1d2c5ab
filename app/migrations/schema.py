"""The collections' options and indexes: the schema ``db upgrade`` ensures.

Both are declared here and applied as a whole by the upgrade, which records
the declaration's fingerprint: a change to either is a new fingerprint, so
a pending step, and workers of the new version refuse to serve until an
upgrade has applied it. Workers never build indexes themselves (on a large
fleet that was many concurrent ``createIndexes`` at every rollout).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

import orjson
from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.errors import OperationFailure

logger = logging.getLogger(__name__)

#: Indexes per collection. Todos: one (owner, sort field, _id) index per sort,
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

#: Indexes earlier versions created, dropped by the upgrade: the descending twins
#: of the sort indexes (MongoDB walks an index either way) and the tags index.
RETIRED_INDEXES = {
    "todos": [f"owner_{field}_desc" for field in ("created_at", "updated_at", "due_key")]
    + ["owner_tags"]
}

#: Options of collections that must be created explicitly. ``todos`` keeps
#: pre-images, so a change stream's delete event still names the todo's owner
#: and version (MongoDB 6.0+ and SecantusDB alike).
COLLECTION_OPTIONS: dict[str, dict[str, Any]] = {
    "todos": {"changeStreamPreAndPostImages": {"enabled": True}},
}

#: The server's codes for dropping an index of a missing collection, or a missing index.
NOTHING_TO_DROP = {26, 27}
NAMESPACE_EXISTS = 48


def _described(model: IndexModel) -> dict[str, Any]:
    """An index as plain data; the key stays a list, as its order matters."""
    document = dict(model.document)
    document["key"] = list(document["key"].items())
    return document


def fingerprint() -> str:
    """A short digest of the declared options and indexes."""
    declared = {
        "indexes": {
            name: [_described(model) for model in models] for name, models in INDEXES.items()
        },
        "retired": RETIRED_INDEXES,
        "options": COLLECTION_OPTIONS,
    }
    return hashlib.sha256(orjson.dumps(declared, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]


async def _ensure_collections(database: Any) -> None:
    """Create the collections that need options, or turn the options on.

    A ``create`` that finds the collection (from an earlier version) gets
    NamespaceExists and applies the options with ``collMod`` instead; both
    are idempotent.
    """
    for name, options in COLLECTION_OPTIONS.items():
        try:
            await database.command("create", name, **options)
        except OperationFailure as error:
            if error.code != NAMESPACE_EXISTS:
                raise
            await database.command("collMod", name, **options)


async def _drop_index(collection: Any, name: str) -> None:
    """Drop ``name`` if it exists."""
    try:
        await collection.drop_index(name)
    except OperationFailure as error:
        if error.code not in NOTHING_TO_DROP:
            raise


async def ensure(database: Any) -> None:
    """Apply the declared options and indexes; drop the retired ones. Idempotent."""
    try:
        await _ensure_collections(database)
    except OperationFailure as error:
        # Only live updates need the options (a standalone server has no
        # change streams anyway); the rest of the API works without them.
        logger.warning("collection options not applied: %s", error)
    await asyncio.gather(
        *(database[name].create_indexes(models) for name, models in INDEXES.items())
    )
    await asyncio.gather(
        *(
            _drop_index(database[name], index)
            for name, indexes in RETIRED_INDEXES.items()
            for index in indexes
        )
    )
