"""The ``todos`` collection. Every query and write is filtered by ``owner``.

``owner`` is also the collection's shard key (docs/scaling.md): every
command names it, the quota counter's included, so each goes to one shard.
``due_key`` mirrors ``due_at`` but holds a far-future date when there is
none, so that "no due date" sorts after every date on one index, as the
contract wants. Writes that must not race are guarded by ``version``.

Each owner's todos are counted in a counter document (the quota). A recount
(``db upgrade``'s first migration) must hold even while the owner writes, so
the counter has a guard of its own: while ``recount_until`` lies ahead,
creates and deletes wait instead of changing the count, and a delete that
has changed it is marked in flight (``deleting``) until its todos are gone.
The recount sets the guard, waits for the deletes in flight, counts, and
sets the count: no write of the owner falls between its count and its set.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError

from ..clock import utcnow
from ..db import aggregate
from ..extensions import mongo

Todo = dict[str, Any]

DUPLICATE_KEY = 11000
#: How long an account deletion waits for creates it has counted to land.
IN_FLIGHT_SECONDS = 1.0
#: How often a write blocked by a recount looks again.
RECOUNT_POLL_SECONDS = 0.02

#: Later than any accepted due date (the models refuse this last millisecond).
NO_DUE_DATE = datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
SORT_FIELDS = {"created_at": "created_at", "updated_at": "updated_at", "due_at": "due_key"}


def _todos() -> Any:
    return mongo.db["todos"]


def due_key(due_at: datetime | None) -> datetime:
    """The stored sort key of ``due_at``: null is the greatest value (contract rule 35)."""
    return NO_DUE_DATE if due_at is None else due_at


class QuotaExceeded(Exception):
    """The owner already holds as many todos as allowed."""


class OwnerDeleted(Exception):
    """The owner's account was deleted: nothing may be created for it any more."""


#: Todos only: their ids are ObjectIds, the quota counters' are strings.
TODOS_ONLY = {"_id": {"$type": "objectId"}}
COUNTER_PREFIX = "count:"
#: Counters an earlier version wrote without ``owner``; every open counter (the
#: recount's filters: each goes to every shard, once per upgrade).
COUNTERS_WITHOUT_OWNER = {"_id": {"$regex": f"^{COUNTER_PREFIX}"}, "owner": {"$exists": False}}
OPEN_COUNTERS = {"_id": {"$regex": f"^{COUNTER_PREFIX}"}, "closed": {"$ne": True}}


def _counter(owner: ObjectId) -> dict[str, Any]:
    """The owner's todo counter: a document in ``todos`` itself, beside the owner's
    todos (same ``owner``, so the same shard), under a string ``_id``. Queries that
    select todos by ``owner`` alone leave it out with ``TODOS_ONLY``."""
    return {"_id": f"{COUNTER_PREFIX}{owner}", "owner": owner}


def _unguarded() -> dict[str, Any]:
    """The filter of a counter no recount holds now."""
    return {"recount_until": {"$not": {"$gt": utcnow()}}}


def _held(counter: dict[str, Any] | None) -> bool:
    held_until = counter.get("recount_until") if counter is not None else None
    return held_until is not None and held_until > utcnow()


async def _wait_for_recount(owner: ObjectId) -> None:
    """After a counter's filter missed: wait a moment if a recount holds it, or give it
    its ``owner`` if an earlier version wrote it without one."""
    counter = await _todos().find_one(_counter(owner), {"recount_until": 1})
    if counter is None:
        await _adopt_counter(owner)
    elif _held(counter):
        await asyncio.sleep(RECOUNT_POLL_SECONDS)


async def _counter_refuses(owner: ObjectId, quota: int) -> bool:
    """Why a create's count missed: True for the quota; False to try again (a
    recount held the counter, and has been waited for, or has just let it go;
    or the counter has just been given its ``owner``). Raises ``OwnerDeleted``
    for a closed counter."""
    counter = await _todos().find_one(_counter(owner))
    if counter is None:  # written without its owner: adopted now (or by a concurrent create)
        await _adopt_counter(owner)
        return False
    if counter.get("closed"):
        raise OwnerDeleted
    if _held(counter):
        await asyncio.sleep(RECOUNT_POLL_SECONDS)
        return False
    return bool(counter.get("count", 0) >= quota)


