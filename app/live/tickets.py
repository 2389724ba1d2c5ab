"""Tickets: how a browser's EventSource, which cannot send headers, authenticates.

A ticket is a random secret bound to the caller's session, good for one
stream opened within its lifetime; the stream then expires with the access
token that asked for the ticket.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from quart import current_app

from ..security import CurrentUser
from ..stores import tickets


async def issue(caller: CurrentUser) -> dict[str, Any]:
    lifetime = int(current_app.config["EVENTS_TICKET_SECONDS"])
    ticket = secrets.token_urlsafe(32)
    await tickets.create(
        ticket, caller.session_id, caller.id, caller.token_expires_at, timedelta(seconds=lifetime)
    )
    return {"ticket": ticket, "expires_in": lifetime}
