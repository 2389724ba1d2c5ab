"""The ``sessions`` collection: one document per login.

A session is open while its document exists and has not expired; closing it
deletes the document, so every token that names it is refused at once, by
every worker. Session ids are 128 random bits (not ObjectIds, whose counter
and timestamp make a neighbour's id guessable). ``generation`` names the one
refresh token that may be used next: rotation bumps it atomically, so of two
refreshes with the same token exactly one matches. ``credential_epoch`` is
the user's epoch when the session was opened (see ``stores.users``). The
user's name and creation time are copied in, so the check every
authenticated request makes also yields ``current_user``.

``user_id`` is the collection's shard key (docs/scaling.md): every command
names it, so each goes to one shard. A token carries both the session and
the user, so naming both costs the per-request check nothing.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from bson import ObjectId
from pymongo import DESCENDING

from ..clock import utcnow
from ..extensions import mongo
from . import users

Session = dict[str, Any]

SESSION_ID_BYTES = 16  # 128 bits


def _sessions() -> Any:
    return mongo.db["sessions"]


def new_session_id() -> str:
    return secrets.token_urlsafe(SESSION_ID_BYTES)


async def open_session(user: dict[str, Any], lifetime: timedelta) -> Session:
    now = utcnow()
    session = {
        "_id": new_session_id(),
        "user_id": user["_id"],
        "username": user["username"],
        "user_created_at": user["created_at"],
        "credential_epoch": users.epoch_of(user),
        "created_at": now,
        "refreshed_at": now,
        "expires_at": now + lifetime,
        "generation": 0,
    }
    await _sessions().insert_one(session)
    return session


async def find_open(session_id: str, user_id: ObjectId) -> Session | None:
    """``user_id``'s session if it is open (another user's is not found). Checked
    for expiry here: the same answer as an ``expires_at`` condition in the
    filter, which costs the embedded database twice as much per request."""
    session: Session | None = await _sessions().find_one({"_id": session_id, "user_id": user_id})
    if session is None or session["expires_at"] <= utcnow():
        return None
    return session


async def rotate(
    session_id: str, user_id: ObjectId, generation: int, lifetime: timedelta
) -> int | None:
    """Move the session to the next refresh token; return its generation.

    ``None`` means the token was not the current one (reused, or the session
    is gone or is not ``user_id``'s).
    """
    now = utcnow()
    result = await _sessions().update_one(
        {
            "_id": session_id,
            "user_id": user_id,
            "generation": generation,
            "expires_at": {"$gt": now},
        },
        {
            "$inc": {"generation": 1},
            "$set": {"refreshed_at": now, "expires_at": now + lifetime},
        },
    )
    return generation + 1 if result.modified_count == 1 else None


async def close(session_id: str, user_id: ObjectId) -> bool:
    """Close ``user_id``'s session; True if it was open."""
    result = await _sessions().delete_one({"_id": session_id, "user_id": user_id})
    return bool(result.deleted_count == 1)


async def close_all(user_id: ObjectId) -> None:
    await _sessions().delete_many({"user_id": user_id})


async def close_beyond(user_id: ObjectId, keep: int) -> int:
    """Keep the user's ``keep`` most recently refreshed sessions; close the rest."""
    cursor = (
        _sessions()
        .find({"user_id": user_id}, {"_id": 1})
        .sort([("refreshed_at", DESCENDING), ("_id", DESCENDING)])
        .skip(keep)
    )
    surplus = [doc["_id"] async for doc in cursor]
    if not surplus:
        return 0
    result = await _sessions().delete_many({"_id": {"$in": surplus}, "user_id": user_id})
    return int(result.deleted_count)
