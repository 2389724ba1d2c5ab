"""The ``sessions`` collection: one document per login, and one credential floor per user.

A session is open while its document exists, has not expired, is not burned
and was opened at or above its user's credential floor; closing it deletes
the document, so every token that names it is refused at once, by every
worker. Session ids are 128 random bits (not ObjectIds, whose counter and
timestamp make a neighbour's id guessable). ``generation`` names the one
refresh token that may be used next: rotation moves it atomically, and a
spent token's return burns the session in the same step (``BURNED``).
``credential_epoch`` is the user's epoch when the session was opened (see
``stores.users``). The user's name and creation time are copied in, so the
check every authenticated request makes also yields ``current_user``.
``ends_at`` is the session's absolute end (contract rule 4): refreshing
never moves ``expires_at`` past it.

``user_id`` is the collection's shard key (docs/scaling.md): every command
names it, so each goes to one shard. A token carries both the session and
the user, so naming both costs the per-request check nothing.

The **credential floor** (``_id: "epoch:<user id>"``, with the user's
``user_id`` so it lives on the user's shard, and ``min_epoch``, which no
session has: ``SESSIONS_ONLY`` leaves it out of queries for sessions) holds
the lowest epoch whose sessions are valid: a session opened below it is
void. Raising the floor is one single-document write that ends every
session of the user at once, so a password change or an
account deletion makes it their first step: whatever cuts the rest short
(the request's deadline, a crash, a lost connection), no old session works
from then on. The check reads the session and the floor in one query (two
``_id``s), about 0.05 to 0.1 ms more than reading the session alone on the
embedded database, instead of a second round trip.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bson import ObjectId
from pymongo import DESCENDING

from ..clock import utcnow
from ..extensions import mongo
from . import users

Session = dict[str, Any]

SESSION_ID_BYTES = 16  # 128 bits
#: The generation of a session whose spent refresh token came back: closed.
BURNED = -1
FLOOR_PREFIX = "epoch:"
#: Sessions only: the user's credential floor shares their ``user_id``.
SESSIONS_ONLY = {"min_epoch": {"$exists": False}}


def _sessions() -> Any:
    return mongo.db["sessions"]


def new_session_id() -> str:
    return secrets.token_urlsafe(SESSION_ID_BYTES)


def floor_id(user_id: ObjectId) -> str:
    return f"{FLOOR_PREFIX}{user_id}"


@dataclass(frozen=True)
class Floor:
    """A user's credential floor: sessions below ``min_epoch`` are void."""

    min_epoch: int
    pending_until: datetime | None  # a change holding it may still be running until then


async def open_session(
    user: dict[str, Any], lifetime: timedelta, max_lifetime: timedelta
) -> Session:
    now = utcnow()
    ends_at = now + max_lifetime
    session = {
        "_id": new_session_id(),
        "user_id": user["_id"],
        "username": user["username"],
        "user_created_at": user["created_at"],
        "credential_epoch": users.epoch_of(user),
        "created_at": now,
        "refreshed_at": now,
        "expires_at": min(now + lifetime, ends_at),
        "ends_at": ends_at,
        "generation": 0,
    }
    await _sessions().insert_one(session)
    return session


def _is_open(session: Session | None, floor: int) -> bool:
    return (
        session is not None
        and session["expires_at"] > utcnow()
        and session["generation"] != BURNED
        and int(session.get("credential_epoch", 0)) >= floor
    )


async def find_open(session_id: str, user_id: ObjectId) -> Session | None:
    """``user_id``'s session if it is open (another user's is not found), read with
    the user's floor in one query.

    Checked for expiry, burning and the floor here: the same answer as
    conditions in the filter, which cost the embedded database twice as much
    per request.
    """
    wanted = [session_id, floor_id(user_id)]
    documents = await _sessions().find({"_id": {"$in": wanted}, "user_id": user_id}).to_list(2)
    session = floor = None
    for document in documents:
        if document["_id"] == session_id:
            session = document
        else:
            floor = document
    return session if _is_open(session, int(floor["min_epoch"]) if floor else 0) else None


