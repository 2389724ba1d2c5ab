"""The ``rate_limits`` collection: fixed-window counters shared by all workers.

A window opens at its first hit and lasts ``window`` seconds; a TTL index
removes it afterwards. Counting is atomic in the database, so the limits
hold across workers, processes and containers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from ..clock import utcnow
from ..extensions import mongo


@dataclass(frozen=True)
class Window:
    count: int
    expires_at: datetime

    def retry_after(self) -> int:
        """Whole seconds until the window closes, at least 1."""
        return max(1, math.ceil((self.expires_at - utcnow()).total_seconds()))


def _counters() -> Any:
    return mongo.db["rate_limits"]


async def hit(key: str, window: timedelta) -> Window:
    """Count one event for ``key`` and return its window after counting."""
    counters = _counters()
    while True:
        now = utcnow()
        doc = await counters.find_one_and_update(
            {"_id": key, "expires_at": {"$gt": now}},
            {"$inc": {"count": 1}},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:  # no open window: reopen an expired one, or start one
            doc = await counters.find_one_and_update(
                {"_id": key, "expires_at": {"$lte": now}},
                {"$set": {"count": 1, "expires_at": now + window}},
                return_document=ReturnDocument.AFTER,
            )
        if doc is None:
            doc = {"_id": key, "count": 1, "expires_at": now + window}
            try:
                await counters.insert_one(doc)
            except DuplicateKeyError:  # another worker opened it first: count there
                continue
        return Window(doc["count"], doc["expires_at"])


async def give_back(key: str) -> None:
    """Uncount one event of ``key``'s open window (an attempt that did not fail after all)."""
    await _counters().update_one(
        {"_id": key, "expires_at": {"$gt": utcnow()}, "count": {"$gt": 0}}, {"$inc": {"count": -1}}
    )
