"""The ``users`` collection: one document per account.

``username_key`` is the lower-cased name under a unique index, which makes
names unique without regard to case; ``username`` keeps the first spelling.

``credential_epoch`` grows whenever the credentials stop being valid (a new
password, the account's deletion). A session remembers the epoch it was
opened under, and a login re-reads the user after storing its session: if
the epoch moved meanwhile, the login lost a race with a password change or
a deletion and withdraws its session. ``deleting`` marks an account whose
deletion has begun: it can no longer be logged in to.
"""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from ..clock import utcnow
from ..extensions import mongo

User = dict[str, Any]

#: Accounts that can be logged in to.
ACTIVE = {"deleting": {"$ne": True}}


def _users() -> Any:
    return mongo.db["users"]


async def create(username: str, password_hash: str) -> User | None:
    """Insert a user; ``None`` when the name (in any case) is taken."""
    user = {
        "_id": ObjectId(),
        "username": username,
        "username_key": username.lower(),
        "password_hash": password_hash,
        "credential_epoch": 0,
        "created_at": utcnow(),
    }
    try:
        await _users().insert_one(user)
    except DuplicateKeyError:
        return None
    return user


async def find_by_username(username: str) -> User | None:
    user: User | None = await _users().find_one({"username_key": username.lower(), **ACTIVE})
    return user


async def find_being_deleted(username: str) -> User | None:
    user: User | None = await _users().find_one(
        {"username_key": username.lower(), "deleting": True}
    )
    return user


async def get(user_id: ObjectId) -> User | None:
    """The user, also while being deleted (``deleting`` says so)."""
    user: User | None = await _users().find_one({"_id": user_id})
    return user


def epoch_of(user: User) -> int:
    return int(user.get("credential_epoch", 0))


def _at_epoch(user_id: ObjectId, epoch: int) -> dict[str, Any]:
    # Accounts from before epochs existed have no field: that is epoch 0.
    return {"_id": user_id, "credential_epoch": {"$in": [0, None]} if epoch == 0 else epoch}


async def credentials_unchanged(user_id: ObjectId, epoch: int) -> bool:
    """True while the user exists, is not being deleted and is still at ``epoch``."""
    found = await _users().find_one({**_at_epoch(user_id, epoch), **ACTIVE}, {"_id": 1})
    return found is not None


async def upgrade_password_hash(user_id: ObjectId, epoch: int, password_hash: str) -> None:
    """Store a rehash of the same password (stronger parameters): the epoch stays."""
    await _users().update_one(_at_epoch(user_id, epoch), {"$set": {"password_hash": password_hash}})


async def replace_password_hash(user_id: ObjectId, password_hash: str) -> None:
    """Store a new password and move the epoch: sessions opened before are void."""
    await _users().update_one(
        {"_id": user_id},
        {"$set": {"password_hash": password_hash}, "$inc": {"credential_epoch": 1}},
    )


async def begin_deletion(user_id: ObjectId) -> None:
    """Mark the account as going: no login succeeds from here on."""
    await _users().update_one(
        {"_id": user_id}, {"$set": {"deleting": True}, "$inc": {"credential_epoch": 1}}
    )


async def delete(user_id: ObjectId) -> None:
    await _users().delete_one({"_id": user_id})