async def floor_of(user_id: ObjectId) -> Floor:
    document = await _sessions().find_one({"_id": floor_id(user_id), "user_id": user_id})
    if document is None:
        return Floor(0, None)
    return Floor(int(document["min_epoch"]), document.get("pending_until"))


async def raise_floor(user_id: ObjectId, min_epoch: int, pending_until: datetime) -> None:
    """End every session of the user opened below ``min_epoch``, in one write.

    ``pending_until`` says how long the change that raises it may still be
    running: until then a login does not mistake it for one cut short.
    """
    await _sessions().update_one(
        {"_id": floor_id(user_id), "user_id": user_id},
        {"$max": {"min_epoch": min_epoch}, "$set": {"pending_until": pending_until}},
        upsert=True,
    )


async def move_to_epoch(session: Session, epoch: int) -> None:
    """Re-open a just-opened session at ``epoch`` (a login that repaired a cut-short change)."""
    await _sessions().update_one(
        {"_id": session["_id"], "user_id": session["user_id"]},
        {"$set": {"credential_epoch": epoch}},
    )


@dataclass(frozen=True)
class Rotation:
    """What presenting a refresh token did to its session."""

    generation: int | None  # the new generation; None if the token was spent or unknown
    expires_at: datetime | None = None  # the session's (and the new refresh token's) end
    burned: bool = False  # a spent token came back: the session is closed


async def rotate(session: Session, generation: int, lifetime: timedelta) -> Rotation:
    """Move the session to its next refresh token, or burn it if ``generation`` is spent.

    The rotation is one write guarded by ``generation``: of two concurrent
    refreshes with one token exactly one matches. A token that does not
    match is a reuse (contract rule 4), and the next write burns the session
    by itself: it is the first and only step that changes anything, so
    nothing can cut the closing short after the reuse was acted on. The new
    expiry never passes the session's absolute end. (Plain updates: on the
    embedded database a findAndModify costs ten times as much.)
    """
    now = utcnow()
    expires_at = now + lifetime
    if session.get("ends_at") is not None:
        expires_at = min(expires_at, session["ends_at"])
    owned = {"_id": session["_id"], "user_id": session["user_id"]}
    result = await _sessions().update_one(
        {**owned, "generation": generation, "expires_at": {"$gt": now}},
        {"$inc": {"generation": 1}, "$set": {"refreshed_at": now, "expires_at": expires_at}},
    )
    if result.modified_count == 1:
        return Rotation(generation + 1, expires_at)
    burned = await _sessions().update_one(
        {**owned, "generation": {"$ne": BURNED}}, {"$set": {"generation": BURNED}}
    )
    return Rotation(None, burned=burned.modified_count == 1)


async def close(session_id: str, user_id: ObjectId) -> bool:
    """Close ``user_id``'s session; True if it was open."""
    result = await _sessions().delete_one({"_id": session_id, "user_id": user_id, **SESSIONS_ONLY})
    return bool(result.deleted_count == 1)


async def close_all(user_id: ObjectId) -> None:
    """Delete every session of the user (the floor stays: it voids any left behind)."""
    await _sessions().delete_many({"user_id": user_id, **SESSIONS_ONLY})


async def close_beyond(user_id: ObjectId, keep: int) -> int:
    """Keep the user's ``keep`` most recently refreshed sessions; close the rest."""
    cursor = (
        _sessions()
        .find({"user_id": user_id, **SESSIONS_ONLY}, {"_id": 1})
        .sort([("refreshed_at", DESCENDING), ("_id", DESCENDING)])
        .skip(keep)
    )
    surplus = [doc["_id"] async for doc in cursor]
    if not surplus:
        return 0
    result = await _sessions().delete_many({"_id": {"$in": surplus}, "user_id": user_id})
    return int(result.deleted_count)