async def insert(todo: Todo, quota: int) -> None:
    """Insert ``todo`` unless its owner holds ``quota`` todos or is deleted; one command.

    An ordered bulk write bumps the owner's counter, but only below the
    quota and while the counter is not closed (``delete_all_of``): otherwise
    the filter misses, the upsert collides with the existing counter's
    ``_id``, and the ordered write stops before the todo. The first create
    makes the counter (count 1). The todo goes in as an upsert that only
    sets on insert, so both are updates and the driver sends them as one
    command (an insert would be a second one); the change stream still sees
    an ``insert``.
    """
    owner = todo["owner"]
    # Both filters hold the whole shard key; its value (and _id) are set on insert.
    fields = {key: value for key, value in todo.items() if key not in {"_id", "owner"}}
    while True:
        counter_filter = {
            **_counter(owner),
            "count": {"$lt": quota},
            "closed": {"$ne": True},
            **_unguarded(),
        }
        try:
            result = await _todos().bulk_write(
                [
                    UpdateOne(counter_filter, {"$inc": {"count": 1}}, upsert=True),
                    UpdateOne(
                        {"_id": todo["_id"], "owner": owner},
                        {"$setOnInsert": fields},
                        upsert=True,
                    ),
                ],
                ordered=True,
            )
            break
        except BulkWriteError as error:
            failure = error.details["writeErrors"][0]
            if failure["index"] == 0 and failure["code"] == DUPLICATE_KEY:
                if await _counter_refuses(owner, quota):
                    raise QuotaExceeded from None
                continue
            if failure["code"] == DUPLICATE_KEY:  # two upserts of one _id raced
                await _count(owner, -1)
                raise DuplicateKeyError(failure.get("errmsg", "duplicate key")) from None
            raise
    if 1 not in result.upserted_ids:  # the todo's _id exists: give the count back
        await _count(owner, -1)
        raise DuplicateKeyError(f"a todo with _id {todo['_id']} exists")


async def _adopt_counter(owner: ObjectId) -> bool:
    """Give the owner's counter its ``owner`` if an earlier version wrote it without
    one (one that still serves beside this one during a rolling upgrade; at start
    the database upgrade does the same for all, see app/db.py)."""
    result = await _todos().update_one(
        {"_id": _counter(owner)["_id"], "owner": {"$exists": False}}, {"$set": {"owner": owner}}
    )
    return bool(result.modified_count == 1)


async def _count(owner: ObjectId, change: int, deleting: int = 0) -> None:
    changes = {"count": change, "deleting": deleting} if deleting else {"count": change}
    await _todos().update_one(_counter(owner), {"$inc": changes})


async def _begin_deleting(owner: ObjectId, change: int) -> None:
    """Take ``change`` (zero or less) off the count and mark a delete in flight,
    once no recount holds the counter."""
    while True:
        try:
            await _todos().update_one(
                {**_counter(owner), **_unguarded()},
                {"$inc": {"count": change, "deleting": 1}},
                upsert=True,
            )
            return
        except DuplicateKeyError:  # the filter missed an existing counter
            await _wait_for_recount(owner)


async def find(owner: ObjectId, todo_id: ObjectId) -> Todo | None:
    todo: Todo | None = await _todos().find_one({"_id": todo_id, "owner": owner})
    return todo


async def replace_fields(
    owner: ObjectId, todo_id: ObjectId, version: int, fields: dict[str, Any]
) -> bool:
    """Set ``fields`` and bump the version, if the todo is still at ``version``."""
    result = await _todos().update_one(
        {"_id": todo_id, "owner": owner, "version": version},
        {"$set": fields, "$inc": {"version": 1}},
    )
    return bool(result.modified_count == 1)


async def delete(owner: ObjectId, todo_id: ObjectId, versions: list[int] | None) -> bool:
    """Delete the todo (only at one of ``versions`` when given); True if it went.

    The count goes first (marked in flight), so a recount never sees the
    todo gone while it is still counted; a todo that was not there gives it back.
    """
    query: dict[str, Any] = {"_id": todo_id, "owner": owner}
    if versions is not None:
        query["version"] = {"$in": versions}
    await _begin_deleting(owner, -1)
    deleted = False
    try:
        deleted = bool((await _todos().delete_one(query)).deleted_count == 1)
    finally:
        await _count(owner, 0 if deleted else 1, deleting=-1)
    return deleted


async def delete_completed(owner: ObjectId) -> int:
    """Delete the owner's completed todos; the count follows, marked in flight meanwhile."""
    await _begin_deleting(owner, 0)
    deleted = 0
    try:
        result = await _todos().delete_many({"owner": owner, "completed": True})
        deleted = int(result.deleted_count)
    finally:
        await _count(owner, -deleted, deleting=-1)
    return deleted


