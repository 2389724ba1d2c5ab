"""The ``sessions`` collection: one document per login.

A session is open while its document exists and has not expired; closing it
deletes the document, so every token that names it is refused at once, by
every worker. ``generation`` names the one refresh token that may be used
next: rotation bumps it atomically, so of two refreshes with the same token
exactly one matches. The user's name and creation time are copied in, so the
check every authenticated request makes also yields ``current_user``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from bson import ObjectId

from ..clock import utcnow
from ..extensions import mongo

Session = dict[str, Any]


def _sessions() -> Any:
    return mongo.db["sessions"]


async def open_session(user: dict[str, Any], lifetime: timedelta) -> Session:
    now = utcnow()
    session = {
        "_id": ObjectId(),
        "user_id": user["_id"],
        "username": user["username"],
        "user_created_at": user["created_at"],
        "created_at": now,
        "refreshed_at": now,
        "expires_at": now + lifetime,
        "generation": 0,
    }
    await _sessions().insert_one(session)
    return session


async def find_open(session_id: ObjectId) -> Session | None:
    session: Session | None = await _sessions().find_one(
        {"_id": session_id, "expires_at": {"$gt": utcnow()}}
    )
    return session


async def rotate(session_id: ObjectId, generation: int, lifetime: timedelta) -> int | None:
    """Move the session to the next refresh token; return its generation.

    ``None`` means the token was not the current one (reused, or the session
    is gone); the session is then closed, as a stolen token may be in play.
    """
    now = utcnow()
    result = await _sessions().update_one(
        {"_id": session_id, "generation": generation, "expires_at": {"$gt": now}},
        {
            "$inc": {"generation": 1},
            "$set": {"refreshed_at": now, "expires_at": now + lifetime},
        },
    )
    if result.modified_count == 1:
        return generation + 1
    await close(session_id)
    return None


async def close(session_id: ObjectId) -> None:
    await _sessions().delete_one({"_id": session_id})


async def close_all(user_id: ObjectId) -> None:
    await _sessions().delete_many({"user_id": user_id})
