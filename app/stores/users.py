"""The ``users`` collection: one document per account.

``username_key`` is the lower-cased name under a unique index, which makes
names unique without regard to case; ``username`` keeps the first spelling.

``credential_epoch`` grows whenever the credentials stop being valid (a new
password, the account's deletion), in the same write as the change. A
session remembers the epoch it was opened under; the user's credential
floor (``stores.sessions``) voids every session below it. ``deleting``
marks an account whose deletion has begun: it can no longer be logged in to.

Registration claims the name before it hashes the password: the claim is a
user without a password (``password_hash: None``, which no login matches)
holding ``claim_until``, the claiming request's remaining budget. Racing
registrations of one name find the claim and answer 409 without hashing;
a claim whose request died (its lease has passed) is taken over.
"""

from __future__ import annotations

from datetime import datetime
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


async def claim(username: str, claim_until: datetime) -> User | None:
    """Insert a user without a password, claiming the name; ``None`` when it is taken."""
    user = {
        "_id": ObjectId(),
        "username": username,
        "username_key": username.lower(),
        "password_hash": None,
        "credential_epoch": 0,
        "created_at": utcnow(),
        "claim_until": claim_until,
    }
    try:
        await _users().insert_one(user)
    except DuplicateKeyError:
        return None
    return user


async def find_claimed(username: str) -> User | None:
    """The user holding ``username`` in any state: complete, claimed or being deleted."""
    user: User | None = await _users().find_one({"username_key": username.lower()})
    return user


async def take_over_claim(abandoned: User, username: str, claim_until: datetime) -> User | None:
    """Take the name from a claim whose request died; ``None`` if another request did first."""
    now = utcnow()
    result = await _users().update_one(
        {"_id": abandoned["_id"], "password_hash": None, "claim_until": abandoned["claim_until"]},
        {"$set": {"username": username, "created_at": now, "claim_until": claim_until}},
    )
    if result.modified_count != 1:
        return None
    return {**abandoned, "username": username, "created_at": now, "claim_until": claim_until}


async def complete_claim(user: User, password_hash: str) -> bool:
    """Give a claimed user its password; False if the claim was taken over meanwhile."""
    result = await _users().update_one(
        {"_id": user["_id"], "password_hash": None, "claim_until": user["claim_until"]},
        {"$set": {"password_hash": password_hash}, "$unset": {"claim_until": ""}},
    )
    return bool(result.modified_count == 1)


async def find_by_username(username: str) -> User | None:
    user: User | None = await _users().find_one({"username_key": username.lower(), **ACTIVE})
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


async def replace_password_hash(user_id: ObjectId, epoch: int, password_hash: str) -> bool:
    """Store a new password and move the epoch, if the user is still at ``epoch``."""
    result = await _users().update_one(
        {**_at_epoch(user_id, epoch), **ACTIVE},
        {"$set": {"password_hash": password_hash, "credential_epoch": epoch + 1}},
    )
    return bool(result.modified_count == 1)


async def begin_deletion(user_id: ObjectId, epoch: int) -> bool:
    """Mark the account as going, if still at ``epoch``: no login succeeds from here on."""
    result = await _users().update_one(
        {**_at_epoch(user_id, epoch), **ACTIVE},
        {"$set": {"deleting": True, "credential_epoch": epoch + 1}},
    )
    return bool(result.modified_count == 1)


async def settle_epoch(user_id: ObjectId, epoch: int, floor: int) -> bool:
    """Lift a user still at ``epoch`` to ``floor``: the change that raised the floor
    was cut short before it changed the user, so the credentials stand as they are."""
    result = await _users().update_one(
        {**_at_epoch(user_id, epoch), **ACTIVE}, {"$set": {"credential_epoch": floor}}
    )
    return bool(result.modified_count == 1)


async def delete(user_id: ObjectId) -> None:
    await _users().delete_one({"_id": user_id})