async def delete_all_of(owner: ObjectId) -> int:
    """Delete every todo of a deleted ``owner``, for good; return how many went.

    A create may have passed its session check before the account's
    sessions closed. Closing the counter refuses every such create that has
    not bumped it yet; one that has is counted in it, and its insert may
    still be on its way: the todos are deleted until as many as counted have
    gone (for up to IN_FLIGHT_SECONDS; todos stored before counting began are
    deleted too, and a count the todos never reach only costs the wait).
    The closed counter stays: one document holding the account's id.
    """
    await _todos().update_one(_counter(owner), {"$set": {"closed": True}}, upsert=True)
    # Read after closing, not as find_one_and_update's pre-image: on SecantusDB
    # that image could miss bumps applied just before (the test then failed).
    counter = await _todos().find_one(_counter(owner))
    counted: int = counter.get("count", 0) if counter is not None else 0
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + IN_FLIGHT_SECONDS
    deleted = 0
    while True:
        deleted += int((await _todos().delete_many({"owner": owner, **TODOS_ONLY})).deleted_count)
        if deleted >= counted or loop.time() >= give_up_at:
            return deleted
        await asyncio.sleep(0.01)


async def name_counter_owners() -> None:
    """Give every counter an earlier version wrote without ``owner`` its owner."""
    await _todos().update_many(
        COUNTERS_WITHOUT_OWNER,
        [{"$set": {"owner": {"$toObjectId": {"$substrCP": ["$_id", len(COUNTER_PREFIX), 24]}}}}],
    )


async def counted_owners() -> list[ObjectId]:
    """Every owner with todos or an open counter: the owners a recount visits."""
    grouped = await aggregate(_todos(), [{"$match": TODOS_ONLY}, {"$group": {"_id": "$owner"}}])
    owners = {group["_id"] for group in grouped}
    counters = _todos().find(OPEN_COUNTERS, {"owner": 1})
    async for counter in counters:
        owners.add(counter["owner"])
    return sorted(owners)


async def hold_counters(owners: list[ObjectId], until: datetime) -> list[ObjectId]:
    """Hold the owners' counters for a recount until ``until``; return those held.

    A counter is made (count 0) for an owner without one; closed counters (a
    deleted account's) are left alone. Every counter names its owner by now
    (``name_counter_owners`` runs first).
    """
    requests = [
        UpdateOne(
            {**_counter(owner), "closed": {"$ne": True}},
            {"$set": {"recount_until": until}, "$setOnInsert": {"count": 0}},
            upsert=True,
        )
        for owner in owners
    ]
    skipped: set[int] = set()
    try:
        await _todos().bulk_write(requests, ordered=False)
    except BulkWriteError as error:
        for failure in error.details["writeErrors"]:
            if failure["code"] != DUPLICATE_KEY:
                raise
            skipped.add(failure["index"])
    return [owner for index, owner in enumerate(owners) if index not in skipped]


async def wait_for_deletes(owners: list[ObjectId], give_up_at: datetime) -> None:
    """Wait until no delete is in flight for ``owners`` (started before the hold).

    A delete marks itself and unmarks within its request's budget; a mark
    still there at ``give_up_at`` belongs to a request that died, and is cleared.
    """
    ids = [_counter(owner)["_id"] for owner in owners]
    in_flight = {"_id": {"$in": ids}, "deleting": {"$gt": 0}}
    while await _todos().find_one(in_flight, {"_id": 1}) is not None:
        if utcnow() >= give_up_at:
            await _todos().update_many(in_flight, {"$set": {"deleting": 0}})
            return
        await asyncio.sleep(RECOUNT_POLL_SECONDS)


async def recount_held(owner: ObjectId, until: datetime) -> bool:
    """Set a held counter to the owner's todos and release it; False if the hold was lost."""
    stored = await _todos().count_documents({"owner": owner, **TODOS_ONLY})
    result = await _todos().update_one(
        {**_counter(owner), "recount_until": until},
        {"$set": {"count": stored}, "$unset": {"recount_until": ""}},
    )
    return bool(result.matched_count == 1)


async def release_counters(owners: list[ObjectId], until: datetime) -> None:
    """Release whatever hold of ``until`` is left on the owners' counters."""
    await _todos().update_many(
        {"_id": {"$in": [_counter(owner)["_id"] for owner in owners]}, "recount_until": until},
        {"$unset": {"recount_until": ""}},
    )


#: How many todos one page examines in sort order, unless the caller says.
SCAN_LIMIT = 500


