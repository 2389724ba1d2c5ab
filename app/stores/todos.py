"""The ``todos`` collection. Every query is filtered by ``owner``."""

from __future__ import annotations

from typing import Any

from bson import ObjectId

from ..extensions import mongo


def _todos() -> Any:
    return mongo.db["todos"]


async def delete_all_of(owner: ObjectId) -> int:
    """Delete every todo of ``owner``; return how many went."""
    result = await _todos().delete_many({"owner": owner})
    return int(result.deleted_count)
