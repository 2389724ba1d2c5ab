"""The ``users`` collection: one document per account.

``username_key`` is the lower-cased name under a unique index, which makes
names unique without regard to case; ``username`` keeps the first spelling.
"""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from ..clock import utcnow
from ..extensions import mongo

User = dict[str, Any]


def _users() -> Any:
    return mongo.db["users"]


async def create(username: str, password_hash: str) -> User | None:
    """Insert a user; ``None`` when the name (in any case) is taken."""
    user = {
        "_id": ObjectId(),
        "username": username,
        "username_key": username.lower(),
        "password_hash": password_hash,
        "created_at": utcnow(),
    }
    try:
        await _users().insert_one(user)
    except DuplicateKeyError:
        return None
    return user


async def find_by_username(username: str) -> User | None:
    user: User | None = await _users().find_one({"username_key": username.lower()})
    return user


async def get(user_id: ObjectId) -> User | None:
    user: User | None = await _users().find_one({"_id": user_id})
    return user


async def set_password_hash(user_id: ObjectId, password_hash: str) -> None:
    await _users().update_one({"_id": user_id}, {"$set": {"password_hash": password_hash}})


async def delete(user_id: ObjectId) -> None:
    await _users().delete_one({"_id": user_id})
