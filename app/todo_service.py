"""Todo rules: versions, completion times, preconditions and paging.

Routes call these; they raise ``ApiError`` and leave Mongo to the store.
Updates read the todo, then write it guarded by its version (much cheaper
than findAndModify on the embedded database, and just as safe): a lost race
is retried, or reported as 412 when the client named a version.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson import ObjectId
from pymongo.errors import DuplicateKeyError
from quart import current_app

from . import cursors, idempotency, metrics
from .clock import utcnow
from .errors import ApiError
from .models.todos import ListQuery, TodoCreate
from .security import session_revoked
from .stores import todos as store
from .stores.todos import Todo


def etag(version: int) -> str:
    return f'"{version}"'


@dataclass(frozen=True)
class IfMatch:
    """An ``If-Match`` precondition: ``*`` (any version) or a set of versions."""

    any_version: bool
    versions: frozenset[int]
    #: Some element was no quoted entity tag (``If-Match: 3``): say so on a mismatch.
    malformed: bool = False

    def matches(self, version: int) -> bool:
        return self.any_version or version in self.versions


def not_found() -> ApiError:
    return ApiError(404, "not_found", "No such todo.")


def _version_conflict(current_version: int, if_match: IfMatch) -> ApiError:
    if if_match.malformed:
        detail = (
            f"Entity tags in If-Match must be quoted, e.g. If-Match: {etag(current_version)} "
            "(the ETag header as received)."
        )
    else:
        detail = "The todo has changed since the version named in If-Match."
    return ApiError(412, "version_conflict", detail, headers={"ETag": etag(current_version)})


def _replayed() -> None:
    metrics.count(lambda m: m.idempotent_replays)


def _deleted_since() -> ApiError:
    _replayed()
    return ApiError(
        404,
        "not_found",
        "The todo this Idempotency-Key created has been deleted since.",
        headers={"Idempotent-Replayed": "true"},
    )


async def create(owner: ObjectId, data: TodoCreate, todo_id: ObjectId | None = None) -> Todo:
    """Insert a new todo (under ``todo_id`` when the caller fixed it)."""
    now = utcnow()
    todo: Todo = {
        "_id": todo_id or ObjectId(),
        "owner": owner,
        "title": data.title,
        "notes": data.notes,
        "completed": data.completed,
        "completed_at": now if data.completed else None,
        "due_at": data.due_at,
        "due_key": store.due_key(data.due_at),
        "priority": data.priority,
        "tags": data.tags,
        "created_at": now,
        "updated_at": now,
        "version": 1,
    }
    quota: int = current_app.config["TODOS_PER_USER"]
    try:
        await store.insert(todo, quota)
    except store.QuotaExceeded:
        raise ApiError(
            409,
            "quota_exceeded",
            f"You hold the maximum of {quota} todos; delete some to create more.",
        ) from None
    except store.OwnerDeleted:  # the account was deleted while this request ran
        raise session_revoked() from None
    return todo


async def create_once(owner: ObjectId, data: TodoCreate, key: str) -> tuple[Todo, bool]:
    """Create the todo that Idempotency-Key ``key`` stands for, at most once.

    Returns the todo (as it is now) and whether this was a replay. A replay
    of a todo deleted since is 404: the create was done, and is not redone.
    """
    claim = await idempotency.begin(owner, key, idempotency.fingerprint(data))
    if not claim.mine:
        todo = await store.find(owner, claim.resource_id)
        if todo is not None:
            if not claim.completed:  # its first attempt wrote it but never said so
                await idempotency.complete(claim)
            _replayed()
            return todo, True
        if claim.completed:
            raise _deleted_since()
        claim = await idempotency.take_over(claim)  # 409 while it may still run
    try:
        todo = await create(owner, data, claim.resource_id)
    except DuplicateKeyError:
        # An earlier attempt's insert landed after this one looked for it.
        found = await store.find(owner, claim.resource_id)
        if found is None:
            raise
        todo = found
        await idempotency.complete(claim)
        _replayed()
        return todo, True
    except ApiError:
        await idempotency.release(claim)  # refused, nothing created: free the key
        raise
    await idempotency.complete(claim)
    return todo, False


async def get(owner: ObjectId, todo_id: ObjectId) -> Todo:
    todo = await store.find(owner, todo_id)
    if todo is None:
        raise not_found()
    return todo


def _changed_fields(todo: Todo, changes: dict[str, Any], now: datetime) -> dict[str, Any]:
    fields = {**changes, "updated_at": now}
    if "due_at" in changes:
        fields["due_key"] = store.due_key(changes["due_at"])
    if "completed" in changes:
        if not changes["completed"]:
            fields["completed_at"] = None
        elif not todo["completed"]:
            fields["completed_at"] = now
    return fields


async def update(
    owner: ObjectId, todo_id: ObjectId, changes: dict[str, Any], if_match: IfMatch | None
) -> Todo:
    """Apply ``changes`` atomically with a version bump; 404, or 412 on a stale If-Match."""
    while True:
        todo = await get(owner, todo_id)
        if if_match is not None and not if_match.matches(todo["version"]):
            raise _version_conflict(todo["version"], if_match)
        fields = _changed_fields(todo, changes, utcnow())
        if await store.replace_fields(owner, todo_id, todo["version"], fields):
            return {**todo, **fields, "version": todo["version"] + 1}
        # Another writer got in between: read again (and re-check If-Match).


async def delete(owner: ObjectId, todo_id: ObjectId, if_match: IfMatch | None) -> None:
    while True:
        todo = await get(owner, todo_id)
        if if_match is None:
            if not await store.delete(owner, todo_id, None):
                raise not_found()
            return
        if not if_match.matches(todo["version"]):
            raise _version_conflict(todo["version"], if_match)
        if await store.delete(owner, todo_id, [todo["version"]]):
            return


async def clear_completed(owner: ObjectId) -> int:
    return await store.delete_completed(owner)


async def list_page(owner: ObjectId, query: ListQuery) -> tuple[list[Todo], str | None]:
    """One page in keyset order, and the cursor of the next (None on the last page).

    A filtered page examines at most ``LIST_SCAN_LIMIT`` todos: when they
    run out first, the page holds what matched so far (maybe nothing) and the
    cursor continues after the last todo examined.
    """
    filters = query.filters()
    bound_to = cursors.binding(owner, query.sort, filters)
    after = cursors.decode(query.cursor, bound_to) if query.cursor is not None else None
    scan_limit: int = current_app.config["LIST_SCAN_LIMIT"]
    todos, edge = await store.page(
        owner, filters, query.sort, after, query.limit + 1, max(scan_limit, query.limit + 1)
    )
    if len(todos) > query.limit:
        last = todos[query.limit - 1]
    elif edge is not None:
        last = edge
    else:
        return todos, None
    next_cursor = cursors.encode(bound_to, store.sort_value(last, query.sort), last["_id"])
    return todos[: query.limit], next_cursor
