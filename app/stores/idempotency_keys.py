"""The ``idempotency_keys`` collection: one record per (user, Idempotency-Key).

A record is identified by ``{"owner", "key"}`` in its ``_id``, so the unique
``_id`` index decides which of two concurrent first requests holds a key.
It names the resource the key stands for (``resource_id``), the request body
it was first used with (``fingerprint``), how long the attempt holding it may
still be running (``lease_until``), whether the resource was created
(``completed``), and when the key is forgotten (``expires_at``, a TTL index
that sweeps about once a minute; readers treat an expired record as absent
without waiting for it). Every write after the claim is guarded by the
record's ``claimed_at``, so a write of an earlier claim never lands on a newer one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from ..extensions import mongo

Record = dict[str, Any]


def _keys() -> Any:
    return mongo.db["idempotency_keys"]


def record_id(owner: ObjectId, key: str) -> dict[str, Any]:
    """The record's ``_id``; field order is part of an embedded document's identity."""
    return {"owner": owner, "key": key}


async def claim(record: Record) -> Record | None:
    """Insert ``record``; None when it went in, else the record already there.

    When the record in the way vanishes before it is read (the TTL sweep),
    the insert is tried again.
    """
    while True:
        try:
            await _keys().insert_one(record)
        except DuplicateKeyError:
            existing: Record | None = await _keys().find_one({"_id": record["_id"]})
            if existing is not None:
                return existing
        else:
            return None


async def replace_expired(expired: Record, record: Record) -> bool:
    """Put a new claim in place of an expired one; False if another request did first."""
    result = await _keys().replace_one(
        {"_id": expired["_id"], "claimed_at": expired["claimed_at"]}, record
    )
    return bool(result.modified_count == 1)


async def take_over(record: Record, now: datetime, lease_until: datetime) -> bool:
    """Hold a pending claim whose lease ran out; False while it is held or done."""
    result = await _keys().update_one(
        {
            "_id": record["_id"],
            "claimed_at": record["claimed_at"],
            "completed": False,
            "lease_until": {"$lte": now},
        },
        {"$set": {"lease_until": lease_until}},
    )
    return bool(result.modified_count == 1)


async def complete(record: Record) -> None:
    """Remember that the claim's resource was created."""
    await _keys().update_one(
        {"_id": record["_id"], "claimed_at": record["claimed_at"]},
        {"$set": {"completed": True}},
    )


async def release(record: Record) -> None:
    """Forget a claim whose attempt was refused (nothing was created)."""
    await _keys().delete_one(
        {"_id": record["_id"], "claimed_at": record["claimed_at"], "completed": False}
    )
