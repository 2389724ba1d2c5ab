"""What a change on the database means to the live streams (pure functions).

A todo change becomes an event for its owner's streams, with the todo as
``GET /api/v1/todos/{id}`` shows it; a deleted session or user ends the
streams that belong to it. Documents without ``owner`` concern no stream
(the quota counters kept in the todos collection never get here: the
change stream's pipeline leaves them out).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bson import ObjectId

from ..models.todos import todo_json
from ..stores.sessions import BURNED, FLOOR_PREFIX


@dataclass(frozen=True)
class TodoEvent:
    owner: Any
    name: str  # created, updated or deleted
    data: dict[str, Any]


@dataclass(frozen=True)
class Ended:
    """A session (``field == "session_id"``) or user (``"user_id"``) is gone."""

    field: str
    value: Any


def _after_update(change: dict[str, Any]) -> dict[str, Any] | None:
    """The todo right after this update.

    The pre-image plus the update's own fields is exact at this event; the
    post-image (``fullDocument``) is used when the update is not a plain set
    of top-level fields.
    """
    before = change.get("fullDocumentBeforeChange")
    description = change.get("updateDescription") or {}
    updated: dict[str, Any] = description.get("updatedFields") or {}
    removed: list[str] = description.get("removedFields") or []
    plain = not description.get("truncatedArrays") and all(
        "." not in key for key in [*updated, *removed]
    )
    if before is not None and plain and change["operationType"] == "update":
        after = {**before, **updated}
        for key in removed:
            after.pop(key, None)
        return after
    document: dict[str, Any] | None = change.get("fullDocument")
    return document


def _session_change(change: dict[str, Any]) -> Ended | None:
    """A session deleted or burned ends its streams; a raised floor ends its user's."""
    key = change["documentKey"]["_id"]
    operation = change["operationType"]
    if isinstance(key, str) and key.startswith(FLOOR_PREFIX):
        return Ended("user_id", ObjectId(key.removeprefix(FLOOR_PREFIX)))
    if operation == "delete":
        return Ended("session_id", key)
    updated = (change.get("updateDescription") or {}).get("updatedFields") or {}
    if updated.get("generation") == BURNED:
        return Ended("session_id", key)
    return None


def route(change: dict[str, Any]) -> TodoEvent | Ended | None:
    collection = change["ns"]["coll"]
    operation = change["operationType"]
    if collection == "sessions":
        return _session_change(change)
    if collection == "users" and operation == "delete":
        return Ended("user_id", change["documentKey"]["_id"])
    if collection != "todos":
        return None
    if operation == "insert":
        todo = change.get("fullDocument")
        name = "created"
    elif operation == "delete":
        before = change.get("fullDocumentBeforeChange")
        if before is None or "owner" not in before:
            return None
        data = {"id": str(before["_id"]), "version": before["version"]}
        return TodoEvent(before["owner"], "deleted", data)
    else:
        todo = _after_update(change)
        name = "updated"
    if todo is None or "owner" not in todo:
        return None
    return TodoEvent(todo["owner"], name, todo_json(todo))