def list_pipeline(
    owner: ObjectId,
    filters: dict[str, Any],
    sort: str,
    after: tuple[datetime, ObjectId] | None,
    limit: int,
    scan_limit: int = SCAN_LIMIT,
) -> list[dict[str, Any]]:
    """The aggregation pipeline of one page: match, sort, limit; filters in a bounded scan.

    Shaped for both engines (measured in ``scripts/list_plans.py``):

    - The first ``$match`` is what the indexes serve: the owner (the shard
      key too, so a page is read on one shard), and past a cursor the sort
      field's range (a plain-field range, which SecantusDB plans on the index
      too, so a later page reads only the todos beyond it). SecantusDB plans
      an index only for a filter of plain fields (a top-level ``$and``/``$or``
      sends it to a collection scan), so what leaves out the owner's quota
      counter and the exact keyset condition (ties broken by id) are a second
      ``$match``, applied to those todos alone.
    - Without other filters the page is the first ``limit`` todos.
    - With filters (``q``, ``tag``, ``completed``, due bounds), at most
      ``scan_limit`` todos in sort order are examined; a ``$facet`` returns
      the matches and the last todo examined (``edge``), where the next page
      continues when the scan ended before the page was full (contract rule
      10c: a page's work is bounded whatever the owner stores).
    - No index hint: SecantusDB walks a hinted index from end to end (every
      owner's entries), while MongoDB merges the ``$match`` stages and
      picks the (owner, sort field, _id) index for the sort by itself, so its
      sort and limit stop after the todos examined.
    """
    field = SORT_FIELDS[sort.lstrip("-")]
    direction = DESCENDING if sort.startswith("-") else ASCENDING
    rest: list[dict[str, Any]] = []
    if filters.get("tag") is not None:
        rest.append({"tags": filters["tag"]})
    if filters.get("completed") is not None:
        rest.append({"completed": filters["completed"] == "true"})
    due_bounds: dict[str, datetime] = {}
    if filters.get("due_before") is not None:
        due_bounds["$lt"] = filters["due_before"]
    if filters.get("due_after") is not None:
        due_bounds["$gt"] = filters["due_after"]
    if due_bounds:
        rest.append({"due_at": {"$type": "date", **due_bounds}})
    if filters.get("q") is not None:
        pattern = re.escape(filters["q"])
        rest.append(
            {
                "$or": [
                    {"title": {"$regex": pattern, "$options": "i"}},
                    {"notes": {"$regex": pattern, "$options": "i"}},
                ]
            }
        )
    first: dict[str, Any] = {"owner": owner}
    todos_only: list[dict[str, Any]] = [TODOS_ONLY]
    if after is not None:
        beyond = "$gt" if direction == ASCENDING else "$lt"
        last_value, last_id = after
        if (bound := _from(last_value, direction)) is not None:
            first[field] = bound
        todos_only.append(
            {
                "$or": [
                    {field: {beyond: last_value}},
                    {field: last_value, "_id": {beyond: last_id}},
                ]
            }
        )
    pipeline: list[dict[str, Any]] = [
        {"$match": first},
        {"$match": {"$and": todos_only}},
        {"$sort": {field: direction, "_id": direction}},
    ]
    if not rest:
        return [*pipeline, {"$limit": limit}]
    return [
        *pipeline,
        {"$limit": scan_limit},
        {
            "$facet": {
                "items": [{"$match": {"$and": rest}}, {"$limit": limit}],
                "edge": [{"$skip": scan_limit - 1}, {"$project": {field: 1}}],
            }
        },
    ]


def _from(value: datetime, direction: int) -> dict[str, datetime] | None:
    """The index range from ``value`` on, in ``direction``, ``value`` included.

    Downwards it is ``$lt`` the next millisecond (dates are stored to the
    millisecond): SecantusDB 0.7.0b3 answers ``$lte`` on an indexed date
    wrongly (it dropped every smaller date), ``$lt`` rightly.
    """
    if direction == ASCENDING:
        return {"$gte": value}
    if value >= NO_DUE_DATE:
        return None  # nothing is greater: the whole range, the keyset ``$or`` decides
    return {"$lt": value + timedelta(milliseconds=1)}


def sort_value(todo: Todo, sort: str) -> datetime:
    """The value a todo is ordered by under ``sort`` (what a cursor remembers)."""
    value: datetime = todo[SORT_FIELDS[sort.lstrip("-")]]
    return value


async def page(
    owner: ObjectId,
    filters: dict[str, Any],
    sort: str,
    after: tuple[datetime, ObjectId] | None,
    limit: int,
    scan_limit: int = SCAN_LIMIT,
) -> tuple[list[Todo], Todo | None]:
    """Up to ``limit`` todos after the ``after`` position, in ``sort`` order, and the
    last todo a filtered scan examined when it ran out before finding ``limit``."""
    pipeline = list_pipeline(owner, filters, sort, after, limit, scan_limit)
    result = await aggregate(_todos(), pipeline)
    if pipeline[-1].get("$facet") is None:
        return result, None
    facet = result[0] if result else {"items": [], "edge": []}
    items: list[Todo] = facet["items"]
    edge: list[Todo] = facet["edge"]
    return items, (edge[0] if edge and len(items) < limit else None)
