"""The ``stream_tickets`` collection: single-use tickets for the events route.

Only a SHA-256 of each ticket is stored, so the collection (or a backup of
it) cannot be replayed. Redeeming deletes the document in the same operation
that reads it, so a ticket works once across every worker; expired tickets
are refused by the query and removed later by a TTL index.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

from bson import ObjectId

from ..clock import utcnow
from ..extensions import mongo

Ticket = dict[str, Any]


def _tickets() -> Any:
    return mongo.db["stream_tickets"]


def _key(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()


async def create(
    ticket: str, session_id: str, user_id: ObjectId, token_expires_at: datetime, lifetime: timedelta
) -> None:
    await _tickets().insert_one(
        {
            "_id": _key(ticket),
            "session_id": session_id,
            "user_id": user_id,
            "token_expires_at": token_expires_at,
            "expires_at": utcnow() + lifetime,
        }
    )


async def find(ticket: str) -> Ticket | None:
    """The ticket's document if it is unused and unexpired, leaving it unused."""
    found: Ticket | None = await _tickets().find_one(
        {"_id": _key(ticket), "expires_at": {"$gt": utcnow()}}
    )
    return found


async def redeem(ticket: str) -> Ticket | None:
    """Consume the ticket; its document if it was unused and unexpired, else None."""
    found: Ticket | None = await _tickets().find_one_and_delete(
        {"_id": _key(ticket), "expires_at": {"$gt": utcnow()}}
    )
    return found
